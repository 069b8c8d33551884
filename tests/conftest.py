"""Shared fixtures: a real Redis (own database number, cleaned per test), the
shared face data (skipped with a reason where absent), and seeded randomness."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from faec_rec.keys import Keys

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces"))
# Database 13 of the local Redis is the tests' own; each test gets its own prefix too.
TEST_REDIS_URL = os.environ.get("FAEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Root of ../shared/data/faces; skips the test where it is absent."""
    if not FACES.is_dir():
        pytest.skip(f"face data not found at {FACES} (set FAEC_TEST_FACES)")
    return FACES


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis at {TEST_REDIS_URL}: run `make test`, which starts one")
    finally:
        client.close()
    return TEST_REDIS_URL


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to this test."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def redis_client(redis_url: str, prefix: str):
    """A client on the tests' database; every key under this test's prefix is deleted after."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
