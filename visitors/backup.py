"""Visitors in the backup archive: a consistent read for export, and a restore.

:mod:`faec_rec.cluster.archive` owns the archive's format; this module owns
what it holds of visitors and how it goes back into Redis.

Export (:func:`read_visitors`): the grouping (every visitor's record and
faces, the faces in none, the id counter) is read under WATCH of the visitor
event stream, so it is exact at that stream id; every change to visitors
appends to that stream, so a read nobody disturbed saw one state. A stored
face's features, crop, quality and source never change after it is stored,
so the faces themselves are read after, in chunks, outside the watch; a face
forgotten in between is left out of its visitor (counted as ``vanished``).

Restore (:func:`restore_visitors`), one transaction and its events per visitor
so every worker's replica follows:

* Into a deployment holding no unknown faces, visitors keep their ids (the id
  counter is raised past them) with their names, manual flags, covers and
  times: the archive's visitors exactly.
* Merging into one that holds some (``--merge``): a face id already stored is
  skipped (the target's grouping of it wins); a visitor whose stored faces lie
  mostly in one target visitor brings its new faces there, else it becomes a
  visitor with a new id. Its name (the person it was enrolled as, mapped
  through the people import) is kept where the target visitor has none.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from faec_rec.errors import ArchiveError
from faec_rec.files import atomic_write_bytes
from faec_rec.keys import Keys, safe_id

from faec_rec.visitors.events import START, VisitorEvent, VisitorOp
from faec_rec.visitors.store import FEATURE_BYTES, VisitorStore, _id_order, _text

log = logging.getLogger(__name__)

READ_CHUNK = 2000
_WATCH_TRIES = 50
# Face hash fields a backup carries as they are (features, crop and visitor are handled apart).
_SKIP_FIELDS = ("features", "crop", "visitor")


@dataclass
class VisitorsSnapshot:
    """The grouping at visitor-stream id ``stream_id``: visitor id -> (record, face ids),
    faces in no visitor, and the id counter."""

    stream_id: str
    counter: int
    visitors: dict[str, tuple[dict[str, str], list[str]]]
    alone: list[str]

    def face_ids(self) -> list[str]:
        return [f for _, faces in self.visitors.values() for f in faces] + list(self.alone)


def read_grouping(client: redis.Redis, keys: Keys) -> VisitorsSnapshot:
    """Every visitor with its faces, exact at the stream id returned (see the module doc)."""
    for _attempt in range(_WATCH_TRIES):
        with client.pipeline() as watch:
            try:
                watch.watch(keys.visitor_events())
                ids = sorted((_text(v) for v in client.smembers(keys.visitors())), key=_id_order)
                reads = client.pipeline(transaction=False)
                for vid in ids:
                    reads.hgetall(keys.visitor(vid))
                    reads.smembers(keys.visitor_faces(vid))
                reads.zrange(keys.unknown_faces(), 0, -1)
                reads.get(keys.visitor_counter())
                replies = reads.execute()
                watch.multi()
                watch.xrevrange(keys.visitor_events(), count=1)
                (last,) = watch.execute()
            except redis.WatchError:
                time.sleep(0.01 * min(_attempt + 1, 10))
                continue
        visitors: dict[str, tuple[dict[str, str], list[str]]] = {}
        grouped: set[str] = set()
        for i, vid in enumerate(ids):
            record = {_text(a): _text(b) for a, b in replies[2 * i].items()}
            faces = sorted(_text(f) for f in replies[2 * i + 1])
            visitors[vid] = (record, faces)
            grouped.update(faces)
        alone = [f for f in (_text(x) for x in replies[-2]) if f not in grouped]
        stream_id = _text(last[0][0]) if last else START
        return VisitorsSnapshot(stream_id, int(replies[-1] or 0), visitors, alone)
    raise ArchiveError(f"visitors kept changing under {_WATCH_TRIES} reads; run the export at a quieter time")


def read_faces(client: redis.Redis, keys: Keys, face_ids: list[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(face id, hash fields)`` of stored faces in chunks (features as bytes, the rest text);
    faces no longer stored are skipped."""
    for start in range(0, len(face_ids), READ_CHUNK):
        part = face_ids[start:start + READ_CHUNK]
        pipe = client.pipeline(transaction=False)
        for fid in part:
            pipe.hgetall(keys.unknown_face(fid))
        for fid, raw in zip(part, pipe.execute()):
            if not raw:
                continue
            fields: dict[str, Any] = {}
            for a, b in raw.items():
                name = _text(a)
                fields[name] = b if name == "features" else _text(b)
            if len(fields.get("features", b"")) != FEATURE_BYTES:
                continue
            yield fid, fields


