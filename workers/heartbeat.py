"""The consumer's heartbeat: a Celery consumer bootstep that beats from the event loop.

Registered on the app by ``make_app``. Its timer runs inside the worker's consumer
loop (the one that takes messages from Redis), so the beats stop when that loop is
stuck or while its broker connection is lost and being re-established;
``/healthz`` (``faec_rec.metrics.HealthServer.alive``) fails when the last beat is
older than ``workers.liveness_stale_s``. A daemon thread answering HTTP alone
proves neither.
"""
from __future__ import annotations

from typing import Any

from celery import bootsteps

from faec_rec import metrics

BEAT_EVERY_S = 5.0


class ConsumerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Beats every :data:`BEAT_EVERY_S` seconds while the consumer runs."""

    requires = ("celery.worker.consumer.tasks:Tasks",)  # after the consumer took its queues

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        metrics.consumer_heartbeat()
        self.tref = c.timer.call_repeatedly(BEAT_EVERY_S, self.beat, (c,), priority=10)

    def beat(self, c: Any) -> None:
        connection = getattr(c, "connection", None)
        if connection is not None and getattr(connection, "connected", True):
            metrics.consumer_heartbeat()

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
