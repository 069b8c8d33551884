"""People and templates in Redis, the gallery's source of truth.

Layout (key names from :class:`faec_rec.keys.Keys`):

* ``person:<id>`` hash: ``name``, ``metadata`` (JSON), ``created`` (unix s)
* ``people`` set of person ids; ``people:by-name`` hash casefolded name -> id
* ``person:<id>:templates`` set of template ids
* ``template:<id>`` hash: ``person``, ``features`` ((128,) float32 bytes, raw
  backbone scale), ``backbone``, ``version`` (projection served at enrolment),
  ``quality``, ``source``, ``hash``, ``crop`` (path under ``data_dir``), ``created``
* ``template-hashes`` hash ``<person id>:<content hash>`` -> template id
* ``gallery:version`` the projection version the gallery serves

Every change is one MULTI/EXEC transaction under WATCH, and the gallery event
that records it is appended inside the same transaction, so a change and its
event land together or not at all. Crops are files written before the
transaction and removed again when it fails.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis

from faec_rec.errors import AmbiguousPersonError, BackendUnavailable, GalleryError, InvalidNameError, NameTakenError, UnknownPersonError, UnknownTemplateError, VectorError
from faec_rec.files import atomic_write_bytes, display_name, private_dir
from faec_rec.keys import Keys, safe_id

from faec_rec.index.events import EventLog, EventOp, GalleryEvent
from faec_rec.index.projection import DIM, check_vectors

log = logging.getLogger(__name__)

MAX_NAME_LEN = 100
# KEYS: template hashes; ARGV[1]: bytes per feature vector. Returns the features
# concatenated (zeros where absent) and the 1-based positions of absent ones.
_FETCH_FEATURES = """
local width = tonumber(ARGV[1])
local parts, missing = {}, {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HGET', key, 'features')
  if v and #v == width then
    parts[i] = v
  else
    parts[i] = string.rep('\\0', width)
    missing[#missing + 1] = i
  end
end
return {table.concat(parts), table.concat(missing, ',')}
"""
_WATCH_RETRIES = 50
T = TypeVar("T")


def fold_name(name: str) -> str:
    """The unique form of a display name: NFC, stripped, inner spaces collapsed,
    casefolded (so a name typed in NFD or another case finds the same person)."""
    return unicodedata.normalize("NFC", " ".join(unicodedata.normalize("NFC", name).split()).casefold())


# Format characters that legitimate names need: zero-width (non-)joiners in
# Persian and Indic names and in emoji sequences (family, profession emoji).
NAME_JOINERS = frozenset({"\u200c", "\u200d"})
# Explicit forms for lookups: "id:<person id>" and "name:<name>" (a bare string
# is looked up as both and refused when it names two different people).
ID_PREFIX = "id:"
NAME_PREFIX = "name:"


def clean_name(name: str) -> str:
    """A display name checked and tidied (NFC, spaces collapsed): the one validator
    of names, for the CLI, the Python client and the workers alike.

    Refused (:class:`GalleryError`): empty, longer than :data:`MAX_NAME_LEN`, a path
    separator, control or format characters (tabs, newlines, bidi overrides; the
    joiners in :data:`NAME_JOINERS` are allowed), only dots, or starting with the
    lookup prefixes ``id:`` / ``name:``. Names are shown, never used as paths, but
    such names are almost always a mistake (a path passed as a name).
    """
    if not isinstance(name, str):
        raise InvalidNameError("a person's name must be text")
    nfc = unicodedata.normalize("NFC", name)
    tidy = " ".join(nfc.split())
    if not tidy:
        raise InvalidNameError("a person's name cannot be empty")
    if len(tidy) > MAX_NAME_LEN:
        raise InvalidNameError(f"name {tidy[:20]!r}... is longer than {MAX_NAME_LEN} characters")
    if "/" in tidy or "\\" in tidy:
        raise InvalidNameError(f"name {tidy!r} holds a path separator ('/' or '\\'): give a plain name like 'Ada Lovelace'")
    if any(unicodedata.category(c).startswith("C") and c not in NAME_JOINERS for c in nfc):
        raise InvalidNameError(f"name {tidy!r} holds control characters")
    if set(tidy) <= {"."}:
        raise InvalidNameError(f"name {tidy!r} is only dots: give a real name")
    if tidy.casefold().startswith((ID_PREFIX, NAME_PREFIX)):
        raise InvalidNameError(f"name {tidy!r} starts with {ID_PREFIX!r} or {NAME_PREFIX!r}, kept for lookups")
    return tidy


def backend(method: Callable[..., T]) -> Callable[..., T]:
    """Turn redis-py connection failures into :class:`BackendUnavailable`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(f"Redis is unreachable ({exc}); nothing was changed: retry when it is back") from exc

    return wrapper


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Person:
    """An enrolled person."""

    id: str
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    template_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "metadata": self.metadata, "created": self.created,
                "templates": len(self.template_ids)}


@dataclass(frozen=True)
class EnrolResult:
    """What an enrolment did: the person, the templates added, the content hashes skipped as duplicates."""

    person_id: str
    name: str
    added: tuple[str, ...]
    duplicates: tuple[str, ...]
    created: bool

    def to_json(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "name": self.name, "added": list(self.added),
                "duplicates": list(self.duplicates), "created": self.created}


@dataclass(frozen=True)
class NewTemplates:
    """Validated inputs of one enrolment request (n templates)."""

    features: np.ndarray  # (n, 128) float32 raw backbone features
    sources: list[str]
    content_hashes: list[str]
    qualities: list[float]
    crops: list[bytes] | None

    @classmethod
    def check(
        cls,
        features: np.ndarray,
        sources: Sequence[str],
        content_hashes: Sequence[str],
        qualities: Sequence[float] | None,
        crops: Sequence[bytes] | None,
    ) -> NewTemplates:
        features = check_vectors(features, "features")
        n = len(features)
        if n == 0:
            raise VectorError("features is empty: enrol at least one face")
        for what, seq in (("sources", sources), ("content_hashes", content_hashes), ("qualities", qualities), ("crops", crops)):
            if seq is not None and len(seq) != n:
                raise GalleryError(f"{what} has {len(seq)} entries for {n} feature rows: give one per face")
        for h in content_hashes:
            if not isinstance(h, str) or not h or len(h) > 128:
                raise GalleryError(f"content hash {h!r} must be a non-empty string of at most 128 characters")
        return cls(
            features=features,
            sources=[str(s) for s in sources],
            content_hashes=list(content_hashes),
            qualities=[float(q) for q in qualities] if qualities is not None else [1.0] * n,
            crops=list(crops) if crops is not None else None,
        )


class Store:
    """Reads and atomic writes of the gallery's Redis records."""

    def __init__(self, client: redis.Redis, keys: Keys, data_dir: Path, backbone_version: str = "dlib-resnet-v1") -> None:
        self.client = client
        self.keys = keys
        self.data_dir = Path(data_dir)
        self.backbone_version = backbone_version
        self.events = EventLog(client, keys)
        self._fetch_script: Any = None

    # ---- transactions ------------------------------------------------------
    def _transact(self, watch: Sequence[str], body: Callable[[redis.client.Pipeline], T], undo: Callable[[], None] | None = None) -> T:
        """Run ``body`` under WATCH; it reads, calls ``pipe.multi()`` and queues writes.

        Retries when a watched key changed; ``undo`` cleans up side effects
        (crop files) of an attempt that did not commit.
        """
        for attempt in range(_WATCH_RETRIES):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(*watch)
                    result = body(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    if undo:
                        undo()
                    time.sleep(0.001 * min(attempt + 1, 20))
                except BaseException:
                    if undo:
                        undo()
                    raise
        raise GalleryError(f"gallery kept changing under {_WATCH_RETRIES} attempts; retry the request")

    # ---- writes ------------------------------------------------------------
    @backend
    def enrol(
        self,
        name: str,
        templates: NewTemplates,
        *,
        person_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        version: str,
    ) -> EnrolResult:
        """Add templates to the person called ``name`` (created when new).

        ``person_id`` pins the id of a new person (or must match the existing
        one). Templates whose content hash this person already has are
        skipped, so a replayed request adds nothing twice.
        """
        display = clean_name(name)
        if person_id is not None:
            safe_id(person_id, "person id")
        try:
            json.dumps(metadata or {})
        except (TypeError, ValueError) as exc:
            raise GalleryError(f"metadata must be JSON-serialisable: {exc}") from exc
        return self._write_templates(display, templates, person_id=person_id, metadata=metadata, version=version, create=True)

    @backend
    def add_templates(self, person_id: str, templates: NewTemplates, *, version: str) -> EnrolResult:
        """Add templates to an existing person; raises :class:`UnknownPersonError` when absent."""
        raw = self.client.hget(self.keys.person(person_id), "name")
        if raw is None:
            raise UnknownPersonError(f"no person with id {person_id!r} is enrolled")
        return self._write_templates(_text(raw), templates, person_id=person_id, metadata=None, version=version, create=False)

    def _write_templates(
        self, display: str, new: NewTemplates, *, person_id: str | None, metadata: dict | None, version: str, create: bool
    ) -> EnrolResult:
        k = self.keys
        fold = fold_name(display)
        tids = [uuid.uuid4().hex for _ in new.content_hashes]
        written: list[Path] = []

        def undo() -> None:
            for path in written:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # no empty crops folder left behind
                    path.parent.rmdir()
            written.clear()

        def body(pipe: redis.client.Pipeline) -> EnrolResult:
            owner = _text(pipe.hget(k.person_names(), fold))
            if create:
                if person_id is not None and owner is not None and owner != person_id:
                    raise GalleryError(f"name {display!r} is enrolled as person {owner}, not {person_id}")
                pid = owner or person_id or uuid.uuid4().hex
                exists = owner is not None or (person_id is not None and pipe.exists(k.person(pid)))
                if person_id is not None and owner is None and exists:
                    current = _text(pipe.hget(k.person(pid), "name"))
                    raise GalleryError(f"person {pid} is named {current!r}; rename it instead of enrolling as {display!r}")
                name_now = display if not exists else _text(pipe.hget(k.person(pid), "name")) or display
            else:
                pid = person_id  # type: ignore[assignment]
                if not pipe.exists(k.person(pid)):
                    raise UnknownPersonError(f"no person with id {pid!r} is enrolled")
                exists = True
                name_now = _text(pipe.hget(k.person(pid), "name")) or display
            pipe.watch(k.person(pid), k.person_templates(pid))
            fields = [f"{pid}:{h}" for h in new.content_hashes]
            known = pipe.hmget(k.template_hashes(), fields)
            seen: set[str] = set()
            keep: list[int] = []
            duplicates: list[str] = []
            for i, (h, hit) in enumerate(zip(new.content_hashes, known)):
                if hit is not None or h in seen:
                    duplicates.append(h)
                else:
                    keep.append(i)
                seen.add(h)
            crop_paths = {i: self._write_crop(pid, tids[i], new.crops[i], written) for i in keep} if new.crops else {}
            now = time.time()
            pipe.multi()
            if not exists:
                self._queue_person(pipe, pid, display, metadata, now)
            for i in keep:
                self._queue_template(pipe, pid, tids[i], new, i, version, crop_paths.get(i, ""), now)
            if keep or not exists:
                self.events.append(pipe, GalleryEvent(EventOp.ADD, person=pid, name=name_now, templates=tuple(tids[i] for i in keep)))
            return EnrolResult(pid, name_now, tuple(tids[i] for i in keep), tuple(duplicates), created=not exists)

        result = self._transact([k.person_names(), k.template_hashes()], body, undo)
        if result.added or result.created:
            log.info("enrolled %d template(s) for %s (%s), %d duplicate(s) skipped",
                     len(result.added), result.person_id, result.name, len(result.duplicates))
        return result

    def _queue_person(self, pipe: redis.client.Pipeline, pid: str, display: str, metadata: dict | None, now: float) -> None:
        k = self.keys
        pipe.hset(k.person(pid), mapping={"name": display, "metadata": json.dumps(metadata or {}), "created": now})
        pipe.sadd(k.people(), pid)
        pipe.hset(k.person_names(), fold_name(display), pid)

    def _queue_template(
        self, pipe: redis.client.Pipeline, pid: str, tid: str, new: NewTemplates, i: int, version: str, crop: str, now: float
    ) -> None:
        k = self.keys
        pipe.hset(k.template(tid), mapping={
            "person": pid,
            "features": new.features[i].tobytes(),
            "backbone": self.backbone_version,
            "version": version,
            "quality": new.qualities[i],
            "source": display_name(new.sources[i]),  # a file name may not be valid UTF-8
            "hash": new.content_hashes[i],
            "crop": crop,
            "created": now,
        })
        pipe.sadd(k.person_templates(pid), tid)
        pipe.hset(k.template_hashes(), f"{pid}:{new.content_hashes[i]}", tid)

    @backend
    def import_people(self, people: Sequence[tuple[str, NewTemplates]], *, version: str, chunk: int = 1000) -> list[EnrolResult]:
        """Enrol many *new* people fast (migrations, benchmarks): one transaction per ``chunk`` people.

        Each person still gets one "add" event. Raises :class:`GalleryError`
        naming the first name already enrolled (or repeated), and writes nothing
        of that chunk; earlier chunks stay written. No crops.
        """
        k = self.keys
        results: list[EnrolResult] = []
        for start in range(0, len(people), chunk):
            part = [(clean_name(name), new) for name, new in people[start:start + chunk]]
            folds = [fold_name(name) for name, _ in part]
            if len(set(folds)) != len(folds):
                raise GalleryError("import_people: a name appears twice in one import; merge those faces")

            def body(pipe: redis.client.Pipeline) -> list[EnrolResult]:
                taken = [f for f, owner in zip(folds, pipe.hmget(k.person_names(), folds)) if owner is not None]
                if taken:
                    raise GalleryError(f"import_people: {taken[0]!r} is already enrolled; use enrol to add faces")
                now = time.time()
                pipe.multi()
                out = []
                for name, new in part:
                    pid = uuid.uuid4().hex
                    self._queue_person(pipe, pid, name, None, now)
                    first = {h: i for i, h in reversed(list(enumerate(new.content_hashes)))}
                    keep = sorted(first.values())
                    tids = [uuid.uuid4().hex for _ in keep]
                    for i, tid in zip(keep, tids):
                        self._queue_template(pipe, pid, tid, new, i, version, "", now)
                    self.events.append(pipe, GalleryEvent(EventOp.ADD, person=pid, name=name, templates=tuple(tids)))
                    dupes = tuple(h for i, h in enumerate(new.content_hashes) if i not in set(keep))
                    out.append(EnrolResult(pid, name, tuple(tids), dupes, created=True))
                return out

            results.extend(self._transact([k.person_names()], body))
        return results

    @backend
    def restore_person(
        self,
        person_id: str,
        person: dict[str, str],
        templates: Sequence[tuple[str, dict[str, Any], bytes | None]],
    ) -> EnrolResult:
        """Write a person and their templates as a backup holds them (ids, features,
        versions, crops kept), with one "add" event; for ``faec_rec.cluster.archive``.

        ``person``: the person hash (``name``, ``metadata``, ``created``);
        ``templates``: ``(template id, template hash fields, crop bytes or None)``.
        Into a live gallery it merges: an existing person with this id, or else
        with this name, receives the templates; a template whose image hash that
        person already has is skipped (reported in ``duplicates``), and a template
        id taken by another template gets a new id.
        """
        display = clean_name(person.get("name", ""))
        safe_id(person_id, "person id")
        k = self.keys
        written: list[Path] = []

        def undo() -> None:
            for path in written:
                path.unlink(missing_ok=True)
            written.clear()

        def body(pipe: redis.client.Pipeline) -> EnrolResult:
            owner = _text(pipe.hget(k.person_names(), fold_name(display)))
            exists_by_id = bool(pipe.exists(k.person(person_id)))
            pid = person_id if exists_by_id or owner is None else owner
            exists = exists_by_id or owner is not None
            if exists_by_id and owner is not None and owner != person_id:
                raise GalleryError(f"person {person_id} and the name {display!r} ({owner}) are two people here; "
                                   "rename one before merging")
            pipe.watch(k.person(pid), k.person_templates(pid))
            name_now = _text(pipe.hget(k.person(pid), "name")) if exists else display
            known = pipe.hmget(k.template_hashes(), [f"{pid}:{f.get('hash', '')}" for _, f, _ in templates]) if templates else []
            keep: list[tuple[str, dict[str, Any], bytes | None]] = []
            duplicates: list[str] = []
            seen: set[str] = set()
            for (tid, fields, crop), hit in zip(templates, known):
                chash = str(fields.get("hash", ""))
                if hit is not None or chash in seen:
                    duplicates.append(chash)
                    continue
                seen.add(chash)
                if pipe.exists(k.template(tid)):
                    tid = uuid.uuid4().hex
                keep.append((tid, fields, crop))
            crops = {tid: self._write_crop(pid, tid, crop, written) for tid, _, crop in keep if crop}
            pipe.multi()
            if not exists:
                pipe.hset(k.person(pid), mapping={"name": display, "metadata": person.get("metadata") or "{}",
                                                  "created": person.get("created") or time.time()})
                pipe.sadd(k.people(), pid)
                pipe.hset(k.person_names(), fold_name(display), pid)
            for tid, fields, _ in keep:
                pipe.hset(k.template(tid), mapping={**fields, "person": pid, "crop": crops.get(tid, "")})
                pipe.sadd(k.person_templates(pid), tid)
                pipe.hset(k.template_hashes(), f"{pid}:{fields.get('hash', '')}", tid)
            if keep or not exists:
                self.events.append(pipe, GalleryEvent(EventOp.ADD, person=pid, name=name_now,
                                                      templates=tuple(tid for tid, _, _ in keep)))
            return EnrolResult(pid, name_now or display, tuple(tid for tid, _, _ in keep), tuple(duplicates), created=not exists)

        return self._transact([k.person_names(), k.template_hashes()], body, undo)

    def _write_crop(self, pid: str, tid: str, data: bytes, written: list[Path]) -> str:
        """Write one crop atomically; returns its path relative to ``data_dir``."""
        rel = Path("crops") / pid / f"{tid}.jpg"
        path = self.data_dir / rel
        # faces are personal data: the folders and files for this user only
        private_dir(self.data_dir, tighten=False)
        private_dir(self.data_dir / "crops")
        private_dir(path.parent)
        atomic_write_bytes(path, data, fsync=True, mode=0o600)
        written.append(path)
        return str(rel)

    @backend
    def remove_template(self, template_id: str) -> str:
        """Delete one template (and its crop); returns its person id."""
        k = self.keys
        key = k.template(template_id)
        crop: list[str] = []

        def body(pipe: redis.client.Pipeline) -> str:
            person, chash, crop_path = (_text(v) for v in pipe.hmget(key, ["person", "hash", "crop"]))
            if person is None:
                raise UnknownTemplateError(f"no template with id {template_id!r} is stored")
            crop[:] = [crop_path] if crop_path else []
            pipe.multi()
            pipe.delete(key)
            pipe.srem(k.person_templates(person), template_id)
            pipe.hdel(k.template_hashes(), f"{person}:{chash}")
            self.events.append(pipe, GalleryEvent(EventOp.REMOVE, person=person, templates=(template_id,)))
            return person

        person = self._transact([key], body)
        for rel in crop:
            (self.data_dir / rel).unlink(missing_ok=True)
        return person

    @backend
    def rename(self, person_id: str, new_name: str) -> None:
        """Give a person a new display name (unique, case-insensitive)."""
        k = self.keys
        display = clean_name(new_name)
        fold = fold_name(display)

        def body(pipe: redis.client.Pipeline) -> None:
            old = _text(pipe.hget(k.person(person_id), "name"))
            if old is None:
                raise UnknownPersonError(f"no person with id {person_id!r} is enrolled")
            owner = _text(pipe.hget(k.person_names(), fold))
            if owner is not None and owner != person_id:
                raise NameTakenError(f"name {display!r} already belongs to person {owner}")
            pipe.multi()
            pipe.hdel(k.person_names(), fold_name(old))
            pipe.hset(k.person_names(), fold, person_id)
            pipe.hset(k.person(person_id), "name", display)
            self.events.append(pipe, GalleryEvent(EventOp.RENAME, person=person_id, name=display))

        self._transact([k.person_names(), k.person(person_id)], body)

    @backend
    def forget(self, person_id: str) -> tuple[str, int]:
        """Delete a person, every template and crop of theirs; returns (forget event id, templates deleted)."""
        k = self.keys
        out: dict[str, Any] = {}

        def body(pipe: redis.client.Pipeline) -> None:
            name = _text(pipe.hget(k.person(person_id), "name"))
            if name is None:
                raise UnknownPersonError(f"no person with id {person_id!r} is enrolled")
            tids = sorted(_text(t) for t in pipe.smembers(k.person_templates(person_id)))
            hashes = [_text(pipe.hget(k.template(t), "hash")) for t in tids]
            pipe.multi()
            pipe.delete(k.person(person_id), k.person_templates(person_id), *[k.template(t) for t in tids])
            pipe.srem(k.people(), person_id)
            pipe.hdel(k.person_names(), fold_name(name))
            fields = [f"{person_id}:{h}" for h in hashes if h is not None]
            if fields:
                pipe.hdel(k.template_hashes(), *fields)
            self.events.append(pipe, GalleryEvent(EventOp.FORGET, person=person_id))
            out["n"] = len(tids)

        self._transact([k.person(person_id), k.person_templates(person_id), k.person_names()], body)
        shutil.rmtree(self.data_dir / "crops" / person_id, ignore_errors=True)
        last = EventLog.last_id_from(self.events.last_id())
        purged = self.events.purge_person(person_id, before=last)
        log.info("forgot person %s: %d template(s), %d earlier event(s) deleted", person_id, out["n"], purged)
        return last, out["n"]

    @backend
    def set_version(self, version: str) -> bool:
        """Record that the gallery now serves ``version``; False when it already did."""
        k = self.keys

        def body(pipe: redis.client.Pipeline) -> bool:
            if _text(pipe.get(k.gallery_version())) == version:
                pipe.multi()
                return False
            pipe.multi()
            pipe.set(k.gallery_version(), version)
            self.events.append(pipe, GalleryEvent(EventOp.VERSION, version=version))
            return True

        return self._transact([k.gallery_version()], body)

    # ---- reads -------------------------------------------------------------
    @backend
    def version(self) -> str | None:
        """The projection version recorded in Redis (None before the first switch)."""
        return _text(self.client.get(self.keys.gallery_version()))

    @backend
    def resolve(self, id_or_name: str) -> str:
        """A person id from ``id:<id>``, ``name:<name>``, or a bare id or name.

        A bare string that is one person's name and another person's id is refused
        (:class:`AmbiguousPersonError`) rather than guessed. Raises
        :class:`UnknownPersonError` when nobody matches.
        """
        if not isinstance(id_or_name, str):
            raise UnknownPersonError(f"no person with id or name {id_or_name!r} is enrolled")
        if id_or_name.startswith(ID_PREFIX):
            pid = self._by_id(id_or_name[len(ID_PREFIX):])
            if pid is None:
                raise UnknownPersonError(f"no person with id {id_or_name[len(ID_PREFIX):]!r} is enrolled")
            return pid
        if id_or_name.startswith(NAME_PREFIX):
            pid = self._by_name(id_or_name[len(NAME_PREFIX):])
            if pid is None:
                raise UnknownPersonError(f"no person named {id_or_name[len(NAME_PREFIX):]!r} is enrolled")
            return pid
        by_id, by_name = self._by_id(id_or_name), self._by_name(id_or_name)
        if by_id is not None and by_name is not None and by_id != by_name:
            raise AmbiguousPersonError(
                f"{id_or_name!r} is the id of person {by_id} and the name of person {by_name}: "
                f"say {ID_PREFIX}{id_or_name} or {NAME_PREFIX}{id_or_name}")
        pid = by_name or by_id
        if pid is None:
            raise UnknownPersonError(f"no person with id or name {id_or_name!r} is enrolled")
        return pid

    def _by_id(self, text: str) -> str | None:
        try:
            return text if self.client.exists(self.keys.person(text)) else None
        except ValueError:
            return None  # not a valid id

    def _by_name(self, text: str) -> str | None:
        if not text.strip():
            return None
        return _text(self.client.hget(self.keys.person_names(), fold_name(text)))

    @backend
    def person(self, id_or_name: str) -> Person:
        """The person with this id or name; raises :class:`UnknownPersonError`."""
        pid = self.resolve(id_or_name)
        people = self._load_people([pid])
        if not people:
            raise UnknownPersonError(f"person {id_or_name!r} was removed meanwhile")
        return people[0]

    @backend
    def people(self) -> list[Person]:
        """Every enrolled person, sorted by name."""
        ids = sorted(_text(p) for p in self.client.smembers(self.keys.people()))
        return sorted(self._load_people(ids), key=lambda p: (fold_name(p.name), p.id))

    def _load_people(self, ids: list[str]) -> list[Person]:
        pipe = self.client.pipeline(transaction=False)
        for pid in ids:
            pipe.hgetall(self.keys.person(pid))
            pipe.smembers(self.keys.person_templates(pid))
        replies = pipe.execute()
        out = []
        for pid, record, tids in zip(ids, replies[0::2], replies[1::2]):
            if not record:
                continue
            rec = {_text(a): _text(b) for a, b in record.items()}
            out.append(Person(pid, rec.get("name", ""), json.loads(rec.get("metadata") or "{}"),
                              float(rec.get("created") or 0.0), tuple(sorted(_text(t) for t in tids))))
        return out

    @backend
    def fetch_features(self, template_ids: Sequence[str], chunk: int = 5000) -> dict[str, np.ndarray]:
        """``{template id: (128,) float32}`` for the templates still stored (the replay hot path).

        One server-side script call per ``chunk`` templates returns their
        features as one concatenated blob, so the client parses one reply, not
        one per template.
        """
        out: dict[str, np.ndarray] = {}
        if self._fetch_script is None:
            self._fetch_script = self.client.register_script(_FETCH_FEATURES)
        width = DIM * 4
        for start in range(0, len(template_ids), chunk):
            part = list(template_ids[start:start + chunk])
            blob, missing = self._fetch_script(keys=[self.keys.template(t) for t in part], args=[width])
            rows = np.frombuffer(blob, dtype=np.float32).reshape(len(part), DIM)
            absent = {int(i) - 1 for i in _text(missing).split(",") if i}
            for i, tid in enumerate(part):
                if i not in absent:
                    out[tid] = rows[i]
        return out

    @backend
    def iter_people_templates(self, chunk: int = 500) -> Iterator[tuple[str, str, list[str]]]:
        """``(person id, name, template ids)`` for every person (bootstrap of a replica)."""
        ids = sorted(_text(p) for p in self.client.smembers(self.keys.people()))
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            pipe = self.client.pipeline(transaction=False)
            for pid in part:
                pipe.hget(self.keys.person(pid), "name")
                pipe.smembers(self.keys.person_templates(pid))
            replies = pipe.execute()
            for pid, name, tids in zip(part, replies[0::2], replies[1::2]):
                if name is not None:
                    yield pid, _text(name), sorted(_text(t) for t in tids)
