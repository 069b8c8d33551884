"""Registry mode of the camera runner: keep running exactly the registered cameras.

:func:`run_registry` reads the source registry (:mod:`.registry`) every
``poll_s`` seconds and

    starts a camera thread for each new id -> stops the thread of each id that was
    removed (or whose record changed, then starts it again) -> takes a stopped,
    removed camera off the camera list -> closes stale tracks

so cameras are added and removed at run time (``faec-rec cameras add|remove``,
``POST/DELETE /api/v1/cameras``, the Live page) without restarting the runner.
Each camera is the same :class:`~faec_rec.producers.camera.CameraProducer` as in
a fixed run; a failing camera never stops the others, nor the watch.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from faec_rec.config import EventsConfig, ProducerConfig
from faec_rec.keys import Keys
from faec_rec.producers import registry
from faec_rec.producers.camera import REDIS_ERRORS, CameraProducer, CameraSpec, TaskSender, _Sweeper
from faec_rec.producers.sources import mask_source

log = logging.getLogger(__name__)


@dataclass
class _Running:
    record: registry.SourceRecord
    producer: CameraProducer
    thread: threading.Thread
    stop: threading.Event


class RegistryRunner:
    """The cameras of the registry, as threads; :meth:`sync` makes them match it once."""

    def __init__(self, redis: Any, keys: Keys, sender: TaskSender, config: ProducerConfig, frame_ttl_s: int, *,
                 realtime: bool = True, initial_backoff_s: float = 0.5) -> None:
        self.redis, self.keys, self.sender = redis, keys, sender
        self.config, self.frame_ttl_s = config, frame_ttl_s
        self.realtime, self.initial_backoff_s = realtime, initial_backoff_s
        self.running: dict[str, _Running] = {}
        self.stopping: list[_Running] = []
        self.seen: list[str] = []  # every camera this run streamed (their tracks are swept)

    def sync(self) -> None:
        """Start what was added, stop what was removed or changed, clean up what stopped."""
        wanted = registry.records(self.redis, self.keys)
        for camera, run in list(self.running.items()):
            if wanted.get(camera) != run.record:
                log.info("camera %s: %s; stopping it", camera,
                         "removed from the registry" if camera not in wanted else "changed in the registry")
                run.stop.set()
                self.stopping.append(self.running.pop(camera))
        for camera, record in wanted.items():
            if camera not in self.running and not any(r.record.camera == camera for r in self.stopping):
                self._start(record)
        self._reap(wanted)

    def _start(self, record: registry.SourceRecord) -> None:
        try:
            spec = CameraSpec(record.camera, record.source, fps=record.fps, loop=record.loop)
        except Exception as exc:  # noqa: BLE001 - a bad entry is reported, the rest run
            log.warning("camera %s: not started: %s", record.camera, mask_source(str(exc)))
            return
        producer = CameraProducer(spec, self.redis, self.keys, self.sender, self.config, self.frame_ttl_s,
                                  realtime=self.realtime, initial_backoff_s=self.initial_backoff_s)
        stop = threading.Event()

        def guarded() -> None:
            try:
                producer.run(stop)
            except Exception:  # a bug in one camera's thread must not pass unnoticed, nor stop the rest
                producer.counters.errors += 1
                producer.log.exception("camera thread crashed")

        thread = threading.Thread(target=guarded, name=f"camera-{record.camera}", daemon=True)
        self.running[record.camera] = _Running(record, producer, thread, stop)
        if record.camera not in self.seen:
            self.seen.append(record.camera)
        log.info("camera %s: starting %s", record.camera, mask_source(record.source))
        thread.start()

    def _reap(self, wanted: dict[str, registry.SourceRecord]) -> None:
        """Forget stopped threads; a removed camera leaves the camera list once its thread
        ended (its own start may have listed it again after the removal)."""
        for run in list(self.stopping):
            if run.thread.is_alive():
                continue
            self.stopping.remove(run)
            if run.record.camera not in wanted:
                self.redis.srem(self.keys.cameras(), run.record.camera)
                log.info("camera %s: stopped (%d frames pushed)", run.record.camera, run.producer.counters.pushed)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        for run in self.running.values():
            run.stop.set()
        self.stopping.extend(self.running.values())
        self.running.clear()
        for run in self.stopping:
            run.thread.join(timeout_s)


def run_registry(redis: Any, keys: Keys, sender: TaskSender, config: ProducerConfig, frame_ttl_s: int, *,
                 stop: threading.Event, duration_s: float | None = None, poll_s: float = 1.0,
                 events: EventsConfig | None = None, realtime: bool = True) -> list[str]:
    """Run the registry's cameras until ``stop`` is set (or ``duration_s`` passed);
    returns the ids of every camera that ran. Redis going away pauses the watch
    (the running cameras ride it out themselves)."""
    runner = RegistryRunner(redis, keys, sender, config, frame_ttl_s, realtime=realtime)
    deadline = time.monotonic() + duration_s if duration_s is not None else None
    sweeper: _Sweeper | None = None
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                runner.sync()
            except REDIS_ERRORS as exc:
                log.warning("camera registry not read (%s); retrying", exc)
            if events is not None:
                # runner.seen grows as cameras start: the sweeper holds the same list
                sweeper = sweeper or _Sweeper(redis, keys, events, runner.seen, max(poll_s, 1.0))
                sweeper.maybe_sweep()
            stop.wait(poll_s)
    except KeyboardInterrupt:
        log.info("stopping cameras")
    finally:
        runner.stop_all()
    return list(runner.seen)
