"""SIGKILL a worker in the middle of an enrolment while recognition tasks wait:
every accepted image lands once, every frame is processed or counted."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import Deployment, worker_kills

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_killed_workers_lose_and_duplicate_nothing(redis_url: str, tmp_path: Path, photos: list[Path], frame: bytes) -> None:
    dep = Deployment(redis_url, tmp_path)
    try:
        # Kills of the whole worker (a lost machine) alternate with kills of the pool
        # process under the task; the third needs the new worker to restore a message
        # after its first sweep for abandoned messages.
        summary = worker_kills(dep, photos[:4], frame, kills=3, frames_per_trial=5)
    finally:
        dep.close()
    assert summary["machine_kills"] == 2 and summary["pool_kills"] == 1
    assert summary["kills_mid_enrolment"] == 3, summary
    # A pool process replaced after the kill loads the model without Celery killing it for slowness.
    assert summary["pool_start_timeouts"] == 0, summary
    assert summary["enrolments_done"] == 3, summary
    assert summary["accepted_images"] >= 9, summary
    assert summary["lost"] == 0 and summary["duplicated"] == 0, summary
    assert summary["frames_pushed"] == 15
    assert summary["frames_lost"] == 0 and summary["frames_duplicated"] == 0, summary
    assert summary["frames_processed"] + summary["frames_dropped"] + summary["frame_errors"] == 15
