"""Snapshot files of a replica: written atomically, found by stream position.

A snapshot is one uncompressed ``.npz`` file named by the stream id it
includes (``snapshot-<ms>-<seq>.npz``): plain arrays plus a JSON ``meta``
record, never pickles. It is written to a hidden temporary file, flushed and
fsynced, then moved into place with ``os.replace`` (atomic on POSIX) and the
directory fsynced, so a process killed mid-write leaves at most a temporary
file that readers ignore and the next writer deletes; the previous snapshot
stays loadable.
"""
from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from faec_rec.files import pid_alive
from faec_rec.index.events import parse_id

log = logging.getLogger(__name__)

FORMAT = 1
KEEP = 2
_NAME = re.compile(r"^snapshot-(\d+)-(\d+)\.npz$")


def snapshot_name(position: str) -> str:
    ms, seq = parse_id(position)
    return f"snapshot-{ms:013d}-{seq:06d}.npz"


def snapshot_position(path: Path) -> str:
    """The stream id a snapshot file includes, from its name."""
    m = _NAME.match(path.name)
    if not m:
        raise ValueError(f"{path.name} is not a snapshot file name")
    return f"{int(m.group(1))}-{int(m.group(2))}"


def encode_strings(values: list[str]) -> np.ndarray:
    """A list of strings (no newlines) as one uint8 array, for ``.npz`` without pickles."""
    return np.frombuffer("\n".join(values).encode(), dtype=np.uint8)


def decode_strings(blob: np.ndarray, count: int) -> list[str]:
    """Inverse of :func:`encode_strings` for a list of ``count`` strings."""
    if count == 0:
        return []
    values = blob.tobytes().decode().split("\n")
    if len(values) != count:
        raise ValueError(f"expected {count} strings, found {len(values)}")
    return values


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(directory: Path, position: str, meta: dict[str, Any], arrays: dict[str, np.ndarray], keep: int = KEEP) -> Path:
    """Atomically write a snapshot including the stream up to ``position``; returns its path.

    Keeps the newest ``keep`` snapshots and deletes older ones and stale
    temporary files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / snapshot_name(position)
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    record = dict(meta, format=FORMAT, position=position)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.frombuffer(json.dumps(record).encode(), dtype=np.uint8), **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    prune(directory, keep=keep)
    log.info("snapshot %s written (%d bytes)", final.name, final.stat().st_size)
    return final


def list_snapshots(directory: Path) -> list[Path]:
    """Complete snapshot files, newest first."""
    if not directory.is_dir():
        return []
    found = [(tuple(int(g) for g in m.groups()), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune(directory: Path, keep: int = KEEP) -> None:
    """Delete all but the newest ``keep`` snapshots, and temporary files of dead writers."""
    for old in list_snapshots(directory)[keep:]:
        old.unlink(missing_ok=True)
    for tmp in directory.glob(".snapshot-*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """A writer still working on its temporary file (never this process: its own are stale)."""
    return pid != os.getpid() and pid_alive(pid)


def read_snapshot(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of one snapshot; raises ``ValueError`` when it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ValueError(f"snapshot {path} is unreadable: {exc}") from exc
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != FORMAT:
        raise ValueError(f"snapshot {path} has format {meta.get('format')}, expected {FORMAT}")
    return meta, arrays


def load_newest(directory: Path) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]] | None:
    """The newest snapshot that reads cleanly (older ones are tried when one is damaged)."""
    for path in list_snapshots(directory):
        try:
            meta, arrays = read_snapshot(path)
        except ValueError as exc:
            log.warning("%s; trying an older snapshot", exc)
            continue
        return path, meta, arrays
    return None
