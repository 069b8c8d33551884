"""Load shedding (workers.max_frame_age_s): a stale frame is dropped only while a newer
frame of its camera waits, and counted as dropped; with the setting off nothing is shed."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from faec_rec.config import load_settings
from faec_rec.workers import pipeline
from faec_rec.workers.runtime import Runtime

pytestmark = pytest.mark.integration


def _push(r, keys, camera: str, n: int, age_s: float) -> pipeline.FramePayload:  # noqa: ANN001
    key = keys.frame(camera, n)
    r.set(key, b"jpeg bytes", ex=60)
    r.lpush(keys.in_flight(camera), key)
    return pipeline.FramePayload(camera, n, key, time.time() - age_s)


def test_stale_frame_is_shed_while_newer_ones_wait(redis_url: str, prefix: str, tmp_path: Path, redis_client) -> None:  # noqa: ANN001
    runtime = Runtime(load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path,
                                    workers={"max_frame_age_s": 1.0}))
    r, keys = runtime.redis, runtime.keys
    old = _push(r, keys, "cam", 1, age_s=5.0)
    newest = _push(r, keys, "cam", 2, age_s=5.0)
    assert pipeline.recognise_frame(runtime, old).status == "stale"
    stats = r.hgetall(keys.camera_stats("cam"))
    assert stats[b"dropped"] == b"1" and stats[b"stale"] == b"1"
    assert not r.exists(old.key) and r.lrange(keys.in_flight("cam"), 0, -1) == [newest.key.encode()]
    # The newest frame is never shed, however old: claim it and nothing newer waits.
    r.lrem(keys.in_flight("cam"), 1, newest.key)
    assert not pipeline._stale(runtime, newest)
    runtime.close()


def test_nothing_is_shed_when_the_setting_is_off(redis_url: str, prefix: str, tmp_path: Path, redis_client) -> None:  # noqa: ANN001
    runtime = Runtime(load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path))
    r, keys = runtime.redis, runtime.keys
    old = _push(r, keys, "cam", 1, age_s=3600.0)
    _push(r, keys, "cam", 2, age_s=0.0)
    r.lrem(keys.in_flight("cam"), 1, old.key)
    assert not pipeline._stale(runtime, old)
    runtime.close()
