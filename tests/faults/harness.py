"""Tools the fault suite and ``benchmarks.faults`` share: wait, feed frames the
producer's way, account for every frame, audit the gallery in Redis, make bad
inputs, and find (and kill) a worker's pool children.

Everything here talks to real things: the Redis a deployment uses, the real
``FramePusher`` of the camera producer, real worker processes
(:class:`tests.integration.worker_proc.WorkerProcess`).
"""
from __future__ import annotations

import json
import os
import signal
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from faec_rec.keys import Keys
from tests.integration.worker_proc import WorkerProcess, _children
from tests.waiting import wait_for  # noqa: F401 (the fault suite's modules import it from here)

# Counters of ``keys.camera_stats(camera)`` that settle a pushed frame.
SETTLED = ("processed", "dropped", "errors")


def cleanup(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own namespace)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


# ---- frames ----------------------------------------------------------------------
class FrameFeeder:
    """The producer's half of the frame protocol for one camera, with the producer's
    own :class:`~faec_rec.producers.camera.FramePusher` (bounded in-flight list,
    oldest dropped and counted) and a TASK_RECOGNISE per frame."""

    def __init__(self, redis: Any, keys: Keys, app: Any, camera: str, *, ttl_s: int = 600,
                 max_in_flight: int = 10_000) -> None:
        from faec_rec.producers.camera import FramePusher

        self.redis, self.keys, self.app, self.camera = redis, keys, app, camera
        self.pusher = FramePusher(redis, keys, camera, ttl_s, max_in_flight)
        self.next_frame = self.pusher.last_frame_number() + 1
        self.pushed = 0
        self.dropped = 0

    def push(self, data: bytes, width: int = 250, height: int = 250) -> int:
        """Push one encoded frame and send its task; returns the frame number."""
        from faec_rec.workers.app import QUEUE_FRAMES, TASK_RECOGNISE

        n = self.next_frame
        key, dropped = self.pusher.push(n, data)
        self.next_frame += 1
        self.pushed += 1
        self.dropped += dropped
        payload = {"camera": self.camera, "frame": n, "key": key, "captured_at": time.time(),
                   "width": width, "height": height}
        self.app.send_task(TASK_RECOGNISE, args=[payload], queue=QUEUE_FRAMES)
        return n


def camera_account(redis: Any, keys: Keys, camera: str) -> dict[str, int]:
    """A camera's counters from Redis: pushed, processed, dropped, errors, faces,
    settled (processed + dropped + errors) and in_flight (frames still queued)."""
    raw = {k.decode(): v.decode() for k, v in redis.hgetall(keys.camera_stats(camera)).items()}
    out = {name: int(raw.get(name) or 0) for name in ("pushed", "processed", "dropped", "errors", "faces", "stale")}
    out["settled"] = sum(out[name] for name in SETTLED)
    out["in_flight"] = int(redis.llen(keys.in_flight(camera)))
    return out


def wait_settled(redis: Any, keys: Keys, camera: str, pushed: int, timeout: float) -> dict[str, int]:
    """Wait until every pushed frame of ``camera`` is processed or counted (dropped,
    error); returns the final account (which may show more settled than pushed:
    a frame processed twice)."""
    wait_for(lambda: camera_account(redis, keys, camera)["settled"] >= pushed, timeout,
             f"camera {camera}: {pushed} pushed frames to be processed or counted", every=0.3)
    return camera_account(redis, keys, camera)


def frames_left(redis: Any, keys: Keys, camera: str) -> int:
    """Frames of ``camera`` neither processed nor counted yet: frame keys still
    stored plus keys still in the in-flight list (0 once a run has settled)."""
    pattern = keys.frame(camera, 0)[:-1] + "*"
    stored = sum(1 for _ in redis.scan_iter(match=pattern, count=1000))
    return stored + int(redis.llen(keys.in_flight(camera)))


def events(redis: Any, keys: Keys, camera: str | None = None) -> list[dict[str, Any]]:
    """Every event on a camera's stream (or the combined stream), oldest first."""
    return [json.loads(v[b"event"]) for _, v in redis.xrange(keys.events(camera))]


def latency_ms(redis: Any, keys: Keys, camera: str) -> dict[str, float | None]:
    """p50/p95 capture-to-event latency (ms) from the camera's histogram."""
    from faec_rec.workers.pipeline import latency_percentiles

    stats = {k.decode(): v.decode() for k, v in redis.hgetall(keys.camera_stats(camera)).items()}
    q = latency_percentiles(stats)
    return {"p50": q[0.5], "p95": q[0.95]}


# ---- the gallery -----------------------------------------------------------------
@dataclass
class GalleryAudit:
    """What Redis holds for the gallery, checked for duplicates and strays.

    people: person id -> {"name", "templates": set of template ids};
    duplicate_names: names held by more than one person; duplicate_hashes:
    (person, image hash) pairs stored as more than one template; stray_templates:
    template records no person lists; hash_index_mismatch: templates minus
    entries of the per-person hash index (0 when consistent).
    """

    people: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicate_names: list[str] = field(default_factory=list)
    duplicate_hashes: int = 0
    stray_templates: int = 0
    hash_index_mismatch: int = 0

    def by_name(self, name: str) -> list[str]:
        """Ids of the people called ``name`` (case-folded)."""
        return [pid for pid, p in self.people.items() if p["name"].casefold() == name.casefold()]

    def templates_of(self, name: str) -> set[str]:
        return set().union(*(self.people[pid]["templates"] for pid in self.by_name(name))) if self.by_name(name) else set()


