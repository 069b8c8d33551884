"""Event schema and publishing on a real Redis (streams capped, pub/sub mirrored)."""
from __future__ import annotations

import json
import time

import pytest

from faec_rec.workers.events import (
    EVENT_FIELD,
    Event,
    EventType,
    error_event,
    parse_entries,
    publish,
    publish_many,
    read_events,
)
from faec_rec.workers.tracker import Observation, Tracker

SCHEMA = {
    "type", "camera", "frame", "captured_at", "processed_at", "box", "person_id", "person",
    "score", "decision", "model_version", "track_id", "error", "detail", "features_key",
    "snapshot",
    "visitor",
}


def sample(camera: str = "cam1", track_id: int = 1, kind: str = "arrived") -> Event:
    return Event(
        type=kind, camera=camera, frame=12, captured_at=1_700_000_000.25, processed_at=1_700_000_000.4,
        box=[10.04, 20.0, 90.0, 110.0], person_id="p1", person="Ada", score=0.812345,
        decision="known", model_version="v3", track_id=track_id,
    )


def test_event_json_has_every_schema_field_and_round_trips() -> None:
    event = sample()
    data = json.loads(event.dumps())
    assert set(data) == SCHEMA
    assert data["box"] == [10.0, 20.0, 90.0, 110.0] and data["score"] == 0.8123
    again = Event.loads(event.dumps())
    assert again.type == "arrived" and again.person == "Ada" and again.track_id == 1
    # a newer writer's extra field does not break an older reader
    assert Event.from_json({**data, "new_field": 1}).camera == "cam1"


def test_enum_members_are_stored_as_plain_values() -> None:
    event = Event(type=EventType.LEFT, camera="c", decision="unknown")
    assert event.type == "left" and json.loads(event.dumps())["type"] == "left"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"type": "appeared"}, "event type"),
        ({"type": "arrived", "decision": "maybe"}, "decision"),
        ({"type": "arrived", "box": [1, 2, 3]}, "box"),
    ],
)
def test_malformed_events_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Event(camera="c", **kwargs)


def test_error_event_carries_code_and_detail() -> None:
    ev = error_event("cam2", "frame_expired", "frame 7 expired before a worker read it", frame=7, captured_at=5.0)
    data = ev.to_json()
    assert data["type"] == "error" and data["error"] == "frame_expired" and data["frame"] == 7
    assert data["person_id"] is None and data["track_id"] is None
    assert abs(data["processed_at"] - time.time()) < 60


def test_publish_writes_both_streams_and_the_channel(redis_client, keys) -> None:
    sub = redis_client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(keys.events_channel())
    sub.get_message(timeout=1.0)
    publish(redis_client, keys, sample("camA", 1), maxlen=1000)
    publish_many(redis_client, keys, [sample("camB", 1), sample("camA", 2, "left")], maxlen=1000)

    cam_a = parse_entries(redis_client.xrange(keys.events("camA")))
    assert [(e.camera, e.track_id, e.type) for _, e in cam_a] == [("camA", 1, "arrived"), ("camA", 2, "left")]
    combined = parse_entries(redis_client.xrange(keys.events()))
    assert [e.camera for _, e in combined] == ["camA", "camB", "camA"]
    entry_fields = redis_client.xrange(keys.events("camB"))[0][1]
    assert list(entry_fields) == [EVENT_FIELD.encode()]

    got = []
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        msg = sub.get_message(timeout=0.5)
        if msg:
            got.append(Event.loads(msg["data"]))
    sub.close()
    assert [(e.camera, e.track_id) for e in got] == [("camA", 1), ("camB", 1), ("camA", 2)]


def test_an_event_has_one_id_in_its_camera_stream_and_the_combined_one(redis_client, keys) -> None:
    """Feedback, links and SSE resume take an event id from either stream: they must agree.
    A camera stream that already holds a later id (written before this rule) still gets the
    event, under an id of its own."""
    publish_many(redis_client, keys, [sample("camA", 1), sample("camB", 1), sample("camA", 2)], maxlen=1000)
    combined = {e.track_id if e.camera == "camA" else -1: sid for sid, e in parse_entries(redis_client.xrange(keys.events()))}
    cam_a = {e.track_id: sid for sid, e in parse_entries(redis_client.xrange(keys.events("camA")))}
    assert cam_a == {1: combined[1], 2: combined[2]}
    [(cam_b_id, _)] = parse_entries(redis_client.xrange(keys.events("camB")))
    assert cam_b_id == combined[-1]

    redis_client.xadd(keys.events("camC"), {EVENT_FIELD: sample("camC", 0).dumps()}, id="99999999999999-0")
    publish(redis_client, keys, sample("camC", 1), maxlen=1000)
    ids = [sid for sid, _ in parse_entries(redis_client.xrange(keys.events("camC")))]
    assert len(ids) == 2 and ids[0] == "99999999999999-0"  # still appended, after the later id


def test_read_events_follows_the_stream_from_an_id(redis_client, keys) -> None:
    publish_many(redis_client, keys, [sample("c1", i) for i in range(1, 4)], maxlen=1000)
    first = read_events(redis_client, keys, camera="c1", count=2)
    assert [e.track_id for _, e in first] == [1, 2]
    rest = read_events(redis_client, keys, camera="c1", after=first[-1][0])
    assert [e.track_id for _, e in rest] == [3]
    assert read_events(redis_client, keys, camera="c1", after=rest[-1][0]) == []


def test_streams_are_capped_approximately(redis_client, keys) -> None:
    for chunk in range(10):
        publish_many(redis_client, keys, [sample("cap", i) for i in range(100)], maxlen=100)
    n = redis_client.xlen(keys.events("cap"))
    # approximate trimming removes whole radix-tree nodes: near the cap, far below 1000
    assert 100 <= n < 400
    assert redis_client.xlen(keys.events()) < 400


def test_tracker_events_become_schema_events() -> None:
    tracker = Tracker(iou_threshold=0.3, timeout_s=1.0, min_hits=1)
    o = Observation(box=(0, 0, 50, 50), person_id=None, person=None, score=0.2, decision="unknown", model_version="v2")
    (arrived,) = tracker.update(0, 100.0, [o])
    assert arrived.observation == 0  # the face that made it, for its features_key
    ev = arrived.to_event("cam9", processed_at=100.5)
    assert ev.to_json() == {
        "type": "arrived", "camera": "cam9", "frame": 0, "captured_at": 100.0, "processed_at": 100.5,
        "box": [0.0, 0.0, 50.0, 50.0], "person_id": None, "person": None, "score": 0.2,
        "decision": "unknown", "model_version": "v2", "track_id": 1, "error": None, "detail": None,
        "features_key": None, "snapshot": None, "visitor": None,
    }
    assert arrived.to_event("cam9", features_key="k").features_key == "k"
