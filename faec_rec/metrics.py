"""Prometheus metrics, and the HTTP endpoints ``/metrics``, ``/healthz`` and ``/readyz``.

Two kinds of metric:

- **Process metrics**, recorded by the code that sees the event: producers count frames
  received and dropped; workers count frames processed and failed, observe the latency
  from capture to event, faces per frame and the time of each pipeline stage, and report
  their gallery replica size and model version; the training task counts runs by outcome.
  Call the module functions (:func:`frame_processed`, ...); the metric objects are built
  on first use, never at import time.
- **Cluster metrics**, read from Redis when Prometheus scrapes (:class:`RedisCollector`):
  queue depth per Celery queue, frames waiting per camera, people in the gallery, whether
  Redis answers, and from each camera's stats hash (which the frame protocol keeps: the
  producer counts pushed/dropped, workers processed/errors/faces and a latency histogram)
  the ``faec_camera_*`` families. They need no wiring and cover every machine, but every
  process that serves them reports the same numbers: aggregate them with ``max``, not
  ``sum``.

Celery prefork: the tasks run in child processes, but a Kubernetes probe and a Prometheus
scrape want one port per worker. We use prometheus-client's **multiprocess mode**: the
worker's main process calls :func:`enable_multiprocess` before the pool forks, every child
writes its samples to memory-mapped files in one directory, and one :class:`HealthServer`
in the main process serves the merged view. Readiness follows the same path: a child that
has loaded its model and synced its gallery says so with :func:`mark_ready`, which writes a
small ``ready_<pid>.json`` next to the sample files; the server counts only live pids.
:func:`install_worker_hooks` wires all of this to Celery's signals. A single-process
program (a camera producer, a solo-pool worker, a test) needs none of it: it calls
:func:`serve` and everything stays in memory.
"""
from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faec_rec.errors import ConfigError
from faec_rec.files import atomic_write_bytes, pid_alive

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from faec_rec.config import Settings
    from faec_rec.keys import Keys

log = logging.getLogger(__name__)

#: Checks a worker must pass (in at least one live process) before ``/readyz`` says 200.
WORKER_CHECKS: tuple[str, ...] = ("model", "gallery")
#: The Celery queues whose depth is exported (see ``faec_rec.workers.app``).
QUEUES: tuple[str, ...] = ("frames", "enrol", "train")
# kombu's Redis transport keeps one list per priority step: "q", "q\x06\x163", ...
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
_FACES_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_READY_FILE = "ready_{pid}.json"


class TrainingOutcome(str, enum.Enum):
    """How a training run ended."""

    PROMOTED = "promoted"  # the new head is better and now in service
    REJECTED = "rejected"  # trained, but not better than the one in service
    SKIPPED = "skipped"  # not started: too little data, another run holds the lock
    FAILED = "failed"  # raised


class EnrolOutcome(str, enum.Enum):
    """What happened to one enrolment image."""

    ACCEPTED = "accepted"
    REFUSED = "refused"  # failed the quality gate or could not be read
    DUPLICATE = "duplicate"  # the same image was already enrolled for that person


# ---------------------------------------------------------------------------
# Process metrics
# ---------------------------------------------------------------------------