def audit_gallery(redis: Any, keys: Keys) -> GalleryAudit:
    """Scan the gallery's Redis records (people, templates, hash index)."""
    audit = GalleryAudit()
    listed: set[str] = set()
    names: dict[str, int] = {}
    for raw_pid in redis.smembers(keys.people()):
        pid = raw_pid.decode()
        name = (redis.hget(keys.person(pid), "name") or b"").decode()
        tids = {t.decode() for t in redis.smembers(keys.person_templates(pid))}
        audit.people[pid] = {"name": name, "templates": tids}
        names[name.casefold()] = names.get(name.casefold(), 0) + 1
        hashes = [redis.hget(keys.template(t), "hash") for t in tids]
        audit.duplicate_hashes += len(hashes) - len(set(hashes))
        listed |= tids
    audit.duplicate_names = sorted(n for n, c in names.items() if c > 1)
    stored = {k.decode().rsplit(":", 1)[1] for k in redis.scan_iter(match=keys.template("x")[:-1] + "*", count=1000)}
    audit.stray_templates = len(stored - listed)
    audit.hash_index_mismatch = len(listed) - int(redis.hlen(keys.template_hashes()))
    return audit


def enrolment_faults(reports: Iterable[Any], audit: GalleryAudit) -> dict[str, int]:
    """Lost and duplicated enrolment images: an accepted image whose template is not
    in the gallery is lost; a template the reports never accepted, a second template
    of one image, or a second person of one name is duplicated."""
    accepted: dict[str, set[str]] = {}
    lost = 0
    for report in reports:
        for image in report.images:
            if image.accepted:
                if not image.template_id:
                    lost += 1
                    continue
                accepted.setdefault(report.name.casefold(), set()).add(image.template_id)
    duplicated = audit.duplicate_hashes + audit.stray_templates + len(audit.duplicate_names)
    for name, tids in accepted.items():
        stored = audit.templates_of(name)
        lost += len(tids - stored)
        duplicated += len(stored - tids)
    return {"lost": lost, "duplicated": duplicated}


# ---- bad input ---------------------------------------------------------------------
BAD_KINDS = ("truncated", "random", "jpeg_header_garbage", "size_bomb", "empty", "bit_flips")
# bit_flips may still decode (JPEG is forgiving): such a frame is processed, not an error.
MUST_FAIL = frozenset(BAD_KINDS) - {"bit_flips"}


def _size_bomb(good: bytes) -> bytes:
    """``good`` with its frame header claiming 65500 x 65500 pixels."""
    data = bytearray(good)
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5:at + 9] = struct.pack(">HH", 65500, 65500)
            return bytes(data)
    raise ValueError("no SOF marker in the JPEG given to _size_bomb")


def bad_input(good: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """One damaged image of ``kind`` (see BAD_KINDS) made from the JPEG ``good``."""
    if kind == "truncated":
        return good[: int(rng.integers(1, len(good) - 2))]
    if kind == "random":
        return rng.bytes(int(rng.integers(1, 20_000)))
    if kind == "jpeg_header_garbage":
        return good[:2] + rng.bytes(int(rng.integers(1, 20_000)))
    if kind == "size_bomb":
        return _size_bomb(good)
    if kind == "empty":
        return b""
    if kind == "bit_flips":
        data = bytearray(good)
        for i in rng.integers(0, len(data), int(rng.integers(1, 30))):
            data[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(data)
    raise ValueError(f"unknown bad input kind {kind!r}; use one of {BAD_KINDS}")


def bad_inputs(good: bytes, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` damaged images cycling through BAD_KINDS, seeded."""
    rng = np.random.default_rng(seed)
    return [(BAD_KINDS[i % len(BAD_KINDS)], bad_input(good, BAD_KINDS[i % len(BAD_KINDS)], rng)) for i in range(n)]


# ---- worker processes ---------------------------------------------------------------
def pool_children(worker: WorkerProcess) -> list[int]:
    """Pids of a worker's pool processes (the ones that run tasks)."""
    if worker.process is None or worker.process.poll() is not None:
        return []
    return _children(worker.process.pid)


def kill_pool_children(worker: WorkerProcess) -> list[int]:
    """SIGKILL the pool processes of a live worker (the parent stays and replaces them)."""
    pids = pool_children(worker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def start_timeouts(worker: WorkerProcess) -> int:
    """How many fresh pool processes Celery killed for not being up in time."""
    return worker.log_text().count("Timed out waiting for UP message")


def worker_lost_count(worker: WorkerProcess) -> int:
    """How many pool processes the worker's log says died under a task."""
    return worker.log_text().count("WorkerLostError")
