"""Snapshots of arrivals on the real Redis: face crop and downscaled frame, TTL, the event's key."""
from __future__ import annotations

import json

import cv2
import numpy as np

from faec_rec.config import EventsConfig
from faec_rec.workers.events import Event
from faec_rec.workers.snapshots import read_snapshot, store_snapshots


def _image(rng) -> np.ndarray:
    img = rng.integers(0, 255, size=(600, 800, 3), dtype=np.uint8)
    img[100:200, 300:380] = (255, 0, 0)  # the "face": pure red
    return img


def test_arrived_events_get_a_snapshot_with_face_and_downscaled_frame(redis_client, keys, rng):
    image = _image(rng)
    boxes = [[10, 10, 60, 70], [300, 100, 380, 200]]
    events = [Event(type="arrived", camera="door", frame=5, box=[300, 100, 380, 200], track_id=2),
              Event(type="left", camera="door", frame=5, track_id=1),
              Event(type="arrived", camera="door", frame=5, box=[10, 10, 60, 70], track_id=3)]
    out = store_snapshots(redis_client, keys, EventsConfig(snapshot_max_side=400), "door", 5, image, boxes, events)
    assert out[0].snapshot == keys.event_snapshot("door", 5, 1) and out[2].snapshot == keys.event_snapshot("door", 5, 0)
    assert out[1].snapshot is None
    assert 0 < redis_client.ttl(out[0].snapshot) <= 86_400
    face = cv2.imdecode(np.frombuffer(read_snapshot(redis_client, keys, out[0].snapshot, "face"), np.uint8), cv2.IMREAD_COLOR)
    assert face.shape[:2] == (150, 120)  # the box grown by a quarter each side
    centre = face[55:95, 45:75].reshape(-1, 3).mean(axis=0)  # BGR after imdecode: red face
    assert centre[2] > 200 and centre[0] < 60
    frame = cv2.imdecode(np.frombuffer(read_snapshot(redis_client, keys, out[0].snapshot, "frame"), np.uint8),
                         cv2.IMREAD_COLOR)
    assert frame.shape[:2] == (300, 400)
    assert json.loads(redis_client.hget(out[0].snapshot, "box")) == [150.0, 50.0, 190.0, 100.0]
    assert json.loads(out[0].dumps())["snapshot"] == out[0].snapshot  # carried in the event JSON


def test_snapshots_off_with_ttl_zero(redis_client, keys, rng):
    events = [Event(type="arrived", camera="door", frame=1, box=[1, 1, 20, 20], track_id=1)]
    out = store_snapshots(redis_client, keys, EventsConfig(snapshot_ttl_s=0), "door", 1, _image(rng),
                          [[1, 1, 20, 20]], events)
    assert out[0].snapshot is None and not redis_client.keys(f"{keys.prefix}:event-snapshot:*")


def test_client_reads_snapshots_and_only_snapshot_keys(redis_client, keys, redis_url, rng):
    import pytest

    from faec_rec.client import Client
    from faec_rec.config import load_settings

    events = [Event(type="arrived", camera="door", frame=3, box=[300, 100, 380, 200], track_id=1)]
    [ev] = store_snapshots(redis_client, keys, EventsConfig(), "door", 3, _image(rng), [[300, 100, 380, 200]], events)
    redis_client.set(f"{keys.prefix}:secret", b"not a picture")
    with Client(settings=load_settings(redis_url=redis_url, prefix=keys.prefix)) as client:
        assert client.event_snapshot(json.loads(ev.dumps()), "frame")[:2] == b"\xff\xd8"
        assert client.event_snapshot(ev.snapshot) == redis_client.hget(ev.snapshot, "face")
        assert client.event_snapshot({"type": "left", "snapshot": None}) is None
        for bad in (f"{keys.prefix}:secret", "other:event-snapshot:door:3:0", f"{keys.prefix}:event-snapshot:door:3:0:x"):
            with pytest.raises(ValueError):
                client.event_snapshot(bad)
        with pytest.raises(ValueError):
            client.event_snapshot(ev.snapshot, "everything")
