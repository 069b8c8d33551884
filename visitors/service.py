"""The visitors of one deployment: the facade workers and the app layer call.

:class:`Visitors` holds the Redis store and, in a process that joins faces (a
worker) or regroups, a :class:`~faec_rec.visitors.replica.VisitorReplica`
kept current from the visitor event stream. Management calls (list, show,
merge, split, forget) go straight to Redis and never load the replica.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from faec_rec.config import VisitorsConfig
from faec_rec.errors import UnknownVisitorError, VisitorError
from faec_rec.keys import Keys, safe_id

from faec_rec.index.snapshot import list_snapshots, load_newest, write_snapshot
from faec_rec.visitors.events import START, VisitorOp, parse_order
from faec_rec.visitors.replica import VisitorReplica
from faec_rec.visitors.store import Joined, NewFace, VisitorStore

log = logging.getLogger(__name__)

SORTS = ("faces", "last_seen", "first_seen", "id")
LOCK_TTL_S = 600
EXPIRE_EVERY_S = 600.0
SNAPSHOT_LOCK_S = 600


class Visitors:
    """Unknown faces and visitors of one deployment (``keys`` prefix) and ``data_dir``.

    ``auto_expire``: :meth:`join` applies the retention settings every
    ``EXPIRE_EVERY_S`` (workers do; tests of retention call :meth:`expire`).
    """

    def __init__(self, client: redis.Redis, keys: Keys, config: VisitorsConfig | None = None,
                 data_dir: Path | str = ".", backbone_version: str = "dlib-resnet-v1", *, auto_expire: bool = True) -> None:
        self.redis = client
        self.keys = keys
        self.config = config or VisitorsConfig()
        self.data_dir = Path(data_dir)
        self.store = VisitorStore(client, keys, self.data_dir, backbone_version)
        self._replica: VisitorReplica | None = None
        self._lock = threading.RLock()
        # Beside the gallery's data_dir/snapshots/<prefix>, not inside it: same file format
        # (faec_rec.index.snapshot), another replica.
        self.snapshot_dir = self.data_dir / "visitor-snapshots" / keys.prefix
        self._since_snapshot = 0
        self._erased = False
        self._next_expire = 0.0 if auto_expire else float("inf")

    # ---- the replica ----------------------------------------------------------------
    @property
    def replica(self) -> VisitorReplica:
        """This process's replica (built from the Redis records on first use)."""
        with self._lock:
            if self._replica is None:
                self._replica = self._bootstrap()
            return self._replica

    def _bootstrap(self) -> VisitorReplica:
        """The newest usable snapshot plus the events after it, else every record in Redis
        (then a snapshot is written, so the next process starts from it)."""
        t0 = time.perf_counter()
        replica = self._from_snapshot()
        how = "snapshot"
        if replica is None:
            how = "Redis records"
            position = self.store.log.last_id()  # records read after this id include it; replay is idempotent
            replica = self._bootstrap_records()
            replica.position = position
        applied = self._catch_up(replica)
        log.info("visitor replica from %s + %d event(s): %d faces, %d visitors in %.2f s", how, applied,
                 replica.size, len(replica.members), time.perf_counter() - t0)
        if how != "snapshot" and replica.size and replica.position != START:
            # (a snapshot needs a stream position: faces written without events are not anchored)
            self._maybe_snapshot(replica)
        elif self._erased:
            self._write_snapshot(replica, keep=1)
        return replica

    def _from_snapshot(self) -> VisitorReplica | None:
        """The newest snapshot when the stream still holds every event after it, else None."""
        found = load_newest(self.snapshot_dir)
        if found is None:
            return None
        path, meta, arrays = found
        try:
            replica = VisitorReplica.from_arrays(meta, arrays, self.config)
        except (VisitorError, KeyError, ValueError) as exc:
            log.warning("visitor snapshot %s unusable (%s); reading the Redis records", path.name, exc)
            return None
        first, last = self.store.log.first_id(), self.store.log.last_id()
        if last == START or parse_order(last) < parse_order(replica.position):
            log.warning("visitor snapshot %s is ahead of the visitor stream (another deployment's history?); "
                        "reading the Redis records", path.name)
            return None
        if first is not None and parse_order(first) > parse_order(replica.position):
            log.warning("visitor snapshot %s is older than the trimmed visitor stream; reading the Redis records",
                        path.name)
            return None
        return replica

    # ---- snapshots ------------------------------------------------------------------------
    def _after_apply(self, replica: VisitorReplica) -> None:
        """Snapshots after events: at once (this process's only) when faces were removed, so a
        forgotten or expired face's features do not stay on disk; every ``snapshot_every`` events
        otherwise, one process at a time."""
        try:
            if self._erased and list_snapshots(self.snapshot_dir):
                self._write_snapshot(replica, keep=1)
            elif self._since_snapshot >= self.config.snapshot_every:
                self._maybe_snapshot(replica)
        except OSError:  # a full or read-only disk must not stop joins; the next start reads Redis
            log.exception("visitor snapshot not written")
        self._erased = False

    def _maybe_snapshot(self, replica: VisitorReplica) -> None:
        token = f"{id(self)}:{time.time()}"
        if not self.redis.set(self.keys.visitor_snapshot_lock(), token, nx=True, ex=SNAPSHOT_LOCK_S):
            self._since_snapshot = 0  # another process is writing one; count again from here
            return
        try:
            self._write_snapshot(replica)
        finally:
            if self.redis.get(self.keys.visitor_snapshot_lock()) == token.encode():
                self.redis.delete(self.keys.visitor_snapshot_lock())

    def _write_snapshot(self, replica: VisitorReplica, keep: int = 2) -> Path:
        if replica.position == START:
            raise VisitorError("a visitor replica with no stream position cannot be snapshotted")
        meta, arrays = replica.to_arrays()
        path = write_snapshot(self.snapshot_dir, replica.position, meta, arrays, keep=keep)
        self._since_snapshot = 0
        self._erased = False
        return path

    def snapshot(self) -> Path:
        """Sync, then write a snapshot of this process's replica now; returns its path."""
        with self._lock:
            replica = self.replica
            self._catch_up(replica)
            return self._write_snapshot(replica)

    def sync(self) -> int:
        """Apply visitor events written since the last call; returns how many."""
        with self._lock:
            if self._replica is None:
                self.replica
                return 0
            first = self.store.log.first_id()
            if first is not None and self._replica.position != START and parse_order(first) > parse_order(self._replica.position):
                log.warning("visitor replica is behind the trimmed stream; rebuilding from Redis")
                self._replica = self._bootstrap()
                return 0
            applied = self._catch_up(self._replica)
            self._after_apply(self._replica)
            return applied

    def _catch_up(self, replica: VisitorReplica, known: dict[str, np.ndarray] | None = None) -> int:
        """Apply the events after ``replica.position``; ``known`` features (the face this
        process just stored) are not fetched again."""
        total = 0
        while True:
            events = self.store.log.read(replica.position)
            if not events:
                return total
            if any(e.op is VisitorOp.RESET for _, e in events):
                # Everything before a reset is void: rebuild from the records.
                last_reset = max(i for i, (_, e) in enumerate(events) if e.op is VisitorOp.RESET)
                fresh = self._bootstrap_records()
                fresh.position = events[last_reset][0]
                replica.__dict__.update(fresh.__dict__)
                events = events[last_reset + 1:]
            known = known or {}
            added = [e.face for _, e in events if e.op is VisitorOp.ADD and e.face and e.face not in known]
            features = {**(self.store.fetch_features(added) if added else {}),
                        **{f: v for f, v in known.items() if any(e.face == f for _, e in events)}}
            self._erased = self._erased or any(e.op is VisitorOp.REMOVE for _, e in events)
            applied = replica.apply(events, features) if events else 0
            self._since_snapshot += applied
            total += applied

    def _bootstrap_records(self) -> VisitorReplica:
        """A replica of every stored face, visitor name and manual mark, read from Redis."""
        replica = VisitorReplica(self.config)
        ids, feats, vids, good, _ = self.store.load_all()
        replica.load_bulk(ids, feats, vids, good)
        for row in self.store.records(self.store.visitor_ids()):
            if row.get("person"):
                replica.persons[row["id"]] = row["person"]
            if row.get("manual") == "1":
                replica.manual.add(row["id"])
        return replica

    # ---- joining (workers) -------------------------------------------------------------
    def use_backbone(self, name: str, config: VisitorsConfig) -> None:
        """Join faces of backbone ``name`` by ``config`` (its mapped thresholds) from now on."""
        with self._lock:
            self.store.backbone_version = name
            if config is not self.config:
                self.config = config
                if self._replica is not None:
                    self._replica.config = config

    def join(self, face: NewFace) -> Joined:
        """Store one unknown face and join it to a visitor (see :mod:`faec_rec.visitors.replica`)."""
        with self._lock:
            replica = self.replica
            joined = self.store.add_face(face, replica, self.sync)
            if joined.stored:  # apply our own change now (one read; its features are here)
                self._catch_up(replica, {face.face_id: np.ascontiguousarray(face.features, np.float32).reshape(-1)})
                self._after_apply(replica)
        self._maybe_expire()
        return joined

    def _maybe_expire(self) -> None:
        """Workers apply retention as they join: at most every ``EXPIRE_EVERY_S`` per process,
        one process at a time (the visitor lock)."""
        now = time.monotonic()
        if now < self._next_expire:
            return
        self._next_expire = now + EXPIRE_EVERY_S
        token = f"expire:{id(self)}:{time.time()}"
        if not self.redis.set(self.keys.visitor_lock(), token, nx=True, ex=LOCK_TTL_S):
            return
        try:
            self.expire()
        except Exception:  # noqa: BLE001 - retention must never fail a join
            log.exception("visitor retention sweep failed; retried later")
        finally:
            if self.redis.get(self.keys.visitor_lock()) == token.encode():
                self.redis.delete(self.keys.visitor_lock())

    # ---- management (app layer) ----------------------------------------------------------
    def list(self, *, limit: int = 50, offset: int = 0, sort: str = "faces", named: bool | None = None) -> list[dict[str, Any]]:
        """Visitors as dicts (see :func:`visitor_summary`), sorted by ``sort`` (one of :data:`SORTS`)."""
        if sort not in SORTS:
            raise ValueError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        rows = [self._summary(r) for r in self.store.records(self.store.visitor_ids())]
        if named is not None:
            rows = [r for r in rows if bool(r["person_id"]) == named]
        keys: dict[str, Callable[[dict[str, Any]], Any]] = {
            "faces": lambda r: (-r["faces"], -(r["last_seen"] or 0)),
            "last_seen": lambda r: -(r["last_seen"] or 0),
            "first_seen": lambda r: r["first_seen"] or 0,
            "id": lambda r: 0,
        }
        rows.sort(key=keys[sort])
        return rows[offset: offset + limit] if limit else rows[offset:]

    def _summary(self, row: dict[str, Any]) -> dict[str, Any]:
        cover = row.get("cover")
        return {
            "id": row["id"],
            "faces": int(row.get("face_count", 0)),
            "first_seen": _float(row.get("first_seen")),
            "last_seen": _float(row.get("last_seen")),
            "cameras": json.loads(row.get("cameras") or "[]"),
            "cover_face": cover,
            "crop": str(self.store.crop_path(cover)) if cover else None,
            "person_id": row.get("person") or None,
            "person": self._person_name(row.get("person")),
            "manual": row.get("manual") == "1",
        }

    def _person_name(self, person_id: str | None) -> str | None:
        if not person_id:
            return None
        raw = self.redis.hget(self.keys.person(person_id), "name")
        return raw.decode() if raw else None

    def list_one(self, visitor_id: str) -> dict[str, Any]:
        """One visitor's summary (as in :meth:`list`), without its faces."""
        safe_id(visitor_id, "visitor id")
        [row] = self.store.records([visitor_id])
        if not row.get("created") and not row["face_count"]:
            raise UnknownVisitorError(f"no visitor {visitor_id!r}")
        return self._summary(row)

    def get(self, visitor_id: str) -> dict[str, Any]:
        """One visitor with every face: ``{"id", "faces": [face dicts], ...summary}``."""
        rec = self.store.visitor_record(visitor_id)
        faces = self.store.face_records(rec["faces"])
        rec["id"] = visitor_id
        rec["face_count"] = len(faces)
        out = self._summary(rec)
        out["faces"] = len(faces)
        out["face_list"] = sorted((self._face(f) for f in faces), key=lambda f: (f["at"] or 0, f["id"]))
        return out

    def _face(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "visitor": row.get("visitor") or None,
            "at": _float(row.get("at")),
            "source": row.get("source") or None,
            "camera": row.get("camera"),
            "frame": None if row.get("frame") is None else int(row["frame"]),
            "job": row.get("job"),
            "track": None if row.get("track") is None else int(row["track"]),
            "event": row.get("event"),
            "box": json.loads(row["box"]) if row.get("box") else None,
            "good": row.get("good") == "1",
            "quality": json.loads(row.get("quality") or "{}"),
            "crop": str(self.data_dir / row["crop"]) if row.get("crop") else None,
        }

    def face(self, face_id: str) -> dict[str, Any]:
        """One stored unknown face (no features); raises :class:`UnknownVisitorError`."""
        safe_id(face_id, "face id")
        rows = self.store.face_records([face_id])
        if not rows:
            raise UnknownVisitorError(f"no unknown face {face_id!r} is stored")
        return self._face(rows[0])

    def crop(self, face_id: str) -> bytes:
        """The JPEG crop of a stored unknown face."""
        face = self.face(face_id)
        if not face["crop"]:
            raise UnknownVisitorError(f"unknown face {face_id} has no crop")
        try:
            return Path(face["crop"]).read_bytes()
        except OSError as exc:
            raise UnknownVisitorError(f"the crop of face {face_id} is not on this machine ({exc.strerror})") from exc

    def good_faces(self, visitor_id: str) -> list[dict[str, Any]]:
        """A visitor's faces that pass the quality gate, with ``features`` ((128,) float32)."""
        rec = self.store.visitor_record(visitor_id)
        return [r for r in self.store.face_records(rec["faces"], with_features=True) if r.get("good") == "1"]

    def _sync_if_loaded(self) -> None:
        if self._replica is not None:
            self.sync()

    def resolve(self, visitor_id: str) -> str:
        """The visitor a (possibly merged-away) visitor id is part of now (:meth:`VisitorStore.resolve`)."""
        return self.store.resolve(safe_id(visitor_id, "visitor id"))

    def merge(self, visitor_ids: Sequence[str]) -> str:
        """Merge visitors into the first (see :meth:`VisitorStore.merge`); returns its id."""
        out = self.store.merge(visitor_ids)
        self._sync_if_loaded()
        return out

    def split(self, visitor_id: str, face_ids: Sequence[str]) -> str:
        """Move ``face_ids`` of a visitor into a new visitor; returns its id."""
        out = self.store.split(visitor_id, face_ids)
        self._sync_if_loaded()
        return out

    def forget(self, visitor_id: str) -> int:
        """Delete a visitor with every face (features, crops, records); returns faces deleted."""
        safe_id(visitor_id, "visitor id")
        if not self.redis.sismember(self.keys.visitors(), visitor_id):
            raise UnknownVisitorError(f"no visitor {visitor_id!r}")
        out = self.store.remove_faces([], drop_visitor=visitor_id)
        self._sync_if_loaded()
        return out

    def forget_faces(self, face_ids: Sequence[str]) -> int:
        out = self.store.remove_faces(face_ids)
        self._sync_if_loaded()
        return out

    def mark_named(self, visitor_id: str, person_id: str | None) -> None:
        """Record that a visitor was enrolled as ``person_id`` (None: no longer)."""
        self.store.mark_named(visitor_id, person_id)
        self._sync_if_loaded()

    # ---- retention -----------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int:
        """Delete unknown faces past ``retention_days`` or beyond ``max_faces`` (oldest first),
        except faces of named visitors; returns faces deleted."""
        c = self.config
        now = time.time() if now is None else now
        doomed: list[str] = []
        named = {r["id"] for r in self.store.records(self.store.visitor_ids()) if r.get("person")}
        if c.retention_days > 0:
            old = self.redis.zrangebyscore(self.keys.unknown_faces(), "-inf", now - c.retention_days * 86400)
            doomed.extend(f.decode() if isinstance(f, bytes) else f for f in old)
        if c.max_faces > 0:
            total = int(self.redis.zcard(self.keys.unknown_faces()))
            excess = total - c.max_faces
            if excess > 0:
                oldest = self.redis.zrange(self.keys.unknown_faces(), 0, excess + len(doomed) - 1)
                doomed.extend(f.decode() if isinstance(f, bytes) else f for f in oldest)
        doomed = sorted(set(doomed))
        if named and doomed:
            rows = self.store.face_records(doomed)
            doomed = [r["id"] for r in rows if (r.get("visitor") or "") not in named]
        deleted = 0
        for start in range(0, len(doomed), 1000):
            deleted += self.store.remove_faces(doomed[start:start + 1000])
        self._sync_if_loaded()
        if deleted:
            log.info("retention deleted %d unknown face(s)", deleted)
        return deleted

    # ---- regrouping --------------------------------------------------------------------------
    def _serving_config(self) -> VisitorsConfig:
        """``config`` with the thresholds mapped to the backbone in service (the faces' scale);
        refused (:class:`VisitorError`) under a backbone none could be mapped to."""
        from faec_rec.index.backbone_swap import DEFAULT_BACKBONE, current_backbone
        from faec_rec.training.backbones import visitor_settings

        name = current_backbone(self.redis, self.keys)["name"]
        if name == DEFAULT_BACKBONE:
            return self.config
        mapped = visitor_settings(self.redis, self.keys, name)
        if mapped is None:
            raise VisitorError(f"visitors are paused under backbone {name}: no visitor thresholds could be mapped to it "
                               "when it was added (too few impostor pairs); switch back or add it again with more people enrolled")
        return self.config.model_copy(update=mapped)

    def regroup(self) -> dict[str, int]:
        """Group every stored face again from scratch, in arrival order, by the current rule.

        Visitors shaped by hand (merged, split) or named keep exactly their faces
        and their ids; other faces may join them by the rule, but two of them
        are never merged. Other groups keep the id of the old visitor they
        share most faces with. Returns counts (faces, visitors, alone).
        """
        token = f"{time.time()}"
        if not self.redis.set(self.keys.visitor_lock(), token, nx=True, ex=LOCK_TTL_S):
            raise VisitorError("a regroup or retention sweep is already running; retry later")
        try:
            for _ in range(5):
                position = self.store.log.last_id()
                ids, feats, vids, good, _ats = self.store.load_all()
                records = {r["id"]: r for r in self.store.records(self.store.visitor_ids())}
                fixed = {v for v, r in records.items() if r.get("person") or r.get("manual") == "1"}
                result = regroup_faces(self._serving_config(), ids, feats, vids, good, fixed,
                                       persons={v: r["person"] for v, r in records.items() if r.get("person")},
                                       new_id=self.store._new_id)
                if self.store.log.last_id() != position:
                    continue  # changed while we computed: again
                groups, alone = result
                self.store.assign_many(groups, alone, reset=True)
                with self._lock:
                    if self._replica is not None:
                        self._replica = None  # rebuilt on next use
                return {"faces": len(ids), "visitors": len(groups), "alone": len(alone)}
            raise VisitorError("visitors kept changing while regrouping; retry when fewer faces arrive")
        finally:
            if self.redis.get(self.keys.visitor_lock()) == token.encode():
                self.redis.delete(self.keys.visitor_lock())