class Metrics:
    """The process metrics, registered in ``registry`` (a private one by default).

    In multiprocess mode the registry only matters to this process; the served view is
    merged from every process's files by :class:`HealthServer`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_received = Counter(
            "faec_frames_received", "Frames read from a camera and pushed to Redis", ["camera"], registry=r)
        self.frames_dropped = Counter(
            "faec_frames_dropped", "Frames dropped by backpressure (oldest first) before a worker took them",
            ["camera"], registry=r)
        self.frames_processed = Counter(
            "faec_frames_processed", "Frames a worker finished (events published)", ["camera"], registry=r)
        self.frame_errors = Counter(
            "faec_frame_errors", "Frames or images that gave an error event, by short error code",
            ["camera", "error"], registry=r)
        self.latency = Histogram(
            "faec_capture_to_event_seconds", "Seconds from frame capture to its events being published",
            ["camera"], buckets=_LATENCY_BUCKETS, registry=r)
        self.faces = Histogram(
            "faec_faces_per_frame", "Faces detected in one frame or image", ["camera"],
            buckets=_FACES_BUCKETS, registry=r)
        self.stage = Histogram(
            "faec_stage_seconds", "Seconds spent in one pipeline stage (decode, detect, align, embed, lookup...)",
            ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.enrol_images = Counter(
            "faec_enrol_images", "Enrolment images by outcome", ["outcome"], registry=r)
        self.training_runs = Counter(
            "faec_training_runs", "Comparison-head training runs by outcome", ["outcome"], registry=r)
        self.gallery_size = Gauge(
            "faec_gallery_replica_size", "People and templates in this process's gallery replica",
            ["kind"], multiprocess_mode="livemax", registry=r)
        self.tasks_dead_lettered = Counter(
            "faec_tasks_dead_lettered", "Tasks parked in the dead-letter stream after killing their worker "
            "workers.max_deliveries times", ["task"], registry=r)
        r.register(ModelVersionCollector())
        self._version: str | None = None
        self._lock = threading.Lock()

    def set_model_version(self, version: str) -> None:
        # Not a Gauge: an info metric is 1 for what is, never 0 for what was, and a
        # multiprocess gauge cannot forget a label. The version goes into this process's
        # state (like readiness) and ModelVersionCollector exposes live processes' versions.
        with self._lock:
            self._version = version
        _set_state(_MODEL_VERSION_STATE, {"ok": True, "detail": version, "at": time.time()})


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def get_metrics() -> Metrics:
    """The process's :class:`Metrics`, built on first use."""
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def frames_received(camera: str, n: int = 1) -> None:
    """Producer: ``n`` frames of ``camera`` were pushed to Redis."""
    get_metrics().frames_received.labels(camera=camera).inc(n)


def frames_dropped(camera: str, n: int = 1) -> None:
    """Producer: ``n`` frames of ``camera`` were dropped by backpressure."""
    if n > 0:
        get_metrics().frames_dropped.labels(camera=camera).inc(n)


def frame_processed(camera: str, captured_at: float, faces: int, now: float | None = None) -> None:
    """Worker: one frame done. ``captured_at`` and ``now`` are unix seconds.

    Latency across machines needs their clocks in sync (NTP); a negative difference from
    skew is recorded as 0 rather than dropped, so the count stays right.
    """
    m = get_metrics()
    m.frames_processed.labels(camera=camera).inc()
    if captured_at > 0:
        m.latency.labels(camera=camera).observe(max(0.0, (time.time() if now is None else now) - captured_at))
    m.faces.labels(camera=camera).observe(max(0, int(faces)))


def frame_error(camera: str, error: str) -> None:
    """Worker: a frame (or a folder image, camera ``"folder"``) gave an error event ``error``."""
    get_metrics().frame_errors.labels(camera=camera, error=error).inc()


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time a pipeline stage: ``with metrics.stage("detect"): ...`` (also times failures)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        get_metrics().stage.labels(stage=name).observe(time.perf_counter() - start)


def enrol_image(outcome: EnrolOutcome | str) -> None:
    """Enrolment: one image ended as ``outcome`` (accepted, refused, duplicate)."""
    get_metrics().enrol_images.labels(outcome=_member(EnrolOutcome, outcome)).inc()


def training_run(outcome: TrainingOutcome | str) -> None:
    """Training: one run ended as ``outcome`` (promoted, rejected, skipped, failed)."""
    get_metrics().training_runs.labels(outcome=_member(TrainingOutcome, outcome)).inc()


def task_dead_lettered(task: str) -> None:
    get_metrics().tasks_dead_lettered.labels(task=task).inc()


