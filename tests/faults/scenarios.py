"""The faults themselves, each a function that runs one against real processes and
returns a JSON-able summary. ``tests/faults`` runs them small and asserts on the
summaries; ``python -m benchmarks.faults`` runs them at the issue's sizes and prints them.

Every summary has ``trials`` and, where they apply, ``lost``, ``duplicated``,
``crashed`` and ``recovery_s``; the rest are the details behind those.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faec_rec.errors import TaskTimeout
from faec_rec.keys import Keys
from tests.faults.harness import (
    MUST_FAIL,
    FrameFeeder,
    audit_gallery,
    bad_inputs,
    camera_account,
    cleanup,
    enrolment_faults,
    events,
    frames_left,
    kill_pool_children,
    start_timeouts,
    latency_ms,
    pool_children,
    wait_for,
    wait_settled,
    worker_lost_count,
)
from tests.integration.worker_proc import WorkerProcess

WAIT_S = 180.0


@dataclass
class Deployment:
    """One deployment under test: a Redis URL, a key prefix of its own, a data folder,
    a client, and the worker processes started for it (all stopped by :meth:`close`)."""

    redis_url: str
    data_dir: Path
    prefix: str = field(default_factory=lambda: "f" + uuid.uuid4().hex[:10])
    workers: list[WorkerProcess] = field(default_factory=list)
    _client: Any = None

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    def settings(self) -> Any:
        from faec_rec.config import load_settings

        return load_settings(redis_url=self.redis_url, prefix=self.prefix, data_dir=self.data_dir)

    @property
    def client(self) -> Any:
        if self._client is None:
            from faec_rec.client import Client

            self._client = Client(settings=self.settings())
        return self._client

    def new_client(self) -> Any:
        from faec_rec.client import Client

        return Client(settings=self.settings())

    @property
    def redis(self) -> Any:
        return self.client.redis

    def start_worker(self, *, concurrency: int = 1, queues: tuple[str, ...] = ("frames", "enrol"),
                     env: dict[str, str] | None = None) -> WorkerProcess:
        """Start (not wait for) a real worker process serving this deployment."""
        worker = WorkerProcess(self.redis_url, self.prefix, self.data_dir, queues=queues,
                               concurrency=concurrency, env=dict(env or {})).start()
        self.workers.append(worker)
        return worker

    def close(self, clean: bool = True) -> None:
        for worker in self.workers:
            worker.stop(timeout=10)
        if self._client is not None:
            self._client.close()
        if clean:
            try:
                cleanup(self.redis_url, self.prefix)
            except Exception:  # a stopped private Redis has nothing left to clean
                pass


def _enrol_running(dep: Deployment, request_id: str) -> bool:
    status = dep.redis.hget(dep.keys.enrolment(request_id), "status")
    return status in (b"running", b"done", b"refused")


# ---- 1. SIGKILL in the middle of enrolments and recognition ---------------------------
def worker_kills(dep: Deployment, photos: list[Path], frame: bytes, kills: int, *,
                 frames_per_trial: int = 6, visibility_timeout_s: int = 3,
                 report_wait_s: float = WAIT_S) -> dict[str, Any]:
    """``kills`` enrolments (a new person each, ``photos``), each killed mid-way while
    frames of camera "kills" wait behind it.

    Even trials SIGKILL the whole worker (a lost machine; a fresh worker takes
    over once the visibility timeout hands back the unacknowledged messages), odd
    ones SIGKILL the pool process running the task (its parent requeues it and
    forks a new one). At the end every accepted image must be in the gallery
    once, and every pushed frame processed or counted.
    """
    env = {"FAEC_WORKERS__VISIBILITY_TIMEOUT_S": str(visibility_timeout_s)}
    started = time.monotonic()
    worker = dep.start_worker(env=env).wait_ready()
    feeder = FrameFeeder(dep.redis, dep.keys, dep.client.app, "kills")
    reports, mid, machine, pool, timeouts = [], 0, 0, 0, 0
    stuck: list[dict[str, Any]] = []
    for i in range(kills):
        request_id = dep.client.enrol(f"Person {i:03d}", photos, wait=False)
        for _ in range(frames_per_trial):
            feeder.push(frame)
        wait_for(lambda: _enrol_running(dep, request_id), WAIT_S, f"enrolment {i} to start", every=0.01)
        if i % 2 == 0:
            timeouts += start_timeouts(worker)
            worker.kill()
            machine += 1
        else:
            kill_pool_children(worker)
            pool += 1
        mid += dep.redis.hget(dep.keys.enrolment(request_id), "report") is None
        if not worker.alive:
            worker = dep.start_worker(env=env)
        try:
            reports.append(dep.client.enrol_report(request_id, timeout=report_wait_s))
        except TaskTimeout:
            stuck.append(_redelivery_state(dep, request_id, i))
    try:
        account = wait_settled(dep.redis, dep.keys, "kills", feeder.pushed, report_wait_s)
    except AssertionError:
        account = camera_account(dep.redis, dep.keys, "kills")
    timeouts += start_timeouts(worker)
    faults = enrolment_faults(reports, audit_gallery(dep.redis, dep.keys))
    return {
        "trials": kills,
        "machine_kills": machine,
        "pool_kills": pool,
        "kills_mid_enrolment": mid,
        "pool_start_timeouts": timeouts,
        "enrolments_done": sum(r.status == "done" for r in reports),
        # Enrolments with no report after report_wait_s, with Celery's redelivery state then.
        "enrolments_stuck": stuck,
        "accepted_images": sum(len(r.accepted) for r in reports),
        "lost": faults["lost"] + len(stuck),
        "duplicated": faults["duplicated"],
        "frames_pushed": feeder.pushed,
        "frames_processed": account["processed"],
        "frames_dropped": account["dropped"],
        "frame_errors": account["errors"],
        "frames_lost": max(0, feeder.pushed - account["settled"]),
        "frames_duplicated": max(0, account["settled"] - feeder.pushed),
        "seconds": round(time.monotonic() - started, 1),
    }


def _redelivery_state(dep: Deployment, request_id: str, trial: int) -> dict[str, Any]:
    """Why an enrolment is still waiting: Celery's unacknowledged-message index and
    the mutex a worker holds while handing such messages back."""
    celery = dep.keys.celery()
    return {
        "trial": trial,
        "request_id": request_id,
        "status": (dep.redis.hget(dep.keys.enrolment(request_id), "status") or b"").decode(),
        "unacked": int(dep.redis.zcard(celery + "unacked_index")),
        "unacked_mutex_ttl_ms": int(dep.redis.pttl(celery + "unacked_mutex")),
        "queued_enrol": int(dep.redis.llen(celery + "enrol")),
    }


# ---- 2. Redis stops and comes back during a camera run -------------------------------
def redis_restart(data_dir: Path, photos: list[Path], video: Path, *, down_s: float = 3.0,
                  before_s: float = 6.0, after_s: float = 6.0, fps: float = 4.0) -> dict[str, Any]:
    """A private Redis (AOF on), one worker and a camera producer reading ``video``.

    A person is enrolled (acknowledged: report "done"), the camera runs, Redis is
    stopped for ``down_s`` and started again on the same port and data. The
    producer and the worker must reconnect by themselves; recovery_s runs from
    Redis answering again until the producer has pushed a new frame and the
    worker has processed two more (one may have been mid-way at the stop).
    """
    from faec_rec.config import ProducerConfig
    from faec_rec.producers.camera import CameraSpec, run_cameras
    from faec_rec.redis_server import PrivateRedis

    server = PrivateRedis(data_dir / "redis").start()
    dep = Deployment(server.url, data_dir)
    stop = threading.Event()
    counters: dict[str, Any] = {}
    try:
        worker = dep.start_worker().wait_ready()
        pid = worker.process.pid
        report = dep.client.enrol("Before Restart", photos, timeout=WAIT_S)
        templates_before = dep.client.person("Before Restart").template_ids
        settings = dep.settings()

        def camera() -> None:
            counters.update(run_cameras(
                [CameraSpec("door", str(video), fps=fps, loop=True)], dep.redis, dep.keys, dep.client.app,
                ProducerConfig(max_in_flight=8, fps=fps, reconnect_max_s=1.0), frame_ttl_s=600,
                stop=stop, realtime=True, initial_backoff_s=0.2, events=settings.events))

        thread = threading.Thread(target=camera, name="camera-door", daemon=True)
        thread.start()
        wait_for(lambda: camera_account(dep.redis, dep.keys, "door")["processed"] >= 3, WAIT_S, "frames before the restart")
        time.sleep(before_s)
        processed_before = camera_account(dep.redis, dep.keys, "door")["processed"]
        server.stop()
        time.sleep(down_s)
        server.start()
        up_at = time.monotonic()

        def processed_now() -> int:
            try:
                return camera_account(dep.redis, dep.keys, "door")["processed"]
            except Exception:  # the client's own connection may need a moment
                return 0

        def pushed_now() -> int:
            try:
                return int(dep.redis.hget(dep.keys.camera_stats("door"), "frame") or 0)
            except Exception:
                return 0

        # Recovered: the producer pushes new frames again and the worker takes new
        # tasks (two more frames processed: one may have been mid-way at the restart).
        first = wait_for(lambda: processed_now() or None, WAIT_S, "Redis to answer the client", every=0.05)
        last_pushed = pushed_now()
        wait_for(lambda: pushed_now() > last_pushed, WAIT_S, "the producer to push after the restart", every=0.05)
        wait_for(lambda: processed_now() >= first + 2, WAIT_S, "a frame processed after the restart", every=0.05)
        recovery_s = time.monotonic() - up_at
        time.sleep(after_s)
        processed_after = camera_account(dep.redis, dep.keys, "door")["processed"] - processed_before
        stop.set()
        thread.join(timeout=30)
        produced = counters.get("door")
        try:
            wait_for(lambda: frames_left(dep.redis, dep.keys, "door") == 0, 60, "every pushed frame to settle")
        except AssertionError:
            pass
        account = camera_account(dep.redis, dep.keys, "door")
        templates_after = dep.client.person("Before Restart").template_ids
        stored = dep.client.enrol_report(report.request_id, timeout=5)
        lost = len(set(templates_before) - set(templates_after)) + (stored.status != report.status)
        return {
            "trials": 1,
            "down_s": down_s,
            "recovery_s": round(recovery_s, 2),
            "lost": lost,
            "duplicated": len(templates_after) - len(set(templates_after)),
            "crashed": int(not worker.alive or worker.process.pid != pid),
            "worker_reconnected": worker.alive and processed_after > 0,
            "frames_processed_after_restart": processed_after,
            "frames_pushed": account["pushed"],
            "frames_processed": account["processed"],
            "frames_dropped": account["dropped"],
            "frame_errors": account["errors"],
            "frames_unsettled": frames_left(dep.redis, dep.keys, "door"),
            "producer": produced.to_json() if produced is not None else None,
        }
    finally:
        stop.set()
        dep.close(clean=False)
        server.stop()


# ---- 3. Bad input through the recognition task ---------------------------------------
def bad_input_run(dep: Deployment, worker: WorkerProcess, good: bytes, n: int, *, seed: int = 0,
                  camera: str = "bad") -> dict[str, Any]:
    """``n`` damaged images (truncated, random bytes, garbage after a JPEG header,
    size bombs, empty, bit flips) through TASK_RECOGNISE, then one good frame.

    crashed counts a dead worker or replaced pool processes; every image of a kind
    that cannot decode must get exactly one "bad_image" error event with a detail.
    """
    children = set(pool_children(worker))
    lost_before = worker_lost_count(worker)
    feeder = FrameFeeder(dep.redis, dep.keys, dep.client.app, camera)
    kinds: dict[int, str] = {}
    for kind, data in bad_inputs(good, n, seed):
        kinds[feeder.push(data)] = kind
    feeder.push(good)
    account = wait_settled(dep.redis, dep.keys, camera, feeder.pushed, WAIT_S)
    errors: dict[int, list[dict[str, Any]]] = {}
    for e in events(dep.redis, dep.keys, camera):
        if e["type"] == "error":
            errors.setdefault(e["frame"], []).append(e)
    unclear = [f for f, es in errors.items() if any(not e.get("error") or not e.get("detail") for e in es)]
    missing = [f for f, kind in kinds.items() if kind in MUST_FAIL and len(errors.get(f, [])) != 1]
    by_kind: dict[str, dict[str, int]] = {}
    for f, kind in kinds.items():
        row = by_kind.setdefault(kind, {"sent": 0, "error_events": 0})
        row["sent"] += 1
        row["error_events"] += len(errors.get(f, []))
    replaced = len(children - set(pool_children(worker)))
    return {
        "trials": n,
        "crashed": int(not worker.alive) + replaced + (worker_lost_count(worker) - lost_before),
        "error_events": sum(len(v) for v in errors.values()),
        "missing_error_events": len(missing),
        "unclear_error_events": len(unclear),
        "codes": sorted({e["error"] for es in errors.values() for e in es}),
        "processed": account["processed"],
        "lost": max(0, feeder.pushed - account["settled"]),
        "by_kind": by_kind,
    }


# ---- 4. Overload -------------------------------------------------------------------------
def _capacity_fps(dep: Deployment, frame: bytes, n: int) -> float:
    """Frames per second the deployment's workers process, measured on a backlog of ``n``."""
    feeder = FrameFeeder(dep.redis, dep.keys, dep.client.app, "calibrate")
    feeder.push(frame)
    wait_settled(dep.redis, dep.keys, "calibrate", 1, WAIT_S)
    start = time.monotonic()
    for _ in range(n):
        feeder.push(frame)
    wait_settled(dep.redis, dep.keys, "calibrate", n + 1, WAIT_S)
    return n / (time.monotonic() - start)


