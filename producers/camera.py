"""The camera producer: cameras in, JPEG frames in Redis and recognition tasks out.

Each camera runs in its own thread through the same named steps::

    open the source (retry with back-off) -> read a sampled frame -> shrink and
    JPEG-encode -> push to Redis (bounded in-flight list, oldest dropped) ->
    send TASK_RECOGNISE

following the frame protocol of the service (see the README): the frame's bytes
go to ``keys.frame(camera, n)`` with a TTL, the key onto ``keys.in_flight(camera)``;
when more than ``producers.max_in_flight`` keys wait, the oldest are removed,
deleted and counted as ``dropped`` in ``keys.camera_stats(camera)`` in the same
atomic step. A camera that stops answering is reopened with exponential back-off
up to ``producers.reconnect_max_s`` and reported in its ``status``; the other
cameras never notice. When Redis itself goes away, frames keep being read (so the
camera's buffer stays fresh) but are counted as dropped, and pushing resumes with
back-off once Redis answers again.

Counters in ``keys.camera_stats(camera)`` (the workers add ``processed``):
``pushed`` frames stored, ``dropped`` frames that will never be processed
(back-pressure, Redis outage, task not sent), ``errors`` incidents (source
failures, send failures), ``reconnects``, ``status`` (:class:`CameraStatus`),
``last_error``, ``frame`` (last frame number), ``source``, ``fps``.

The producer never imports the pipeline or TensorFlow: it sends tasks by name
through a :class:`TaskSender` (the Celery app is one).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import redis as redis_lib

from faec_rec.config import EventsConfig, ProducerConfig
from faec_rec.errors import DuplicateCameraError, SourceError
from faec_rec.keys import Keys, safe_id
from faec_rec.producers.sources import VideoSource, downscale, encode_jpeg, mask_source
from faec_rec.workers.app import QUEUE_FRAMES, TASK_RECOGNISE
from faec_rec.workers.events import publish_many
from faec_rec.workers.tracker import TrackStore

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError)

# KEYS: frame key, in-flight list, stats hash. ARGV: jpeg, ttl s, max in flight,
# frame number, unix time. Atomic, so a worker never sees a half-pushed frame and a
# drop is counted exactly once. Returns the number of frames dropped.
_PUSH_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local n = redis.call('LPUSH', KEYS[2], KEYS[1])
local limit = tonumber(ARGV[3])
local dropped = 0
while n > limit do
  local old = redis.call('RPOP', KEYS[2])
  redis.call('DEL', old)
  dropped = dropped + 1
  n = n - 1
end
redis.call('HINCRBY', KEYS[3], 'pushed', 1)
if dropped > 0 then redis.call('HINCRBY', KEYS[3], 'dropped', dropped) end
redis.call('HSET', KEYS[3], 'frame', ARGV[4], 'last_frame_at', ARGV[5])
return dropped
"""

# Take back a pushed frame whose task was never sent: counted as dropped only if it is
# still waiting (not claimed by a worker, not already dropped by the push script), so a
# retried or late withdrawal never counts a frame twice.
_WITHDRAW_SCRIPT = """
local n = redis.call('LREM', KEYS[2], 1, KEYS[1])
if n == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('HINCRBY', KEYS[3], 'dropped', 1)
end
return n
"""


class _CameraLog(logging.LoggerAdapter):
    """Prefixes messages with the camera id (plain logs) and adds ``camera`` as a field (JSON logs)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"camera {extra.get('camera')}: {msg}", kwargs


class TaskSender(Protocol):
    """Anything that sends a task by name; a Celery app qualifies."""

    def send_task(self, name: str, args: Sequence[Any] | None = None, queue: str | None = None, **options: Any) -> Any: ...


class CameraStatus(str, Enum):
    """A camera's state as written to its stats hash."""

    STARTING = "starting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    REDIS_UNAVAILABLE = "redis_unavailable"
    FINISHED = "finished"  # a file without loop reached its end
    STOPPED = "stopped"  # the run was bounded or asked to stop