def set_gallery_size(people: int, templates: int) -> None:
    """Worker: the size of this process's gallery replica after a sync."""
    m = get_metrics()
    m.gallery_size.labels(kind="people").set(people)
    m.gallery_size.labels(kind="templates").set(templates)


def set_model_version(version: str) -> None:
    """Worker: this process now serves model ``version`` (the previous one drops to 0)."""
    get_metrics().set_model_version(version)


def _member(kind: type[enum.Enum], value: enum.Enum | str) -> str:
    try:
        return kind(value).value
    except ValueError:
        valid = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise ValueError(f"{kind.__name__} {value!r} is not one of: {valid}") from None


# ---------------------------------------------------------------------------
# Multiprocess mode (Celery prefork)
# ---------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """The directory of multiprocess mode, or None in single-process mode."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(path) if path else None


def enable_multiprocess(directory: str | os.PathLike[str], clean: bool = True) -> Path:
    """Switch this process (and the children it forks later) to multiprocess mode.

    Call it in the parent before the pool forks and before any metric is recorded.
    ``clean`` empties the directory of earlier runs' files (counters would otherwise
    resume from a dead worker's values).
    """
    path = Path(directory)
    if _metrics is not None and multiprocess_dir() != path:
        raise ConfigError(
            "metrics: enable_multiprocess() must run before the first metric is recorded "
            "(call it in the worker's main process before the pool starts)")
    path.mkdir(parents=True, exist_ok=True)
    if clean:
        for old in [*path.glob("*.db"), *path.glob(_READY_FILE.format(pid="*"))]:
            old.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # prometheus-client picks its value class when it is first imported; if that happened
    # before the variable was set, pick again (no metric of ours exists yet, see above).
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return path


def process_exited(pid: int) -> None:
    """Forget a finished child's live gauges and readiness (multiprocess mode)."""
    directory = multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))
    (directory / _READY_FILE.format(pid=pid)).unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Liveness: the consumer's heartbeat
# ---------------------------------------------------------------------------

_consumer_beat: float | None = None


def consumer_heartbeat(now: float | None = None) -> None:
    """Record that the worker's consumer loop just ran (called from its event loop by
    ``workers/heartbeat.py``); ``/healthz`` fails when this goes stale."""
    global _consumer_beat
    _consumer_beat = time.time() if now is None else now


def consumer_heartbeat_age() -> float | None:
    """Seconds since the consumer loop last ran, or None before it first ran."""
    return None if _consumer_beat is None else max(0.0, time.time() - _consumer_beat)


# ---------------------------------------------------------------------------
# Readiness
# ---------------------------------------------------------------------------

_ready: dict[str, dict[str, Any]] = {}
_ready_lock = threading.Lock()


_MODEL_VERSION_STATE = "model_version"


def mark_ready(check: str, ok: bool = True, detail: str = "") -> None:
    """Record the state of a readiness ``check`` ("model", "gallery") for this process.

    In multiprocess mode the state is also written to ``ready_<pid>.json`` so the
    server in the main process sees it.
    """
    _set_state(check, {"ok": bool(ok), "detail": detail, "at": time.time()})


