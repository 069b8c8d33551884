"""Damaged images through the recognition task: the worker (and its pool processes)
survive, each undecodable image gets one clear error event, the next good frame works."""
from __future__ import annotations

import pytest

from tests.faults.harness import BAD_KINDS, MUST_FAIL
from tests.faults.scenarios import Deployment, bad_input_run

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_bad_images_give_error_events_and_crash_nothing(shared: Deployment, frame: bytes) -> None:
    n = 96
    summary = bad_input_run(shared, shared.workers[0], frame, n, seed=7)
    assert summary["crashed"] == 0, summary
    assert summary["lost"] == 0, summary
    assert summary["missing_error_events"] == 0 and summary["unclear_error_events"] == 0, summary
    assert summary["codes"] == ["bad_image"], summary
    assert set(summary["by_kind"]) == set(BAD_KINDS)
    must_fail = sum(row["sent"] for kind, row in summary["by_kind"].items() if kind in MUST_FAIL)
    assert summary["error_events"] >= must_fail
    # Each image is either an error or a processed frame (bit flips may decode), and the
    # good frame sent last is processed.
    assert summary["error_events"] + summary["processed"] == n + 1, summary
    assert summary["processed"] >= 1
