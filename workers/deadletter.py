"""Poison tasks: count the runs that killed their worker, park a task after N.

Tasks are acknowledged late and handed back when their worker process dies
(``task_acks_late`` + ``task_reject_on_worker_lost``), so a task whose run kills
the process (a decoder crash, the OOM killer) would come back for as long as its
message lives, taking a worker down each time.

The guard counts, per task id, runs that *started and never ended* in their
process: ``INCR keys.deliveries(id)`` when a run starts, ``DEL`` when it ends in
any way the process survives (result, error, retry, soft time limit). A count
left standing is a run that died with its process. When a delivery finds
``max_deliveries`` such runs before it, the task is not run again: its name and
payload are appended to ``keys.dead_letter()`` (a stream), counted in the
``faec_tasks_dead_lettered`` metric, and the message is acknowledged.
``faec-rec tasks dead-letter list|replay|drop`` shows and handles them.

A hard time limit kills the process too, but Celery acknowledges such a task
(it failed), so it is not redelivered and needs no parking.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Task

from faec_rec import metrics
from faec_rec.keys import Keys

if TYPE_CHECKING:
    import redis as redis_lib
    from celery import Celery

log = logging.getLogger(__name__)

DEAD_LETTER_MAXLEN = 10_000
STATUS_PARKED = "dead_lettered"


@dataclass(frozen=True)
class DeadLetter:
    """One parked task: ``entry`` is its id in the dead-letter stream."""

    entry: str
    task: str
    task_id: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    deliveries: int
    parked_at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry, "task": self.task, "task_id": self.task_id, "queue": self.queue,
                "args": self.args, "kwargs": self.kwargs, "deliveries": self.deliveries,
                "parked_at": self.parked_at, "reason": self.reason}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry_id: Any, fields: dict[Any, Any]) -> DeadLetter:
    f = {_text(k): _text(v) for k, v in fields.items()}
    return DeadLetter(entry=_text(entry_id), task=f.get("task", ""), task_id=f.get("task_id", ""),
                      queue=f.get("queue", ""), args=json.loads(f.get("args") or "[]"),
                      kwargs=json.loads(f.get("kwargs") or "{}"), deliveries=int(f.get("deliveries") or 0),
                      parked_at=float(f.get("parked_at") or 0.0), reason=f.get("reason", ""))


# ---- the counter ---------------------------------------------------------------------
def begin_run(redis: "redis_lib.Redis", keys: Keys, task_id: str, ttl_s: int) -> int:
    """Count a run of ``task_id`` starting; returns the runs not ended so far, this one included."""
    pipe = redis.pipeline(transaction=True)
    pipe.incr(keys.deliveries(task_id))
    pipe.expire(keys.deliveries(task_id), ttl_s)
    count, _ = pipe.execute()
    return int(count)


def end_run(redis: "redis_lib.Redis", keys: Keys, task_id: str) -> None:
    """The run of ``task_id`` ended with its process alive: forget the count."""
    redis.delete(keys.deliveries(task_id))


def park(redis: "redis_lib.Redis", keys: Keys, *, task: str, task_id: str, queue: str,
         args: Any, kwargs: Any, deliveries: int, reason: str) -> str:
    """Append a task to the dead-letter stream and clear its counter; returns the entry id."""
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(keys.dead_letter(), {
        "task": task, "task_id": task_id, "queue": queue,
        "args": json.dumps(list(args or ()), default=str), "kwargs": json.dumps(dict(kwargs or {}), default=str),
        "deliveries": deliveries, "parked_at": repr(time.time()), "reason": reason,
    }, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
    pipe.delete(keys.deliveries(task_id))
    entry, _ = pipe.execute()
    return _text(entry)


@dataclass(frozen=True)
class RunGuard:
    """The counter of one delivery for a task that counts its run in its own first request."""

    redis: Any
    keys: Keys
    limit: int
    ttl_s: int
    task_id: str

    def queue_begin(self, pipe: Any) -> int:
        """Queue :func:`begin_run`'s commands on ``pipe``; returns how many replies (the first: the count)."""
        pipe.incr(self.keys.deliveries(self.task_id))
        pipe.expire(self.keys.deliveries(self.task_id), self.ttl_s)
        return 2

    def over(self, count: int) -> bool:
        """True when ``count`` runs (this one included) mean the task must be parked."""
        return int(count) > self.limit


# ---- the dead-letter stream ----------------------------------------------------------
def list_parked(redis: "redis_lib.Redis", keys: Keys, count: int = 1000) -> list[DeadLetter]:
    """Parked tasks, oldest first (at most ``count``)."""
    return [_entry(i, f) for i, f in redis.xrange(keys.dead_letter(), count=count)]


