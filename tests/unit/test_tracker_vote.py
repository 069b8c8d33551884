"""A track's identity before it arrives is a quality- and score-weighted vote over its frames."""
from __future__ import annotations

import json

from faec_rec.workers.tracker import Observation, Tracker

T0 = 1_700_000_000.0


def seen(person: str | None, quality: float | None, score: float = 0.95, x: float = 100.0) -> Observation:
    known = person is not None
    return Observation(box=(x, 100.0, x + 80.0, 180.0), person_id=person, person=person.title() if person else None,
                       score=score if known else 0.9, decision="known" if known else "unknown",
                       model_version="v1", quality=quality)


def run(frames: list[Observation], **kw) -> list:
    tracker = Tracker(min_hits=kw.pop("min_hits", 2), **kw)
    events = []
    for i, ob in enumerate(frames):
        events.extend(tracker.update(i, T0 + i / 10, [ob]))
    return events


def named(events) -> list[tuple[str, str | None]]:
    return [(e.type, e.person) for e in events]


def test_a_blurry_first_frame_naming_someone_else_does_not_decide_the_arrival() -> None:
    events = run([seen("bob", quality=5.0), seen("ada", quality=60.0), seen("ada", quality=55.0)])
    assert named(events) == [("arrived", "Ada")]


def test_a_blurry_unknown_first_frame_does_not_make_the_track_arrive_unknown() -> None:
    events = run([seen(None, quality=4.0), seen("ada", quality=60.0), seen("ada", quality=60.0)])
    assert named(events) == [("arrived", "Ada")]


def test_a_blurry_frame_naming_someone_cannot_name_a_stranger() -> None:
    events = run([seen(None, quality=60.0), seen("bob", quality=5.0), seen(None, quality=60.0)])
    assert named(events) == [("arrived", None)]


def test_one_sharp_named_frame_outweighs_one_sharp_unknown_frame_but_not_two() -> None:
    assert named(run([seen("ada", 60.0), seen(None, 60.0)])) == [("arrived", "Ada")]
    assert named(run([seen(None, 60.0), seen("ada", 60.0), seen(None, 60.0)], min_hits=3)) == [("arrived", None)]


def test_without_quality_the_score_decides_between_two_names() -> None:
    events = run([seen("bob", quality=None, score=0.93), seen("ada", quality=None, score=0.97)])
    assert named(events) == [("arrived", "Ada")]


def test_after_arrival_one_stray_frame_changes_nothing_and_the_state_stays_json() -> None:
    tracker = Tracker(min_hits=2)
    frames = [seen("ada", 60.0), seen("ada", 60.0), seen("bob", 60.0), seen("ada", 60.0)]
    events = []
    for i, ob in enumerate(frames):
        events.extend(tracker.update(i, T0 + i / 10, [ob]))
    assert named(events) == [("arrived", "Ada")]
    again = Tracker(min_hits=2)
    again.load_state(json.loads(json.dumps(tracker.to_state())))
    assert again.tracks[0].person == "Ada" and "ada" in again.tracks[0].votes


def test_forgetting_a_person_removes_their_votes() -> None:
    tracker = Tracker(min_hits=3)
    tracker.update(0, T0, [seen("bob", 60.0)])
    assert tracker.identities() == {"bob"}
    assert tracker.forget_people({"bob"})
    tracker.update(1, T0 + 0.1, [seen(None, 60.0)])
    events = tracker.update(2, T0 + 0.2, [seen(None, 60.0)])
    assert named(events) == [("arrived", None)]
