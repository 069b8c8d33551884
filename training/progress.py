"""Progress of the head training run, in one Redis hash anyone can read.

``keys.train_progress()`` holds the newest run: ``state`` (:class:`TrainState`),
``stage`` (gallery, reference features, train, evaluate, done), ``done``/``total``
of that stage, ``epoch``/``epochs``/``loss`` while training, ``percent`` of the
whole run, ``started_at``/``updated_at``/``finished_at`` (unix s), ``task_id`` of
the queued task, and ``result`` (the run's summary: status, reason, version) at
the end. ``Client.train_head`` marks it queued; :func:`faec_rec.training.retrain.run`
writes the rest once it holds the training lock (a run refused by the lock never
overwrites the one that holds it). ``Client.training_progress`` reads it.
"""
from __future__ import annotations

import json
import logging
import time
from enum import Enum
from typing import Any

from faec_rec.keys import Keys

log = logging.getLogger(__name__)

TTL_S = 7 * 24 * 3600  # a finished run stays readable a week

# Share of the whole run each stage takes (start, end), for one progress bar.
STAGES = {"gallery": (0, 5), "reference features": (5, 30), "train": (30, 90), "evaluate": (90, 100)}


class TrainState(str, Enum):
    IDLE = "idle"  # no run recorded
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # promoted, rejected or registered: see result
    SKIPPED = "skipped"  # nothing trained: see result.reason
    FAILED = "failed"


def percent(stage: str, done: int, total: int) -> float:
    start, end = STAGES.get(stage, (0, 100))
    share = min(1.0, max(0.0, done / total)) if total else 0.0
    return round(start + (end - start) * share, 1)


def mark_queued(redis: Any, keys: Keys, task_id: str) -> None:
    """A run was asked for; a run already going is left as it is."""
    key = keys.train_progress()
    state = redis.hget(key, "state")
    if state in (TrainState.RUNNING.value.encode(), TrainState.RUNNING.value):
        return
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    pipe.hset(key, mapping={"state": TrainState.QUEUED.value, "task_id": task_id, "percent": 0,
                            "queued_at": repr(time.time()), "updated_at": repr(time.time())})
    pipe.expire(key, TTL_S)
    pipe.execute()


class ProgressReporter:
    """Writes one run's progress; a Redis failure is logged, never fatal to the training."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.train_progress()

    def _write(self, fields: dict[str, Any], *, fresh: bool = False) -> None:
        fields = {k: ("" if v is None else v) for k, v in {**fields, "updated_at": repr(time.time())}.items()}
        try:
            pipe = self.redis.pipeline(transaction=True)
            if fresh:  # keep who queued it (task_id, queued_at), drop the last run's fields
                pipe.hdel(self.key, "epoch", "epochs", "loss", "result", "finished_at", "error")
            pipe.hset(self.key, mapping=fields)
            pipe.expire(self.key, TTL_S)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - progress is for people watching; training goes on
            log.debug("training progress not written: %s", exc)

    def start(self) -> None:
        self._write({"state": TrainState.RUNNING.value, "stage": "gallery", "done": 0, "total": 1, "percent": 0,
                     "started_at": repr(time.time())}, fresh=True)

    def __call__(self, stage: str, done: int, total: int, loss: float | None = None) -> None:
        fields: dict[str, Any] = {"stage": stage, "done": done, "total": total, "percent": percent(stage, done, total)}
        if stage == "train":
            fields.update(epoch=done, epochs=total)
            if loss is not None:
                fields["loss"] = repr(float(loss))
        self._write(fields)

    def finish(self, summary: dict[str, Any]) -> None:
        state = TrainState.SKIPPED if summary.get("status") == "skipped" else TrainState.DONE
        result = {k: summary.get(k) for k in ("status", "reason", "version", "previous", "current", "seconds")}
        self._write({"state": state.value, "stage": "done", "percent": 100, "finished_at": repr(time.time()),
                     "result": json.dumps(result, default=str)})

    def fail(self, error: str) -> None:
        self._write({"state": TrainState.FAILED.value, "finished_at": repr(time.time()), "error": error[:500]})


def read_progress(redis: Any, keys: Keys) -> dict[str, Any]:
    """The newest run's progress as JSON-able values (``{"state": "idle"}`` when none)."""
    raw = redis.hgetall(keys.train_progress())
    if not raw:
        return {"state": TrainState.IDLE.value}
    data = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}
    out: dict[str, Any] = {}
    if data.get("state") == TrainState.RUNNING.value and not redis.exists(keys.train_lock()):
        # a run writes its end while it holds the lock: running without the lock means it died
        data.update(state=TrainState.FAILED.value, error="the run ended without a result (its worker stopped)")
    for name, value in data.items():
        if value == "":
            out[name] = None
        elif name in ("done", "total", "epoch", "epochs"):
            out[name] = int(value)
        elif name in ("percent", "loss", "started_at", "updated_at", "finished_at", "queued_at"):
            out[name] = float(value)
        elif name == "result":
            out[name] = json.loads(value)
        else:
            out[name] = value
    return out
