"""Retention: delete what is older than the ``retention`` settings allow.

The sweep is a list of named steps (:data:`STEPS`), each ``step(ctx) -> removed``;
another part adds its own with :func:`register_step` (e.g. visitors' unknown
faces, the audit log). ``faec-rec retention sweep`` and the beat task
``faec_rec.retention_sweep`` run :func:`sweep`, which records per step what it
removed in ``keys.retention_stats()`` (totals and last run, for every machine's
``/metrics``) and in the process counter ``faec_retention_removed_total{step}``.

A limit of 0 days keeps things forever. Streams are trimmed with ``XTRIM MINID``
(their ids are milliseconds since the epoch), so nothing older than the limit
remains and nothing newer is touched.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faec_rec.keys import Keys

log = logging.getLogger(__name__)

DAY_S = 86_400.0
SCAN_COUNT = 1000


@dataclass(frozen=True)
class SweepContext:
    """What a step needs: Redis, the key builder, the settings and "now" (unix s)."""

    redis: Any
    keys: Keys
    settings: Any
    now: float

    def cutoff(self, days: float) -> float | None:
        """Unix time before which things go; None when ``days`` is 0 (keep forever)."""
        return None if days <= 0 else self.now - days * DAY_S

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)


Step = Callable[[SweepContext], int]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _trim_stream(ctx: SweepContext, key: str, cutoff: float | None) -> int:
    if cutoff is None:
        return 0
    return int(ctx.redis.xtrim(key, minid=f"{max(0, int(cutoff * 1000))}-0", approximate=False))


# ---- the steps ------------------------------------------------------------------
def trim_events(ctx: SweepContext) -> int:
    """Recognition events, the combined stream and every camera's."""
    cutoff = ctx.cutoff(ctx.settings.retention.events_days)
    cameras = {_text(c) for c in ctx.redis.smembers(ctx.keys.cameras())}
    for key in ctx.redis.scan_iter(match=ctx.keys.camera_events_pattern(), count=SCAN_COUNT, _type="stream"):
        cameras.add(_text(key).rsplit(":", 1)[1])
    removed = _trim_stream(ctx, ctx.keys.events(), cutoff)
    for camera in sorted(cameras):
        try:
            removed += _trim_stream(ctx, ctx.keys.events(camera), cutoff)
        except ValueError:
            continue  # not a camera id this version writes
    return removed


