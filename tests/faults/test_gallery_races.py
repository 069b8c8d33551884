"""Two enrolments of one person at the same moment; a person forgotten while their
face is being recognised."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenarios import Deployment, forget_during_recognition, same_person_twice

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_same_person_enrolled_twice_at_once_is_one_person(shared: Deployment, photos: list[Path]) -> None:
    summary = same_person_twice(shared, photos, name="Twice")
    assert summary["statuses"] == ["done", "done"], summary
    assert summary["people_named"] == 1 and summary["same_person_id"], summary
    # Photos 2 and 3 were in both requests: stored once.
    assert summary["templates"] == summary["distinct_accepted_images"] >= 4, summary
    assert summary["lost"] == 0 and summary["duplicated"] == 0, summary


@pytest.mark.timeout(180)
def test_forget_during_recognition_leaves_nothing(shared: Deployment, other_photos: list[Path],
                                                 other_frame: bytes) -> None:
    summary = forget_during_recognition(shared, shared.workers[0], other_photos, other_frame, name="Forgotten",
                                        fps=4.0, before_s=2.0, after_s=4.0)
    assert summary["templates_forgotten"] >= 2, summary
    assert summary["crashed"] == 0 and summary["lost"] == 0, summary
    assert summary["frames_processed_after_forget"] >= 3, summary
    # The face's track outlives the forget; its "left" event (after the sweep) names nobody.
    assert "left" in summary["event_types_after_forget"], summary
    assert summary["events_naming_after_forget"] == 0, summary
    assert summary["keys_left"] == [] and summary["files_left"] == [], summary
    # Before: they were named in the events streams (all and per camera), the enrolment
    # report, Celery's task results and the identify job's records. After: nowhere but
    # the gallery's own forget marker (their bare id, which replicas need).
    assert "Forgotten" in summary["identified_before"], summary
    for place in ("events", "enrolment", "celery-task-meta", "job"):
        assert any(place in m for m in summary["mentions_before"]), (place, summary["mentions_before"])
    assert summary["values_naming_left"] == [], summary


def test_tracker_drops_a_forgotten_identity_and_only_that() -> None:
    from faec_rec.workers.tracker import Observation, Tracker

    tracker = Tracker(iou_threshold=0.3, timeout_s=2.0, switch_frames=2, min_hits=1)
    seen = [Observation(box=(0, 0, 100, 100), person_id="p1", person="Ann", score=0.95, decision="known"),
            Observation(box=(300, 0, 400, 100), person_id="p2", person="Bob", score=0.95, decision="known")]
    assert [e.person for e in tracker.update(1, 1.0, seen)] == ["Ann", "Bob"]
    assert tracker.identities() == {"p1", "p2"}
    assert tracker.forget_people({"p1"}) and not tracker.forget_people({"p1"})
    left = tracker.sweep(10.0)
    assert [(e.person_id, e.person, e.decision) for e in left] == [(None, None, "unknown"), ("p2", "Bob", "known")]
