"""Thin Celery tasks: parse the payload, call the domain code, declare retries.

Registered on an app by :func:`register` (called from ``make_app``), so any app
built for any Redis gets the same tasks. Heavy modules (pipeline, engine) are
imported inside the task bodies: importing this module stays cheap, and
producers that import the app never pull in TensorFlow.

Retries: only for a backend that went away (Redis restarting), with doubling
backoff up to ``settings.workers.max_retries`` times. Bad input is not retried;
it becomes an error event or an error in the result.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from faec_rec.errors import BackendUnavailable, PayloadError

if TYPE_CHECKING:
    from celery import Celery, Task

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0


def backoff_s(retries: int) -> float:
    """Seconds before retry number ``retries + 1``: 1, 2, 4, ... capped at 30."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2 ** retries))


def _transient() -> tuple[type[BaseException], ...]:
    import redis

    return (BackendUnavailable, redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def _runtime(task: "Task") -> Any:
    from faec_rec.workers.app import app_settings
    from faec_rec.workers.runtime import get_runtime

    return get_runtime(app_settings(task.app))


def _retry_on_backend_loss(task: "Task", exc: BaseException) -> None:
    from faec_rec.workers.app import app_settings

    limit = app_settings(task.app).workers.max_retries
    countdown = backoff_s(task.request.retries)
    log.warning("%s: backend unavailable (%s); retry %d/%d in %.0fs",
                task.name, exc, task.request.retries + 1, limit, countdown)
    raise task.retry(exc=exc, countdown=countdown, max_retries=limit)


def register(app: "Celery") -> dict[str, "Task"]:
    """Register the project's tasks on ``app``; returns them by name."""
    from faec_rec.workers.app import (TASK_ENROL, TASK_ENROL_BATCH, TASK_IDENTIFY, TASK_IDENTIFY_BATCH, TASK_RECOGNISE,
                                      TASK_TRAIN)

    @app.task(name=TASK_RECOGNISE, shared=False, bind=True, ignore_result=True)
    def recognise_frame(self: "Task", payload: dict[str, Any]) -> dict[str, Any] | None:
        from faec_rec.workers import pipeline

        try:
            frame = pipeline.FramePayload.from_json(payload)
        except PayloadError as exc:
            log.error("recognise_frame: dropped a malformed message: %s", exc)
            return {"status": "bad_payload", "detail": str(exc)}
        guard = getattr(self.request, "faec_guard", None)
        try:
            outcome = pipeline.recognise_frame(_runtime(self), frame, guard=guard)
        except _transient() as exc:
            _retry_on_backend_loss(self, exc)
            return None
        if outcome.status == "parked":
            return self.park_run(guard, int(outcome.detail or 0), [payload], {})
        return outcome.to_json()

    # Results go to the job's stream (pipeline.identify_image), where Client.identify and
    # folder jobs read them; nothing reads Celery's result backend, so nothing is stored there.
    @app.task(name=TASK_IDENTIFY, shared=False, bind=True, ignore_result=True)
    def identify_image(self: "Task", payload: dict[str, Any]) -> dict[str, Any] | None:
        from faec_rec.workers import pipeline

        try:
            image = pipeline.ImagePayload.from_json(payload)
        except PayloadError as exc:
            log.error("identify_image: dropped a malformed message: %s", exc)
            return {"error": "bad_payload", "detail": str(exc)}
        try:
            return pipeline.identify_image(_runtime(self), image)
        except _transient() as exc:
            _retry_on_backend_loss(self, exc)
        return None

    @app.task(name=TASK_IDENTIFY_BATCH, shared=False, bind=True)
    def identify_images(self: "Task", payload: dict[str, Any]) -> dict[str, Any] | None:
        from faec_rec.workers import batch

        try:
            images = batch.payloads_from_json(payload)
        except PayloadError as exc:
            log.error("identify_images: dropped a malformed message: %s", exc)
            return {"error": "bad_payload", "detail": str(exc)}
        try:
            return {"recorded": len(batch.identify_images(_runtime(self), images))}
        except _transient() as exc:
            _retry_on_backend_loss(self, exc)
        return None

    @app.task(name=TASK_ENROL, shared=False, bind=True)
    def enrol(self: "Task", payload: dict[str, Any]) -> dict[str, Any] | None:
        from faec_rec.workers import enrolment

        try:
            request = enrolment.EnrolRequest.from_json(payload)
        except PayloadError as exc:
            log.error("enrol: dropped a malformed message: %s", exc)
            return {"status": "failed", "error": "bad_payload", "detail": str(exc)}
        try:
            return enrolment.enrol(_runtime(self), request).to_json()
        except _transient() as exc:
            _retry_on_backend_loss(self, exc)
        return None

    @app.task(name=TASK_ENROL_BATCH, shared=False, bind=True)
    def enrol_many(self: "Task", payload: dict[str, Any]) -> dict[str, Any] | None:
        """``{"requests": [enrol payload, ...]}``: a folder of people, their faces embedded
        in one model call; a malformed request is dropped (logged), the others go on."""
        from faec_rec.workers import enrolment

        requests = []
        for raw in (payload.get("requests") if isinstance(payload, dict) else None) or []:
            try:
                requests.append(enrolment.EnrolRequest.from_json(raw))
            except PayloadError as exc:
                log.error("enrol_many: dropped a malformed request: %s", exc)
        try:
            reports = enrolment.enrol_many(_runtime(self), requests)
        except _transient() as exc:
            _retry_on_backend_loss(self, exc)
            return None
        return {"reports": {r.request_id: r.status for r in reports}}

    # Acknowledged when it starts, not when it ends: the broker's visibility timeout
    # (one for every queue of a Redis broker, scanned by every worker) is sized for
    # frames, and a retraining longer than it would otherwise be handed to a second
    # trainer while the first still runs. A trainer that dies mid-run loses the run;
    # the schedule (or `faec-rec train head`) starts the next.
    @app.task(name=TASK_TRAIN, shared=False, bind=True, acks_late=False)
    def train_head(self: "Task", payload: dict[str, Any] | None = None) -> dict[str, Any]:
        from faec_rec.workers.app import app_settings

        try:
            from faec_rec.training import retrain
        except ImportError as exc:
            raise PayloadError(f"training is not available on this worker: {exc}") from exc
        result = retrain.run(app_settings(self.app), **(payload or {}))
        return result if isinstance(result, dict) else {"result": str(result)}

    from faec_rec.workers.app import TASK_RETENTION

    @app.task(name=TASK_RETENTION, shared=False, bind=True, ignore_result=True)
    def retention_sweep(self: "Task", payload: dict[str, Any] | None = None) -> dict[str, int]:
        from faec_rec.cluster.retention import sweep

        runtime = _runtime(self)
        return sweep(runtime.redis, runtime.keys, runtime.settings)

    recognise_frame.guard_in_body = True  # its delivery is counted in the frame's claim request
    identify_image.on_parked = _identify_parked(app)
    identify_images.on_parked = _identify_batch_parked(app)
    enrol_many.on_parked = _enrol_batch_parked(app)
    return {t.name: t for t in (recognise_frame, identify_image, identify_images, enrol, enrol_many, train_head,
                                retention_sweep)}


def _identify_parked(app: "Celery") -> Any:
    """Tell a folder job that a parked image will get no result, so its waiter does not time out."""

    def on_parked(args: Any, kwargs: Any, reason: str) -> None:
        from faec_rec.workers import pipeline
        from faec_rec.workers.app import app_settings
        from faec_rec.workers.runtime import get_runtime

        payload = (list(args) or [kwargs.get("payload")])[0]
        image = pipeline.ImagePayload.from_json(payload)
        pipeline.record_image_error(get_runtime(app_settings(app)), image, f"dead_lettered: {reason}")

    return on_parked


def _identify_batch_parked(app: "Celery") -> Any:
    """A parked folder batch: every image of it gets an error record (no waiter times out)."""

    def on_parked(args: Any, kwargs: Any, reason: str) -> None:
        from faec_rec.workers import batch, pipeline
        from faec_rec.workers.app import app_settings
        from faec_rec.workers.runtime import get_runtime

        payload = (list(args) or [kwargs.get("payload")])[0]
        runtime = get_runtime(app_settings(app))
        for image in batch.payloads_from_json(payload):
            pipeline.record_image_error(runtime, image, f"dead_lettered: {reason}")

    return on_parked


def _enrol_batch_parked(app: "Celery") -> Any:
    """A parked batch of enrolments: each request not yet reported gets a failed report
    (``dead_lettered``), so a client waiting for one of them is answered, not timed out."""

    def on_parked(args: Any, kwargs: Any, reason: str) -> None:
        from faec_rec.workers import enrolment
        from faec_rec.workers.app import app_settings
        from faec_rec.workers.runtime import get_runtime

        payload = (list(args) or [kwargs.get("payload")])[0]
        runtime = get_runtime(app_settings(app))
        for raw in payload.get("requests") or []:
            try:
                request = enrolment.EnrolRequest.from_json(raw)
            except PayloadError:
                continue
            if enrolment.stored_report(runtime.redis, runtime.keys, request.request_id) is None:
                enrolment.record_failed(runtime, request, "dead_lettered", reason)

    return on_parked