def face_line(face_id: str, fields: dict[str, Any], crop_member: str | None) -> dict[str, Any]:
    """One archive line for a stored face."""
    return {"id": face_id, "features": base64.b64encode(fields["features"]).decode(), "crop": crop_member,
            "fields": {a: b for a, b in fields.items() if a not in _SKIP_FIELDS}}


@dataclass
class RestoreSummary:
    """What restoring visitors did."""

    visitors_created: int = 0
    visitors_joined: int = 0
    unknown_faces_added: int = 0
    unknown_faces_skipped: int = 0
    names_kept: int = 0
    names_dropped: int = 0
    ids: dict[str, str] = field(default_factory=dict)  # archive visitor id -> id in the target


def restore_visitors(store: VisitorStore, faces: dict[str, dict[str, Any]], groups: list[dict[str, Any]],
                     alone: list[str], crops: Callable[[str], bytes | None], counter: int,
                     person_ids: dict[str, str]) -> RestoreSummary:
    """Write archived visitors and their faces into ``store`` (see the module doc).

    ``faces``: face id -> archive line (:func:`face_line`); ``groups``: ``{"id",
    "record", "faces"}`` each; ``alone``: faces in no visitor; ``crops``: face id
    -> its JPEG bytes or None (read when the face is written); ``counter``: the archive's id counter; ``person_ids``: archive
    person id -> person id in the target (a name for a person absent is dropped).
    """
    client, k = store.client, store.keys
    summary = RestoreSummary()
    keep_ids = not client.exists(k.unknown_faces()) and not client.scard(k.visitors())
    for group in groups:
        wanted = [f for f in group["faces"] if f in faces]
        if not wanted:
            continue
        _restore_group(store, group, wanted, faces, crops, person_ids, keep_ids, summary)
    for start in range(0, len(alone), READ_CHUNK):
        part = [f for f in alone[start:start + READ_CHUNK] if f in faces]
        if part:
            _restore_alone(store, part, faces, crops, summary)
    if keep_ids and counter:
        _raise_counter(client, k, counter)
    log.info("restored visitors: %d created, %d joined, %d faces added, %d skipped", summary.visitors_created,
             summary.visitors_joined, summary.unknown_faces_added, summary.unknown_faces_skipped)
    return summary


def _write_crops(store: VisitorStore, face_ids: list[str], crops: Callable[[str], bytes | None]) -> dict[str, str]:
    """Write the crops of faces not stored yet; face id -> crop path relative to ``data_dir``.

    A face already stored keeps its file: the crop path is the face id's, so
    writing (or removing) it would touch the stored face's crop.
    """
    pipe = store.client.pipeline(transaction=False)
    for f in face_ids:
        pipe.exists(store.keys.unknown_face(f))
    out = {}
    for f, held in zip(face_ids, pipe.execute()):
        crop = None if held else crops(f)
        if crop:
            path = store.crop_path(f)
            atomic_write_bytes(path, crop, fsync=False)
            out[f] = str(path.relative_to(store.data_dir))
        else:
            out[f] = ""
    return out


def _face_mapping(line: dict[str, Any], visitor: str | None, crop_rel: str) -> dict[str, Any]:
    out: dict[str, Any] = dict(line["fields"])
    out["features"] = base64.b64decode(line["features"])
    if len(out["features"]) != FEATURE_BYTES:
        raise ArchiveError(f"unknown face {line['id']}: features are not 128 float32; nothing more was imported")
    out["visitor"] = visitor or ""
    out["crop"] = crop_rel
    return out


