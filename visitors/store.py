"""Unknown faces and visitors in Redis, the source of truth.

Layout (key names from :class:`faec_rec.keys.Keys`):

* ``uface:<face id>`` hash: ``features`` ((128,) float32 raw backbone bytes),
  ``visitor`` ("" when in none), ``good`` (0/1: the quality gate),
  ``quality`` (JSON: face_px, yaw, sharpness, score), ``source`` (image path
  or ``camera/frame``), ``camera``, ``frame``, ``job``, ``track``, ``event``
  (stream id of the event it made, written after publishing), ``box``
  (JSON), ``at`` (capture time, unix s), ``crop`` (path under ``data_dir``),
  ``backbone``
* ``ufaces`` sorted set face id -> ``at`` (retention, listing)
* ``visitor:<id>`` hash: ``created``, ``first_seen``, ``last_seen``,
  ``cameras`` (JSON list), ``cover`` (face id of the best crop), ``cover_q``,
  ``person`` (once named), ``manual`` ("1" once shaped by hand)
* ``visitor:<id>:faces`` set of face ids; ``visitors`` set of ids;
  ``visitors:next`` the last number handed out (ids are ``v-<n>``)
* ``visitors:events`` the stream every replica follows

Every change is one MULTI/EXEC under WATCH of the event stream, with its event
appended inside the same transaction: a change and its event land together or
not at all, and since every change appends an event, a transaction that
watched the stream saw a state nobody changed before it committed. Joins are
decided on the caller's replica, which must be at the stream's newest event
(:meth:`VisitorStore.add_face` checks it under the watch and asks the caller
to sync otherwise), so two workers never create two visitors for one face
and never lose a join. A face embedded with another backbone than the one in
service (a worker that embedded it just before a switch) is not kept.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis

from faec_rec.errors import UnknownVisitorError, VisitorError
from faec_rec.index.backbone_swap import current_backbone
from faec_rec.files import atomic_write_bytes
from faec_rec.keys import Keys, safe_id

from faec_rec.visitors.events import VisitorEvent, VisitorLog, VisitorOp
from faec_rec.visitors.replica import JoinDecision, VisitorReplica

log = logging.getLogger(__name__)

T = TypeVar("T")
_WATCH_RETRIES = 200
FEATURE_BYTES = 128 * 4


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Stale(Exception):
    """The replica is behind the stream: sync and decide again."""


@dataclass(frozen=True)
class NewFace:
    """One unknown face to store: ``face_id`` is derived from where it came from, so a
    redelivered frame or image stores nothing twice."""

    face_id: str
    features: np.ndarray  # (128,) float32 raw backbone features
    good: bool
    quality: dict[str, float] = field(default_factory=dict)
    source: str = ""
    camera: str | None = None
    frame: int | None = None
    job: str | None = None
    track: int | None = None
    box: list[float] | None = None
    at: float = 0.0
    crop: bytes | None = None  # JPEG of the aligned chip


@dataclass(frozen=True)
class Joined:
    """The outcome of storing one face: its visitor (None: in none), whether the face
    was new, whether it started the visitor, and visitors merged into it."""

    face_id: str
    visitor: str | None
    stored: bool
    created: bool = False
    merged: tuple[str, ...] = ()


class VisitorStore:
    """Reads and atomic writes of unknown faces and visitors."""

    def __init__(self, client: redis.Redis, keys: Keys, data_dir: Path, backbone_version: str = "dlib-resnet-v1") -> None:
        self.client = client
        self.keys = keys
        self.data_dir = Path(data_dir)
        self.backbone_version = backbone_version
        self.log = VisitorLog(client, keys)

    # ---- transactions ------------------------------------------------------------
    def _transact(self, body: Callable[[redis.client.Pipeline], T], watch: Sequence[str] = ()) -> T:
        for attempt in range(_WATCH_RETRIES):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(self.keys.visitor_events(), *watch)
                    result = body(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    time.sleep(0.0005 * min(attempt + 1, 20))
        raise VisitorError(f"visitors kept changing under {_WATCH_RETRIES} attempts; retry")

    def _new_id(self) -> str:
        return f"v-{int(self.client.incr(self.keys.visitor_counter()))}"

    def crop_path(self, face_id: str) -> Path:
        return self.data_dir / "unknown" / f"{safe_id(face_id, 'face id')}.jpg"

    # ---- joining -------------------------------------------------------------------
    def add_face(self, face: NewFace, replica: VisitorReplica, sync: Callable[[], None]) -> Joined:
        """Store ``face`` and join it to a visitor by ``replica``'s rule, atomically.

        ``sync()`` brings ``replica`` up to the stream; it is called whenever the
        replica is found behind. Idempotent by face id.
        """
        k = self.keys
        safe_id(face.face_id, "face id")
        features = np.ascontiguousarray(face.features, dtype=np.float32).reshape(-1)
        if features.size != 128 or not np.isfinite(features).all():
            raise VisitorError("an unknown face needs 128 finite float32 features")
        crop_rel = ""
        if face.crop:
            path = self.crop_path(face.face_id)
            atomic_write_bytes(path, face.crop, fsync=False)
            crop_rel = str(path.relative_to(self.data_dir))
        new_ids: list[str] = []

        def body(pipe: redis.client.Pipeline) -> Joined:
            pipe.watch(k.unknown_face(face.face_id), k.backbone_current())
            held = pipe.hget(k.unknown_face(face.face_id), "visitor")
            if held is not None:
                pipe.unwatch()
                return Joined(face.face_id, _text(held) or None, stored=False)
            serving = current_backbone(pipe, k)["name"]
            if serving != self.backbone_version:  # embedded before a backbone switch: another model's scale
                pipe.unwatch()
                log.warning("unknown face %s not kept: embedded with backbone %s, the gallery is now in %s",
                            face.face_id, self.backbone_version, serving)
                return Joined(face.face_id, None, stored=False)
            if self.log.last_id(pipe) != replica.position:
                pipe.unwatch()
                raise Stale()
            decision: JoinDecision = replica.decide(features, face.good)
            vid = decision.visitor
            created = False
            if vid is None and decision.new:
                if not new_ids:
                    new_ids.append(self._new_id())  # a number lost on retry is only a gap
                vid, created = new_ids[0], True
            moved: dict[str, list[str]] = {}
            for other in decision.merge:
                moved[other] = sorted(_text(f) for f in pipe.smembers(k.visitor_faces(other)))
            record = None if vid is None else pipe.hgetall(k.visitor(vid))
            others = {o: pipe.hgetall(k.visitor(o)) for o in decision.merge}
            pipe.multi()
            pipe.hset(k.unknown_face(face.face_id), mapping=self._face_mapping(face, features, vid, crop_rel))
            pipe.zadd(k.unknown_faces(), {face.face_id: face.at})
            if vid is not None:
                pipe.sadd(k.visitor_faces(vid), face.face_id)
                pipe.sadd(k.visitors(), vid)
                pipe.hset(k.visitor(vid), mapping=self._visitor_update(record or {}, face, others.values()))
            self.log.append(pipe, VisitorEvent(VisitorOp.ADD, face=face.face_id, visitor=vid, good=face.good))
            for other, faces in moved.items():
                self._queue_move(pipe, faces, other, vid)  # type: ignore[arg-type]
                self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(faces), visitor=vid))
            return Joined(face.face_id, vid, stored=True, created=created, merged=tuple(moved))

        for _ in range(_WATCH_RETRIES):
            try:
                return self._transact(body)
            except Stale:
                sync()
        raise VisitorError("the visitor replica could not catch up with the stream; retry")

    def _face_mapping(self, face: NewFace, features: np.ndarray, vid: str | None, crop_rel: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "features": features.tobytes(), "visitor": vid or "", "good": int(face.good),
            "quality": json.dumps(face.quality, separators=(",", ":")), "source": face.source,
            "at": repr(float(face.at)), "crop": crop_rel, "backbone": self.backbone_version,
        }
        for name in ("camera", "frame", "job", "track"):
            value = getattr(face, name)
            if value is not None:
                out[name] = str(value)
        if face.box is not None:
            out["box"] = json.dumps([round(float(v), 1) for v in face.box])
        return out

    @staticmethod
    def _visitor_update(record: dict, face: NewFace, merged: Any = ()) -> dict[str, Any]:
        rec = {_text(a): _text(b) for a, b in record.items()}
        records = [rec] + [{_text(a): _text(b) for a, b in r.items()} for r in merged]
        firsts = [float(r["first_seen"]) for r in records if r.get("first_seen")] + [face.at]
        lasts = [float(r["last_seen"]) for r in records if r.get("last_seen")] + [face.at]
        cameras = set()
        for r in records:
            cameras.update(json.loads(r.get("cameras") or "[]"))
        if face.camera:
            cameras.add(face.camera)
        out: dict[str, Any] = {"first_seen": repr(min(firsts)), "last_seen": repr(max(lasts)),
                               "cameras": json.dumps(sorted(cameras))}
        if not rec.get("created"):
            out["created"] = repr(time.time())
        score = float(face.quality.get("score", 0.0)) if face.good else -1.0
        covers = [(float(r.get("cover_q") or -2), r.get("cover")) for r in records if r.get("cover")]
        covers.append((score, face.face_id))
        best = max(covers, key=lambda c: c[0])
        out["cover"], out["cover_q"] = best[1], repr(best[0])
        if any(r.get("manual") == "1" for r in records[1:]):
            out["manual"] = "1"
        return out

    def _queue_move(self, pipe: redis.client.Pipeline, faces: list[str], src: str, dst: str | None) -> None:
        """Queue moving ``faces`` (all of ``src``'s) to ``dst`` and deleting ``src`` (which
        then resolves to ``dst``: :meth:`resolve`)."""
        k = self.keys
        for fid in faces:
            pipe.hset(k.unknown_face(fid), "visitor", dst or "")
        if dst is not None and faces:
            pipe.sadd(k.visitor_faces(dst), *faces)
        if dst is not None:
            pipe.hset(k.visitor_aliases(), src, dst)
        pipe.delete(k.visitor(src), k.visitor_faces(src))
        pipe.srem(k.visitors(), src)

    def resolve(self, visitor_id: str) -> str:
        """The visitor ``visitor_id`` is part of now: itself, or the one it was merged into
        (by hand or by the rule), following later merges. A forgotten visitor resolves to
        itself or to a visitor that no longer exists."""
        return _follow(lambda v: _text(self.client.hget(self.keys.visitor_aliases(), v)), visitor_id)

    def set_event(self, face_id: str, event_id: str) -> None:
        """Record the recognition event a stored face made (written after publishing)."""
        self.client.hset(self.keys.unknown_face(face_id), "event", event_id)

    # ---- manual changes ---------------------------------------------------------------
    def _faces(self, pipe: Any, vid: str) -> list[str]:
        if not pipe.sismember(self.keys.visitors(), vid):
            raise UnknownVisitorError(f"no visitor {vid!r}")
        return sorted(_text(f) for f in pipe.smembers(self.keys.visitor_faces(vid)))

    def merge(self, visitor_ids: Sequence[str]) -> str:
        """Merge visitors into the first; returns its id. Refuses fewer than two distinct
        visitors, an unknown one, and two visitors named as different people."""
        ids = [safe_id(v, "visitor id") for v in visitor_ids]
        if len(ids) < 2:
            raise VisitorError("merge needs at least two visitors")
        if len(set(ids)) != len(ids):
            raise VisitorError(f"merge names a visitor twice ({', '.join(ids)}): a visitor cannot be merged into itself")
        k = self.keys
        target = ids[0]

        def body(pipe: redis.client.Pipeline) -> str:
            faces = {v: self._faces(pipe, v) for v in ids}
            records = {v: {_text(a): _text(b) for a, b in pipe.hgetall(k.visitor(v)).items()} for v in ids}
            persons = {r.get("person") for r in records.values() if r.get("person")}
            if len(persons) > 1:
                raise VisitorError(f"visitors {', '.join(ids)} are named as different people; forget or rename first")
            update = self._merged_record(records.values())
            update["manual"] = "1"
            if persons:
                update["person"] = persons.pop()
            pipe.multi()
            pipe.hset(k.visitor(target), mapping=update)
            for other in ids[1:]:
                self._queue_move(pipe, faces[other], other, target)
                self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(faces[other]), visitor=target, manual=True))
            self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(faces[target]), visitor=target, manual=True))
            if update.get("person"):
                self.log.append(pipe, VisitorEvent(VisitorOp.NAME, visitor=target, person=update["person"]))
            return target

        return self._transact(body)

    @staticmethod
    def _merged_record(records: Any) -> dict[str, str]:
        records = list(records)
        firsts = [float(r["first_seen"]) for r in records if r.get("first_seen")]
        lasts = [float(r["last_seen"]) for r in records if r.get("last_seen")]
        cameras: set[str] = set()
        for r in records:
            cameras.update(json.loads(r.get("cameras") or "[]"))
        covers = [(float(r.get("cover_q") or -2), r["cover"]) for r in records if r.get("cover")]
        out = {"cameras": json.dumps(sorted(cameras))}
        if firsts:
            out["first_seen"] = repr(min(firsts))
        if lasts:
            out["last_seen"] = repr(max(lasts))
        if covers:
            q, fid = max(covers)
            out["cover"], out["cover_q"] = fid, repr(q)
        return out

    def split(self, visitor_id: str, face_ids: Sequence[str]) -> str:
        """Move ``face_ids`` of a visitor into a new visitor; returns the new id.

        Refuses an empty list, a face not in the visitor, and every face (nothing would be split).
        """
        safe_id(visitor_id, "visitor id")
        wanted = sorted(set(face_ids))
        if not wanted:
            raise VisitorError("split needs at least one face id (--faces)")
        k = self.keys
        new_ids: list[str] = []

        def body(pipe: redis.client.Pipeline) -> str:
            faces = self._faces(pipe, visitor_id)
            missing = [f for f in wanted if f not in set(faces)]
            if missing:
                raise VisitorError(f"face(s) {', '.join(missing[:5])} are not faces of visitor {visitor_id}")
            if len(wanted) == len(faces):
                raise VisitorError(f"splitting out every face of {visitor_id} would change nothing; name fewer faces")
            if not new_ids:
                new_ids.append(self._new_id())
            new = new_ids[0]
            rest = [f for f in faces if f not in set(wanted)]
            meta = self._face_meta(pipe, faces)
            pipe.multi()
            for fid in wanted:
                pipe.hset(k.unknown_face(fid), "visitor", new)
            pipe.srem(k.visitor_faces(visitor_id), *wanted)
            pipe.sadd(k.visitor_faces(new), *wanted)
            pipe.sadd(k.visitors(), new)
            pipe.hset(k.visitor(new), mapping={**self._summary(meta, wanted), "manual": "1", "created": repr(time.time())})
            pipe.hset(k.visitor(visitor_id), mapping={**self._summary(meta, rest), "manual": "1"})
            self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(wanted), visitor=new, manual=True))
            self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(rest), visitor=visitor_id, manual=True))
            return new

        return self._transact(body)

    def _face_meta(self, pipe: Any, faces: Sequence[str]) -> dict[str, dict[str, str]]:
        out = {}
        for fid in faces:
            at, camera, good, quality = (_text(v) for v in pipe.hmget(self.keys.unknown_face(fid), ["at", "camera", "good", "quality"]))
            out[fid] = {"at": at or "0", "camera": camera or "", "good": good or "0", "quality": quality or "{}"}
        return out

    @staticmethod
    def _summary(meta: dict[str, dict[str, str]], faces: Sequence[str]) -> dict[str, str]:
        ats = [float(meta[f]["at"]) for f in faces]
        cams = sorted({meta[f]["camera"] for f in faces if meta[f]["camera"]})
        def q(f: str) -> float:
            return float(json.loads(meta[f]["quality"]).get("score", 0.0)) if meta[f]["good"] == "1" else -1.0
        cover = max(faces, key=lambda f: (q(f), f))
        return {"first_seen": repr(min(ats)), "last_seen": repr(max(ats)), "cameras": json.dumps(cams),
                "cover": cover, "cover_q": repr(q(cover))}

    def remove_faces(self, face_ids: Sequence[str], *, drop_visitor: str | None = None) -> int:
        """Delete faces (features, crops, records) in one transaction; drops visitors left empty.

        ``drop_visitor`` also deletes that visitor's record. Returns faces deleted.
        """
        k = self.keys
        crops: list[str] = []

        def body(pipe: redis.client.Pipeline) -> int:
            if drop_visitor is not None:
                faces = self._faces(pipe, drop_visitor)
                wanted = sorted(set(face_ids) | set(faces))
            else:
                wanted = sorted(set(face_ids))
            rows = [(f, *(_text(v) for v in pipe.hmget(k.unknown_face(f), ["visitor", "crop"]))) for f in wanted]
            rows = [r for r in rows if r[1] is not None]
            by_visitor: dict[str, list[str]] = {}
            for fid, vid, _crop in rows:
                if vid:
                    by_visitor.setdefault(vid, []).append(fid)
            emptied = [v for v, fs in by_visitor.items() if pipe.scard(k.visitor_faces(v)) <= len(fs)]
            if drop_visitor is not None and drop_visitor not in emptied:
                emptied.append(drop_visitor)
            # a forgotten visitor leaves no trace: the ids merged into it stop resolving to it
            stale = [] if drop_visitor is None else _aliases_of(
                {_text(a): _text(b) for a, b in pipe.hgetall(k.visitor_aliases()).items()}, drop_visitor)
            crops[:] = [c for _, _, c in rows if c]
            pipe.multi()
            if stale:
                pipe.hdel(k.visitor_aliases(), *stale)
            for fid, vid, _ in rows:
                pipe.delete(k.unknown_face(fid))
                if vid:
                    pipe.srem(k.visitor_faces(vid), fid)
            if rows:
                pipe.zrem(k.unknown_faces(), *[r[0] for r in rows])
            for vid in emptied:
                pipe.delete(k.visitor(vid), k.visitor_faces(vid))
                pipe.srem(k.visitors(), vid)
            if rows:
                self.log.append(pipe, VisitorEvent(VisitorOp.REMOVE, faces=tuple(r[0] for r in rows)))
            return len(rows)

        count = self._transact(body)
        for rel in crops:
            (self.data_dir / rel).unlink(missing_ok=True)
        return count

    def mark_named(self, visitor_id: str, person_id: str | None) -> None:
        """Record that a visitor was enrolled as ``person_id`` (None: the person was forgotten)."""
        k = self.keys

        def body(pipe: redis.client.Pipeline) -> None:
            self._faces(pipe, visitor_id)
            pipe.multi()
            if person_id:
                pipe.hset(k.visitor(visitor_id), "person", person_id)
            else:
                pipe.hdel(k.visitor(visitor_id), "person")
            self.log.append(pipe, VisitorEvent(VisitorOp.NAME, visitor=visitor_id, person=person_id))

        self._transact(body)

    def assign_many(self, groups: dict[str, list[str]], alone: list[str], *, reset: bool) -> None:
        """Rewrite the grouping of every face in one transaction (regroup): ``groups`` maps
        visitor ids to faces, ``alone`` faces go in none. Earlier visitors not in ``groups`` go."""
        k = self.keys

        def body(pipe: redis.client.Pipeline) -> None:
            old = [_text(v) for v in pipe.smembers(k.visitors())]
            records = {v: {_text(a): _text(b) for a, b in pipe.hgetall(k.visitor(v)).items()} for v in old}
            every = [f for fs in groups.values() for f in fs] + list(alone)
            meta = self._face_meta(pipe, every)
            pipe.multi()
            for v in old:
                pipe.delete(k.visitor_faces(v))
                if v not in groups:
                    pipe.delete(k.visitor(v))
            pipe.delete(k.visitors())
            if reset:
                self.log.append(pipe, VisitorEvent(VisitorOp.RESET))
            for vid, faces in groups.items():
                keep = {f: records.get(vid, {}).get(f) for f in ("person", "manual", "created")}
                mapping = {**self._summary(meta, faces), **{a: b for a, b in keep.items() if b}}
                mapping.setdefault("created", repr(time.time()))
                pipe.hset(k.visitor(vid), mapping=mapping)
                pipe.sadd(k.visitor_faces(vid), *faces)
                pipe.sadd(k.visitors(), vid)
                for fid in faces:
                    pipe.hset(k.unknown_face(fid), "visitor", vid)
                self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(faces), visitor=vid,
                                                   manual=keep.get("manual") == "1"))
                if keep.get("person"):
                    self.log.append(pipe, VisitorEvent(VisitorOp.NAME, visitor=vid, person=keep["person"]))
            for fid in alone:
                pipe.hset(k.unknown_face(fid), "visitor", "")
            if alone:
                self.log.append(pipe, VisitorEvent(VisitorOp.ASSIGN, faces=tuple(alone), visitor=None))

        self._transact(body)

    # ---- reads -------------------------------------------------------------------------
    def visitor_ids(self) -> list[str]:
        return sorted((_text(v) for v in self.client.smembers(self.keys.visitors())), key=_id_order)

    def visitor_record(self, visitor_id: str) -> dict[str, Any]:
        safe_id(visitor_id, "visitor id")
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.visitor(visitor_id))
        pipe.smembers(self.keys.visitor_faces(visitor_id))
        rec, faces = pipe.execute()
        if not rec and not faces:
            raise UnknownVisitorError(f"no visitor {visitor_id!r}")
        out: dict[str, Any] = {_text(a): _text(b) for a, b in rec.items()}
        out["faces"] = sorted(_text(f) for f in faces)
        return out

    def records(self, visitor_ids: Sequence[str]) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for v in visitor_ids:
            pipe.hgetall(self.keys.visitor(v))
            pipe.scard(self.keys.visitor_faces(v))
        replies = pipe.execute()
        out = []
        for v, rec, n in zip(visitor_ids, replies[0::2], replies[1::2]):
            row: dict[str, Any] = {_text(a): _text(b) for a, b in rec.items()}
            row["id"], row["face_count"] = v, int(n)
            out.append(row)
        return out

    def face_records(self, face_ids: Sequence[str], with_features: bool = False) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for f in face_ids:
            pipe.hgetall(self.keys.unknown_face(f))
        out = []
        for fid, rec in zip(face_ids, pipe.execute()):
            if not rec:
                continue
            row: dict[str, Any] = {}
            for a, b in rec.items():
                name = _text(a)
                if name == "features":
                    if with_features:
                        row[name] = np.frombuffer(b, dtype=np.float32).copy()
                    continue
                row[name] = _text(b)
            row["id"] = fid
            out.append(row)
        return out

    def all_face_ids(self) -> list[str]:
        return [_text(f) for f in self.client.zrange(self.keys.unknown_faces(), 0, -1)]

    def load_all(self, chunk: int = 5000) -> tuple[list[str], np.ndarray, list[str | None], np.ndarray, np.ndarray]:
        """Every stored face, oldest first: (ids, (n, 128) features, visitors, good flags, times)."""
        rows = self.client.zrange(self.keys.unknown_faces(), 0, -1, withscores=True)
        ids_all = [_text(f) for f, _ in rows]
        ids: list[str] = []
        feats: list[np.ndarray] = []
        vids: list[str | None] = []
        good: list[bool] = []
        ats: list[float] = []
        for start in range(0, len(ids_all), chunk):
            part = ids_all[start:start + chunk]
            pipe = self.client.pipeline(transaction=False)
            for f in part:
                pipe.hmget(self.keys.unknown_face(f), ["features", "visitor", "good", "at"])
            for fid, (feat, vid, g, at) in zip(part, pipe.execute()):
                if feat is None or len(feat) != FEATURE_BYTES:
                    continue
                ids.append(fid)
                feats.append(np.frombuffer(feat, dtype=np.float32))
                vids.append(_text(vid) or None)
                good.append(g == b"1")
                ats.append(float(at or 0))
        matrix = np.stack(feats) if feats else np.zeros((0, 128), np.float32)
        return ids, matrix, vids, np.array(good, bool), np.array(ats, np.float64)

    def fetch_features(self, face_ids: Sequence[str]) -> dict[str, np.ndarray]:
        pipe = self.client.pipeline(transaction=False)
        for f in face_ids:
            pipe.hget(self.keys.unknown_face(f), "features")
        return {f: np.frombuffer(v, dtype=np.float32) for f, v in zip(face_ids, pipe.execute())
                if v is not None and len(v) == FEATURE_BYTES}


def _id_order(vid: str) -> tuple[int, str]:
    head, _, num = vid.partition("-")
    return (int(num), vid) if head == "v" and num.isdigit() else (1 << 62, vid)


def _follow(step: Callable[[str], str | None], visitor_id: str) -> str:
    """Where a chain of merges took ``visitor_id`` (``step``: the visitor one merge took it to)."""
    current, seen = visitor_id, {visitor_id}
    while (nxt := step(current)) and nxt not in seen:
        current = nxt
        seen.add(current)
    return current


def _aliases_of(aliases: dict[str, str], visitor_id: str) -> list[str]:
    """The merged-away ids in ``aliases`` that resolve to ``visitor_id``."""
    return [old for old in aliases if old != visitor_id and _follow(aliases.get, old) == visitor_id]