def get_parked(redis: "redis_lib.Redis", keys: Keys, entry: str) -> DeadLetter:
    """One parked task by its entry id; raises ``KeyError`` if there is none."""
    try:
        found = redis.xrange(keys.dead_letter(), min=entry, max=entry, count=1)
    except Exception as exc:  # redis.ResponseError: not a stream id
        raise KeyError(f"no parked task {entry!r} (ids look like 1700000000000-0)") from exc
    if not found:
        raise KeyError(f"no parked task {entry!r}: see `faec-rec tasks dead-letter list`")
    return _entry(*found[0])


def drop(redis: "redis_lib.Redis", keys: Keys, entry: str) -> DeadLetter:
    """Delete one parked task; returns it."""
    parked = get_parked(redis, keys, entry)
    redis.xdel(keys.dead_letter(), parked.entry)
    return parked


def replay(redis: "redis_lib.Redis", keys: Keys, app: "Celery", entry: str) -> str:
    """Send a parked task again (a fresh task id, its original queue) and remove it from
    the stream; returns the new task id. Uploaded bytes it names may have expired since."""
    parked = get_parked(redis, keys, entry)
    task_id = uuid.uuid4().hex
    app.send_task(parked.task, args=parked.args, kwargs=parked.kwargs, queue=parked.queue or None, task_id=task_id)
    redis.xdel(keys.dead_letter(), parked.entry)
    log.info("replayed parked task %s (%s) as %s", parked.entry, parked.task, task_id)
    return task_id


# ---- the task base class -------------------------------------------------------------
class GuardedTask(Task):  # type: ignore[misc]
    """Celery task base of the project's app: counts unfinished runs, parks poison tasks.

    ``on_parked(args, kwargs, reason)`` may be set on a task to tell whoever waits
    for it (e.g. a folder job's result stream) that it will not run.
    """

    on_parked: Any = None

    # True: the task counts its run in its own first request (``self.request.faec_guard``, a
    # RunGuard) and parks itself with park_run(): one round trip less before its work starts.
    guard_in_body: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        guard = self._guard()
        if guard is None:
            return super().__call__(*args, **kwargs)
        redis, keys, limit, ttl_s, task_id = guard
        if self.guard_in_body:
            self.request.faec_guard = RunGuard(redis, keys, limit, ttl_s, task_id)
            try:
                return super().__call__(*args, **kwargs)
            finally:
                self.request.faec_guard = None
                try:
                    end_run(redis, keys, task_id)
                except Exception as exc:
                    log.warning("%s[%s]: delivery count not cleared (%s)", self.name, task_id, type(exc).__name__)
        try:
            count = begin_run(redis, keys, task_id, ttl_s)
        except Exception as exc:  # Redis away: the task's own retry handles it
            log.warning("%s[%s]: delivery not counted (%s)", self.name, task_id, type(exc).__name__)
            return super().__call__(*args, **kwargs)
        if count > limit:
            return self._park(redis, keys, task_id, count - 1, args, kwargs)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            try:
                end_run(redis, keys, task_id)
            except Exception as exc:
                log.warning("%s[%s]: delivery count not cleared (%s)", self.name, task_id, type(exc).__name__)

    def _guard(self) -> tuple[Any, Keys, int, int, str] | None:
        request = self.request
        task_id = getattr(request, "id", None)
        if not task_id or getattr(request, "is_eager", False) or getattr(self.app, "faec_settings", None) is None:
            return None  # called directly, not delivered by a broker
        from faec_rec.workers.app import app_settings
        from faec_rec.workers.runtime import get_runtime

        settings = app_settings(self.app)
        ttl_s = max(settings.workers.upload_ttl_s, settings.workers.result_ttl_s, settings.workers.visibility_timeout_s)
        return get_runtime(settings).redis, Keys(settings.prefix), settings.workers.max_deliveries, ttl_s, task_id

    def park_run(self, guard: "RunGuard", count: int, args: Any, kwargs: Any) -> dict[str, Any]:
        """Park this delivery from the task body (``guard_in_body``): ``count`` runs counted."""
        return self._park(guard.redis, guard.keys, guard.task_id, count - 1, args, kwargs)

    def _park(self, redis: Any, keys: Keys, task_id: str, died: int, args: Any, kwargs: Any) -> dict[str, Any]:
        info = getattr(self.request, "delivery_info", None) or {}
        queue = info.get("routing_key") or ""
        reason = f"its worker process died in {died} runs in a row"
        entry = park(redis, keys, task=self.name, task_id=task_id, queue=queue, args=args, kwargs=kwargs,
                     deliveries=died + 1, reason=reason)
        metrics.task_dead_lettered(self.name)
        log.error("%s[%s]: parked in the dead-letter stream as %s (%s); see `faec-rec tasks dead-letter list`",
                  self.name, task_id, entry, reason)
        if self.on_parked is not None:
            try:
                self.on_parked(args, kwargs, reason)
            except Exception:
                log.exception("%s[%s]: could not report the parked task to its waiter", self.name, task_id)
        return {"status": STATUS_PARKED, "entry": entry, "reason": reason}
