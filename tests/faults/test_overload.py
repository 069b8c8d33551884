"""Cameras offering twice what the workers process: memory stays bounded, drops are
counted, the wait of a frame is bounded by the in-flight limit."""
from __future__ import annotations

import pytest

from tests.faults.scenarios import Deployment, overload

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_overload_drops_and_counts_with_bounded_memory(shared: Deployment, frame: bytes) -> None:
    summary = overload(shared, shared.workers[0], frame, seconds=20, factor=2.0, cameras=2, max_in_flight=4)
    assert summary["crashed"] == 0 and summary["lost"] == 0, summary
    assert summary["dropped"] > 0, summary
    assert summary["processed"] + summary["dropped"] + summary["errors"] == summary["pushed"], summary
    # The in-flight list never outgrows its limit: what bounds a frame's wait.
    assert summary["max_in_flight_seen"] <= summary["max_in_flight"], summary
    # Memory bounded: no growth from the first third of the run to the last beyond noise.
    assert summary["rss_mb_last_third_max"] <= summary["rss_mb_first_third_max"] * 1.10 + 50, summary
