"""A process's in-memory copy of the gallery: templates, names and a FAISS index.

Pure state, no I/O: :class:`Replica` applies gallery events (with the features
of added templates, fetched by the caller) and answers queries. Its answers are
a function of its *content* (which templates of which people, their features,
the projection version), not of the order the content arrived in: candidates
from the index are re-scored exactly in numpy and ties are broken by id, and
per-person thresholds are computed from the current content on demand. So two
replicas that applied the same events, or one loaded from a snapshot and
replayed and one that replayed everything, answer identically (exactly with
the flat index; with IVF or HNSW, up to their recall, ≥ 0.99).

Templates live in *slots*: rows of the raw-feature and projected-vector arrays
and the labels of the FAISS index. Removed slots are zeroed at once (their
features leave memory) and compacted away when they pile up.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from faec_rec.config import GalleryConfig
from faec_rec.errors import GalleryError, VersionMismatchError

from faec_rec.index.decision import Match, RunnerUp, decide, person_threshold, unknown_match
from faec_rec.index.events import START, EventOp, GalleryEvent
from faec_rec.index.projection import DIM, Projector
from faec_rec.index.snapshot import decode_strings, encode_strings
from faec_rec.index.vectors import FlatIndex, HnswIndex, IvfIndex, VectorIndex, build_index, index_kind

log = logging.getLogger(__name__)

RESCORE_PEOPLE = 8  # people re-scored against all their templates per query

ProjectorLoader = Callable[[str], "Projector | None"]


class Replica:
    """Templates of enrolled people, indexed for search in one projection version."""

    def __init__(self, config: GalleryConfig, projector: Projector, dim: int = DIM) -> None:
        self.config = config
        self.projector = projector
        self.dim = dim
        self.position = START  # id of the last gallery event applied
        self.pending_version: str | None = None  # a version event we had no projector for
        self.names: dict[str, str] = {}
        self._features = np.zeros((0, dim), np.float32)  # raw backbone features per slot
        self._vectors = np.zeros((0, dim), np.float32)  # projected unit vectors per slot
        self._alive = np.zeros(0, bool)
        self._n = 0  # slots used
        self._tid: list[str] = []
        self._person: list[str] = []
        self._slot_of: dict[str, int] = {}
        self._person_slots: dict[str, set[int]] = {}
        self._index: VectorIndex = FlatIndex(dim)
        self._pending: set[int] = set()  # slots added but not yet projected/indexed
        self._unindex: list[int] = []  # slots to remove from the index
        self._thresholds: dict[tuple[str, float], float] = {}
        self._centroids: dict[str, np.ndarray] = {}  # person -> unit mean of their vectors (lazy)
        self._people_count: int | None = None

    # ---- sizes -------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.projector.version

    @property
    def size(self) -> int:
        """Live templates."""
        return len(self._slot_of)

    @property
    def people_count(self) -> int:
        """People with at least one live template (the N of a search)."""
        if self._people_count is None:
            self._people_count = sum(1 for slots in self._person_slots.values() if slots)
        return self._people_count

    @property
    def index_kind(self) -> str:
        return self._index.kind

    def template_ids(self) -> list[str]:
        """Every live template id, sorted."""
        return sorted(self._slot_of)

    def person_of(self, template_id: str) -> str | None:
        slot = self._slot_of.get(template_id)
        return None if slot is None else self._person[slot]

    def people_with_templates(self) -> dict[str, list[str]]:
        """``{person id: sorted template ids}`` of people with at least one template."""
        return {p: sorted(self._tid[s] for s in slots) for p, slots in self._person_slots.items() if slots}

    # ---- applying changes -------------------------------------------------
    def apply(
        self,
        events: Iterable[tuple[str, GalleryEvent]],
        features: dict[str, np.ndarray],
        loader: ProjectorLoader | None = None,
    ) -> int:
        """Apply events in order; ``features`` maps added template ids still stored to ``(128,) float32``.

        An added template missing from ``features`` was deleted since and is
        skipped (a later event removes it anyway). Every step is idempotent, so
        replaying events already contained in the state changes nothing. A
        version event switches projection when ``loader`` yields a projector
        for it; otherwise it is remembered in ``pending_version``. Returns the
        number of events applied.
        """
        count = 0
        for event_id, event in events:
            self._apply_one(event, features, loader)
            self.position = event_id
            count += 1
        self._flush()
        return count

    def _apply_one(self, event: GalleryEvent, features: dict[str, np.ndarray], loader: ProjectorLoader | None) -> None:
        op = event.op
        if op is EventOp.ADD and event.person:
            if event.name is not None:
                self.names[event.person] = event.name
            self._person_slots.setdefault(event.person, set())
            for tid in event.templates:
                got = features.get(tid)
                if got is not None and tid not in self._slot_of:
                    self._add_slot(event.person, tid, got)
        elif op is EventOp.REMOVE:
            for tid in event.templates:
                self._kill(tid)
        elif op is EventOp.RENAME and event.person in self.names and event.name is not None:
            self.names[event.person] = event.name
        elif op is EventOp.FORGET and event.person:
            for slot in sorted(self._person_slots.get(event.person, ())):
                self._kill(self._tid[slot])
            self._person_slots.pop(event.person, None)
            self.names.pop(event.person, None)
        elif op is EventOp.VERSION and event.version and event.version != self.version:
            projector = loader(event.version) if loader else None
            if projector is None:
                self.pending_version = event.version
                log.info("gallery switched to version %s; this replica serves %s until given its projector",
                         event.version, self.version)
            else:
                self._flush()
                self.switch(projector)
        self._thresholds.clear()
        self._centroids.clear()
        self._people_count = None

    def add_person(self, person_id: str, name: str, templates: Sequence[tuple[str, np.ndarray]]) -> None:
        """Add a person and their ``(template id, (128,) float32 features)`` (bootstrap from Redis)."""
        self.names[person_id] = name
        self._person_slots.setdefault(person_id, set())
        for tid, feats in templates:
            if tid not in self._slot_of:
                self._add_slot(person_id, tid, feats)
        self._thresholds.clear()
        self._centroids.clear()
        self._people_count = None

    def _add_slot(self, person: str, tid: str, feats: np.ndarray) -> None:
        if self._n == len(self._alive):
            self._grow(max(1024, 2 * self._n))
        slot = self._n
        self._n += 1
        self._features[slot] = feats
        self._alive[slot] = True
        self._tid.append(tid)
        self._person.append(person)
        self._slot_of[tid] = slot
        self._person_slots.setdefault(person, set()).add(slot)
        self._pending.add(slot)

    def _grow(self, capacity: int) -> None:
        for name in ("_features", "_vectors"):
            old = getattr(self, name)
            new = np.zeros((capacity, self.dim), np.float32)
            new[: len(old)] = old
            setattr(self, name, new)
        alive = np.zeros(capacity, bool)
        alive[: len(self._alive)] = self._alive
        self._alive = alive

    def _kill(self, tid: str) -> None:
        slot = self._slot_of.pop(tid, None)
        if slot is None:
            return
        self._alive[slot] = False
        self._features[slot] = 0.0  # a forgotten face leaves memory now, not at compaction
        self._vectors[slot] = 0.0
        self._person_slots.get(self._person[slot], set()).discard(slot)
        self._person[slot] = ""  # nothing of a removed template stays, not even its ids
        self._tid[slot] = ""
        if slot in self._pending:
            self._pending.discard(slot)
        else:
            self._unindex.append(slot)

    def _flush(self) -> None:
        """Project and index pending slots, unindex removed ones, rebuild when due."""
        if self._unindex:
            self._index.remove(np.array(self._unindex, np.int64))
            self._unindex.clear()
        if self._pending:
            slots = np.array(sorted(self._pending), np.int64)
            self._pending.clear()
            self._vectors[slots] = self.projector.project(self._features[slots])
            self._index.add(self._vectors[slots], slots)
        live = self.size
        dead = self._n - live
        kind = self._index.kind
        wanted = kind
        if kind == "flat" and index_kind(live, self.config) != "flat":
            wanted = self.config.approximate
        elif kind != "flat" and live < self.config.hnsw_above // 2:
            wanted = "flat"  # hysteresis: do not flap around the threshold
        elif kind != "flat" and kind != self.config.approximate:
            wanted = self.config.approximate
        if wanted != kind or self._index.needs_rebuild() or dead > max(1024, live):
            self._rebuild(wanted)

    def _rebuild(self, kind: str | None = None) -> None:
        """Compact slots to the live templates (order kept) and rebuild the index."""
        if self._n != self.size:
            self._compact()
        kind = kind or index_kind(self._n, self.config)
        self._index = build_index(self._vectors[: self._n], np.arange(self._n, dtype=np.int64), self.config, kind=kind)
        self._thresholds.clear()
        self._centroids.clear()
        self._people_count = None
        log.info("replica index rebuilt: %s, %d templates", kind, self._n)

    def _compact(self) -> None:
        """Drop dead slots, keeping the order of the live ones."""
        live = np.flatnonzero(self._alive[: self._n])
        self._features = np.ascontiguousarray(self._features[live])
        self._vectors = np.ascontiguousarray(self._vectors[live])
        self._alive = np.ones(len(live), bool)
        self._tid = [self._tid[s] for s in live]
        self._person = [self._person[s] for s in live]
        self._n = len(live)
        self._slot_of = {t: i for i, t in enumerate(self._tid)}
        slots_of: dict[str, set[int]] = {p: set() for p in self._person_slots}
        for i, p in enumerate(self._person):
            slots_of.setdefault(p, set()).add(i)
        self._person_slots = slots_of

    def switch(self, projector: Projector) -> None:
        """Re-project every stored feature with ``projector`` and serve its version from now on."""
        self._flush()
        live = np.flatnonzero(self._alive[: self._n])
        if len(live):
            self._vectors[live] = projector.project(np.ascontiguousarray(self._features[live]))
        self.projector = projector
        if self.pending_version == projector.version:
            self.pending_version = None
        self._rebuild(self._index.kind if self.size else None)

    # ---- queries -----------------------------------------------------------
    def identify(self, embeddings: np.ndarray, version: str, global_threshold: float) -> list[Match]:
        """The open-set answer for each ``(n, 128) float32`` unit row of projection ``version``."""
        if version != self.version:
            raise VersionMismatchError(
                f"queries are version {version!r} but the gallery serves {self.version!r}: "
                "project with Gallery.projector (or call Gallery.identify_features)"
            )
        live = self.size
        if live == 0:
            return [unknown_match(global_threshold) for _ in range(len(embeddings))]
        k = min(self.config.search_k, live)
        _, labels = self._index.search(embeddings, k)
        return [self._match(q, row, k, global_threshold) for q, row in zip(embeddings, labels)]

    def _exact(self, query: np.ndarray, slots: np.ndarray) -> np.ndarray:
        # Elementwise product then a row sum: the same arithmetic for a given
        # pair in every replica, whatever the index kind, batch size or slot.
        return (self._vectors[slots] * query).sum(axis=1, dtype=np.float32)

    def _best_per_person(self, query: np.ndarray, slots: np.ndarray) -> list[tuple[float, str, str]]:
        """``[(score, person, template id)]`` best template per person, best first (ties by id)."""
        slots = slots[(slots >= 0)]
        slots = slots[self._alive[slots]]
        scores = self._exact(query, slots)
        best: dict[str, tuple[float, str]] = {}
        for score, slot in zip(scores.tolist(), slots.tolist()):
            person, tid = self._person[slot], self._tid[slot]
            held = best.get(person)
            if held is None or score > held[0] or (score == held[0] and tid < held[1]):
                best[person] = (score, tid)
        return sorted(((s, p, t) for p, (s, t) in best.items()), key=lambda r: (-r[0], r[1]))

    def _match(self, query: np.ndarray, labels: np.ndarray, k: int, global_threshold: float) -> Match:
        ranked = self._best_per_person(query, labels)
        if len(ranked) < 2 and k < self.size:
            # One person filled every candidate: look further for the runner-up.
            own = len(self._person_slots.get(ranked[0][1], ())) if ranked else 0
            wider = min(self.size, own + self.config.search_k)
            _, more = self._index.search(query[None, :], wider)
            ranked = self._best_per_person(query, more[0])
        if not ranked:
            return unknown_match(global_threshold)
        if self.config.centroid_weight > 0:
            ranked = self._rescore(query, ranked)
        score, person, tid = ranked[0]
        runner = None
        if len(ranked) > 1:
            r_score, r_person, _ = ranked[1]
            runner = RunnerUp(r_person, self.names.get(r_person, ""), r_score)
        threshold = self.threshold_for(person, global_threshold) if self.config.per_person_thresholds else global_threshold
        decision = decide(score, None if runner is None else runner.score, threshold, self.config.margin)
        return Match(person, self.names.get(person, ""), score, decision, threshold, runner, tid)

    def _centroid(self, person: str) -> np.ndarray:
        """Unit mean of ``person``'s projected template vectors (templates in id order, so
        every replica sums them in the same order)."""
        c = self._centroids.get(person)
        if c is None:
            slots = sorted(self._person_slots.get(person, ()), key=lambda s: self._tid[s])
            mean = self._vectors[slots].astype(np.float64).mean(axis=0)
            c = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
            self._centroids[person] = c
        return c

    def _rescore(self, query: np.ndarray, ranked: list[tuple[float, str, str]]) -> list[tuple[float, str, str]]:
        """Score the leading people against their whole set of templates, not only the best one.

        ``w * cos(query, unit mean of the person's templates) + (1 - w) * best template``
        (``w = gallery.centroid_weight``) for the ``RESCORE_PEOPLE`` best people by
        single template; a lucky single template of a stranger counts less than a
        face that resembles all of a person's photos. One template: the same score.
        """
        w = self.config.centroid_weight
        self._flush_if_pending()
        out = []
        for best, person, tid in ranked[:RESCORE_PEOPLE]:
            if len(self._person_slots.get(person, ())) < 2:
                out.append((best, person, tid))
                continue
            central = float((self._centroid(person) * query).sum(dtype=np.float32))
            out.append((float(np.float32(w * central + (1.0 - w) * best)), person, tid))
        return sorted(out, key=lambda r: (-r[0], r[1]))

    def _flush_if_pending(self) -> None:
        if self._pending or self._unindex:
            self._flush()

    def impostor_scores(self, person_id: str) -> np.ndarray:
        """For each of this person's templates, its similarity to the nearest *other* person's template.

        ``(t,) float32`` for a person with ``t`` templates (empty when nobody
        else is enrolled).
        """
        own = np.array(sorted(self._person_slots.get(person_id, ())), np.int64)
        if len(own) == 0 or self.size <= len(own):
            return np.zeros(0, np.float32)
        own_set = set(own.tolist())
        k = min(self.size, len(own) + 1)
        nearest = np.full(len(own), np.nan, np.float32)
        while True:
            _, labels = self._index.search(self._vectors[own], k)
            for i, (query, row) in enumerate(zip(self._vectors[own], labels)):
                if not np.isnan(nearest[i]):
                    continue
                others = np.array([s for s in row.tolist() if s >= 0 and s not in own_set and self._alive[s]], np.int64)
                if len(others):
                    nearest[i] = self._exact(query, others).max()
            if not np.isnan(nearest).any() or k >= self.size:
                break
            k = min(self.size, 2 * k + self.config.search_k)  # approximate search missed: look wider
        return nearest[~np.isnan(nearest)]

    def threshold_for(self, person_id: str, global_threshold: float) -> float:
        """This person's threshold (see :func:`faec_rec.index.decision.person_threshold`), cached until the content changes."""
        key = (person_id, global_threshold)
        value = self._thresholds.get(key)
        if value is None:
            c = self.config
            value = person_threshold(self.impostor_scores(person_id), global_threshold,
                                     quantile=c.impostor_quantile, guard=c.impostor_guard, max_raise=c.max_raise)
            self._thresholds[key] = value
        return value

    # ---- snapshots ---------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(meta, arrays)`` describing the whole state (for :mod:`faec_rec.index.snapshot`)."""
        self._flush()
        n = self._n
        alive = self._alive[:n]
        arrays: dict[str, np.ndarray] = {
            "features": self._features[:n],
            "vectors": self._vectors[:n],
            "alive": alive,
            "tids": encode_strings(list(self._tid)),
            "persons": encode_strings(list(self._person)),
            "names": np.frombuffer(json.dumps(self.names).encode(), dtype=np.uint8),
        }
        if isinstance(self._index, (HnswIndex, IvfIndex)):
            arrays.update(self._index.to_arrays())  # IVF's float rows are the "vectors" above (label = slot)
        meta = {"version": self.version, "kind": self._index.kind, "templates": self.size, "people": len(self.names)}
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], config: GalleryConfig, projector: Projector) -> Replica:
        """Inverse of :meth:`to_arrays`; re-projects when ``projector`` serves another version."""
        self = cls(config, projector, dim=int(arrays["features"].shape[1]) if arrays["features"].ndim == 2 else DIM)
        alive = np.asarray(arrays["alive"], bool)
        n = len(alive)
        if n and (arrays["features"].shape[0] != n or arrays["vectors"].shape[0] != n):
            raise GalleryError("snapshot arrays disagree in length")
        self._features = np.array(arrays["features"], np.float32)
        self._vectors = np.array(arrays["vectors"], np.float32)
        self._alive = alive.copy()
        self._n = n
        try:
            self._tid = decode_strings(arrays["tids"], n)
            self._person = decode_strings(arrays["persons"], n)
        except ValueError as exc:
            raise GalleryError(f"snapshot is inconsistent: {exc}") from exc
        self.names = json.loads(arrays["names"].tobytes().decode())
        self._person_slots = {p: set() for p in self.names}
        for slot in np.flatnonzero(alive).tolist():
            self._slot_of[self._tid[slot]] = slot
            self._person_slots.setdefault(self._person[slot], set()).add(slot)
        self.position = meta["position"]
        same_version = meta.get("version") == projector.version
        if not same_version:
            live = np.flatnonzero(alive)
            if len(live):
                self._vectors[live] = projector.project(np.ascontiguousarray(self._features[live]))
        kind = meta.get("kind")
        if same_version and kind == config.approximate == "hnsw" and "hnsw_bytes" in arrays:
            self._index = HnswIndex.from_arrays(arrays, config.hnsw_ef_search)
        elif same_version and kind == config.approximate == "ivf" and "ivf_bytes" in arrays:
            self._index = IvfIndex.from_arrays(arrays, self._vectors, config.ivf_nprobe, config.ivf_refine)
        else:
            self._rebuild()
        return self

    def digest(self) -> dict[str, Any]:
        """A content summary for comparing replicas: version, people, sorted templates per person."""
        return {"version": self.version, "names": dict(sorted(self.names.items())), "templates": self.people_with_templates()}
