"""Gallery backup and restore: one versioned, checksummed tar archive, streamed.

Archive layout (format ``faec-rec-gallery``, version :data:`FORMAT_VERSION`)::

    format.json                  first: format name and version, writer, prefix, settings fingerprint
    people/00000.jsonl           one JSON line per person: id, person hash, templates
    people/patch-00000.jsonl     later records that replace earlier ones (``deleted``: gone)
    crops/<person>/<template>.jpg
    models/registry.json         head records, the version in service, its events
    models/heads/<file>          head weights
    visitors/faces-00000.jsonl   one JSON line per stored unknown face: id, features, fields, crop
    visitors/crops/<face>.jpg
    visitors/groups.jsonl        one line per visitor (id, record: name, manual flag, cover..., faces),
                                 then one line {"alone": [...], "counter": n, "stream_id": ...}
    manifest.json                last: sha256 and size of every member, the gallery
                                 stream id the archive is consistent at, counts

Consistency while workers keep enrolling: people are read in chunks, each under
WATCH of its people's keys, with the newest gallery-event id read in the same
EXEC (the chunk's *stamp*). A person is then exact as of the greatest stamp F
unless a gallery event between its own stamp and F names it; such people (and
people created meanwhile) are read again into a patch chunk, and so on until a
round finds no event naming anyone: the archive is the gallery at stream id F.

Import verifies the whole archive (format, version, every checksum, no member
outside the layout) in a spool folder before it writes anything, then writes
each person with :meth:`Store.restore_person` (one transaction and one gallery
event each, so every worker's replica follows), model records and heads, then
visitors (:mod:`faec_rec.visitors.backup`: their grouping is exact at one
visitor-stream id; names map through the people written). Version 1 archives
(no visitors) are still read.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from faec_rec.errors import ArchiveError
from faec_rec.keys import Keys

from faec_rec.index.events import START, EventLog, id_before
from faec_rec.index.store import Store

log = logging.getLogger(__name__)

FORMAT_NAME = "faec-rec-gallery"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before visitors were kept
CHUNK = 200
MAX_ROUNDS = 200
# Only these member names are read from an archive (no links, no paths outside).
_MEMBER = re.compile(r"^(format\.json|manifest\.json|models/registry\.json|people/(patch-)?\d{5}\.jsonl|"
                     r"crops/[A-Za-z0-9_.:@-]{1,128}/[A-Za-z0-9_.:@-]{1,128}\.jpg|models/heads/[A-Za-z0-9_.-]{1,128}|"
                     r"visitors/faces-\d{5}\.jsonl|visitors/groups\.jsonl|visitors/crops/[A-Za-z0-9_.:@-]{1,128}\.jpg)$")
# Settings that change what identify answers: a restore under other values warns.
FINGERPRINT_FIELDS = ("faces", "gallery")


def settings_fingerprint(settings: Any) -> str:
    """sha256 (first 16 hex) of the settings that decide identify's answers (faces.*, gallery.*)."""
    data = {name: getattr(settings, name).model_dump(mode="json") for name in FINGERPRINT_FIELDS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---- writing -------------------------------------------------------------------
class _Writer:
    """A streaming tar writer that checksums every member it adds."""

    def __init__(self, out: IO[bytes]) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|gz")
        self.members: dict[str, dict[str, Any]] = {}

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def add_json(self, name: str, value: Any) -> None:
        self.add(name, json.dumps(value, indent=1, sort_keys=True).encode())

    def close(self) -> None:
        self.tar.close()


@dataclass
class ExportSummary:
    """What an export wrote."""

    people: int = 0
    templates: int = 0
    crops: int = 0
    crops_missing: int = 0
    heads: int = 0
    rounds: int = 0
    stream_id: str = START
    gallery_version: str | None = None
    visitors: int = 0
    unknown_faces: int = 0
    unknown_crops: int = 0
    unknown_vanished: int = 0
    visitors_stream_id: str = START
    bytes_written: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Exporter:
    redis: redis.Redis
    keys: Keys
    data_dir: Path
    writer: _Writer
    summary: ExportSummary = field(default_factory=ExportSummary)
    stamp_of: dict[str, str] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: tuple[str, str | None] = (START, None)

    def read_people(self, pids: list[str]) -> tuple[str, dict[str, dict[str, Any] | None]]:
        """``(stamp, {pid: record or None})`` for ``pids``, exact as of gallery event ``stamp``."""
        k = self.keys
        for _attempt in range(100):
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(*[k.person(p) for p in pids], *[k.person_templates(p) for p in pids])
                    records: dict[str, dict[str, Any] | None] = {}
                    for pid in pids:
                        person = pipe.hgetall(k.person(pid))
                        if not person:
                            records[pid] = None
                            continue
                        tids = sorted(_text(t) for t in pipe.smembers(k.person_templates(pid)))
                        # template hashes change only together with the watched set
                        inner = self.redis.pipeline(transaction=False)
                        for tid in tids:
                            inner.hgetall(k.template(tid))
                        templates = []
                        for tid, fields in zip(tids, inner.execute() if tids else []):
                            if fields:
                                templates.append((tid, {_text(a): b for a, b in fields.items()}))
                        records[pid] = {"person": {_text(a): _text(b) for a, b in person.items()}, "templates": templates}
                    pipe.multi()
                    EventLog(self.redis, k).last_id(pipe)
                    pipe.get(k.gallery_version())
                    last, version = pipe.execute()
                    stamp = EventLog.last_id_from(last)
                    if not id_before(stamp, self.version[0]):
                        self.version = (stamp, _text(version) if version is not None else None)
                    return stamp, records
                except redis.WatchError:
                    time.sleep(0.002)
        raise ArchiveError("the gallery kept changing under one chunk of people 100 times; run the export again")

    def write_chunk(self, name: str, stamp: str, records: dict[str, dict[str, Any] | None]) -> None:
        lines = []
        for pid, record in records.items():
            self.stamp_of[pid] = stamp
            if record is None:
                lines.append({"id": pid, "deleted": True})
                self.latest.pop(pid, None)
                continue
            templates = []
            for tid, fields in record["templates"]:
                crop_rel = _text(fields.get("crop", b""))
                out = {a: _text(b) for a, b in fields.items() if a not in ("features", "crop")}
                out["features"] = base64.b64encode(fields.get("features", b"")).decode()
                out["crop"] = self._add_crop(pid, tid, crop_rel)
                templates.append({"id": tid, "fields": out})
            lines.append({"id": pid, "person": record["person"], "templates": templates})
            self.latest[pid] = {"templates": len(templates)}
        self.writer.add(name, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())

    def _add_crop(self, pid: str, tid: str, rel: str) -> str | None:
        if not rel:
            return None
        path = self.data_dir / rel
        try:
            data = path.read_bytes()
        except OSError:
            self.summary.crops_missing += 1
            return None
        name = f"crops/{pid}/{tid}.jpg"
        if name not in self.writer.members:
            self.writer.add(name, data)
            self.summary.crops += 1
        return name

    def _check_not_trimmed(self, after: str) -> None:
        """Raise when events after ``after`` may have been trimmed (a snapshot's
        trim during the export): the rounds could then miss a change."""
        if after == START:
            return
        try:
            info = self.redis.xinfo_stream(self.keys.gallery_events())
        except redis.ResponseError:
            return  # no stream: nothing was written, nothing trimmed
        first = info.get("recorded-first-entry-id") or (info.get("first-entry") or [None])[0]
        if first is not None and id_before(after, _text(first)):
            older = self.redis.xrange(self.keys.gallery_events(), max=after, count=1)
            if not older:
                raise ArchiveError("gallery events after the export's start were trimmed (a snapshot ran meanwhile); "
                                   "run the export again")

    def dirty_since(self, after: str, until: str, floor: str) -> set[str]:
        """People an event in (after, until] names that were read before that event."""
        events = EventLog(self.redis, self.keys)
        self._check_not_trimmed(after)
        dirty: set[str] = set()
        cursor = after
        while True:
            batch = events.read(cursor, count=2000)
            batch = [(eid, ev) for eid, ev in batch if not id_before(until, eid)]
            for eid, event in batch:
                if event.person is not None and id_before(self.stamp_of.get(event.person, floor), eid):
                    dirty.add(event.person)
            if len(batch) < 2000:
                return dirty
            cursor = batch[-1][0]


def export_gallery(redis_client: redis.Redis, keys: Keys, data_dir: Path, out: IO[bytes], settings: Any) -> ExportSummary:
    """Write the whole gallery (people, templates' stored features, crops, model
    registry and heads; visitors with their unknown faces) as one archive to the
    binary stream ``out``.

    Consistent at one gallery-event id while workers keep writing (module doc);
    raises :class:`ArchiveError` if it cannot settle in ``MAX_ROUNDS`` rounds.
    Crops and heads are read from this machine's ``data_dir``; ones not found
    are counted in ``crops_missing`` (the templates are exported without them).
    """
    counting = _CountingWriter(out)
    writer = _Writer(counting)
    exp = _Exporter(redis_client, keys, Path(data_dir), writer)
    writer.add_json("format.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "created": time.time(),
                                    "prefix": keys.prefix, "settings_fingerprint": settings_fingerprint(settings)})
    # the people set and the stamp it is exact at, in one EXEC
    with redis_client.pipeline() as pipe:
        EventLog(redis_client, keys).last_id(pipe)
        pipe.smembers(keys.people())
        last, members = pipe.execute()
    floor = EventLog.last_id_from(last)
    pids = sorted(_text(p) for p in members)
    chunk_no = 0
    stamps = [floor]
    for start in range(0, len(pids), CHUNK):
        stamp, records = exp.read_people(pids[start:start + CHUNK])
        exp.write_chunk(f"people/{chunk_no:05d}.jsonl", stamp, records)
        stamps.append(stamp)
        chunk_no += 1
    final = max(stamps, key=lambda s: tuple(int(x) for x in s.split("-")))
    scanned = floor
    patch = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        dirty = exp.dirty_since(scanned, final, floor)
        scanned = final
        exp.summary.rounds = rounds
        if not dirty:
            break
        stamp, records = exp.read_people(sorted(dirty))
        exp.write_chunk(f"people/patch-{patch:05d}.jsonl", stamp, records)
        patch += 1
        if id_before(final, stamp):
            final = stamp
    else:
        raise ArchiveError(f"the gallery did not settle in {MAX_ROUNDS} rounds; run the export at a quieter time")
    exp.summary.people = len(exp.latest)
    exp.summary.templates = sum(v["templates"] for v in exp.latest.values())
    exp.summary.stream_id = final
    exp.summary.gallery_version = exp.version[1]
    exp.summary.heads = _export_models(redis_client, keys, Path(data_dir), writer)
    _export_visitors(redis_client, keys, Path(data_dir), writer, exp.summary)
    writer.add_json("manifest.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "members": writer.members,
                                      "stream_id": final, "gallery_version": exp.summary.gallery_version,
                                      "people": exp.summary.people, "templates": exp.summary.templates,
                                      "visitors": exp.summary.visitors, "unknown_faces": exp.summary.unknown_faces,
                                      "visitors_stream_id": exp.summary.visitors_stream_id})
    writer.close()
    exp.summary.bytes_written = counting.count
    log.info("exported %d people, %d templates at gallery event %s (%d rounds)", exp.summary.people,
             exp.summary.templates, final, exp.summary.rounds)
    return exp.summary