class ModelVersionCollector:
    """``faec_model_version_info{version}`` = 1 for each version a live process serves."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("faec_model_version_info", "1 for each model version a live process is serving",
                                   labels=["version"])
        versions = sorted({str(st[_MODEL_VERSION_STATE]["detail"]) for st in _process_states().values()
                           if st.get(_MODEL_VERSION_STATE, {}).get("detail")})
        for version in versions:
            family.add_metric([version], 1.0)
        yield family


def _set_state(check: str, state: dict[str, Any]) -> None:
    with _ready_lock:
        _ready[check] = state
        snapshot = dict(_ready)
    directory = multiprocess_dir()
    if directory is not None:
        target = directory / _READY_FILE.format(pid=os.getpid())
        atomic_write_bytes(target, json.dumps(snapshot).encode())  # the server never reads half a file


def sweep_dead_processes() -> list[int]:
    """Forget every process that left files in the multiprocess directory and is gone
    without a goodbye (SIGKILL, OOM kill); returns their pids. Run before each scrape and probe."""
    directory = multiprocess_dir()
    if directory is None:
        return []
    pids = set()
    for path in [*directory.glob("gauge_live*_*.db"), *directory.glob(_READY_FILE.format(pid="*"))]:
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not pid_alive(pid))
    for pid in dead:
        process_exited(pid)
    return dead


def _process_states() -> dict[int, dict[str, Any]]:
    """Readiness state of this process and, in multiprocess mode, of every live process."""
    with _ready_lock:
        states = {os.getpid(): dict(_ready)} if _ready else {}
    directory = multiprocess_dir()
    if directory is not None:
        for path in directory.glob(_READY_FILE.format(pid="*")):
            try:
                pid = int(path.stem.split("_", 1)[1])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid() or not pid_alive(pid):
                continue  # a dead one is forgotten by sweep_dead_processes()
            try:
                states[pid] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now; the next probe reads it
    return states


def readiness(checks: Sequence[str], redis_ping: Callable[[], None] | None = None) -> tuple[bool, dict[str, Any]]:
    """Evaluate readiness: Redis answers (if ``redis_ping`` is given) and every one of
    ``checks`` is ok in at least one live process. Returns ``(ready, report)``."""
    report: dict[str, Any] = {}
    if redis_ping is not None:
        try:
            redis_ping()
            report["redis"] = {"ok": True, "detail": ""}
        except Exception as exc:  # any failure means "not ready"; the detail says which
            report["redis"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    sweep_dead_processes()
    states = _process_states()
    for check in checks:
        ok_pids = [pid for pid, st in states.items() if st.get(check, {}).get("ok")]
        if ok_pids:
            detail = states[ok_pids[0]][check].get("detail", "")
            report[check] = {"ok": True, "detail": detail, "processes": len(ok_pids)}
        else:
            details = [st[check].get("detail", "") for st in states.values() if check in st]
            report[check] = {"ok": False, "detail": "; ".join(d for d in details if d) or "not reported yet"}
    return all(v["ok"] for v in report.values()), report


# ---------------------------------------------------------------------------
# Cluster metrics read from Redis at scrape time
# ---------------------------------------------------------------------------


class RedisCollector:
    """Queue depth, frames waiting per camera, gallery people and Redis health, read at scrape.

    ``queue_key`` maps a Celery queue name to its Redis list name; by default the
    broker's lists live under ``keys.celery()`` (the app sets kombu's ``global_keyprefix``).
    """

    def __init__(self, client: Any, keys: Keys, queues: Iterable[str] = QUEUES,
                 queue_key: Callable[[str], str] | None = None) -> None:
        self.client = client
        self.keys = keys
        self.queues = tuple(queues)
        self.queue_key = queue_key if queue_key is not None else (lambda q: keys.celery() + q)

    def describe(self) -> list[Any]:
        return []  # metrics vary with cameras; never run collect() at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("faec_redis_up", "1 if Redis answered the last scrape")
        try:
            depth = GaugeMetricFamily("faec_queue_depth", "Tasks waiting in a Celery queue", labels=["queue"])
            pipe = self.client.pipeline(transaction=False)
            for queue in self.queues:
                for name in _kombu_lists(self.queue_key(queue)):
                    pipe.llen(name)
            lengths = pipe.execute()
            per = len(_KOMBU_PRIORITY_STEPS) + 1
            for i, queue in enumerate(self.queues):
                depth.add_metric([queue], float(sum(lengths[i * per:(i + 1) * per])))
            cameras = sorted(c.decode() if isinstance(c, bytes) else c for c in self.client.smembers(self.keys.cameras()))
            waiting = GaugeMetricFamily("faec_camera_in_flight", "Frames of a camera waiting for a worker", labels=["camera"])
            pipe = self.client.pipeline(transaction=False)
            valid = []
            for camera in cameras:
                try:
                    pipe.llen(self.keys.in_flight(camera))
                    valid.append(camera)
                except ValueError:
                    log.warning("metrics: ignoring camera id %r in %s", camera, self.keys.cameras())
            for camera, n in zip(valid, pipe.execute()):
                waiting.add_metric([camera], float(n))
            pipe = self.client.pipeline(transaction=False)
            for camera in valid:
                pipe.hgetall(self.keys.camera_stats(camera))
            camera_families = _camera_stats_families(zip(valid, pipe.execute()))
            people = GaugeMetricFamily("faec_gallery_people", "People enrolled (Redis, the source of truth)")
            people.add_metric([], float(self.client.scard(self.keys.people())))
            memory = self.client.info("memory")
            used = GaugeMetricFamily("faec_redis_memory_used_bytes", "Memory Redis uses (INFO used_memory)")
            used.add_metric([], float(memory.get("used_memory", 0)))
            cap = GaugeMetricFamily("faec_redis_memory_max_bytes",
                                    "Redis maxmemory (0: no limit; writes are refused past it under noeviction)")
            cap.add_metric([], float(memory.get("maxmemory", 0)))
            parked = GaugeMetricFamily("faec_dead_letter_tasks", "Tasks parked in the dead-letter stream "
                                       "(`faec-rec tasks dead-letter list`)")
            parked.add_metric([], float(self.client.xlen(self.keys.dead_letter())))
        except Exception as exc:
            log.warning("metrics: Redis did not answer the scrape: %s", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield from (up, depth, waiting, people, used, cap, parked, *camera_families)


# Counters the frame protocol keeps in each camera's stats hash (producers and workers HINCRBY).
_CAMERA_COUNTERS = ("pushed", "dropped", "processed", "errors")
_LATENCY_FIELD = re.compile(r"^latency_ms_le_(\d+(?:\.\d+)?|inf)$")


def _camera_stats_families(stats: Iterable[tuple[str, dict[Any, Any]]]) -> list[Any]:
    """Prometheus families from the cameras' stats hashes: frame counts by state, faces,
    the capture-to-event latency histogram (``latency_ms_le_<edge>`` fields, per bucket),
    and the camera's status."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    frames = CounterMetricFamily("faec_camera_frames", "Frames of a camera by state: pushed, dropped, processed, errors (Redis)",
                                 labels=["camera", "state"])
    faces = CounterMetricFamily("faec_camera_faces", "Faces found in a camera's processed frames (Redis)", labels=["camera"])
    latency = HistogramMetricFamily("faec_camera_capture_to_event_seconds",
                                    "Capture-to-event latency of a camera's frames, all workers (Redis)", labels=["camera"])
    status = GaugeMetricFamily("faec_camera_status", "1 for a camera's current producer status", labels=["camera", "status"])
    for camera, raw in stats:
        fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                  for k, v in raw.items()}
        for state in _CAMERA_COUNTERS:
            frames.add_metric([camera, state], _number(fields.get(state)))
        faces.add_metric([camera], _number(fields.get("faces")))
        edges = []
        for name, value in fields.items():
            match = _LATENCY_FIELD.match(name)
            if match:
                edge = float("inf") if match.group(1) == "inf" else float(match.group(1)) / 1000.0
                edges.append((edge, _number(value)))
        if edges:
            edges.sort()
            buckets, total = [], 0.0
            for edge, count in edges:
                total += count  # the hash counts per bucket; Prometheus wants cumulative counts
                if edge != float("inf"):
                    buckets.append((_go_float(edge), total))
            buckets.append(("+Inf", total))
            # _count comes with _sum; a hash written before workers kept the sum has none.
            raw_sum = fields.get("latency_ms_sum")
            latency.add_metric([camera], buckets, sum_value=_number(raw_sum) / 1000.0 if raw_sum is not None else None)
        if fields.get("status"):
            status.add_metric([camera, fields["status"]], 1.0)
    return [frames, faces, latency, status]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _go_float(value: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(value)


def _kombu_lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}{_KOMBU_PRIORITY_SEP}{step}" for step in _KOMBU_PRIORITY_STEPS]


