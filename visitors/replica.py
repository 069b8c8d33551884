"""A process's in-memory copy of the visitors, and the grouping rule that decides joins.

Pure state, no I/O (like :class:`faec_rec.index.replica.Replica`): the caller
feeds it visitor events with the features of added faces and asks it where a
new face belongs. Vectors are the L2-normalised *backbone* features, not the
head's projection, so visitors do not depend on the head in service (a backbone
switch re-embeds every face from its crop, index/backbone_swap.py, and the
thresholds mapped to that backbone serve, visitors/hook.py).

The rule (:meth:`VisitorReplica.decide`), careful by design: two people in one
visitor is the worst error, so a face joins only on strong evidence.

* Only *good* faces (the quality gate, :mod:`faec_rec.visitors.quality`) are
  in the index and in visitors' centres: a poor face never counts as a link
  for another face, never starts a visitor, never bridges two.
* A face's neighbours are the ``search_k`` nearest good faces; a *link* is a
  neighbour at cosine ``>= link_threshold``.
* It joins visitor V when it has at least ``min(min_links, good faces of V)``
  links into V *and* its similarity to V's centre (mean of V's good faces)
  is ``>= centre_threshold``: linkage to the group, not to one face (a chain
  of look-alikes cannot drag a group along). A visitor with one good face
  needs one *strong* link (``>= strong_threshold``): two faces make a visitor
  only when very close.
* A face that would join V but is nearly as close to another visitor W (W
  holds a face at ``>= rival_threshold`` and the face's similarity to V's
  centre is less than ``ambiguity_margin`` above that to W's) joins neither
  and stays in no visitor: a face between two people is evidence for neither.
* When several visitors qualify it joins the one with the most links (then
  the closest centre); a *good* face merges the others into it when their
  centres are within ``merge_threshold`` of each other ("groups that grew
  together"), unless both were shaped by hand or named as different people.
* A good face that joins nothing starts a visitor of its own; a poor one
  stays in no visitor.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from faec_rec.config import GalleryConfig, VisitorsConfig
from faec_rec.errors import VisitorError
from faec_rec.index.snapshot import decode_strings, encode_strings
from faec_rec.index.vectors import FlatIndex, IvfIndex, VectorError, VectorIndex, build_index

from faec_rec.visitors.events import START, VisitorEvent, VisitorOp

log = logging.getLogger(__name__)

DIM = 128


def unit(features: np.ndarray) -> np.ndarray:
    """Rows L2-normalised: ``(n, 128)`` or ``(128,)`` float32 -> same shape."""
    f = np.asarray(features, dtype=np.float32)
    norm = np.linalg.norm(f, axis=-1, keepdims=True)
    return (f / np.maximum(norm, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class JoinDecision:
    """Where a face goes: ``visitor`` (an existing id, None for a new one when ``new``,
    None and not ``new`` for no visitor), and visitors to merge into it."""

    visitor: str | None
    new: bool = False
    merge: tuple[str, ...] = ()
    links: int = 0
    centre: float | None = None


@dataclass
class _Candidate:
    visitor: str
    links: int = 0
    strong: int = 0
    centre: float = -1.0


@dataclass
class VisitorReplica:
    """Stored unknown faces of one deployment, grouped by visitor, with a vector index of the good ones."""

    config: VisitorsConfig = field(default_factory=VisitorsConfig)
    dim: int = DIM
    position: str = START

    def __post_init__(self) -> None:
        self._vec = np.zeros((0, self.dim), np.float32)
        self._good = np.zeros(0, bool)
        self._alive = np.zeros(0, bool)
        self._n = 0
        self._fid: list[str] = []
        self._vid: list[str | None] = []
        self._slot_of: dict[str, int] = {}
        self.members: dict[str, set[int]] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._ngood: dict[str, int] = {}
        self.persons: dict[str, str] = {}  # named visitor -> person id
        self.manual: set[str] = set()  # visitors shaped by hand (merge/split): never merged with another such
        self._index: VectorIndex = FlatIndex(self.dim)
        self._indexed = 0
        self._dead_in_index = 0
        self._gcfg = GalleryConfig(hnsw_above=self.config.approximate_above, approximate="ivf",
                                   ivf_nprobe=self.config.ivf_nprobe)

    # ---- sizes and reads ------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._slot_of)

    @property
    def index_kind(self) -> str:
        return self._index.kind

    def visitor_of(self, face_id: str) -> str | None:
        slot = self._slot_of.get(face_id)
        return None if slot is None else self._vid[slot]

    def has_face(self, face_id: str) -> bool:
        return face_id in self._slot_of

    def faces_of(self, visitor_id: str) -> list[str]:
        return sorted(self._fid[s] for s in self.members.get(visitor_id, ()))

    def groups(self) -> dict[str, list[str]]:
        """``{visitor id: sorted face ids}`` of visitors with faces."""
        return {v: sorted(self._fid[s] for s in slots) for v, slots in self.members.items() if slots}

    def digest(self) -> dict[str, object]:
        """Content summary for comparing replicas."""
        return {"groups": dict(sorted(self.groups().items())),
                "alone": sorted(f for f, s in self._slot_of.items() if self._vid[s] is None),
                "persons": dict(sorted(self.persons.items()))}

    def centre(self, visitor_id: str) -> np.ndarray | None:
        """Unit mean of a visitor's good faces, or None when it has none."""
        total = self._sum.get(visitor_id)
        if total is None or not self._ngood.get(visitor_id):
            return None
        return unit(total)

    def mean_similarity(self, q: np.ndarray, visitor_id: str) -> float:
        """Mean cosine similarity of unit ``q`` to a visitor's good faces (average linkage)."""
        n = self._ngood.get(visitor_id, 0)
        return float(q @ self._sum[visitor_id]) / n if n else -1.0

    def linkage(self, a: str, b: str) -> float:
        """Mean cosine similarity over every pair of good faces of visitors ``a`` and ``b``."""
        na, nb = self._ngood.get(a, 0), self._ngood.get(b, 0)
        if not na or not nb:
            return -1.0
        return float(self._sum[a] @ self._sum[b]) / (na * nb)

    # ---- the rule ---------------------------------------------------------------
    def decide(self, features: np.ndarray, good: bool,
               neighbours: tuple[list[float], list[str]] | None = None) -> JoinDecision:
        """Where a face with raw ``(128,)`` float32 ``features`` goes (see the module docstring).

        ``neighbours``: precomputed ``(scores, face ids)`` of its nearest faces
        (regrouping searches every face at once); faces not held, or poor, are skipped.
        """
        c = self.config
        q = unit(features)
        cands: dict[str, _Candidate] = {}
        near: set[str] = set()  # visitors with a face at rival_threshold or more
        if neighbours is not None:
            slots = [self._slot_of.get(f, -1) for f in neighbours[1]]
            pairs = [(sc, sl) for sc, sl in zip(neighbours[0], slots) if sl >= 0 and self._good[sl]][: c.search_k]
        elif len(self._index):
            k = min(c.search_k, len(self._index))
            scores, labels = self._index.search(q[None, :], k)
            pairs = list(zip(scores[0].tolist(), labels[0].tolist()))
        else:
            pairs = []
        if pairs:
            for score, slot in pairs:
                if slot < 0 or score < min(c.link_threshold, c.rival_threshold) or not self._alive[slot]:
                    continue
                vid = self._vid[slot]
                if vid is None:
                    continue
                if score >= c.rival_threshold:
                    near.add(vid)
                if score < c.link_threshold:
                    continue
                cand = cands.setdefault(vid, _Candidate(vid))
                cand.links += 1
                cand.strong += score >= c.strong_threshold
        qualified: list[_Candidate] = []
        for cand in cands.values():
            ngood = self._ngood.get(cand.visitor, 0)
            if not ngood:
                continue
            cand.centre = self.mean_similarity(q, cand.visitor)
            if ngood == 1:
                ok = cand.strong >= 1
            else:
                ok = cand.links >= min(c.min_links, ngood) and cand.centre >= c.centre_threshold
            if ok:
                qualified.append(cand)
        if not qualified:
            return JoinDecision(None, new=good)
        qualified.sort(key=lambda x: (-x.links, -x.centre, x.visitor))
        best = qualified[0]
        merge: list[str] = []
        if good and len(qualified) > 1:
            for other in qualified[1:]:
                if self._may_merge(best.visitor, other.visitor) and self.linkage(best.visitor, other.visitor) >= c.merge_threshold:
                    merge.append(other.visitor)
        if c.ambiguity_margin > 0:
            rivals = [cands[v].centre if v in cands and cands[v].centre > -1 else self.mean_similarity(q, v)
                      for v in near - {best.visitor, *merge} if self._ngood.get(v)]
            if rivals and best.centre - max(rivals) < c.ambiguity_margin:
                return JoinDecision(None, links=best.links, centre=best.centre)  # between two: in none
        return JoinDecision(best.visitor, merge=tuple(merge), links=best.links, centre=best.centre)

    def _may_merge(self, a: str, b: str) -> bool:
        if a in self.manual and b in self.manual:
            return False
        pa, pb = self.persons.get(a), self.persons.get(b)
        return not (pa and pb and pa != pb)

    # ---- applying changes ----------------------------------------------------------
    def apply(self, events: Iterable[tuple[str, VisitorEvent]], features: dict[str, np.ndarray]) -> int:
        """Apply events in order; ``features`` maps added face ids still stored to raw ``(128,)`` float32.

        An added face missing from ``features`` was deleted since and is
        skipped. Idempotent: replaying applied events changes nothing.
        """
        count = 0
        for event_id, event in events:
            self.apply_one(event, features)
            self.position = event_id
            count += 1
        self._maybe_rebuild()
        return count

    def apply_one(self, event: VisitorEvent, features: dict[str, np.ndarray]) -> None:
        op = event.op
        if op is VisitorOp.ADD and event.face:
            got = features.get(event.face)
            if got is not None:
                self.add(event.face, got, event.visitor, event.good)
        elif op is VisitorOp.ASSIGN:
            self.assign(event.faces, event.visitor)
            if event.manual and event.visitor:
                self.manual.add(event.visitor)
        elif op is VisitorOp.REMOVE:
            self.remove_many(event.faces)
        elif op is VisitorOp.NAME and event.visitor:
            if event.person:
                self.persons[event.visitor] = event.person
            else:
                self.persons.pop(event.visitor, None)
        elif op is VisitorOp.RESET:
            self.clear()

    def clear(self) -> None:
        position = self.position
        self.__post_init__()
        self.position = position

    def add(self, face_id: str, features: np.ndarray, visitor: str | None, good: bool, *, index: bool = True) -> None:
        """Store one face (idempotent: a face already held is moved to ``visitor`` instead).

        ``index=False`` leaves it out of the vector index (regrouping passes neighbours itself).
        """
        if face_id in self._slot_of:
            self.assign([face_id], visitor)
            return
        if self._n == len(self._alive):
            self._grow(max(1024, 2 * self._n))
        slot = self._n
        self._n += 1
        vec = unit(features)
        self._vec[slot] = vec
        self._alive[slot] = True
        self._good[slot] = bool(good)
        self._fid.append(face_id)
        self._vid.append(None)
        self._slot_of[face_id] = slot
        if good and index:
            self._index.add(vec[None, :], np.array([slot], np.int64))
            self._indexed += 1
        self._join(slot, visitor)

    def _join(self, slot: int, visitor: str | None) -> None:
        old = self._vid[slot]
        if old == visitor:
            return
        if old is not None:
            self.members[old].discard(slot)
            if self._good[slot]:
                self._sum[old] -= self._vec[slot]
                self._ngood[old] -= 1
            if not self.members[old]:
                self._drop_visitor(old)
        self._vid[slot] = visitor
        if visitor is not None:
            self.members.setdefault(visitor, set()).add(slot)
            if self._good[slot]:
                self._sum.setdefault(visitor, np.zeros(self.dim, np.float32))
                self._sum[visitor] = self._sum[visitor] + self._vec[slot]
                self._ngood[visitor] = self._ngood.get(visitor, 0) + 1
            else:
                self._ngood.setdefault(visitor, 0)

    def _drop_visitor(self, visitor: str) -> None:
        self.members.pop(visitor, None)
        self._sum.pop(visitor, None)
        self._ngood.pop(visitor, None)
        self.manual.discard(visitor)
        self.persons.pop(visitor, None)

    def assign(self, face_ids: Iterable[str], visitor: str | None) -> None:
        for fid in face_ids:
            slot = self._slot_of.get(fid)
            if slot is not None:
                self._join(slot, visitor)

    def remove(self, face_id: str) -> None:
        self.remove_many([face_id])

    def remove_many(self, face_ids: Iterable[str]) -> None:
        """Drop faces (unknown ids ignored); one index removal for all (IVF removal costs ~2 ms a call)."""
        unindex = []
        for face_id in face_ids:
            slot = self._slot_of.pop(face_id, None)
            if slot is None:
                continue
            self._join(slot, None)
            self._alive[slot] = False
            if self._good[slot]:
                unindex.append(slot)
                self._indexed -= 1
            self._vec[slot] = 0.0  # a forgotten face leaves memory now
            self._fid[slot] = ""
        if unindex:
            self._index.remove(np.array(unindex, np.int64))

    def _grow(self, capacity: int) -> None:
        vec = np.zeros((capacity, self.dim), np.float32)
        vec[: self._n] = self._vec[: self._n]
        self._vec = vec
        for name in ("_good", "_alive"):
            arr = np.zeros(capacity, bool)
            arr[: self._n] = getattr(self, name)[: self._n]
            setattr(self, name, arr)

    def _maybe_rebuild(self) -> None:
        """Switch to IVF past ``approximate_above`` good faces (and retrain it when it outgrew its lists)."""
        good = self._indexed
        want_ivf = good > self.config.approximate_above
        if (want_ivf and self._index.kind == "flat") or self._index.needs_rebuild() or (
                not want_ivf and self._index.kind != "flat" and good < self.config.approximate_above // 2):
            self.rebuild_index()

    def rebuild_index(self) -> None:
        slots = np.flatnonzero(self._alive[: self._n] & self._good[: self._n]).astype(np.int64)
        kind = "ivf" if len(slots) > self.config.approximate_above else "flat"
        self._index = build_index(self._vec[slots], slots, self._gcfg, kind=kind)
        log.info("visitor index rebuilt: %s, %d good faces", self._index.kind, len(slots))

    # ---- snapshots (files: faec_rec.index.snapshot, as the gallery's) ---------------------
    def to_arrays(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """``(meta, arrays)`` of the whole state, slots kept (the IVF index's labels are slots)."""
        n = self._n
        arrays: dict[str, np.ndarray] = {
            "vectors": self._vec[:n],
            "alive": self._alive[:n],
            "good": self._good[:n],
            "fids": encode_strings(list(self._fid)),
            "vids": encode_strings([v or "" for v in self._vid]),
            "named": np.frombuffer(json.dumps({"persons": self.persons, "manual": sorted(self.manual)}).encode(),
                                   dtype=np.uint8),
        }
        if isinstance(self._index, IvfIndex):
            arrays.update(self._index.to_arrays())
        meta = {"kind": "visitors", "index": self._index.kind, "faces": self.size, "visitors": len(self.members)}
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict[str, object], arrays: dict[str, np.ndarray],
                    config: VisitorsConfig | None = None) -> VisitorReplica:
        """Inverse of :meth:`to_arrays`; raises :class:`VisitorError` for a snapshot that is not
        a visitor replica's or disagrees with itself. The IVF index is loaded, not retrained."""
        if meta.get("kind") != "visitors":
            raise VisitorError(f"snapshot of kind {meta.get('kind')!r} is not a visitor replica's")
        self = cls(config or VisitorsConfig())
        alive = np.asarray(arrays["alive"], bool)
        n = len(alive)
        if arrays["vectors"].shape != (n, self.dim) or len(arrays["good"]) != n:
            raise VisitorError("visitor snapshot arrays disagree in length")
        try:
            fids = decode_strings(arrays["fids"], n)
            vids = decode_strings(arrays["vids"], n)
        except ValueError as exc:
            raise VisitorError(f"visitor snapshot is inconsistent: {exc}") from exc
        self._grow(max(1024, n))
        self._vec[:n] = arrays["vectors"]
        self._alive[:n] = alive
        self._good[:n] = np.asarray(arrays["good"], bool)
        self._n = n
        self._fid = fids
        self._vid = [None] * n
        for slot in np.flatnonzero(alive).tolist():
            self._slot_of[fids[slot]] = slot
            self._join(slot, vids[slot] or None)
        self._indexed = int((alive & self._good[:n]).sum())
        named = json.loads(arrays["named"].tobytes().decode())
        self.persons = dict(named["persons"])
        self.manual = set(named["manual"])
        self.position = str(meta["position"])
        if meta.get("index") == "ivf" and "ivf_bytes" in arrays:
            try:
                self._index = IvfIndex.from_arrays(arrays, self._vec, self._gcfg.ivf_nprobe, self._gcfg.ivf_refine)
                self._maybe_rebuild()
                return self
            except VectorError as exc:
                log.warning("visitor snapshot index unusable (%s); rebuilding it", exc)
        self.rebuild_index()
        return self

    def load_bulk(self, face_ids: list[str], features: np.ndarray, visitors: list[str | None], good: np.ndarray) -> None:
        """Bootstrap many faces at once (from Redis records): one index build."""
        n = len(face_ids)
        self._grow(max(1024, self._n + n))
        vecs = unit(features) if n else np.zeros((0, self.dim), np.float32)
        for i, fid in enumerate(face_ids):
            if fid in self._slot_of:
                continue
            slot = self._n
            self._n += 1
            self._vec[slot] = vecs[i]
            self._alive[slot] = True
            self._good[slot] = bool(good[i])
            self._fid.append(fid)
            self._vid.append(None)
            self._slot_of[fid] = slot
            self._indexed += int(bool(good[i]))
            self._join(slot, visitors[i])
        self.rebuild_index()
