"""The frame commit script (workers/commit.py) on a real Redis: it writes a plan only on the
state revision it was made from, refuses a plan naming a person forgotten since, and
interleaves with the WATCH/MULTI writers (sweeps) without losing either's change."""
from __future__ import annotations

import json
import time
from typing import Any

from faec_rec.workers import commit
from faec_rec.workers.events import parse_entries
from faec_rec.workers.pipeline import LATENCY_EDGES_MS
from faec_rec.workers.tracker import Observation, TrackStore


def _obs(person: str | None) -> Observation:
    return Observation(box=(10, 10, 60, 60), person_id=person, person=person and person.upper(), score=0.9,
                       decision="known" if person else "unknown")


def _read(store: TrackStore, camera: str) -> Any:
    pipe = store.redis.pipeline(transaction=False)
    store.queue_read(pipe, camera)
    return pipe.execute()[0]


def _commit(redis: Any, keys: Any, plan: Any, frame_key: str = "none", captured_at: float | None = None) -> Any:
    pipe = redis.pipeline(transaction=False)
    commit.queue_commit(pipe, keys, camera="door", frame_key=frame_key, plan=plan, events=plan.events,
                        captured_at=time.time() if captured_at is None else captured_at, faces=1, maxlen=1000,
                        updated_at=time.time(), latency_edges_ms=LATENCY_EDGES_MS)
    return commit.parse_commit(pipe.execute()[-1])


def test_a_plan_commits_with_its_events_counters_and_frame_key(redis_client, keys) -> None:
    store = TrackStore(redis_client, keys, min_hits=1)
    redis_client.sadd(keys.people(), "p1")
    redis_client.set(keys.frame("door", 1), b"jpeg")
    plan = store.plan("door", 1, time.time(), [_obs("p1")], _read(store, "door"))
    done = _commit(redis_client, keys, plan, keys.frame("door", 1), captured_at=time.time() - 0.12)
    assert done.status == commit.COMMITTED and 100 <= done.latency_ms < 10_000
    [(_, event)] = parse_entries(redis_client.xrange(keys.events("door")))
    assert (event.type, event.person_id) == ("arrived", "p1")
    assert len(redis_client.xrange(keys.events())) == 1
    stats = redis_client.hgetall(keys.camera_stats("door"))
    assert stats[b"processed"] == b"1" and stats[b"faces"] == b"1"
    assert sum(int(v) for k, v in stats.items() if k.startswith(b"latency_ms_le_")) == 1
    assert 100 <= float(stats[b"latency_ms_sum"]) < 10_000
    assert not redis_client.exists(keys.frame("door", 1))
    assert redis_client.hget(keys.tracks("door"), "rev") == b"1"
    assert store.load("door").tracks[0].person_id == "p1"


def test_a_plan_made_on_an_older_state_is_refused_and_writes_nothing(redis_client, keys) -> None:
    store = TrackStore(redis_client, keys, min_hits=1)
    redis_client.sadd(keys.people(), "p1")
    stale = store.plan("door", 2, time.time(), [_obs("p1")], _read(store, "door"))
    # another worker's frame (the transaction path) commits first
    store.update("door", 1, time.time(), [_obs("p1")])
    before = redis_client.hget(keys.tracks("door"), "state")
    assert _commit(redis_client, keys, stale).status == commit.CONFLICT
    assert redis_client.hget(keys.tracks("door"), "state") == before
    assert len(redis_client.xrange(keys.events("door"))) == 0  # update() returns events, publishes none
    assert not redis_client.exists(keys.camera_stats("door"))
    # planned again on the state as it now is: the track continues, no second arrival
    again = store.plan("door", 2, time.time(), [_obs("p1")], _read(store, "door"))
    assert again.events == [] and _commit(redis_client, keys, again).status == commit.COMMITTED
    assert [t.hits for t in store.load("door").tracks] == [2]


def test_a_plan_naming_a_person_forgotten_since_is_refused_then_planned_with_them_forgotten(redis_client, keys) -> None:
    store = TrackStore(redis_client, keys, min_hits=1)
    redis_client.sadd(keys.people(), "p1")
    store.update("door", 1, time.time(), [_obs("p1")])
    read = _read(store, "door")
    redis_client.srem(keys.people(), "p1")  # forgotten meanwhile
    plan = store.plan("door", 2, time.time(), [_obs(None)], read)
    done = _commit(redis_client, keys, plan)
    assert (done.status, done.forgotten) == (commit.FORGOTTEN, ("p1",))
    plan = store.plan("door", 2, time.time(), [_obs(None)], read, forget=set(done.forgotten))
    assert _commit(redis_client, keys, plan).status == commit.COMMITTED
    [track] = store.load("door").tracks
    assert track.person_id is None and "p1" not in json.dumps(track.votes)


def test_a_sweep_after_a_commit_sees_it_and_a_commit_after_a_sweep_is_replanned(redis_client, keys) -> None:
    store = TrackStore(redis_client, keys, min_hits=1, timeout_s=1.0)
    redis_client.sadd(keys.people(), "p1")
    t0 = time.time() - 10
    plan = store.plan("door", 1, t0, [_obs("p1")], _read(store, "door"))
    assert _commit(redis_client, keys, plan).status == commit.COMMITTED
    late = store.plan("door", 2, t0 + 0.1, [_obs("p1")], _read(store, "door"))
    left = store.sweep("door")  # the WATCH/MULTI path bumps the revision too
    assert [e.type for e in left] == ["left"]
    assert _commit(redis_client, keys, late).status == commit.CONFLICT
