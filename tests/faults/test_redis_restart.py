"""Stop and restart a PRIVATE Redis (AOF on, own port: never the shared one) during a
camera run: producer and worker reconnect by themselves, what was acknowledged
before stays, frames are processed again."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import redis_restart

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_run_survives_a_redis_restart(tmp_path: Path, photos: list[Path], video: Path) -> None:
    summary = redis_restart(tmp_path, photos[:3], video, down_s=3.0, before_s=3.0, after_s=4.0)
    assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
    assert summary["crashed"] == 0, summary
    assert summary["worker_reconnected"] and summary["frames_processed_after_restart"] > 0, summary
    producer = summary["producer"]
    assert producer is not None and producer["status"] == "stopped", summary
    # Every frame Redis accepted is processed or counted (no frame key nor in-flight
    # entry left); frames offered while it was away are counted as dropped.
    assert summary["frames_unsettled"] == 0, summary
    assert summary["frames_processed"] + summary["frames_dropped"] + summary["frame_errors"] >= summary["frames_pushed"]
    assert producer["dropped"] >= 1 and summary["frames_dropped"] >= 1, summary
