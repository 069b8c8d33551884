"""The model registry: every trained comparison head, kept with its metrics.

Redis holds the records (``keys.models()``: version -> JSON), the version in
service (``keys.model_current()``, absent = "base") and the stream of changes
(``keys.model_events()``, one JSON field "event" per entry: promote/rollback)
that workers follow to hot-swap. Weights live on disk under
``<data_dir>/models/heads/<version>.keras`` with their sha256 in the record.
A head is read once: the bytes are hashed, checked and loaded from memory (a
private temporary copy), so the file cannot be swapped between the check and
the load. A truncated or corrupted file is refused
(:class:`~faec_rec.errors.ModelError`) and the current model stays.

The checksum sits in Redis next to the file name, so on its own it catches
corruption, not tampering by someone who can write Redis or the folder. With
``training.signing_key`` set, each record also carries an HMAC-SHA256 of
``version, file, sha256`` under that key: a head whose record was not signed
with it is refused, so changing the file *and* its checksum is caught too.
The stored file name is confined to the heads folder (a plain ``*.keras``
name: no ``/``, no ``..``, not absolute).

Versions are ``head-1``, ``head-2``, ...; "base" (the L2-normalised backbone
features) is always available and never stored.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faec_rec.errors import ModelError, NothingToRollBackError, UnknownVersionError
from faec_rec.keys import Keys

if TYPE_CHECKING:
    import keras
    import redis as redis_lib

    from faec_rec.config import Settings
    from faec_rec.index.projection import Projector

log = logging.getLogger(__name__)

BASE_VERSION = "base"
HEAD_PREFIX = "head-"
_PLACEHOLDER = "{}"


class Status:
    """Where a version stands (plain strings in the JSON record)."""

    CANDIDATE = "candidate"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    RETIRED = "retired"


@dataclass
class ModelRecord:
    """One registered head: file (relative to the models dir), checksum, metrics."""

    version: str
    file: str
    sha256: str
    created: float
    backbone_version: str = "dlib-resnet-v1"
    status: str = Status.CANDIDATE
    parent: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    note: str = ""
    signature: str = ""  # HMAC-SHA256 of signed_fields() under training.signing_key ("" = unsigned)

    def signed_fields(self) -> bytes:
        """What the signature covers: the version, its file name and the file's sha256."""
        return json.dumps([self.version, self.file, self.sha256]).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ModelRecord:
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# A stored head file name: a plain name in the heads folder.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.keras$")


def sign(key: bytes, record: ModelRecord) -> str:
    """Hex HMAC-SHA256 of the record's signed fields."""
    return hmac.new(key, record.signed_fields(), hashlib.sha256).hexdigest()


def version_number(version: str) -> int:
    """``head-7`` -> 7; -1 for anything else."""
    if version.startswith(HEAD_PREFIX) and version[len(HEAD_PREFIX):].isdigit():
        return int(version[len(HEAD_PREFIX):])
    return -1


