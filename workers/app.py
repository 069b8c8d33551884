"""The Celery app and its configuration, in one place.

``celery -A faec_rec.workers.app worker -Q frames,enrol,train`` runs a worker;
producers and the client send tasks *by name* (the constants below) so that
they never import the pipeline or TensorFlow.

Building an app neither connects to Redis nor loads a model: the settings are
read on first use of the configuration, the model and the gallery on the first
task of each worker process (or at ``worker_process_init``).
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

from faec_rec.config import Settings, load_settings
from faec_rec.keys import Keys

log = logging.getLogger(__name__)

TASK_RECOGNISE = "faec_rec.recognise_frame"
TASK_IDENTIFY = "faec_rec.identify_image"
TASK_IDENTIFY_BATCH = "faec_rec.identify_images"
TASK_ENROL = "faec_rec.enrol"
TASK_ENROL_BATCH = "faec_rec.enrol_many"
TASK_TRAIN = "faec_rec.train_head"
TASK_RETENTION = "faec_rec.retention_sweep"

QUEUE_FRAMES = "frames"
QUEUE_ENROL = "enrol"
QUEUE_TRAIN = "train"
QUEUES = (QUEUE_FRAMES, QUEUE_ENROL, QUEUE_TRAIN)

# The one routing table: every task name and the queue it travels on.
ROUTES: dict[str, dict[str, str]] = {
    TASK_RECOGNISE: {"queue": QUEUE_FRAMES},
    TASK_IDENTIFY: {"queue": QUEUE_FRAMES},
    TASK_IDENTIFY_BATCH: {"queue": QUEUE_FRAMES},
    TASK_ENROL: {"queue": QUEUE_ENROL},
    TASK_ENROL_BATCH: {"queue": QUEUE_ENROL},
    TASK_TRAIN: {"queue": QUEUE_TRAIN},
    TASK_RETENTION: {"queue": QUEUE_ENROL},  # light; every default worker serves "enrol"
}

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
# Seconds a fresh pool process may take to load the model before Celery kills it.
WARM_UP_TIMEOUT_S = 300.0


def restore_interval_s(visibility_timeout_s: float) -> int:
    """Seconds between a worker's scans for messages a dead worker took: a third
    of the visibility timeout, between 1 and 10 s (one cheap Redis call each)."""
    return int(min(10, max(1, visibility_timeout_s // 3)))


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for one deployment, as a plain dict.

    Broker and result backend are ``settings.redis_url``; every Celery key lives
    under ``Keys(settings.prefix).celery()`` so two deployments (or two test
    runs) can share one Redis database without seeing each other's queues.
    """
    url = settings.redis_url or DEFAULT_BROKER_URL
    keyprefix = Keys(settings.prefix).celery()
    transport = {
        "global_keyprefix": keyprefix,
        # A message taken by a worker that dies unacknowledged is redelivered
        # after this long (acks_late): it must exceed the longest task.
        "visibility_timeout": settings.workers.visibility_timeout_s,
        # ... and kombu only looks for such messages every interval x throttle
        # seconds (10 x 10 = 100 s by default), whatever the visibility timeout:
        # found by tests/faults, where a killed worker's enrolment waited 100 s
        # behind a 3 s timeout. Look every third of the timeout (at most 10 s).
        "unacked_restore_interval": restore_interval_s(settings.workers.visibility_timeout_s),
        "unacked_restore_throttle": 1,
        # A worker holds a mutex while it hands such messages back; one killed
        # holding it blocks every other worker's hand-back for the mutex's expiry
        # (kombu: 300 s). Bound it by the visibility timeout: a message handed back
        # twice is run twice, which the idempotent tasks allow.
        "unacked_mutex_expire": int(min(300, max(5, settings.workers.visibility_timeout_s))),
    }
    backend_transport: dict[str, Any] = {"global_keyprefix": keyprefix}
    from faec_rec.cluster.sentinel import celery_urls, is_sentinel_url

    if is_sentinel_url(url):  # kombu's sentinel:// transport and Celery's sentinel backend
        url, sentinel_options = celery_urls(url)
        transport.update(sentinel_options)
        backend_transport.update(sentinel_options)
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": backend_transport,
        "broker_connection_retry_on_startup": True,
        # JSON only: a message can never execute code on a worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A task is acknowledged after it ran; a worker killed mid-task hands
        # it back (tasks are idempotent, so a second run changes nothing).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.workers.prefetch_multiplier,
        # Each pool process loads TensorFlow and the model at worker_process_init
        # (seconds, more on a busy machine). Celery's default of 4 s kills a pool
        # process that is not up by then, so a process replaced after a crash on a
        # loaded box was killed and re-forked in a loop (found by tests/faults).
        "worker_proc_alive_timeout": WARM_UP_TIMEOUT_S,
        # A task that runs too long is interrupted (soft: it fails and is acknowledged)
        # then its process killed (hard); training has its own, longer limits.
        "task_soft_time_limit": settings.workers.task_soft_time_limit_s,
        "task_time_limit": settings.workers.task_time_limit_s,
        "task_annotations": {TASK_TRAIN: {"soft_time_limit": settings.training.soft_time_limit_s,
                                          "time_limit": settings.training.time_limit_s}},
        "task_routes": ROUTES,
        "task_default_queue": QUEUE_FRAMES,
        "task_create_missing_queues": True,
        "result_expires": settings.workers.result_ttl_s,
        "task_track_started": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": _beat_schedule(settings),
    }


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    """The retraining schedule: ``faec_rec.training.schedule.beat_schedule(settings)``.

    That module must stay light (no TensorFlow import): this configuration is
    also read by producers and clients. Empty when training is not installed.
    """
    from faec_rec.cluster.schedule import retention_beat

    schedule = retention_beat(settings)  # the periodic retention sweep (retention.sweep_schedule)
    try:
        from faec_rec.training.schedule import beat_schedule  # type: ignore[import-not-found]
    except ImportError:
        return schedule
    return {**dict(beat_schedule(settings)), **schedule}