def regroup_faces(config: VisitorsConfig, ids: list[str], feats: np.ndarray, vids: list[str | None],
                  good: np.ndarray, fixed: set[str], persons: dict[str, str],
                  new_id: Callable[[], str]) -> tuple[dict[str, list[str]], list[str]]:
    """The grouping of ``ids`` (arrival order) from scratch: ``({visitor: faces}, alone)``.

    Faces of ``fixed`` visitors stay together under their id; the others are
    fed one at a time through the rule. New groups take the id of the old
    visitor they share most faces with when it is free, else ``new_id()``.
    """
    replica = VisitorReplica(config)
    anchored = [i for i, v in enumerate(vids) if v in fixed]
    replica.load_bulk([ids[i] for i in anchored], feats[anchored] if anchored else np.zeros((0, 128), np.float32),
                      [vids[i] for i in anchored], good[anchored] if anchored else np.zeros(0, bool))
    replica.manual.update(fixed)
    replica.persons.update(persons)
    counter = 0
    temp_of: dict[str, str] = {}
    # Every face's neighbours at once (one batched search over all good faces); then the
    # faces are replayed in arrival order, each seeing only the faces already placed.
    neighbours = _all_neighbours(config, ids, feats, good)
    for i, fid in enumerate(ids):
        if vids[i] in fixed:
            continue
        decision = replica.decide(feats[i], bool(good[i]), neighbours=neighbours[i])
        vid = decision.visitor
        if vid is None and decision.new:
            counter += 1
            vid = f"tmp-{counter}"
        replica.add(fid, feats[i], vid, bool(good[i]), index=False)
        for other in decision.merge:
            replica.assign(replica.faces_of(other), vid)
    groups = replica.groups()
    # Stable ids: a temporary group takes the old id it shares most faces with.
    old_of = dict(zip(ids, vids))
    taken = set(fixed)
    out: dict[str, list[str]] = {}
    for vid, faces in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        if vid in fixed:
            out[vid] = faces
            continue
        votes: dict[str, int] = {}
        for f in faces:
            o = old_of.get(f)
            if o and o not in taken:
                votes[o] = votes.get(o, 0) + 1
        if votes:
            final = max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0]
        else:
            final = new_id()
        taken.add(final)
        temp_of[vid] = final
        out[final] = faces
    alone = sorted(f for f in ids if replica.visitor_of(f) is None)
    return out, alone