class ModelRegistry:
    """Registry of comparison heads for one deployment (Redis keys + a folder)."""

    def __init__(
        self,
        redis: "redis_lib.Redis",
        keys: Keys,
        models_dir: Path,
        backbone_version: str = "dlib-resnet-v1",
        events_maxlen: int = 10_000,
        signing_key: bytes | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.dir = Path(models_dir) / "heads"
        self.backbone_version = backbone_version
        self.events_maxlen = events_maxlen
        self.signing_key = signing_key or None

    @classmethod
    def from_settings(cls, settings: "Settings", redis: "redis_lib.Redis") -> ModelRegistry:
        return cls(redis, Keys(settings.prefix), Path(settings.data_dir) / "models",
                   signing_key=signing_key(settings))

    # ---- records -------------------------------------------------------------
    def _claim_version(self) -> str:
        """Reserve the next free ``head-N`` atomically (HSETNX), even across processes."""
        existing = [version_number(v.decode()) for v in self.redis.hkeys(self.keys.models())]
        n = max([0, *existing]) + 1
        while not self.redis.hsetnx(self.keys.models(), f"{HEAD_PREFIX}{n}", _PLACEHOLDER):
            n += 1
        return f"{HEAD_PREFIX}{n}"

    def register(
        self,
        model: "keras.Model",
        *,
        metrics: dict[str, Any] | None = None,
        parent: str | None = None,
        threshold: float | None = None,
        status: str = Status.CANDIDATE,
        note: str = "",
    ) -> ModelRecord:
        """Store a trained head: write its file, checksum it, record it. Returns the record."""
        from faec_rec.training.head import save_head

        version = self._claim_version()
        try:
            path = save_head(model, self.dir / f"{version}.keras")
            record = ModelRecord(
                version=version,
                file=path.name,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                created=time.time(),
                backbone_version=self.backbone_version,
                status=status,
                parent=parent,
                metrics=dict(metrics or {}),
                threshold=threshold,
                note=note,
            )
            if self.signing_key:
                record.signature = sign(self.signing_key, record)
            self.redis.hset(self.keys.models(), version, record.to_json())
        except BaseException:
            self.redis.hdel(self.keys.models(), version)
            raise
        log.info("registered model %s (%s)", version, status)
        return record

    def update(self, version: str, **changes: Any) -> ModelRecord:
        """Change fields of a record (status, metrics, note)."""
        record = self.record(version)
        for name, value in changes.items():
            if name not in ModelRecord.__dataclass_fields__ or name in {"version", "file", "sha256", "signature"}:
                raise ModelError(f"model record field {name!r} cannot be changed")
            setattr(record, name, value)
        self.redis.hset(self.keys.models(), version, record.to_json())
        return record

    def record(self, version: str) -> ModelRecord:
        """The record of ``version``; ModelError naming the known ones if absent."""
        raw = self.redis.hget(self.keys.models(), version)
        if raw is None or raw.decode() == _PLACEHOLDER:
            known = ", ".join(r.version for r in self.records()) or "none yet"
            raise UnknownVersionError(f"no model version {version!r} in the registry (known: {BASE_VERSION}, {known})")
        return ModelRecord.from_json(raw)

    def records(self) -> list[ModelRecord]:
        """Every registered head, oldest first."""
        raw = self.redis.hgetall(self.keys.models())
        out = [ModelRecord.from_json(v) for k, v in raw.items() if v.decode() != _PLACEHOLDER]
        return sorted(out, key=lambda r: (version_number(r.version), r.created))

    def path(self, record: ModelRecord) -> Path:
        """The head file of ``record``, which must be a plain ``*.keras`` name in the heads folder."""
        name = record.file
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
            raise ModelError(f"model {record.version}: stored file name {name!r} is not a plain .keras name in "
                             f"{self.dir}; refusing it (the record was edited by hand or tampered with)")
        return self.dir / name

    def read_verified(self, version: str) -> tuple[ModelRecord, bytes]:
        """The record of ``version`` and its file's bytes, read once, checked against the
        recorded sha256 (and the signature when ``signing_key`` is set)."""
        record = self.record(version)
        path = self.path(record)
        if self.signing_key:
            if not record.signature:
                raise ModelError(f"model {version}: the record is not signed and training.signing_key is set; "
                                 "refusing it (register it again, or promote a signed version)")
            if not hmac.compare_digest(record.signature, sign(self.signing_key, record)):
                raise ModelError(f"model {version}: the record's signature does not match training.signing_key "
                                 "(tampered with, or signed with another key); refusing to load it")
        try:
            # O_NOFOLLOW: a link planted in the heads folder is not followed.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError as exc:
            raise ModelError(f"model {version}: weights file {path} is missing; restore it or promote another version") from exc
        except OSError as exc:
            raise ModelError(f"model {version}: cannot open weights file {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
        actual = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(actual, record.sha256):
            raise ModelError(
                f"model {version}: {path} fails its checksum (sha256 {actual[:12]}..., recorded "
                f"{record.sha256[:12]}...): the file was modified or corrupted; refusing to load it"
            )
        return record, data

    def verify(self, version: str) -> ModelRecord:
        """Check the file of ``version`` exists and matches its record (checksum, signature)."""
        return self.read_verified(version)[0]

    def load(self, version: str) -> "Projector":
        """The projector for ``version`` ("base" or a verified head), loaded from the very
        bytes that were verified (a private temporary copy), never re-read by path."""
        if version == BASE_VERSION:
            from faec_rec.index.projection import BaseProjector

            return BaseProjector()
        from faec_rec.training.head import load_head

        record, data = self.read_verified(version)
        with tempfile.TemporaryDirectory(prefix="faec-head-") as private:  # mode 0700
            copy = Path(private) / "head.keras"
            with open(copy, "xb") as fh:
                fh.write(data)
            projector = load_head(copy, version)
        projector.threshold = record.threshold
        return projector

    # ---- what is in service -------------------------------------------------
    def current(self) -> str:
        """The version in service ("base" when none was promoted)."""
        raw = self.redis.get(self.keys.model_current())
        return raw.decode() if raw else BASE_VERSION

    def events(self, count: int | None = None) -> list[dict[str, Any]]:
        """Model events, oldest first (each with its stream ``id``)."""
        entries = self.redis.xrange(self.keys.model_events(), count=count)
        out = []
        for entry_id, fields in entries:
            event = json.loads(fields[b"event"])
            event["id"] = entry_id.decode()
            out.append(event)
        return out

    def _stack(self) -> list[str]:
        """The promotion stack replayed from the events: promote pushes, rollback pops."""
        stack = [BASE_VERSION]
        for event in self.events():
            if event.get("type") == "promote":
                stack.append(event["version"])
            elif event.get("type") == "rollback" and len(stack) > 1:
                stack.pop()
        return stack

    def _switch(self, version: str, kind: str, reason: str) -> dict[str, Any]:
        import redis as redis_lib

        current_key = self.keys.model_current()
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(current_key)
                    raw = pipe.get(current_key)
                    previous = raw.decode() if raw else BASE_VERSION
                    event = {
                        "type": kind,
                        "version": version,
                        "previous": previous,
                        "reason": reason,
                        "at": time.time(),
                        "model_version": f"{self.backbone_version}/{version}",
                    }
                    pipe.multi()
                    pipe.set(current_key, version)
                    pipe.xadd(self.keys.model_events(), {"event": json.dumps(event)},
                              maxlen=self.events_maxlen, approximate=True)
                    if version != BASE_VERSION:
                        record = self.record(version)
                        record.status = Status.PROMOTED
                        pipe.hset(self.keys.models(), version, record.to_json())
                    pipe.execute()
                    break
                except redis_lib.WatchError:
                    continue
        log.info("model %s: %s -> %s (%s)", kind, event["previous"], version, reason)
        return event

    def promote(self, version: str, reason: str = "manual") -> dict[str, Any]:
        """Put ``version`` in service (after verifying its file) and publish the event."""
        if version != BASE_VERSION:
            self.verify(version)
            self.load(version)  # a file that does not load must never reach the workers
        return self._switch(version, "promote", reason)

    def rollback(self, reason: str = "manual") -> dict[str, Any]:
        """Return to the version that was in service before the current one's promotion."""
        stack = self._stack()
        if len(stack) < 2:
            raise NothingToRollBackError(f"nothing to roll back to: {self.current()} has been in service since the start")
        target = stack[-2]
        if target != BASE_VERSION:
            self.verify(target)
        event = self._switch(target, "rollback", reason)
        if stack[-1] != BASE_VERSION:
            self.update(stack[-1], status=Status.RETIRED)
        return event


def signing_key(settings: "Settings") -> bytes | None:
    """``training.signing_key`` as bytes (None when unset)."""
    secret = settings.training.signing_key
    return secret.get_secret_value().encode() if secret is not None and secret.get_secret_value() else None


def load_projector(version: str, *, settings: "Settings", redis: "redis_lib.Redis") -> "Projector":
    """The projector of a model version, for workers: "base" or a checksum-verified head.

    Raises ModelError for an unknown version, a missing or tampered file.
    """
    from faec_rec.faces import runtime as face_runtime

    face_runtime.tensorflow()  # the process's thread limit, before Keras runs TensorFlow's first op
    return ModelRegistry.from_settings(settings, redis).load(version)
