"""Forgetting a person reaches what the sinks and snapshots stored: dead letters and snapshot
crops naming them go, and a runner whose pending event was erased acknowledges it quietly."""
from __future__ import annotations

import json
from dataclasses import replace

from faec_rec.index.erasure import erase_person_traces
from faec_rec.sinks.base import Sink
from faec_rec.sinks.runner import SinkRunner, dead_letters, ensure_group, park, stats
from tests.sinks_helpers import emit, event, fast_sinks, wait_for


class Recording(Sink):
    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[str] = []

    def deliver(self, event_id: str, event: dict) -> None:
        self.got.append(event_id)


def test_forget_erases_dead_letters_and_snapshots_naming_the_person(redis_client, keys):
    snap = keys.event_snapshot("door", 1, 0)
    redis_client.hset(snap, mapping={"face": b"\xff\xd8ada", "frame": b"\xff\xd8"})
    emit(redis_client, keys, replace(event("arrived", "door", 1), snapshot=snap),
         event("arrived", "door", 2, person="Bob", person_id="p-bob"))
    ensure_group(redis_client, keys.events(), keys.sink_group("hook"))
    for entry_id, fields in redis_client.xrange(keys.events()):
        park(redis_client, keys, "hook", entry_id.decode(), fields[b"event"], "SinkError: 500", 3, 1000)
    erased = erase_person_traces(redis_client, keys, "p-ada", ["Ada Lovelace"])
    assert erased.snapshots == 1 and erased.dead_letters == 1 and not redis_client.exists(snap)
    [left] = dead_letters(redis_client, keys, "hook")
    assert left["event"]["person"] == "Bob"


def test_a_pending_event_erased_before_delivery_is_acknowledged_not_parked(redis_client, keys):
    ensure_group(redis_client, keys.events(), keys.sink_group("rec"))
    emit(redis_client, keys, event("arrived", "door", 1), event("arrived", "door", 2, person="Bob", person_id="p-bob"))
    # a runner read both and died; then Ada was forgotten
    redis_client.xreadgroup(keys.sink_group("rec"), "c", {keys.events(): ">"}, count=10)
    erase_person_traces(redis_client, keys, "p-ada", ["Ada Lovelace"])
    sink = Recording("rec")
    with SinkRunner(redis_client, keys, fast_sinks(), [sink], consumer="c"):
        wait_for(lambda: redis_client.xpending(keys.events(), keys.sink_group("rec"))["pending"] == 0, 10, "acked")
    [(bob_id, fields)] = redis_client.xrange(keys.events())
    assert sink.got == [bob_id.decode()] and json.loads(fields[b"event"])["person"] == "Bob"
    assert stats(redis_client, keys)["rec"] == {"deleted": 1, "delivered": 1}
    assert dead_letters(redis_client, keys, "rec") == []