# ---------------------------------------------------------------------------
# The HTTP server
# ---------------------------------------------------------------------------


class HealthServer:
    """``/metrics``, ``/healthz`` (the process is alive) and ``/readyz`` on one port.

    ``/readyz`` answers 200 when Redis answers (``redis_client`` given) and each of
    ``checks`` was marked ok by at least one live process, else 503; both carry a JSON
    body saying which check failed. ``port=0`` binds a free port (see :attr:`port`).
    """

    def __init__(self, port: int, host: str = "0.0.0.0", checks: Sequence[str] = (),
                 redis_client: Any = None, collectors: Sequence[Any] = (),
                 registry: CollectorRegistry | None = None, heartbeat_stale_s: float | None = None,
                 request_timeout_s: float = 5.0) -> None:
        # heartbeat_stale_s: /healthz fails when the consumer loop has not beaten for this
        # long (or never did); None (servers that are not Celery workers) skips that check.
        self.heartbeat_stale_s = heartbeat_stale_s
        self.checks = tuple(checks)
        self.redis_client = redis_client
        self.registry = registry if registry is not None else _exposition_registry()
        self._collectors = list(collectors)
        for collector in self._collectors:
            self.registry.register(collector)
        self.started = time.time()
        server = self
        # timeout: a client that connects and sends nothing (or half a request) is dropped
        # after request_timeout_s instead of holding a thread for ever.
        handler = type("_Handler", (_Handler,), {"owner": server, "timeout": request_timeout_s})
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"workers.health_port: cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> "HealthServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="faec-health", daemon=True)
        self._thread.start()
        log.info("metrics and health on port %d", self.port)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        for collector in self._collectors:
            self.registry.unregister(collector)
        self._collectors = []

    def __enter__(self) -> "HealthServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ping = self.redis_client.ping if self.redis_client is not None else None
        return readiness(self.checks, ping)

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the process answers and, for a worker, its consumer loop beat recently
        (a stuck loop or a lost broker connection stops the beats)."""
        body: dict[str, Any] = {"alive": True, "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 1)}
        if self.heartbeat_stale_s is None:
            return True, body
        age = consumer_heartbeat_age()
        body["consumer_heartbeat_age_s"] = None if age is None else round(age, 1)
        if age is None or age > self.heartbeat_stale_s:
            body["alive"] = False
            body["detail"] = ("the consumer loop has not run yet" if age is None else
                              f"the consumer loop last ran {age:.0f} s ago (limit {self.heartbeat_stale_s:.0f} s): "
                              "stuck, or its broker connection is lost")
        return bool(body["alive"]), body


def _exposition_registry() -> CollectorRegistry:
    """The merged files of every process in multiprocess mode, else this process's metrics."""
    from prometheus_client import CollectorRegistry

    directory = multiprocess_dir()
    if directory is None:
        return get_metrics().registry
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    registry.register(ModelVersionCollector())
    return registry


