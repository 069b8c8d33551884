"""The gallery facade the workers and the CLI use.

``Gallery`` ties the Redis source of truth (:mod:`~faec_rec.index.store`), the
gallery event stream (:mod:`~faec_rec.index.events`), this process's replica
(:mod:`~faec_rec.index.replica`) and its snapshots
(:mod:`~faec_rec.index.snapshot`) together::

    gallery = Gallery(redis_client, Keys("faec"), settings.gallery, settings.data_dir)
    gallery.enrol("Ada Lovelace", features, sources=[...], content_hashes=[...])
    gallery.sync()                                   # before each batch: cheap when idle
    matches = gallery.identify(gallery.projector.project(features), gallery.version)

Writes go to Redis first (atomic, with their event) and are then applied to the
local replica through the stream like anyone else's, so every replica follows
one order. The replica loads lazily on first use: from the newest snapshot
under ``data_dir/snapshots/<prefix>/`` plus the events after it, or, without a
snapshot, from the Redis records themselves plus the events after the moment
they were read.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import redis

from faec_rec.config import GalleryConfig
from faec_rec.errors import GalleryError
from faec_rec.keys import Keys

from faec_rec.index.calibration import global_threshold, supplied_threshold
from faec_rec.index.decision import Match
from faec_rec.index.events import EventLog, EventOp, id_before
from faec_rec.index.projection import BASE_VERSION, BaseProjector, Projector, check_unit_vectors, check_vectors
from faec_rec.index.replica import Replica
from faec_rec.index.snapshot import list_snapshots, load_newest, snapshot_position, write_snapshot
from faec_rec.index.store import EnrolResult, NewTemplates, Person, Store, backend

log = logging.getLogger(__name__)

READ_CHUNK = 5000
SNAPSHOT_LOCK_S = 600


class Gallery:
    """Enrolled people, searchable, kept in step with every other process.

    ``projector`` is the projection this process serves (default
    :class:`BaseProjector`); ``projector_loader(version)`` lets the replica
    follow a "version" event written by another process by itself (without
    it, a version switch waits for :meth:`set_projector`).
    """

    def __init__(
        self,
        redis: redis.Redis,
        keys: Keys,
        config: GalleryConfig,
        data_dir: Path,
        projector: Projector | None = None,
        *,
        projector_loader: Callable[[str], Projector] | None = None,
        backbone_version: str = "dlib-resnet-v1",
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.data_dir = Path(data_dir)
        self.store = Store(redis, keys, self.data_dir, backbone_version)
        self.events: EventLog = self.store.events
        self.snapshot_dir = self.data_dir / "snapshots" / keys.prefix
        self._initial = projector or BaseProjector()
        self._projectors: dict[str, Projector] = {BASE_VERSION: BaseProjector(), self._initial.version: self._initial}
        self._loader = projector_loader
        self._lock = threading.RLock()
        self._replica: Replica | None = None
        self._since_snapshot = 0
        # The backbone the replica's features are in, with its own calibrated threshold
        # (index/backbone_swap.py); read when the replica loads and on "backbone" events.
        self._backbone: dict[str, Any] = {"name": backbone_version, "generation": 0, "threshold": None}

    # ---- the replica -------------------------------------------------------
    @property
    def replica(self) -> Replica:
        """This process's replica, loaded on first use."""
        if self._replica is None:
            with self._lock:
                if self._replica is None:
                    self._replica = self._load()
        return self._replica

    @property
    def projector(self) -> Projector:
        """The projector whose vectors :meth:`identify` accepts now."""
        return self._replica.projector if self._replica is not None else self._initial

    @property
    def version(self) -> str:
        return self.projector.version

    @property
    def size(self) -> int:
        """Live templates in this replica (call :meth:`sync` first for the newest count)."""
        return self.replica.size

    @property
    def backbone(self) -> dict[str, Any]:
        """``{"name", "generation", "threshold", "raise_scale", "search"}`` of the backbone this replica's
        features are in (loads the replica; :meth:`sync` follows a switch)."""
        self.replica
        return self._backbone

    @property
    def threshold(self) -> float:
        """The global threshold: configured (used as is), else the projector's or the model
        card's per-pair threshold lifted for the number of people enrolled (see
        :func:`~faec_rec.index.calibration.search_raise`)."""
        # A search over N people gives a stranger N chances: the per-pair threshold is
        # lifted so that about gallery.search_far of strangers pass, whatever N.
        people = self._replica.people_count if self._replica is not None else 0
        own = getattr(self.projector, "threshold", None)
        supplied = self._backbone.get("threshold")
        if self.config.threshold is None and own is None and self.version == BASE_VERSION and supplied is not None:
            # A supplied backbone: its own per-pair threshold, lifted for the gallery size by
            # its own search table (measured on this deployment's crops, training/backbones.py),
            # or by the built-in raise scaled by its impostor spread when the gallery was too
            # small to measure one.
            return supplied_threshold(float(supplied), people, self.config.search_far,
                                      search=self._backbone.get("search"),
                                      raise_scale=float(self._backbone.get("raise_scale") or 1.0))
        return global_threshold(self.config.threshold, own, self.version,
                                people, self.config.search_far)

    def _projector_for(self, version: str) -> Projector | None:
        known = self._projectors.get(version)
        if known is not None or self._loader is None:
            return known
        try:
            projector = self._loader(version)
        except Exception:  # a broken model file must not stop the replica following content
            log.exception("cannot load the projector of version %r", version)
            return None
        self._projectors[version] = projector
        return projector

    @backend
    def _load(self) -> Replica:
        started = time.perf_counter()
        if self.config.faiss_threads:
            # Process-wide: on a shared 2-core box two spinning OpenMP threads
            # made one flat query 100x slower than a single thread does.
            faiss.omp_set_num_threads(self.config.faiss_threads)
        self._read_backbone()
        found = load_newest(self.snapshot_dir)
        if found is not None:
            path, meta, arrays = found
            replica = Replica.from_arrays(meta, arrays, self.config, self._initial)
            how = f"snapshot {path.name}"
        else:
            replica = self._bootstrap_from_redis()
            how = "Redis records"
        if found is not None and self._behind_trim(replica):
            log.warning("snapshot %s is older than the trimmed gallery stream; reading the Redis records", how)
            replica = self._bootstrap_from_redis()
            how = "Redis records"
        self._replica = replica
        applied = self._catch_up(replica)
        replica = self._replica  # a "backbone" event among them replaced it
        log.info("gallery replica loaded from %s + %d event(s): %d templates, version %s, %s index, %.2f s",
                 how, applied, replica.size, replica.version, replica.index_kind, time.perf_counter() - started)
        return replica

    def _read_backbone(self) -> None:
        from faec_rec.index.backbone_swap import current_backbone

        self._backbone = current_backbone(self.redis, self.keys)
        self.store.backbone_version = str(self._backbone["name"])

    def _bootstrap_from_redis(self, projector: Projector | None = None) -> Replica:
        replica = Replica(self.config, projector or self._initial)
        # The stream position is read first: events after it are replayed, and
        # replay is idempotent, so changes racing with the read are not lost.
        replica.position = EventLog.last_id_from(self.events.last_id())
        batch: list[tuple[str, str, list[str]]] = []

        def flush() -> None:
            feats = self.store.fetch_features([t for _, _, tids in batch for t in tids])
            for person_id, name, tids in batch:
                replica.add_person(person_id, name, [(t, feats[t]) for t in tids if t in feats])
            batch.clear()

        for row in self.store.iter_people_templates():
            batch.append(row)
            if len(batch) >= READ_CHUNK:
                flush()
        flush()
        replica.apply([], {})
        return replica

    def _trimmed(self) -> str | None:
        """Id of the newest event deleted by stream trimming (None: never trimmed)."""
        raw = self.redis.hget(self.keys.gallery_snapshot(), "trimmed")
        return raw.decode() if isinstance(raw, bytes) else raw

    def _behind_trim(self, replica: Replica, trimmed: Any = False) -> bool:
        """``trimmed``: the snapshot hash's ``trimmed`` field already read (False: read it now)."""
        if trimmed is False:
            trimmed = self._trimmed()
        elif isinstance(trimmed, bytes):
            trimmed = trimmed.decode()
        return trimmed is not None and id_before(replica.position, trimmed)

    def _catch_up(self, replica: Replica, first: list[tuple[str, Any]] | None = None) -> int:
        """Apply every event after the replica's position; ``first``: the first batch, already read."""
        applied = 0
        forgot = False
        while True:
            batch, first = (first, None) if first is not None else (self.events.read(replica.position, count=READ_CHUNK), None)
            if not batch:
                break
            if any(e.op is EventOp.BACKBONE for _, e in batch):
                # Every stored feature was replaced: this replica's (and older snapshots')
                # are stale. Read the records again; they already hold the new features.
                self._read_backbone()
                replica = self._replica = self._bootstrap_from_redis(replica.projector)
                log.info("gallery features are now backbone %s's: replica reloaded (%d templates)",
                         self._backbone["name"], replica.size)
                applied += len(batch)
                self._since_snapshot = self.config.snapshot_every  # a fresh snapshot at the next sync
                continue
            added = [t for _, e in batch if e.op is EventOp.ADD for t in e.templates]
            features = self.store.fetch_features(added) if added else {}
            applied += replica.apply(batch, features, loader=self._projector_for)
            forgot = forgot or any(e.op is EventOp.FORGET for _, e in batch)
            if len(batch) < READ_CHUNK:
                break
        self._since_snapshot += applied
        if forgot and list_snapshots(self.snapshot_dir):
            # Snapshots on disk may hold a forgotten person's features: replace them.
            self._write_snapshot(keep=1)
        return applied

    @backend
    def fresh_replica(self, source: str = "stream") -> Replica:
        """A new replica built without snapshots, for audits and tests (not installed).

        ``source="stream"`` replays the whole gallery event stream;
        ``source="records"`` reads the Redis records, then the events after them.
        """
        if source == "stream":
            if self._trimmed() is not None:
                raise GalleryError("the gallery stream was trimmed after a snapshot: use source='records'")
            replica = Replica(self.config, self.projector)
        elif source == "records":
            replica = self._bootstrap_from_redis(self.projector)
        else:
            raise GalleryError(f"source {source!r}: use 'stream' or 'records'")
        while True:
            batch = self.events.read(replica.position, count=READ_CHUNK)
            if not batch:
                return replica
            added = [t for _, e in batch if e.op is EventOp.ADD for t in e.templates]
            replica.apply(batch, self.store.fetch_features(added) if added else {}, loader=self._projector_for)

    def queue_sync(self, pipe: Any) -> tuple[str, int] | None:
        """Queue the reads of a :meth:`sync` on the caller's ``pipe`` (so they share its round
        trip): the stream's trim mark and the events after this replica's position. Returns
        ``(position, replies)`` to hand to :meth:`sync` with those replies, or None (nothing
        queued) while no replica is loaded."""
        replica = self._replica
        if replica is None:
            return None
        pipe.hget(self.keys.gallery_snapshot(), "trimmed")
        self.events.read(replica.position, count=READ_CHUNK, pipe=pipe)
        return replica.position, 2

    @backend
    def sync(self, prefetched: tuple[str, Sequence[Any]] | None = None) -> int:
        """Apply gallery events written since the last call; returns how many (0 is one Redis read).

        ``prefetched``: ``(position, [trim mark, events])`` read by :meth:`queue_sync`; used
        when the replica is still at that position, else the reads are made again.
        Writes a snapshot once ``config.snapshot_every`` events were applied
        since the last one (one process at a time, under a Redis lock).
        """
        with self._lock:
            if self._replica is None:
                self.replica
                return 0
            trimmed: Any = False
            first = None
            if prefetched is not None and prefetched[0] == self._replica.position:
                trimmed, first = prefetched[1][0], self.events.parse(prefetched[1][1])
            if self._behind_trim(self._replica, trimmed):
                # Events this replica has not seen were trimmed away: start again from the records.
                log.warning("gallery replica at %s is behind the trimmed stream; rebuilding from Redis records",
                            self._replica.position)
                self._replica = self._bootstrap_from_redis(self._replica.projector)
                first = None
            applied = self._catch_up(self._replica, first)
            if self._since_snapshot >= self.config.snapshot_every:
                self._maybe_snapshot()
            return applied

    def _sync_if_loaded(self) -> None:
        """After a write: bring this process's replica up to date, if it has one.

        A process that only edits people (the CLI) never loads the replica.
        """
        if self._replica is not None:
            self.sync()

    # ---- snapshots ---------------------------------------------------------
    def _maybe_snapshot(self) -> None:
        token = f"{id(self)}:{time.time()}"
        if not self.redis.set(self.keys.gallery_lock(), token, nx=True, ex=SNAPSHOT_LOCK_S):
            return
        try:
            self._write_snapshot()
        finally:
            if self.redis.get(self.keys.gallery_lock()) == token.encode():
                self.redis.delete(self.keys.gallery_lock())

    def _write_snapshot(self, keep: int = 2) -> Path:
        replica = self.replica
        meta, arrays = replica.to_arrays()
        path = write_snapshot(self.snapshot_dir, replica.position, meta, arrays, keep=keep)
        self.redis.hset(self.keys.gallery_snapshot(), mapping={
            "path": str(path), "position": replica.position, "version": replica.version, "templates": replica.size,
        })
        self._since_snapshot = 0
        kept = list_snapshots(self.snapshot_dir)
        if kept and self.config.trim_stream:
            self._trim_stream(snapshot_position(kept[-1]))
        return path

    def _trim_stream(self, keep_from: str) -> None:
        """Delete events before ``keep_from`` (the oldest snapshot kept still replays from there).

        The id of the newest deleted event is recorded in the snapshot hash
        (``trimmed``) in the same transaction; a replica whose position is
        before it rebuilds from the Redis records instead of missing events.
        """
        key = self.keys.gallery_events()
        below = self.redis.xrevrange(key, max=f"({keep_from}", count=1)
        if not below:
            return
        last = below[0][0].decode() if isinstance(below[0][0], bytes) else below[0][0]
        pipe = self.redis.pipeline(transaction=True)
        pipe.xtrim(key, minid=keep_from, approximate=False)
        pipe.hset(self.keys.gallery_snapshot(), "trimmed", last)
        deleted, _ = pipe.execute()
        log.info("gallery stream trimmed before %s (%d events)", keep_from, deleted)

    @backend
    def snapshot(self) -> Path:
        """Sync, then write a snapshot of this replica now; returns its path."""
        with self._lock:
            self._catch_up(self.replica)
            return self._write_snapshot()

    # ---- people and templates ---------------------------------------------
    def enrol(
        self,
        name: str,
        features: np.ndarray,
        *,
        person_id: str | None = None,
        sources: Sequence[str],
        content_hashes: Sequence[str],
        qualities: Sequence[float] | None = None,
        crops: Sequence[bytes] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> EnrolResult:
        """Enrol faces of ``name`` (created when new; names are unique, case-insensitive).

        ``features``: ``(n, 128) float32`` raw backbone features, one row per
        face, with a ``source``, a ``content_hash`` (of the source image) and
        optionally a quality and a JPEG crop each. Faces whose content hash the
        person already has are skipped, so a replayed request adds nothing
        twice. Raises :class:`VectorError`, :class:`GalleryError`,
        :class:`BackendUnavailable` (nothing written).
        """
        new = NewTemplates.check(features, sources, content_hashes, qualities, crops)
        result = self.store.enrol(name, new, person_id=person_id, metadata=metadata, version=self.version)
        self._sync_if_loaded()
        return result

    def add_templates(
        self,
        person_id: str,
        features: np.ndarray,
        *,
        sources: Sequence[str],
        content_hashes: Sequence[str],
        qualities: Sequence[float] | None = None,
        crops: Sequence[bytes] | None = None,
    ) -> EnrolResult:
        """Add faces to an existing person (see :meth:`enrol`); :class:`UnknownPersonError` when absent."""
        new = NewTemplates.check(features, sources, content_hashes, qualities, crops)
        result = self.store.add_templates(person_id, new, version=self.version)
        self._sync_if_loaded()
        return result

    def import_people(
        self, people: Sequence[tuple[str, np.ndarray, Sequence[str], Sequence[str]]], *, chunk: int = 1000
    ) -> list[EnrolResult]:
        """Enrol many new people at once: ``(name, (n, 128) float32 features, sources, content hashes)`` each.

        For migrations: one Redis transaction per ``chunk`` people instead of
        one per person; refuses names already enrolled (:class:`GalleryError`).
        """
        checked = [(name, NewTemplates.check(f, src, hashes, None, None)) for name, f, src, hashes in people]
        results = self.store.import_people(checked, version=self.version, chunk=chunk)
        self._sync_if_loaded()
        return results

    def remove_template(self, template_id: str) -> str:
        """Delete one template, its crop and its vector; returns the person id."""
        person = self.store.remove_template(template_id)
        self._sync_if_loaded()
        return person

    def rename(self, person_id: str, new_name: str) -> None:
        """Rename a person; :class:`GalleryError` when another person has that name."""
        self.store.rename(self.store.resolve(person_id), new_name)
        self._sync_if_loaded()

    def forget(self, person_id: str) -> int:
        """Delete a person (id or name) with every template, crop and vector; returns templates deleted.

        Their earlier gallery events are deleted from the stream, and this
        process's snapshots are rewritten without them; other replicas drop
        their vectors (and rewrite their snapshots) when they sync.
        """
        pid = self.store.resolve(person_id)
        _, count = self.store.forget(pid)
        if self._replica is not None or list_snapshots(self.snapshot_dir):
            self.sync()  # applies the forget and rewrites this machine's snapshots without them
        return count

    def person(self, id_or_name: str) -> Person:
        """A person by id or name; :class:`UnknownPersonError` when absent."""
        return self.store.person(id_or_name)

    def people(self) -> list[Person]:
        """Every enrolled person, sorted by name."""
        return self.store.people()

    # ---- queries -----------------------------------------------------------
    def identify(self, embeddings: np.ndarray, version: str) -> list[Match]:
        """One :class:`Match` per ``(n, 128) float32`` L2-normalised row of projection ``version``.

        Raises :class:`VersionMismatchError` when ``version`` is not the one
        this replica serves and :class:`VectorError` on bad vectors. An empty
        gallery answers ``unknown`` for every row. Does not sync: call
        :meth:`sync` before each batch.
        """
        embeddings = check_unit_vectors(embeddings)
        with self._lock:
            return self.replica.identify(embeddings, version, self.threshold)

    def identify_features(self, features: np.ndarray) -> list[Match]:
        """Project raw ``(n, 128) float32`` backbone features with the served projector and identify them."""
        features = check_vectors(features)
        with self._lock:
            projector = self.replica.projector
            return self.replica.identify(projector.project(features), projector.version, self.threshold)

    # ---- model versions ----------------------------------------------------
    def set_projector(self, projector: Projector) -> None:
        """Serve ``projector``'s version: re-project every stored feature, switch, tell the others.

        The switch is recorded first (Redis ``gallery:version`` and a
        "version" event, so an unreachable Redis changes nothing); then this
        replica re-projects its features into a new index and swaps it in
        under its lock, so no query ever sees two versions.
        """
        if not isinstance(getattr(projector, "version", None), str) or not callable(getattr(projector, "project", None)):
            raise GalleryError(f"{projector!r} is not a Projector (needs .version and .project)")
        with self._lock:
            replica = self.replica
            self._projectors[projector.version] = projector
            self.store.set_version(projector.version)
            if projector.version != replica.version or projector is not replica.projector:
                started = time.perf_counter()
                replica.switch(projector)
                log.info("gallery now serves version %s: %d templates re-projected in %.1f ms",
                         projector.version, replica.size, 1000 * (time.perf_counter() - started))
            self._catch_up(replica)
