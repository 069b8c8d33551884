"""Fixtures of the web tests: the real app on the tests' Redis (own prefix), keys of every role."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def make_settings(redis_url: str, prefix: str, data_dir: Path, **web: Any) -> Any:
    from faec_rec.config import load_settings

    return load_settings(redis_url=redis_url, prefix=prefix, data_dir=data_dir,
                         web={"secure_cookies": True, "task_timeout_s": 5.0, **web})


@pytest.fixture
def web_settings(redis_url: str, prefix: str, tmp_path: Path, redis_client: Any) -> Any:
    return make_settings(redis_url, prefix, tmp_path)


@pytest.fixture
def app(web_settings: Any) -> Any:
    from faec_rec.web.app import create_app

    return create_app(web_settings)


@pytest.fixture
def http(app: Any) -> Iterator[Any]:
    """An HTTP client on the app (in-process ASGI, real Redis); base URL https so Secure cookies travel."""
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="https://testserver") as client:
        yield client


@pytest.fixture
def role_keys(app: Any) -> dict[str, str]:
    store = app.state.keystore
    out = {}
    for role in ("viewer", "operator", "admin"):
        _record, secret = store.create(role, f"{role}-key", password=f"{role}-password-123", actor="test")
        out[role] = secret
    return out


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def enrol_fake(app: Any, name: str, n: int = 2, seed: int = 0) -> Any:
    """A person in the gallery without a worker: random unit features and a real JPEG crop."""
    import cv2

    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 128)).astype(np.float32)
    crop = cv2.imencode(".jpg", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    client = app.state.client
    return client.gallery.enrol(name, feats, sources=[f"s{i}.jpg" for i in range(n)],
                                content_hashes=[f"{seed}-{i}" for i in range(n)], crops=[crop] * n)