def overload(dep: Deployment, worker: WorkerProcess, frame: bytes, *, seconds: float, factor: float = 2.0,
             cameras: int = 2, max_in_flight: int = 4, calibrate_frames: int = 40) -> dict[str, Any]:
    """Cameras offering ``factor`` x what the workers process, for ``seconds``.

    Capacity is measured first on a backlog. Worker memory (RSS, parent +
    pool) and every camera's in-flight list are sampled each second; the
    in-flight list is what bounds latency (a frame waits behind at most
    ``max_in_flight`` of its camera).
    """
    capacity = _capacity_fps(dep, frame, calibrate_frames)
    per_camera = factor * capacity / cameras
    names = [f"over{i}" for i in range(cameras)]
    stop = threading.Event()
    feeders = [FrameFeeder(dep.redis, dep.keys, dep.client.app, c, max_in_flight=max_in_flight) for c in names]

    def produce(feeder: FrameFeeder) -> None:
        period, next_at = 1.0 / per_camera, time.monotonic()
        while not stop.is_set():
            feeder.push(frame)
            next_at += period
            stop.wait(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=produce, args=(f,), daemon=True) for f in feeders]
    rss: list[float] = []
    max_in_flight_seen = 0
    started = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - started < seconds:
        rss.append(worker.rss_mb())
        max_in_flight_seen = max(max_in_flight_seen, *(camera_account(dep.redis, dep.keys, c)["in_flight"] for c in names))
        time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    offered_s = time.monotonic() - started
    accounts = {c: wait_settled(dep.redis, dep.keys, c, f.pushed, WAIT_S) for c, f in zip(names, feeders)}
    pushed = sum(f.pushed for f in feeders)
    processed = sum(a["processed"] for a in accounts.values())
    third = max(1, len(rss) // 3)
    lat = [latency_ms(dep.redis, dep.keys, c) for c in names]
    return {
        "trials": 1,
        "seconds": round(offered_s, 1),
        "capacity_fps": round(capacity, 2),
        "offered_fps": round(pushed / offered_s, 2),
        "processed_fps": round(processed / offered_s, 2),
        "offered_over_processed": round(pushed / max(processed, 1), 2),
        "processed": processed,
        "dropped": sum(a["dropped"] for a in accounts.values()),
        "errors": sum(a["errors"] for a in accounts.values()),
        "pushed": pushed,
        "lost": max(0, pushed - sum(a["settled"] for a in accounts.values())),
        "crashed": int(not worker.alive),
        "max_in_flight": max_in_flight,
        "max_in_flight_seen": max_in_flight_seen,
        "rss_mb_first_third_max": round(max(rss[:third]), 1),
        "rss_mb_last_third_max": round(max(rss[-third:]), 1),
        "rss_mb_max": round(max(rss), 1),
        "latency_ms_p50": max((x["p50"] or 0.0) for x in lat),
        "latency_ms_p95": max((x["p95"] or 0.0) for x in lat),
    }


# ---- 5. The same person enrolled twice at once; forget during recognition ------------------
def same_person_twice(dep: Deployment, photos: list[Path], name: str = "Twice") -> dict[str, Any]:
    """Two clients enrol ``name`` at the same moment with overlapping photos
    (``photos[:4]`` and ``photos[2:6]``): one person, each image stored once."""
    clients = [dep.new_client(), dep.new_client()]
    try:
        barrier = threading.Barrier(2)
        ids: list[str] = ["", ""]

        def send(i: int, batch: list[Path]) -> None:
            barrier.wait()
            ids[i] = clients[i].enrol(name, batch, wait=False)

        threads = [threading.Thread(target=send, args=(0, photos[:4])), threading.Thread(target=send, args=(1, photos[2:6]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reports = [dep.client.enrol_report(i, timeout=WAIT_S) for i in ids]
    finally:
        for c in clients:
            c.close()
    audit = audit_gallery(dep.redis, dep.keys)
    faults = enrolment_faults(reports, audit)
    accepted_images = {img.name for r in reports for img in r.accepted}
    return {
        "trials": 1,
        "people_named": len(audit.by_name(name)),
        "templates": len(audit.templates_of(name)),
        "distinct_accepted_images": len(accepted_images),
        "statuses": [r.status for r in reports],
        "same_person_id": len({r.person_id for r in reports}) == 1,
        **faults,
    }


def stored_mentions(redis: Any, prefix: str, person_id: str, name: str) -> list[str]:
    """Every place under ``prefix`` whose stored bytes hold ``person_id`` or ``name``
    (as a JSON string): ``"<key>"``, ``"<key> <field>"`` or ``"<stream> FORGET"``
    for the gallery's forget marker. Reads every key of every type."""
    needles = [person_id.encode(), json.dumps(name).encode(), json.dumps(name, ensure_ascii=False).encode()]

    def hit(*values: Any) -> bool:
        return any(n in (v if isinstance(v, bytes) else str(v).encode()) for v in values for n in needles)

    found = []
    for raw in redis.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        kind = redis.type(raw).decode()
        if hit(raw):
            found.append(key)
        if kind == "string":
            if hit(redis.get(raw) or b""):
                found.append(key)
        elif kind == "hash":
            found += [f"{key} {f.decode(errors='replace')}" for f, v in redis.hgetall(raw).items() if hit(f, v)]
        elif kind in ("list", "set", "zset"):
            members = (redis.lrange(raw, 0, -1) if kind == "list" else redis.smembers(raw) if kind == "set"
                       else redis.zrange(raw, 0, -1))
            found += [key for m in members if hit(m)][:1]
        elif kind == "stream":
            for _id, fields in redis.xrange(raw):
                if hit(*fields.keys(), *fields.values()):
                    value = fields.get(b"e", b"{}")
                    marker = (key.endswith(":gallery:events")
                              and json.loads(value) == {"op": "forget", "person": person_id})
                    found.append(f"{key} FORGET" if marker else f"{key} {_id.decode()}")
    return found


def forget_during_recognition(dep: Deployment, worker: WorkerProcess, photos: list[Path], frame: bytes, *,
                              name: str = "Forgotten", fps: float = 4.0, before_s: float = 4.0,
                              after_s: float = 5.0, camera: str = "forget") -> dict[str, Any]:
    """Enrol ``name``, stream frames of them, forget them mid-stream, keep streaming.

    A frame captured after the forget returned is processed after it, so its
    worker has synced: no event of such a frame (nor any later one) may name the
    person, and no Redis key or crop file of theirs may be left.
    """
    report = dep.client.enrol(name, photos, timeout=WAIT_S)
    pid = report.person_id
    children = set(pool_children(worker))
    feeder = FrameFeeder(dep.redis, dep.keys, dep.client.app, camera)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            feeder.push(frame)
            stop.wait(1.0 / fps)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(e.get("person_id") == pid for e in events(dep.redis, dep.keys, camera)), 60,
                 f"an event naming {name} before the forget")
        # an identify job through the queue too: its records and Celery results name them
        job = dep.client.submit_images([frame])
        identified = dep.client.job_results(job, wait=True, timeout=WAIT_S)
        mentions_before = stored_mentions(dep.redis, dep.prefix, pid, name)
        time.sleep(before_s)
        removed = dep.client.forget(pid)
        forgot_at = time.time()
        processed_at_forget = camera_account(dep.redis, dep.keys, camera)["processed"]
        time.sleep(after_s)
    finally:
        stop.set()
        thread.join(timeout=10)
    account = wait_settled(dep.redis, dep.keys, camera, feeder.pushed, WAIT_S)
    # Close the camera's tracks as the producer's periodic sweep does: their "left"
    # events must not name the person either.
    from faec_rec.workers.events import publish_many
    from faec_rec.workers.tracker import TrackStore

    settings = dep.settings()
    time.sleep(settings.events.track_timeout_s + 1.5)
    left = TrackStore.from_settings(dep.redis, dep.keys, settings.events).sweep_idle(cameras=[camera])
    publish_many(dep.redis, dep.keys, left, settings.events.stream_maxlen)
    all_events = events(dep.redis, dep.keys, camera)
    after = [e for e in all_events if (e.get("captured_at") or 0) > forgot_at]
    naming_after = [e for e in after if e.get("person_id") == pid or (e.get("person") or "") == name]
    keys_left = [k.decode() for k in dep.redis.scan_iter(match=f"{dep.prefix}:*{pid}*", count=1000)]
    in_names = [v.decode() for v in dep.redis.hvals(dep.keys.person_names()) if v.decode() == pid]
    in_hashes = [f.decode() for f in dep.redis.hkeys(dep.keys.template_hashes()) if f.decode().startswith(pid + ":")]
    files_left = [str(p) for p in Path(dep.data_dir).rglob(f"*{pid}*")]
    forget_marker = [f"{dep.keys.gallery_events()} FORGET"]
    return {
        "trials": 1,
        "identified_before": [f.get("person") for r in identified for f in r.get("faces", [])],
        "mentions_before": sorted({m.split(" ")[0] for m in mentions_before}),
        "values_naming_left": [m for m in stored_mentions(dep.redis, dep.prefix, pid, name)
                               if m not in forget_marker],
        "templates_forgotten": removed,
        "events_total": len(all_events),
        "events_after_forget": len(after),
        "event_types_after_forget": sorted({e["type"] for e in after}),
        "events_naming_after_forget": len(naming_after),
        "naming_after_forget": naming_after[:3],
        "keys_left": keys_left + in_names + in_hashes,
        "files_left": files_left,
        "crashed": int(not worker.alive) + len(children - set(pool_children(worker))),
        "lost": max(0, feeder.pushed - account["settled"]),
        "frames_processed_after_forget": account["processed"] - processed_at_forget,
    }