def _all_neighbours(config: VisitorsConfig, ids: list[str], feats: np.ndarray, good: np.ndarray,
                    batch: int = 4096) -> list[tuple[list[float], list[str]]]:
    """For each face, ``(scores, face ids)`` of its nearest good faces at cosine >= the link
    threshold (4x ``search_k`` looked up, so faces placed later can be skipped)."""
    from faec_rec.config import GalleryConfig
    from faec_rec.index.vectors import build_index

    from faec_rec.visitors.replica import unit

    vecs = unit(feats) if len(feats) else np.zeros((0, 128), np.float32)
    good_idx = np.flatnonzero(good).astype(np.int64)
    out: list[tuple[list[float], list[str]]] = [([], []) for _ in ids]
    if not len(good_idx):
        return out
    kind = "ivf" if len(good_idx) > config.approximate_above else "flat"
    gcfg = GalleryConfig(hnsw_above=config.approximate_above, approximate="ivf", ivf_nprobe=config.ivf_nprobe)
    index = build_index(vecs[good_idx], good_idx, gcfg, kind=kind)
    k = min(len(good_idx), 4 * config.search_k)
    for start in range(0, len(ids), batch):
        scores, labels = index.search(vecs[start:start + batch], k)
        for row in range(len(scores)):
            keep = scores[row] >= config.link_threshold
            out[start + row] = (scores[row][keep].tolist(), [ids[j] for j in labels[row][keep].tolist() if j >= 0])
    return out


def _float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)