class _Handler(BaseHTTPRequestHandler):
    owner: HealthServer
    server_version = "faec-rec"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            sweep_dead_processes()  # a killed child's live gauges must not linger
            self._send(HTTPStatus.OK, generate_latest(self.owner.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, body = self.owner.alive()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, json.dumps(body).encode(),
                       "application/json")
        elif path == "/readyz":
            ok, report = self.owner.ready()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                       json.dumps({"ready": ok, "checks": report}).encode(), "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND, b'{"error": "not found: try /metrics, /healthz, /readyz"}',
                       "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base class name)
        log.debug("health http: " + format, *args)


def probe_client(redis_url: str, timeout_s: float = 1.0) -> Any:
    """A Redis client for probes and scrapes: short timeouts and no retries, so a Redis
    outage shows as "not ready" within a probe's time instead of hanging it."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from faec_rec.cluster.sentinel import redis_from_url  # redis:// and redis+sentinel://

    return redis_from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                          retry=Retry(NoBackoff(), 0))


def serve(settings: Settings, port: int | None = None, checks: Sequence[str] = (),
          cluster: bool = True, heartbeat: bool = False) -> HealthServer | None:
    """Start the endpoints for this process; returns None when the port is 0 (off).

    ``port`` defaults to ``settings.workers.health_port``. ``cluster`` adds the
    Redis-read metrics (:class:`RedisCollector`) and a Redis check to ``/readyz``.
    Needs ``settings.redis_url`` for those; without it only process metrics are served.
    """
    port = settings.workers.health_port if port is None else port
    if not port:
        return None
    client = None
    collectors: list[Any] = []
    if settings.redis_url:
        client = probe_client(settings.redis_url)
        if cluster:
            from faec_rec.keys import Keys

            collectors.append(RedisCollector(client, Keys(settings.prefix)))
    stale = float(settings.workers.liveness_stale_s) if heartbeat else None
    return HealthServer(port, checks=checks, redis_client=client, collectors=collectors,
                        heartbeat_stale_s=stale).start()


# ---------------------------------------------------------------------------
# Celery wiring
# ---------------------------------------------------------------------------

_worker_server: HealthServer | None = None
_owned_dir: Path | None = None


def install_worker_hooks(settings: Settings | None = None, checks: Sequence[str] = WORKER_CHECKS) -> None:
    """Serve metrics and health from every Celery worker on ``workers.health_port``.

    Connects to Celery's signals (idempotent; cheap, nothing starts until a worker does):
    on ``worker_init`` (main process, before the pool forks) switch to multiprocess mode
    in ``$PROMETHEUS_MULTIPROC_DIR`` (or a fresh temporary directory) and start the server;
    on ``worker_process_shutdown`` (each child) forget its live gauges and readiness; on
    ``worker_shutdown`` stop the server. ``settings`` defaults to the worker's own app's
    (``faec_rec.workers.app.app_settings``). With ``health_port = 0`` nothing is served.
    Child processes report readiness themselves with :func:`mark_ready`.
    """
    from celery import signals

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        global _worker_server, _owned_dir
        if _worker_server is not None:
            return
        current = settings if settings is not None else _settings_of(sender)
        if current is None or not current.workers.health_port:
            return
        directory = multiprocess_dir()
        if directory is None:
            directory = _owned_dir = Path(tempfile.mkdtemp(prefix="faec-metrics-"))
        enable_multiprocess(directory)
        _worker_server = serve(current, checks=checks, heartbeat=True, cluster=current.workers.cluster_metrics)

    def on_child_exit(**_: Any) -> None:
        process_exited(os.getpid())

    def on_worker_shutdown(**_: Any) -> None:
        global _worker_server, _owned_dir
        if _worker_server is not None:
            _worker_server.stop()
            _worker_server = None
        if _owned_dir is not None:
            shutil.rmtree(_owned_dir, ignore_errors=True)
            _owned_dir = None

    signals.worker_init.connect(on_worker_init, weak=False, dispatch_uid="faec_rec.metrics.init")
    signals.worker_process_shutdown.connect(on_child_exit, weak=False, dispatch_uid="faec_rec.metrics.child_exit")
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False, dispatch_uid="faec_rec.metrics.shutdown")


def _settings_of(worker: Any) -> Settings | None:
    """The settings of the app a Celery ``WorkController`` runs, if it is one of ours."""
    app = getattr(worker, "app", None)
    if app is None:
        return None
    from faec_rec.workers.app import app_settings

    try:
        return app_settings(app)
    except TypeError:
        log.warning("metrics: worker app was not built by make_app; health endpoints off")
        return None