def _export_models(redis_client: redis.Redis, keys: Keys, data_dir: Path, writer: _Writer) -> int:
    with redis_client.pipeline() as pipe:
        pipe.hgetall(keys.models())
        pipe.get(keys.model_current())
        pipe.xrange(keys.model_events())
        records, current, events = pipe.execute()
    decoded = {_text(k): json.loads(v) for k, v in records.items() if _text(v) != "{}"}
    heads = 0
    for version, record in sorted(decoded.items()):
        path = data_dir / "models" / "heads" / str(record.get("file", ""))
        if record.get("file") and path.is_file():
            writer.add(f"models/heads/{record['file']}", path.read_bytes())
            heads += 1
        else:
            log.warning("model %s: weights file %s not on this machine; exported as a record only", version, path)
    writer.add_json("models/registry.json", {
        "records": decoded, "current": _text(current) if current else None,
        "events": [json.loads(f[b"event"]) for _, f in events if b"event" in f],
    })
    return heads


def _export_visitors(redis_client: redis.Redis, keys: Keys, data_dir: Path, writer: _Writer,
                     summary: ExportSummary) -> None:
    """Visitors and their unknown faces (:mod:`faec_rec.visitors.backup`)."""
    from faec_rec.visitors.backup import face_line, read_faces, read_grouping

    grouping = read_grouping(redis_client, keys)
    stored: set[str] = set()
    lines: list[str] = []
    chunk = 0

    def flush() -> None:
        nonlocal chunk
        writer.add(f"visitors/faces-{chunk:05d}.jsonl", "".join(lines).encode())
        lines.clear()
        chunk += 1

    for fid, fields in read_faces(redis_client, keys, grouping.face_ids()):
        member = None
        if fields.get("crop"):
            try:
                data = (data_dir / fields["crop"]).read_bytes()
            except OSError:
                data = None
            if data:
                member = f"visitors/crops/{fid}.jpg"
                writer.add(member, data)
                summary.unknown_crops += 1
        lines.append(json.dumps(face_line(fid, fields, member), sort_keys=True) + "\n")
        stored.add(fid)
        if len(lines) >= 5000:
            flush()
    if lines or not chunk:
        flush()
    groups = []
    for vid, (record, faces) in grouping.visitors.items():
        kept = [f for f in faces if f in stored]
        summary.unknown_vanished += len(faces) - len(kept)
        if kept:
            groups.append({"id": vid, "record": record, "faces": kept})
    alone = [f for f in grouping.alone if f in stored]
    tail = {"alone": alone, "counter": grouping.counter, "stream_id": grouping.stream_id}
    writer.add("visitors/groups.jsonl", "".join(json.dumps(g, sort_keys=True) + "\n" for g in [*groups, tail]).encode())
    summary.visitors, summary.unknown_faces = len(groups), len(stored)
    summary.visitors_stream_id = grouping.stream_id