@dataclass(frozen=True)
class CameraSpec:
    """One camera: its id (used in keys and events), its source, and options.

    ``fps`` None takes ``producers.fps``; ``loop`` restarts a video file at its end.
    """

    camera_id: str
    source: str
    fps: float | None = None
    loop: bool = False

    def __post_init__(self) -> None:
        safe_id(self.camera_id, "camera id")
        if self.fps is not None and self.fps <= 0:
            raise SourceError(f"camera {self.camera_id}: fps must be > 0, got {self.fps}")

    @classmethod
    def parse(cls, text: str, loop: bool = False) -> CameraSpec:
        """``"ID=SOURCE"`` (e.g. ``"door=rtsp://10.0.0.5/stream"``, ``"lab=0"``) -> spec."""
        camera_id, sep, source = text.partition("=")
        if not sep or not camera_id or not source:
            raise SourceError(f"camera {text!r}: write ID=SOURCE, e.g. door=rtsp://10.0.0.5/stream or lab=0")
        return cls(camera_id.strip(), source.strip(), loop=loop)


@dataclass
class CameraCounters:
    """What one camera did in this run (a local mirror of its stats hash)."""

    pushed: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    sent: int = 0
    status: str = CameraStatus.STARTING.value
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class Backoff:
    """Exponential back-off: ``initial_s``, doubling, capped at ``max_s``; reset on success."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = min(initial_s, max_s)
        self.max_s = max_s
        self._next = self.initial_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


class FramePusher:
    """The Redis half of the frame protocol for one camera (pure I/O, no threads)."""

    def __init__(self, redis: Any, keys: Keys, camera_id: str, ttl_s: int, max_in_flight: int) -> None:
        self.redis = redis
        self.keys = keys
        self.camera_id = camera_id
        self.ttl_s = int(ttl_s)
        self.max_in_flight = int(max_in_flight)
        self.stats_key = keys.camera_stats(camera_id)
        self._script = redis.register_script(_PUSH_SCRIPT)
        self._withdraw = redis.register_script(_WITHDRAW_SCRIPT)

    def push(self, frame_no: int, jpeg: bytes) -> tuple[str, int]:
        """Store one frame and queue its key; returns ``(frame key, frames dropped)``."""
        key = self.keys.frame(self.camera_id, frame_no)
        dropped = self._script(
            keys=[key, self.keys.in_flight(self.camera_id), self.stats_key],
            args=[jpeg, self.ttl_s, self.max_in_flight, frame_no, repr(time.time())],
        )
        return key, int(dropped)

    def withdraw(self, key: str) -> bool:
        """Take back a pushed frame whose task was not sent: True if it was still waiting
        (now deleted and counted as dropped); False if a worker or the push script already
        settled it. Safe to repeat."""
        return bool(self._withdraw(keys=[key, self.keys.in_flight(self.camera_id), self.stats_key]))

    def last_frame_number(self) -> int:
        """The last frame number pushed by any earlier run (-1 if none), so keys never repeat."""
        raw = self.redis.hget(self.stats_key, "frame")
        return int(raw) if raw is not None else -1

    def set_fields(self, **values: Any) -> None:
        self.redis.hset(self.stats_key, mapping={k: "" if v is None else str(v) for k, v in values.items()})

    def add(self, **counts: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for name, n in counts.items():
            if n:
                pipe.hincrby(self.stats_key, name, n)
        pipe.execute()


@dataclass
class CameraProducer:
    """One camera's loop; :meth:`run` blocks until bounded out, stopped or finished.

    ``realtime=False`` reads video files as fast as they decode (tests, benchmarks
    that only count); live sources are always real time.
    """

    spec: CameraSpec
    redis: Any
    keys: Keys
    sender: TaskSender
    config: ProducerConfig
    frame_ttl_s: int
    realtime: bool = True
    initial_backoff_s: float = 0.5
    counters: CameraCounters = field(default_factory=CameraCounters)

    def __post_init__(self) -> None:
        self.fps = self.spec.fps or self.config.fps
        self.log = _CameraLog(log, {"camera": self.spec.camera_id})
        self.pusher = FramePusher(self.redis, self.keys, self.spec.camera_id, self.frame_ttl_s, self.config.max_in_flight)
        self._camera_backoff = Backoff(self.initial_backoff_s, self.config.reconnect_max_s)
        self._redis_backoff = Backoff(self.initial_backoff_s, self.config.reconnect_max_s)
        self._redis_retry_at: float | None = None
        self._unreported_drops = 0
        self._next_frame = 0
        # frame keys pushed whose task is not known to be sent (Redis or the broker failed
        # between the two, or the run stopped there): withdrawn as soon as Redis answers
        self._unsent: list[str] = []

    # ---- the loop ------------------------------------------------------------
    def run(self, stop: threading.Event, max_frames: int | None = None, deadline: float | None = None) -> CameraCounters:
        """Stream until ``stop`` is set, ``max_frames`` frames were read or the
        monotonic ``deadline`` passes (or a non-looping file ends)."""
        source = VideoSource(self.spec.source, fps=self.fps, loop=self.spec.loop, realtime=self.realtime, stop=stop)
        self._register()
        self._set_status(CameraStatus.STARTING)
        read = 0
        try:
            while not stop.is_set() and (max_frames is None or read < max_frames):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not self._ensure_open(source, stop, deadline):
                    break
                got = self._read(source, stop)
                if got is None:
                    if source.finished:
                        self._set_status(CameraStatus.FINISHED)
                        self.log.info("video file ended after %d frames", read)
                        return self.counters
                    continue
                image, captured_at = got
                read += 1
                self._publish(image, captured_at)
        finally:
            source.close()
            if self.counters.status != CameraStatus.FINISHED.value:
                self._set_status(CameraStatus.STOPPED)
            self._flush_drops()
            self.withdraw_unsent()
        return self.counters

    def withdraw_unsent(self) -> None:
        """Withdraw the frames pushed without a task (see ``_unsent``); those Redis cannot
        take back now stay listed for the next attempt."""
        while self._unsent:
            try:
                self.pusher.withdraw(self._unsent[0])
            except REDIS_ERRORS as exc:
                self._redis_failed(exc)
                return
            self._unsent.pop(0)

    # ---- steps ---------------------------------------------------------------
    def _register(self) -> None:
        """List the camera in ``keys.cameras()`` and describe it in its stats hash."""
        try:
            self.redis.sadd(self.keys.cameras(), self.spec.camera_id)
            self._next_frame = max(self._next_frame, self.pusher.last_frame_number() + 1)
            self.pusher.set_fields(source=mask_source(self.spec.source), fps=self.fps, started_at=repr(time.time()), last_error=None)
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)

    def _ensure_open(self, source: VideoSource, stop: threading.Event, deadline: float | None) -> bool:
        """Open the source if it is closed, retrying with back-off; False if told to stop first."""
        while not source.is_open:
            try:
                source.open()
                self._set_status(CameraStatus.STREAMING)
                return True
            except SourceError as exc:
                self._source_failed(exc)
            delay = self._camera_backoff.next()
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            self.log.warning("reopening in %.1f s", delay)
            if stop.wait(delay) or (deadline is not None and time.monotonic() >= deadline):
                return False
            self.counters.reconnects += 1
            self._safe_add(reconnects=1)
        return True

    def _read(self, source: VideoSource, stop: threading.Event) -> tuple[Any, float] | None:
        try:
            got = source.read()
        except SourceError as exc:
            self._source_failed(exc)
            source.close()
            # Back off before reopening too: a camera that opens but sends nothing
            # must not be hammered.
            delay = self._camera_backoff.next()
            self.log.warning("reopening in %.1f s", delay)
            stop.wait(delay)
            return None
        if got is not None:
            self._camera_backoff.reset()
        return got

    def _publish(self, image: Any, captured_at: float) -> None:
        """Encode, push and send one frame; frames lost to an outage are counted."""
        if self._redis_retry_at is not None and time.monotonic() < self._redis_retry_at:
            self._drop_locally()
            return
        frame_no = self._next_frame
        image = downscale(image, self.config.max_side)
        jpeg = encode_jpeg(image, self.config.jpeg_quality)
        try:
            self._flush_drops()
            self.withdraw_unsent()
            key, dropped = self.pusher.push(frame_no, jpeg)
            self._unsent.append(key)
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            self._drop_locally()
            return
        self._next_frame += 1
        self.counters.pushed += 1
        self.counters.dropped += dropped
        if self._redis_retry_at is not None:
            self._redis_retry_at = None
            self._redis_backoff.reset()
            self.log.info("Redis answers again")
            self._register()  # a restarted Redis may have lost the camera's entry
            self._set_status(CameraStatus.STREAMING)
        elif self.counters.status != CameraStatus.STREAMING.value:
            self._set_status(CameraStatus.STREAMING)
        payload = {
            "camera": self.spec.camera_id,
            "frame": frame_no,
            "key": key,
            "captured_at": captured_at,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
        }
        try:
            self.sender.send_task(TASK_RECOGNISE, args=[payload], queue=QUEUE_FRAMES)
            self._unsent.remove(key)
            self.counters.sent += 1
        except Exception as exc:  # any sender (Celery, kombu, a test double) may fail its own way
            self.counters.errors += 1
            self.counters.dropped += 1
            self.counters.last_error = f"task not sent: {exc}"
            self.log.warning("task for frame %d not sent (%s); frame withdrawn", frame_no, exc)
            self.withdraw_unsent()
            try:
                self.pusher.add(errors=1)
            except REDIS_ERRORS as rexc:
                self._redis_failed(rexc)

    # ---- failures and reporting ------------------------------------------------
    def _source_failed(self, exc: Exception) -> None:
        self.counters.errors += 1
        self.counters.last_error = str(exc)
        self.log.warning("source failed: %s", exc)
        self._set_status(CameraStatus.RECONNECTING, last_error=str(exc))
        self._safe_add(errors=1)

    def _redis_failed(self, exc: Exception) -> None:
        delay = self._redis_backoff.next()
        self._redis_retry_at = time.monotonic() + delay
        self.counters.status = CameraStatus.REDIS_UNAVAILABLE.value
        self.counters.last_error = f"redis: {exc}"
        self.log.warning("Redis unreachable (%s); frames are dropped, retry in %.1f s", exc, delay)

    def _drop_locally(self) -> None:
        self.counters.dropped += 1
        self._unreported_drops += 1

    def _flush_drops(self) -> None:
        """Report drops counted while Redis was away; raises on Redis errors (caller decides)."""
        if self._unreported_drops:
            n = self._unreported_drops
            try:
                self.pusher.add(dropped=n)
            except REDIS_ERRORS:
                return
            self._unreported_drops = 0
            self.log.warning("%d frames were dropped while Redis was unreachable", n)

    def _set_status(self, status: CameraStatus, last_error: str | None = None) -> None:
        self.counters.status = status.value
        fields: dict[str, Any] = {"status": status.value, "status_at": repr(time.time())}
        if last_error is not None:
            fields["last_error"] = last_error
        try:
            self.pusher.set_fields(**fields)
        except REDIS_ERRORS as exc:
            self.log.debug("status %s not written: %s", status.value, exc)

    def _safe_add(self, **counts: int) -> None:
        try:
            self.pusher.add(**counts)
        except REDIS_ERRORS as exc:
            self.log.debug("counters %s not written: %s", counts, exc)


def run_cameras(
    cameras: Sequence[CameraSpec],
    redis: Any,
    keys: Keys,
    sender: TaskSender,
    config: ProducerConfig,
    frame_ttl_s: int,
    *,
    max_frames: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    realtime: bool = True,
    initial_backoff_s: float = 0.5,
    events: EventsConfig | None = None,
    sweep_every_s: float = 1.0,
) -> dict[str, CameraCounters]:
    """Run every camera in its own thread until each is bounded out or ``stop`` is set.

    ``max_frames``: frames read per camera; ``duration_s``: wall-clock bound of the
    whole run; both None runs until ``stop`` (or Ctrl-C). Returns each camera's
    counters by id. A failing camera never stops the others.

    ``events`` (the deployment's ``settings.events``) turns on the track sweep:
    every ``sweep_every_s`` the tracks of these cameras that nobody has seen for
    the track timeout, and that have no frame waiting for a worker, are closed
    with "left" events, so a camera that goes silent still closes its tracks.
    """
    ids = [c.camera_id for c in cameras]
    if len(set(ids)) != len(ids):
        raise DuplicateCameraError(f"camera ids must be unique, got {ids}")
    stop = stop or threading.Event()
    deadline = time.monotonic() + duration_s if duration_s is not None else None
    producers = [
        CameraProducer(spec, redis, keys, sender, config, frame_ttl_s, realtime=realtime, initial_backoff_s=initial_backoff_s)
        for spec in cameras
    ]

    def guarded(producer: CameraProducer) -> None:
        try:
            producer.run(stop, max_frames=max_frames, deadline=deadline)
        except Exception:  # a bug in one camera's thread must not pass unnoticed, nor stop the rest
            producer.counters.errors += 1
            producer.log.exception("camera thread crashed")

    threads = [threading.Thread(target=guarded, args=(p,), name=f"camera-{p.spec.camera_id}", daemon=True) for p in producers]
    sweeper = _Sweeper(redis, keys, events, ids, sweep_every_s) if events is not None else None
    for th in threads:
        th.start()
    try:
        while any(th.is_alive() for th in threads):
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
            for th in threads:
                th.join(timeout=0.1)
            if sweeper is not None:
                sweeper.maybe_sweep()
    except KeyboardInterrupt:
        log.info("stopping cameras")
        stop.set()
        for th in threads:
            th.join(timeout=10)
    return {p.spec.camera_id: p.counters for p in producers}


def close_tracks(redis: Any, keys: Keys, events: EventsConfig, cameras: Sequence[str]) -> list[Any]:
    """End of a run: "left" events for every track of ``cameras`` still open, published.

    Call it once the run's frames were processed (nothing in flight): a camera run
    that stops must not leave arrivals without departures in the event streams.
    """
    store = TrackStore.from_settings(redis, keys, events)
    left: list[Any] = []
    for camera in cameras:
        left.extend(store.sweep(camera, now=float("inf")))  # every track is past its timeout
    publish_many(redis, keys, left, events.stream_maxlen)
    if left:
        log.info("closed %d tracks at the end of the run", len(left))
    return left


class _Sweeper:
    """Closes stale tracks of a run's cameras now and then (see :func:`run_cameras`)."""

    def __init__(self, redis: Any, keys: Keys, events: EventsConfig, cameras: list[str], every_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.maxlen = events.stream_maxlen
        self.cameras = cameras
        self.every_s = every_s
        self.store = TrackStore.from_settings(redis, keys, events)
        self.next_at = time.monotonic() + every_s

    def maybe_sweep(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.every_s
        try:
            left = self.store.sweep_idle(cameras=self.cameras)
            publish_many(self.redis, self.keys, left, self.maxlen)
        except REDIS_ERRORS as exc:
            log.debug("track sweep skipped: %s", exc)
            return
        if left:
            log.info("closed %d stale tracks", len(left))


def camera_stats(redis: Any, keys: Keys, camera_id: str) -> dict[str, str]:
    """A camera's stats hash decoded to ``{field: text}`` (counters as digit strings)."""
    raw = redis.hgetall(keys.camera_stats(camera_id))
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
