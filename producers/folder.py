"""The folder producer: a photo folder in, one TASK_IDENTIFY per image out.

It walks the folder recursively (sorted, so job order is reproducible), keeps the
common image types (:data:`IMAGE_SUFFIXES`, any letter case), skips everything
else with a warning, records the job in ``keys.job(job)`` (``total``, ``done``,
``errors``, ``skipped``, ``root``, ``created``) *before* sending any task, so a
reader never sees ``done`` above ``total``, then sends one task per image with the
payload of the folder protocol::

    {"job": job_id, "path": "/abs/path.jpg", "key": null, "name": "sub/path.jpg"}

Workers append one result record per image to ``keys.job_results(job)`` and count
``done``/``errors`` in ``keys.job(job)``.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from faec_rec.errors import BackendUnavailable, SourceError
from faec_rec.files import IMAGE_SUFFIXES, is_image_path, iter_files, walk_images  # noqa: F401  (re-exported)
from faec_rec.keys import Keys, safe_id
from faec_rec.producers.camera import TaskSender
from faec_rec.workers.app import QUEUE_FRAMES, TASK_IDENTIFY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderScan:
    """Images to identify and files skipped, both sorted, as absolute paths."""

    root: Path
    images: list[Path]
    skipped: list[Path]


@dataclass
class FolderJob:
    """A submitted folder job: its id, the images sent and the files skipped."""

    job_id: str
    root: Path
    total: int
    skipped: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job_id, "root": str(self.root), "total": self.total, "skipped": [str(p) for p in self.skipped]}


class FolderWalk:
    """A lazy walk of a photo folder: iterating it yields the images (sorted, absolute paths)
    one at a time (:func:`faec_rec.files.iter_files`), so a folder of 100,000 photos is never
    listed in memory; the other files met so far are logged and kept in :attr:`skipped`.
    """

    def __init__(self, root: str | Path) -> None:
        base = Path(root).expanduser().resolve()
        if not base.is_dir():
            raise SourceError(f"{root}: not a folder (give the folder of photos to identify)")
        self.root = base
        self.skipped: list[Path] = []

    def __iter__(self) -> Iterator[Path]:
        for path, is_image in iter_files(self.root):
            if is_image:
                yield path
            else:
                log.warning("skipped %s: not an image (expected one of %s)", path.relative_to(self.root),
                            ", ".join(sorted(IMAGE_SUFFIXES)))
                self.skipped.append(path)


def scan_folder(root: str | Path) -> FolderScan:
    """Every image under ``root`` (recursively) and every other file, sorted, as lists.

    Hidden files and folders (names starting with '.') are ignored silently;
    other non-image files are logged as skipped. Raises :class:`SourceError` when
    ``root`` is not a folder. For a large folder iterate a :class:`FolderWalk` instead.
    """
    walk = FolderWalk(root)
    images = list(walk)
    return FolderScan(walk.root, images, walk.skipped)


def new_job_id() -> str:
    """A fresh job id (safe for keys)."""
    return "job-" + uuid.uuid4().hex[:16]


def submit_folder(
    root: str | Path,
    redis: Any,
    keys: Keys,
    sender: TaskSender,
    job_id: str | None = None,
) -> FolderJob:
    """Walk ``root`` and send one identify task per image; returns the job.

    The folder is walked twice, lazily (first to count, then to send), so a folder of
    100,000 photos is never listed in memory. The job's ``total`` (the count) is written
    before the first task is sent; an image that appeared between the two walks raises it
    before its task is sent, and one that vanished lowers it at the end, so a reader never
    sees ``done`` above ``total`` and the job always completes. A folder with no image
    still makes a job (total 0) so the caller can report what was skipped. When sending
    fails part-way, ``total`` is lowered to the tasks actually sent (so the job still
    completes), ``error`` says so, and :class:`BackendUnavailable` is raised.
    """
    counted = sum(1 for _ in FolderWalk(root))
    walk = FolderWalk(root)  # the sending walk; it collects the skipped files once
    job = safe_id(job_id, "job id") if job_id is not None else new_job_id()
    redis.hset(keys.job(job), mapping={
        "total": counted,
        "done": 0,
        "errors": 0,
        "skipped": 0,
        "root": str(walk.root),
        "created": repr(time.time()),
    })
    sent = 0
    try:
        for path in walk:
            if sent >= counted:  # new since the count: raise the total before its task exists
                redis.hincrby(keys.job(job), "total", 1)
            payload = {"job": job, "path": str(path), "key": None, "name": str(path.relative_to(walk.root))}
            sender.send_task(TASK_IDENTIFY, args=[payload], queue=QUEUE_FRAMES)
            sent += 1
    except Exception as exc:  # the broker went away mid-job: keep the job finishable
        redis.hset(keys.job(job), mapping={"total": sent, "skipped": len(walk.skipped),
                                           "error": f"only {sent} of {max(sent, counted)} tasks sent: {exc}"})
        raise BackendUnavailable(
            f"job {job}: only {sent} of {max(sent, counted)} images were queued ({exc}); "
            "check the broker and submit the folder again"
        ) from exc
    redis.hset(keys.job(job), mapping={"total": sent, "skipped": len(walk.skipped)})
    log.info("job %s: %d images sent, %d files skipped", job, sent, len(walk.skipped), extra={"job": job})
    return FolderJob(job, walk.root, sent, walk.skipped)


def job_progress(redis: Any, keys: Keys, job_id: str) -> dict[str, int]:
    """``{"total", "done", "errors", "skipped"}`` of a job (zeros for fields not yet written)."""
    raw = redis.hgetall(keys.job(job_id))
    values = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    return {name: int(values.get(name, 0) or 0) for name in ("total", "done", "errors", "skipped")}