class _CountingWriter(io.RawIOBase):
    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.count = out, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data)
        self.out.write(bytes(data))
        self.count += n
        return n


# ---- reading -------------------------------------------------------------------
@dataclass
class Archive:
    """A verified archive spooled into ``folder``."""

    folder: Path
    format: dict[str, Any]
    manifest: dict[str, Any]

    def people(self) -> dict[str, dict[str, Any]]:
        """Person id -> latest record (patches applied, deleted ones left out)."""
        out: dict[str, dict[str, Any]] = {}
        names = sorted(self.manifest["members"])
        ordered = [n for n in names if re.fullmatch(r"people/\d{5}\.jsonl", n)] + \
                  [n for n in names if n.startswith("people/patch-")]
        for name in ordered:
            for line in (self.folder / name).read_text().splitlines():
                rec = json.loads(line)
                if rec.get("deleted"):
                    out.pop(rec["id"], None)
                else:
                    out[rec["id"]] = rec
        return out

    def visitors(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        """``(face id -> face line, visitor lines, {"alone", "counter", "stream_id"})``;
        empty for a version 1 archive."""
        faces: dict[str, dict[str, Any]] = {}
        for name in sorted(n for n in self.manifest["members"] if n.startswith("visitors/faces-")):
            for line in (self.folder / name).read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    faces[rec["id"]] = rec
        path = self.folder / "visitors" / "groups.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        tail = rows.pop() if rows and "alone" in rows[-1] else {"alone": [], "counter": 0, "stream_id": START}
        return faces, rows, tail

    def registry(self) -> dict[str, Any]:
        path = self.folder / "models" / "registry.json"
        return json.loads(path.read_text()) if path.exists() else {"records": {}, "current": None, "events": []}


def read_archive(src: IO[bytes], folder: Path) -> Archive:
    """Spool and verify an archive from the binary stream ``src`` into ``folder``.

    Raises :class:`ArchiveError` for anything not a gzip tar, a foreign format or
    version, a member outside the layout, a link, a checksum or size mismatch, a
    member missing from or absent in the manifest, or a truncated archive.
    """
    seen: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(fileobj=src, mode="r|gz") as tar:
            for index, member in enumerate(tar):
                if not member.isfile():
                    raise ArchiveError(f"archive member {member.name!r} is not a plain file: refused")
                if not _MEMBER.fullmatch(member.name) or member.name in seen:
                    raise ArchiveError(f"archive member {member.name!r} is not part of a {FORMAT_NAME} archive: refused")
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                if index == 0:
                    if member.name != "format.json":
                        raise ArchiveError(f"not a {FORMAT_NAME} archive (first member is {member.name!r})")
                    _check_format(data)
                seen[member.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                target = folder / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError(f"the archive is damaged or truncated ({exc}); nothing was imported") from exc
    if "manifest.json" not in seen:
        raise ArchiveError("the archive has no manifest (truncated?); nothing was imported")
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = manifest.get("members", {})
    seen.pop("manifest.json")
    for name, meta in seen.items():
        if name not in listed:
            raise ArchiveError(f"archive member {name!r} is not in the manifest; nothing was imported")
        if listed[name] != meta:
            raise ArchiveError(f"archive member {name!r} fails its checksum (damaged); nothing was imported")
    missing = sorted(set(listed) - set(seen))
    if missing:
        raise ArchiveError(f"archive members listed but absent: {missing[:3]}; nothing was imported")
    return Archive(folder, json.loads((folder / "format.json").read_text()), manifest)


def _check_format(data: bytes) -> None:
    try:
        fmt = json.loads(data)
    except ValueError as exc:
        raise ArchiveError(f"format.json is not JSON ({exc}); nothing was imported") from exc
    if fmt.get("format") != FORMAT_NAME:
        raise ArchiveError(f"not a {FORMAT_NAME} archive (format {fmt.get('format')!r}); nothing was imported")
    if fmt.get("version") not in READABLE_VERSIONS:
        raise ArchiveError(f"archive format version {fmt.get('version')!r}; this faec-rec reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))}: import it with the faec-rec that wrote it")


@dataclass
class ImportSummary:
    """What an import did."""

    people_created: int = 0
    people_merged: int = 0
    templates_added: int = 0
    templates_skipped: int = 0
    models_added: int = 0
    models_skipped: int = 0
    current_model: str | None = None
    settings_match: bool = True
    stream_id: str = START
    visitors_created: int = 0
    visitors_joined: int = 0
    unknown_faces_added: int = 0
    unknown_faces_skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_gallery(store: Store, src: IO[bytes], settings: Any, *, merge: bool = False,
                   promote: Any = None) -> ImportSummary:
    """Restore an archive from ``src`` into the gallery of ``store``.

    Without ``merge`` the target must hold no people (:class:`ArchiveError`
    otherwise); with it, people are merged by id, then by name, and images a
    person already has are skipped. Model records and heads whose version is not
    taken are added; on an empty target the archive's model in service is put in
    service with ``promote(version)`` (the registry's promote: it verifies and
    loads the head, and workers hot-swap on its event).
    """
    spool = Path(tempfile.mkdtemp(prefix="faec-import-"))
    try:
        archive = read_archive(src, spool)
        summary = ImportSummary(stream_id=str(archive.manifest.get("stream_id", START)))
        summary.settings_match = archive.format.get("settings_fingerprint") == settings_fingerprint(settings)
        if not summary.settings_match:
            log.warning("the archive was written under other faces/gallery settings; identify may answer differently")
        present = int(store.client.scard(store.keys.people()))
        strangers = int(store.client.zcard(store.keys.unknown_faces()))
        if (present or strangers) and not merge:
            raise ArchiveError(f"the target holds {present} people and {strangers} unknown faces: import into an "
                               "empty deployment, or pass --merge to merge into it")
        people = archive.people()
        _check_backbone(store, people)
        _import_models(store, archive, summary, empty=not present, promote=promote)
        person_ids: dict[str, str] = {}
        for pid, rec in sorted(people.items()):
            templates = []
            for t in rec["templates"]:
                fields = dict(t["fields"])
                fields["features"] = base64.b64decode(fields["features"])
                crop = (archive.folder / t["fields"]["crop"]).read_bytes() if t["fields"].get("crop") else None
                fields.pop("crop", None)
                templates.append((t["id"], fields, crop))
            result = store.restore_person(pid, rec["person"], templates)
            person_ids[pid] = result.person_id
            summary.people_created += int(result.created)
            summary.people_merged += int(not result.created)
            summary.templates_added += len(result.added)
            summary.templates_skipped += len(result.duplicates)
        _import_visitors(store, archive, summary, person_ids)
        return summary
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _check_backbone(store: Store, people: dict[str, Any]) -> None:
    """Refuse templates whose features are another backbone's than the target gallery's
    (faec-rec models use-backbone): compared, they would be noise. Nothing is written yet."""
    from faec_rec.index.backbone_swap import DEFAULT_BACKBONE, current_backbone

    serving = current_backbone(store.client, store.keys)["name"]
    found = {t["fields"].get("backbone") or DEFAULT_BACKBONE for rec in people.values() for t in rec["templates"]}
    other = sorted(found - {serving})
    if other:
        raise ArchiveError(f"the archive's templates are in backbone {', '.join(other)}'s features and this gallery "
                           f"serves {serving}: switch with `faec-rec models use-backbone {other[0]}` first "
                           "(and back after the import); nothing was imported")


def _import_visitors(store: Store, archive: Archive, summary: ImportSummary, person_ids: dict[str, str]) -> None:
    from faec_rec.visitors.backup import restore_visitors
    from faec_rec.visitors.store import VisitorStore

    faces, groups, tail = archive.visitors()
    if not faces:
        return
    def crops(face_id: str) -> bytes | None:
        member = faces[face_id].get("crop")
        return (archive.folder / member).read_bytes() if member else None

    done = restore_visitors(VisitorStore(store.client, store.keys, store.data_dir), faces, groups,
                            list(tail.get("alone", [])), crops, int(tail.get("counter") or 0), person_ids)
    summary.visitors_created, summary.visitors_joined = done.visitors_created, done.visitors_joined
    summary.unknown_faces_added, summary.unknown_faces_skipped = done.unknown_faces_added, done.unknown_faces_skipped


def _import_models(store: Store, archive: Archive, summary: ImportSummary, *, empty: bool, promote: Any) -> None:
    registry = archive.registry()
    keys, client = store.keys, store.client
    heads = store.data_dir / "models" / "heads"
    for version, record in sorted(registry.get("records", {}).items()):
        src = archive.folder / "models" / "heads" / str(record.get("file", ""))
        if client.hexists(keys.models(), version):
            summary.models_skipped += 1
            continue
        if src.is_file():
            from faec_rec.files import atomic_write_bytes

            atomic_write_bytes(heads / record["file"], src.read_bytes(), fsync=True)
        if client.hsetnx(keys.models(), version, json.dumps(record, sort_keys=True)):
            summary.models_added += 1
        else:
            summary.models_skipped += 1
    current = registry.get("current")
    if empty and current and current != "base" and client.get(keys.model_current()) is None and promote is not None:
        promote(current)
        summary.current_model = current


def iter_archive_names(src: IO[bytes]) -> Iterator[str]:
    """Member names of an archive, without verifying it (for diagnostics)."""
    with tarfile.open(fileobj=src, mode="r|gz") as tar:
        for member in tar:
            yield member.name
