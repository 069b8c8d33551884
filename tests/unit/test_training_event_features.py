"""Feedback trains the head: a worker keeps the face features of each "arrived"/"updated"
event under the event's ``features_key`` (TTL'd), feedback copies them, retraining uses
confirmations. Real Redis, the real frame pipeline and tracker; only the face engine and
the gallery lookup are stand-ins (no model is loaded)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
from click.testing import CliRunner

from faec_rec.config import load_settings
from faec_rec.index.store import Store
from faec_rec.training.commands import feedback as feedback_command
from faec_rec.training.feedback import EXPIRED, NO_FEATURES, forget_feedback, read_feedback, record_feedback
from faec_rec.training.retrain import run
from faec_rec.workers import pipeline
from faec_rec.workers.events import parse_entries
from faec_rec.workers.tracker import TrackStore
from tests.conftest import TEST_REDIS_URL
from tests.unit.test_training_retrain import _domain_features, _enrol, _reference

JPEG = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()


class FakeRuntime:
    """What ``pipeline.recognise_frame`` uses of a worker's Runtime: the engine finds
    the faces given to :meth:`show` (box, features) and the gallery names them."""

    def __init__(self, redis: Any, keys: Any, settings: Any, person_id: str, name: str) -> None:
        self.redis, self.keys, self.settings = redis, keys, settings
        self.model_version = "test/base"
        self.track_store = TrackStore(redis, keys, min_hits=1)
        self._faces: list[tuple[list[float], np.ndarray]] = []
        self.engine = SimpleNamespace(analyse=lambda image: [
            SimpleNamespace(face=SimpleNamespace(box=box, score=0.99), features=vec) for box, vec in self._faces
        ])
        match = SimpleNamespace(decision="known", score=0.9, person_id=person_id, name=name, runner_up=None)
        self.gallery = SimpleNamespace(
            projector=SimpleNamespace(project=lambda f: f, version="test"),
            identify=lambda projected, version: [match] * len(projected),
        )

    def queue_refresh(self, pipe: Any) -> Any:
        from faec_rec.workers.runtime import QueuedRefresh

        return QueuedRefresh(None, 0)  # nothing to read: the fake gallery never changes

    def refresh(self, queued: Any = None) -> None:
        pass

    def show(self, faces: list[tuple[list[float], np.ndarray]]) -> None:
        self._faces = faces

    def frame(self, camera: str, n: int) -> pipeline.FrameOutcome:
        key = self.keys.frame(camera, n)
        self.redis.set(key, JPEG, ex=60)
        self.redis.lpush(self.keys.in_flight(camera), key)
        return pipeline.recognise_frame(self, pipeline.FramePayload(camera, n, key, time.time()))


def _settings(prefix: str, tmp_path: Path, features_ttl_s: int = 3600) -> Any:
    training = {"epochs": 4, "identities_per_batch": 6, "images_per_identity": 3, "anchor_weight": 0.2, "max_lfw_drop": 1.0}
    return load_settings(prefix=prefix, data_dir=tmp_path, redis_url=TEST_REDIS_URL,
                         events={"features_ttl_s": features_ttl_s}, training=training)


def _events(redis: Any, keys: Any, camera: str | None = None) -> list[tuple[str, Any]]:
    return parse_entries(redis.xrange(keys.events(camera)))


def test_an_arrived_event_names_the_stored_features_of_its_face(redis_client, keys, prefix, tmp_path, rng):
    runtime = FakeRuntime(redis_client, keys, _settings(prefix, tmp_path), "p1", "Ada")
    redis_client.sadd(keys.people(), "p1")
    ada, bob = rng.normal(size=(2, 128)).astype(np.float32)
    runtime.show([([10, 10, 40, 40], ada), ([100, 10, 130, 40], bob)])
    assert runtime.frame("door", 1).events == 2
    arrived = [e for _, e in _events(redis_client, keys, "door")]
    assert [e.type for e in arrived] == ["arrived", "arrived"]
    for event, vec in zip(arrived, (ada, bob)):
        assert event.features_key == keys.event_features("door", 1, arrived.index(event))
        stored = np.frombuffer(redis_client.get(event.features_key), dtype=np.float32)
        np.testing.assert_array_equal(stored, vec)
        assert 0 < redis_client.ttl(event.features_key) <= 3600
    # the same faces in the next frame make no event, so nothing more is stored
    assert runtime.frame("door", 2).events == 0
    assert not redis_client.exists(keys.event_features("door", 2, 0))
    # "left" events carry no face
    left = runtime.track_store.sweep("door", time.time() + 60)
    assert [e.type for e in left] == ["left", "left"] and all(e.features_key is None for e in left)


def test_features_ttl_zero_stores_nothing(redis_client, keys, prefix, tmp_path, rng):
    runtime = FakeRuntime(redis_client, keys, _settings(prefix, tmp_path, features_ttl_s=0), "p1", "Ada")
    runtime.show([([10, 10, 40, 40], rng.normal(size=128).astype(np.float32))])
    runtime.frame("door", 1)
    [(event_id, event)] = _events(redis_client, keys)
    assert event.type == "arrived" and event.features_key is None
    assert not list(redis_client.scan_iter(match=f"{prefix}:event-features:*"))
    _, entry = record_feedback(redis_client, keys, event_id, "p1", "Ada", True)
    assert not entry.usable and entry.reason == NO_FEATURES


def test_confirmed_events_enter_the_training_set_and_expired_ones_are_refused(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 6, 4)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    store = Store(redis_client, keys, tmp_path)
    ada = store.person("person 0")
    settings = _settings(prefix, tmp_path)
    runtime = FakeRuntime(redis_client, keys, settings, ada.id, ada.name)
    face = feats[1]  # another photo of person 0, as a camera would see it
    runtime.show([([10, 10, 40, 40], face)])
    runtime.frame("door", 1)
    [(event_id, event)] = _events(redis_client, keys)

    env = {"FAEC_REDIS_URL": TEST_REDIS_URL, "FAEC_PREFIX": prefix, "FAEC_DATA_DIR": str(tmp_path)}
    out = CliRunner().invoke(feedback_command, [event_id, "--is", "person 0"], env=env)
    assert out.exit_code == 0, out.output
    assert "recorded" in out.output and "cannot" not in out.output
    out = CliRunner().invoke(feedback_command, [event_id, "--not", "person 1"], env=env)
    assert out.exit_code == 0 and "negative pair" in out.output and "visitor v-" in out.output
    confirmed, corrected = read_feedback(redis_client, keys)
    from faec_rec.training.negatives import read_negative_pairs

    [pair] = read_negative_pairs(redis_client, keys)  # the correction is a hard negative for retraining
    np.testing.assert_array_equal(pair.features, face)
    assert pair.person_id == store.person("person 1").id and pair.event_id == event_id
    assert confirmed.usable and confirmed.is_person and confirmed.person_id == ada.id
    np.testing.assert_array_equal(confirmed.vector(), face)
    assert corrected.usable and not corrected.is_person

    # The features expire (events.features_ttl_s): feedback is kept but refused for training.
    redis_client.pexpire(event.features_key, 1)
    deadline = time.monotonic() + 5
    while redis_client.exists(event.features_key) and time.monotonic() < deadline:
        time.sleep(0.01)
    out = CliRunner().invoke(feedback_command, [event_id, "--is", "person 0"], env=env)
    assert out.exit_code == 0 and "expired" in out.output and "cannot train the head" in out.output
    late = read_feedback(redis_client, keys)[-1]
    assert not late.usable and late.reason == EXPIRED and late.vector() is None

    # Retraining: the confirmation is a training face of person 0; the correction is
    # not used; the late one is counted as without features.
    summary = run(settings, redis=redis_client, reference=_reference(rng))
    assert summary["status"] in {"promoted", "rejected", "registered"}, summary
    assert summary["training"]["feedback"] == 1
    assert summary["feedback_without_features"] == 1


def test_forgetting_a_person_deletes_the_feedback_naming_them(redis_client, keys, prefix, tmp_path, rng):
    from faec_rec.client import Client

    feats, labels = _domain_features(rng, 2, 3)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    store = Store(redis_client, keys, tmp_path)
    p0, p1 = store.person("person 0"), store.person("person 1")
    event_ids = []
    for n in range(3):
        text = json.dumps({"type": "arrived", "camera": "c", "features_key": None})
        event_ids.append(redis_client.xadd(keys.events(), {"event": text}).decode())
    record_feedback(redis_client, keys, event_ids[0], p0.id, p0.name, True)
    record_feedback(redis_client, keys, event_ids[1], p1.id, p1.name, True)
    record_feedback(redis_client, keys, event_ids[2], p0.id, p0.name, False)
    client = Client(settings=load_settings(prefix=prefix, data_dir=tmp_path, redis_url=TEST_REDIS_URL))
    try:
        client.forget("person 0")
    finally:
        client.close()
    assert [e.person_id for e in read_feedback(redis_client, keys)] == [p1.id]
    assert forget_feedback(redis_client, keys, p1.id) == 1 and read_feedback(redis_client, keys) == []