def expire_event_features(ctx: SweepContext) -> int:
    """Face features kept for feedback: written with ``events.features_ttl_s``, so a
    key's age is that TTL minus what is left of it."""
    cutoff = ctx.cutoff(ctx.settings.retention.event_features_days)
    if cutoff is None:
        return 0
    limit_s = ctx.now - cutoff
    ttl_at_write = ctx.settings.events.features_ttl_s
    removed = 0
    batch: list[Any] = []
    for key in ctx.redis.scan_iter(match=ctx.keys.event_features_pattern(), count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= SCAN_COUNT:
            removed += _drop_older(ctx, batch, ttl_at_write, limit_s)
            batch = []
    return removed + _drop_older(ctx, batch, ttl_at_write, limit_s)


def _drop_older(ctx: SweepContext, keys: list[Any], ttl_at_write: int, limit_s: float) -> int:
    if not keys:
        return 0
    pipe = ctx.redis.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
    doomed = [k for k, ttl in zip(keys, pipe.execute()) if ttl == -1 or (ttl >= 0 and ttl_at_write - ttl > limit_s)]
    return int(ctx.redis.unlink(*doomed)) if doomed else 0


def drop_old_jobs(ctx: SweepContext) -> int:
    """Folder/identify jobs (progress hash and result stream) created before the limit."""
    cutoff = ctx.cutoff(ctx.settings.retention.job_results_days)
    if cutoff is None:
        return 0
    removed = 0
    for key in ctx.redis.scan_iter(match=ctx.keys.jobs_pattern(), count=SCAN_COUNT, _type="hash"):
        created = ctx.redis.hget(key, "created_at")
        if created is not None and float(created) < cutoff:
            job = _text(key).split(":", 2)[2]
            removed += int(ctx.redis.unlink(key, ctx.keys.job_results(job)))
    # result streams whose hash is already gone: by their newest entry's id
    for key in ctx.redis.scan_iter(match=ctx.keys.jobs_pattern(), count=SCAN_COUNT, _type="stream"):
        newest = ctx.redis.xrevrange(key, count=1)
        if not newest or int(_text(newest[0][0]).split("-")[0]) / 1000 < cutoff:
            removed += int(ctx.redis.unlink(key))
    return removed


def drop_old_enrolment_reports(ctx: SweepContext) -> int:
    """Enrolment reports (kept for idempotency) finished or started before the limit."""
    cutoff = ctx.cutoff(ctx.settings.retention.enrolment_reports_days)
    if cutoff is None:
        return 0
    removed = 0
    for key in ctx.redis.scan_iter(match=ctx.keys.enrolments_pattern(), count=SCAN_COUNT):
        report, started = ctx.redis.hmget(key, ["report", "started_at"])
        at = None
        if report:
            at = json.loads(report).get("finished_at")
        if at is None and started is not None:
            at = float(started)
        if at is not None and float(at) < cutoff:
            removed += int(ctx.redis.unlink(key))
    return removed


def trim_feedback(ctx: SweepContext) -> int:
    """Feedback entries (with the face features they hold)."""
    return _trim_stream(ctx, ctx.keys.feedback(), ctx.cutoff(ctx.settings.retention.feedback_days))


def drop_orphan_crops(ctx: SweepContext) -> int:
    """Crop files no template points at any more (a crash between file and
    transaction, a forget on another machine), older than the limit."""
    cutoff = ctx.cutoff(ctx.settings.retention.crops_days)
    root = ctx.data_dir / "crops"
    if cutoff is None or not root.is_dir():
        return 0
    removed = 0
    for path in root.glob("*/*.jpg"):
        try:
            if path.stat().st_mtime >= cutoff or ctx.redis.exists(ctx.keys.template(path.stem)):
                continue
        except (OSError, ValueError):
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def drop_old_snapshots(ctx: SweepContext) -> int:
    """Gallery snapshot files older than the limit, never the newest."""
    from faec_rec.index.snapshot import list_snapshots

    cutoff = ctx.cutoff(ctx.settings.retention.snapshots_days)
    folder = ctx.data_dir / "snapshots" / ctx.keys.prefix
    if cutoff is None or not folder.is_dir():
        return 0
    removed = 0
    for path in list_snapshots(folder)[1:]:
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


STEPS: dict[str, Step] = {
    "events": trim_events,
    "event_features": expire_event_features,
    "job_results": drop_old_jobs,
    "enrolment_reports": drop_old_enrolment_reports,
    "feedback": trim_feedback,
    "crops": drop_orphan_crops,
    "snapshots": drop_old_snapshots,
}


def register_step(name: str, step: Step) -> None:
    """Add a sweep step (another part's retention: unknown faces, audit entries...)."""
    STEPS[name] = step


def sweep(redis: Any, keys: Keys, settings: Any, *, now: float | None = None,
          only: list[str] | None = None) -> dict[str, int]:
    """Run every step (or ``only`` those); returns ``{step: items removed}``.

    A failing step is logged and counted as -1; the others still run.
    """
    ctx = SweepContext(redis, keys, settings, time.time() if now is None else now)
    removed: dict[str, int] = {}
    for name, step in STEPS.items():
        if only and name not in only:
            continue
        try:
            removed[name] = int(step(ctx))
        except Exception:
            log.exception("retention step %s failed", name)
            removed[name] = -1
    _record(redis, keys, removed, ctx.now)
    log.info("retention sweep: %s", removed)
    return removed


def _record(redis: Any, keys: Keys, removed: dict[str, int], now: float) -> None:
    pipe = redis.pipeline(transaction=True)
    for name, n in removed.items():
        if n > 0:
            pipe.hincrby(keys.retention_stats(), f"{name}:total", n)
        pipe.hset(keys.retention_stats(), f"{name}:last", n)
    pipe.hset(keys.retention_stats(), "swept_at", repr(now))
    pipe.execute()
    try:
        counter = _counter()
        for name, n in removed.items():
            if n > 0:
                counter.labels(step=name).inc(n)
    except Exception:  # metrics are best effort; the Redis hash holds the record
        log.debug("retention metric not recorded", exc_info=True)


_COUNTER: Any = None


def _counter() -> Any:
    global _COUNTER
    if _COUNTER is None:
        from prometheus_client import Counter

        _COUNTER = Counter("faec_retention_removed", "items the retention sweep removed", ["step"])
    return _COUNTER


def stats(redis: Any, keys: Keys) -> dict[str, str]:
    """The recorded sweep results: ``<step>:total``, ``<step>:last``, ``swept_at``."""
    return {_text(k): _text(v) for k, v in redis.hgetall(keys.retention_stats()).items()}
