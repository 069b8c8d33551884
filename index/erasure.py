"""Erase a forgotten person from the data stored *around* the gallery.

:meth:`Gallery.forget` deletes the person, their templates, crops and earlier
gallery events. What the rest of the system stored about them lives elsewhere
and is erased here (:func:`erase_person_traces`):

- recognition events naming them, in the combined ``events`` stream and in every
  camera's stream, are **deleted** (``XDEL``), with the face features their
  ``features_key`` points to. Redis stream entries cannot be rewritten in place
  (a rewritten copy would get a new id at the stream's end, out of order), and an
  event with the name and id taken out would still place the person at a camera
  at a time; so the entries go. Other events keep their ids, so a reader resuming
  from a stream id is not disturbed. The snapshots (face crop and frame) their
  ``snapshot`` points to go too;
- events parked in the sinks' dead-letter streams naming them: deleted. (The MQTT
  sink's record of their topic and presence is left to the sink: it reads the FORGET
  event through its own consumer group, even after a restart, clears the retained
  topics on the broker with it, then deletes the record.)
- enrolment reports (``keys.enrolment``) and Celery's task results
  (``celery-task-meta-*``: enrol reports, identify records) naming them: deleted;
- per-image records of identify jobs (``keys.job_results``) naming them: deleted;
- feedback entries naming them (with the features they hold): deleted;
- parked tasks (the dead-letter stream, ``keys.dead_letter()``) whose payload names them: deleted.

An entry "names" the person when its stored bytes hold their person id, or their
display name as a JSON string (``"Ada Lovelace"``, quotes included, so a longer
name that merely contains it does not match).

Not erased here, on purpose: the gallery's own FORGET event (it holds only the
random person id, and every replica needs it to drop the vectors), a camera's
live tracker state (rewritten by the workers; it drops the person when the track
ends, within ``events.track_timeout_s``), tasks still queued for a worker, and
copies that readers took before (event sinks, MQTT subscribers, reports on disk).
"""
from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from faec_rec.keys import Keys

log = logging.getLogger(__name__)

SCAN_COUNT = 1000
XRANGE_COUNT = 1000


@dataclass
class Erased:
    """What :func:`erase_person_traces` deleted (counts per kind)."""

    events: int = 0
    features: int = 0
    enrolment_reports: int = 0
    task_results: int = 0
    job_records: int = 0
    parked_tasks: int = 0
    snapshots: int = 0
    dead_letters: int = 0
    audit_entries: int = 0
    streams: list[str] = field(default_factory=list)

    def total(self) -> int:
        return (self.events + self.features + self.enrolment_reports + self.task_results + self.job_records
                + self.parked_tasks + self.snapshots + self.dead_letters + self.audit_entries)


def _needles(person_id: str, names: Iterable[str]) -> list[bytes]:
    needles = [person_id.encode()]
    for name in names:
        if name:
            needles.append(json.dumps(name).encode())  # "\u00e9" form
            needles.append(json.dumps(name, ensure_ascii=False).encode())  # raw UTF-8 form
    return needles


def _names_them(values: Iterable[Any], needles: list[bytes]) -> bool:
    for value in values:
        raw = value if isinstance(value, bytes) else str(value).encode()
        if any(n in raw for n in needles):
            return True
    return False


def _scan(redis: Any, pattern: str) -> Iterator[str]:
    for key in redis.scan_iter(match=pattern, count=SCAN_COUNT):
        yield key.decode() if isinstance(key, bytes) else key


def _scrub_stream(redis: Any, stream: str, needles: list[bytes]) -> tuple[int, list[str]]:
    """XDEL the entries of ``stream`` that name the person; returns (deleted, their features keys)."""
    doomed: list[bytes] = []
    features: list[str] = []
    last = "-"
    while True:
        batch = redis.xrange(stream, min=last, max="+", count=XRANGE_COUNT)
        if last != "-":
            batch = batch[1:]  # the first entry is the last one of the previous batch
        if not batch:
            break
        for entry_id, fields in batch:
            if _names_them(fields.values(), needles):
                doomed.append(entry_id)
                for value in fields.values():
                    try:
                        event = json.loads(value)
                        # the features, and the snapshot (face crop + frame) of an arrival
                        found = [event.get("features_key"), event.get("snapshot")]
                    except (ValueError, AttributeError, TypeError):
                        continue
                    features += [key for key in found if key]
        last = batch[-1][0].decode() if isinstance(batch[-1][0], bytes) else batch[-1][0]
    for start in range(0, len(doomed), 500):
        redis.xdel(stream, *doomed[start:start + 500])
    return len(doomed), features


def erase_person_traces(redis: Any, keys: Keys, person_id: str, names: Iterable[str]) -> Erased:
    """Delete every event, report, task result and job record naming ``person_id``
    (or one of ``names``, their display names) under ``keys``' namespace; see the
    module docstring for what is left and why. Safe to run again (idempotent)."""
    needles = _needles(person_id, list(names))
    erased = Erased()
    # recognition events: the combined stream and every camera's
    streams = [keys.events()] + sorted(k for k in _scan(redis, keys.events_pattern()) if k != keys.events_channel())
    features: list[str] = []
    for stream in streams:
        if redis.type(stream) not in (b"stream", "stream"):
            continue
        deleted, feats = _scrub_stream(redis, stream, needles)
        erased.events += deleted
        features += feats
        if deleted:
            erased.streams.append(stream)
    snapshots = [k for k in features if fnmatch.fnmatchcase(k, keys.event_snapshots_pattern())]
    features = [k for k in features if not fnmatch.fnmatchcase(k, keys.event_snapshots_pattern())]
    for start in range(0, len(features), 500):
        erased.features += int(redis.delete(*features[start:start + 500]) or 0)
    for start in range(0, len(snapshots), 500):
        erased.snapshots += int(redis.delete(*snapshots[start:start + 500]) or 0)
    # events parked by the sinks, and the MQTT sink's record of the person
    for stream in _scan(redis, keys.sink_dead_letters_pattern()):
        if redis.type(stream) in (b"stream", "stream"):
            erased.dead_letters += _scrub_stream(redis, stream, needles)[0]
    # per-image records of identify jobs
    for stream in _scan(redis, keys.job_results_pattern()):
        if redis.type(stream) in (b"stream", "stream"):
            erased.job_records += _scrub_stream(redis, stream, needles)[0]
    # tasks parked after killing their worker (an enrolment's payload holds the name)
    if redis.type(keys.dead_letter()) in (b"stream", "stream"):
        erased.parked_tasks += _scrub_stream(redis, keys.dead_letter(), needles)[0]
    # audit entries naming them (who enrolled or renamed them): the erasure wins over the
    # trail; the forget itself is audited without the person (Client.forget)
    if redis.type(keys.audit()) in (b"stream", "stream"):
        erased.audit_entries += _scrub_stream(redis, keys.audit(), needles)[0]
    # enrolment reports (hashes) and Celery's task results (strings)
    for key in _scan(redis, keys.enrolment_pattern()):
        if redis.type(key) in (b"hash", "hash") and _names_them(redis.hvals(key), needles):
            erased.enrolment_reports += int(redis.delete(key) or 0)
    for key in _scan(redis, keys.celery_results_pattern()):
        value = redis.get(key) if redis.type(key) in (b"string", "string") else None
        if value is not None and _names_them([value], needles):
            erased.task_results += int(redis.delete(key) or 0)
    if erased.total():
        log.info("erased traces of forgotten person %s: %s", person_id, erased)
    return erased