def make_app(settings: Settings | None = None) -> Celery:
    """Build a Celery app for ``settings`` (default: :func:`load_settings` on first use).

    Safe to call anywhere: nothing connects and no model loads until a worker
    runs a task. The app's settings are available as ``app_settings(app)``.
    """
    # GuardedTask: counts runs that killed their worker and parks a poison task (workers/deadletter.py).
    app = Celery("faec_rec", set_as_current=False, task_cls="faec_rec.workers.deadletter:GuardedTask")
    holder: dict[str, Settings] = {}

    def settings_now() -> Settings:
        if "s" not in holder:
            holder["s"] = settings if settings is not None else load_settings()
        return holder["s"]

    app.faec_settings = settings_now  # type: ignore[attr-defined]
    # Read lazily: the module-level app must not read the environment at import.
    app.add_defaults(lambda: celery_config(settings_now()))

    from faec_rec import metrics
    from faec_rec.workers import tasks

    tasks.register(app)
    # /healthz follows the consumer loop's own heartbeat (workers/heartbeat.py).
    from faec_rec.workers.heartbeat import ConsumerHeartbeat

    app.steps["consumer"].add(ConsumerHeartbeat)
    # /metrics, /healthz, /readyz on workers.health_port once a worker starts (0 = off).
    metrics.install_worker_hooks()
    return app


def app_settings(app: Celery) -> Settings:
    """The :class:`Settings` an app built by :func:`make_app` serves."""
    getter = getattr(app, "faec_settings", None)
    if getter is None:
        raise TypeError("this Celery app was not built by faec_rec.workers.app.make_app")
    return getter()


# The app of the worker running in this process, remembered in the main process
# before the pool forks (``worker_init``), so that each child warms up the
# deployment it will serve, whichever way the app was built.
_worker_app: Celery | None = None


@worker_init.connect(weak=False)
def _remember_worker_app(sender: Any = None, **_: object) -> None:
    global _worker_app
    _worker_app = getattr(sender, "app", None)
    from faec_rec.errors import ConfigError

    try:
        _check_broker(_worker_app)
    except ConfigError as exc:
        # Celery logs and swallows a handler's exceptions; SystemExit stops the worker.
        log.critical("refusing to start: %s", exc)
        raise SystemExit(2) from exc


def _check_broker(app: Celery | None) -> None:
    """Refuse an evicting Redis, warn about one without maxmemory or persistence
    (``faec_rec.redis_checks``), however the worker was started."""
    if app is None or getattr(app, "faec_settings", None) is None:
        return
    settings = app_settings(app)
    if not settings.redis_url:
        return
    import redis as redis_lib

    from faec_rec.cluster.sentinel import redis_from_url  # redis:// and redis+sentinel://
    from faec_rec.embedded import redact_url
    from faec_rec.redis_checks import check_redis_once

    try:
        client = redis_from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    except (redis_lib.RedisError, OSError, ValueError) as exc:
        log.warning("could not check the Redis configuration: %s", type(exc).__name__)
        return
    try:
        check_redis_once(client, require_noeviction=settings.redis_require_noeviction,
                         where=redact_url(settings.redis_url))
    except (redis_lib.RedisError, OSError) as exc:  # unreachable now: Celery's own retries report it
        log.warning("could not check the Redis configuration: %s", type(exc).__name__)
    finally:
        client.close()


@worker_process_init.connect(weak=False)
def _warm_up(**_: object) -> None:
    # Load the model and the gallery replica in each fresh worker process
    # before the first task arrives, so the first frame is not slow.
    from faec_rec import quiet
    from faec_rec.workers import runtime

    quiet.install_from_environment()  # TensorFlow's start-up lines only when the parent said -v

    target = _worker_app if _worker_app is not None else app
    if getattr(target, "faec_settings", None) is None:
        return
    try:
        runtime.warm_up(app_settings(target))
    except Exception:  # a failed warm-up is retried lazily by the first task
        log.exception("warm-up failed; resources will load on the first task")


app = make_app()
