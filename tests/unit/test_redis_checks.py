"""Start-up checks of a deployment's Redis, against a real redis-server started here
(its eviction policy and persistence set per test)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from faec_rec.errors import ConfigError
from faec_rec.redis_checks import check_redis


@pytest.fixture
def own_redis(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield client
    client.close()
    proc.kill()  # ours, throwaway: no need to wait for an append-only rewrite
    proc.wait(10)


def test_an_evicting_redis_is_refused_unless_allowed(own_redis) -> None:
    own_redis.config_set("maxmemory-policy", "allkeys-lru")
    with pytest.raises(ConfigError, match="maxmemory-policy allkeys-lru"):
        check_redis(own_redis)
    found = check_redis(own_redis, require_noeviction=False)
    assert found.refusals and found.policy == "allkeys-lru"


def test_no_maxmemory_and_no_persistence_are_warned(own_redis) -> None:
    found = check_redis(own_redis)
    assert any("no maxmemory" in w for w in found.warnings)
    assert any("keeps nothing on disk" in w for w in found.warnings)


def test_a_well_configured_redis_passes_silently(own_redis) -> None:
    own_redis.config_set("maxmemory", "64mb")
    own_redis.config_set("appendonly", "yes")
    found = check_redis(own_redis)
    assert (found.policy, found.maxmemory, found.aof) == ("noeviction", 64 * 1024 * 1024, True)
    assert not found.warnings and not found.refusals


def test_a_celery_worker_start_refuses_an_evicting_redis(own_redis) -> None:
    """However the worker is started (celery -A ... worker too): the worker_init hook checks."""
    from faec_rec import redis_checks
    from faec_rec.config import load_settings
    from faec_rec.workers import app as app_module

    own_redis.config_set("maxmemory-policy", "volatile-lru")  # a managed service's usual default
    port = own_redis.connection_pool.connection_kwargs["port"]
    app = app_module.make_app(load_settings(redis_url=f"redis://127.0.0.1:{port}/0"))
    redis_checks._checked.discard(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ConfigError, match="volatile-lru"):
        app_module._check_broker(app)