def _restore_group(store: VisitorStore, group: dict[str, Any], wanted: list[str], faces: dict[str, dict[str, Any]],
                   crops: Callable[[str], bytes | None], person_ids: dict[str, str], keep_ids: bool,
                   summary: RestoreSummary) -> None:
    k = store.keys
    archived = safe_id(group["id"], "visitor id")
    record = dict(group.get("record") or {})
    person = person_ids.get(record.pop("person", "") or "")
    paths = _write_crops(store, wanted, crops)
    new_ids: list[str] = []
    outcome: dict[str, Any] = {}

    def body(pipe: redis.client.Pipeline) -> None:
        present = {}
        for f in wanted:
            vid = pipe.hget(k.unknown_face(f), "visitor")  # every stored face has the field ("" in none)
            if vid is not None:
                present[f] = _text(vid)
        fresh = [f for f in wanted if f not in present]
        outcome.update(fresh=fresh, skipped=len(present))
        if not fresh:
            pipe.unwatch()
            outcome["target"] = None
            return
        counts = Counter(v for v in present.values() if v)
        target = None
        if counts:
            best = max(counts.values())
            target = min((v for v, n in counts.items() if n == best), key=_id_order)
            if not pipe.sismember(k.visitors(), target):
                target = None
        if target is None:
            if keep_ids and not pipe.sismember(k.visitors(), archived):
                target = archived
            else:
                if not new_ids:
                    new_ids.append(store._new_id())
                target = new_ids[0]
        joined = pipe.sismember(k.visitors(), target)
        current = {_text(a): _text(b) for a, b in pipe.hgetall(k.visitor(target)).items()} if joined else {}
        if joined:
            update = store._merged_record([current, record])
            if record.get("manual") == "1":
                update["manual"] = "1"
        else:
            update = {a: b for a, b in record.items() if a in ("created", "first_seen", "last_seen", "cameras",
                                                                 "cover", "cover_q", "manual")}
            update.setdefault("created", repr(time.time()))
        name = None
        if person and not current.get("person"):
            update["person"], name = person, person
        if update.get("cover") not in set(fresh) | {current.get("cover")}:
            # the archive's cover was skipped (stored here already, maybe elsewhere): the best fresh face
            cover = max(fresh, key=lambda f: _score(faces[f]))
            update["cover"], update["cover_q"] = cover, repr(_score(faces[cover]))
        pipe.multi()
        for f in fresh:
            line = faces[f]
            pipe.hset(k.unknown_face(f), mapping=_face_mapping(line, target, paths[f]))
            pipe.zadd(k.unknown_faces(), {f: float(line["fields"].get("at") or 0)})
        pipe.sadd(k.visitor_faces(target), *fresh)
        pipe.sadd(k.visitors(), target)
        pipe.hset(k.visitor(target), mapping=update)
        for f in fresh:
            store.log.append(pipe, VisitorEvent(VisitorOp.ADD, face=f, visitor=target,
                                                good=faces[f]["fields"].get("good") == "1"))
        if update.get("manual") == "1":
            store.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(fresh), visitor=target, manual=True))
        if name:
            store.log.append(pipe, VisitorEvent(VisitorOp.NAME, visitor=target, person=name))
        outcome.update(target=target, joined=bool(joined), named=bool(name))

    store._transact(body)
    summary.unknown_faces_skipped += outcome["skipped"]
    if outcome.get("target") is None:
        return
    summary.ids[archived] = outcome["target"]
    summary.unknown_faces_added += len(outcome["fresh"])
    summary.visitors_joined += int(outcome["joined"])
    summary.visitors_created += int(not outcome["joined"])
    if (group.get("record") or {}).get("person"):
        if outcome["named"]:
            summary.names_kept += 1
        else:
            summary.names_dropped += 1


def _score(line: dict[str, Any]) -> float:
    fields = line["fields"]
    if fields.get("good") != "1":
        return -1.0
    return float(json.loads(fields.get("quality") or "{}").get("score", 0.0))


def _restore_alone(store: VisitorStore, part: list[str], faces: dict[str, dict[str, Any]],
                   crops: Callable[[str], bytes | None], summary: RestoreSummary) -> None:
    k = store.keys
    paths = _write_crops(store, part, crops)
    fresh: list[str] = []

    def body(pipe: redis.client.Pipeline) -> None:
        held = [pipe.exists(k.unknown_face(f)) for f in part]
        fresh[:] = [f for f, h in zip(part, held) if not h]
        if not fresh:
            pipe.unwatch()
            return
        pipe.multi()
        for f in fresh:
            pipe.hset(k.unknown_face(f), mapping=_face_mapping(faces[f], None, paths[f]))
            pipe.zadd(k.unknown_faces(), {f: float(faces[f]["fields"].get("at") or 0)})
            store.log.append(pipe, VisitorEvent(VisitorOp.ADD, face=f, visitor=None,
                                                good=faces[f]["fields"].get("good") == "1"))

    store._transact(body)
    summary.unknown_faces_added += len(fresh)
    summary.unknown_faces_skipped += len(part) - len(fresh)


def _raise_counter(client: redis.Redis, keys: Keys, counter: int) -> None:
    """Raise the visitor id counter to at least ``counter`` (ids restored must never be handed out again)."""
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(keys.visitor_counter())
                now = int(pipe.get(keys.visitor_counter()) or 0)
                if now >= counter:
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.set(keys.visitor_counter(), counter)
                pipe.execute()
                return
            except redis.WatchError:
                continue

