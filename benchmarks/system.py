"""The whole service under load: cameras -> Redis -> Celery workers -> events.

    python -m benchmarks.system [--seconds 120] [--cameras 4] [--fps 10] [--concurrency 2]

Starts a real ``celery -A faec_rec.workers.app worker`` with ``--concurrency``
processes, enrols one person seen in the videos, then replays ``--cameras``
640x480 streams made from ``../shared/data/faces/videos`` (letterboxed) at
``--fps`` each, in real time, for ``--seconds``. Prints one JSON line: frames
processed per second, frames dropped, capture->processed latency p50/p95 (from
the workers' per-camera histograms, interpolated within buckets), worker RSS
at start and end. ``--stages`` adds an in-process split of one frame's cost
(decode, detect+align+embed, identify, tracking+publish).

Uses its own key prefix on the given Redis (default: the tests' database 13)
and deletes its keys afterwards.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faec_rec.config import ProducerConfig

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces"))
VIDEOS = ("face_recognition__short_hamilton_clip.mp4", "facenet_pytorch__video.mp4")
ENROL_PHOTO = ("samples", "face_recognition_examples", "lin_manuel_miranda", "lin-manuel-miranda.png")

log = logging.getLogger("benchmarks.system")


def letterbox(frame: np.ndarray, width: int = 640, height: int = 480) -> np.ndarray:
    """Scale ``frame`` to fit ``width`` x ``height`` and pad with black (aspect kept)."""
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    resized = cv2.resize(frame, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
    out = np.zeros((height, width, 3), dtype=frame.dtype)
    y, x = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    out[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return out


def make_640x480(src: Path, dst: Path) -> Path:
    """Re-encode a video as 640x480 MPEG-4 (mp4v) at its own frame rate."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(letterbox(frame))
        frames += 1
    cap.release()
    writer.release()
    if frames == 0:
        raise RuntimeError(f"could not read any frame of {src}")
    return dst


def camera_totals(redis: Any, keys: Any, cameras: list[str]) -> dict[str, Any]:
    from faec_rec.workers.pipeline import latency_percentiles

    merged: dict[str, int] = {}
    for camera in cameras:
        for k, v in redis.hgetall(keys.camera_stats(camera)).items():
            name = k.decode()
            try:
                merged[name] = merged.get(name, 0) + int(v)
            except ValueError:
                continue
    q = latency_percentiles(merged, (0.5, 0.95))
    return {"stats": merged, "p50": q[0.5], "p95": q[0.95]}


def stage_split(frames: list[np.ndarray], settings: Any) -> dict[str, float]:
    """Median ms per frame of each pipeline stage, in this process (one thread)."""
    from faec_rec.faces.image import encode_jpeg
    from faec_rec.workers.pipeline import decode
    from faec_rec.workers.runtime import Runtime

    from faec_rec.workers.pipeline import FramePayload, recognise_frame

    runtime = Runtime(settings)
    runtime.warm()
    engine, gallery, r, keys = runtime.engine, runtime.gallery, runtime.redis, runtime.keys
    times: dict[str, list[float]] = {"decode": [], "detect": [], "align_embed": [], "identify": [], "faces": [],
                                     "whole_task": []}
    for n, frame in enumerate(frames):
        data = encode_jpeg(frame, 85)
        # The whole frame protocol (claim, read, recognise, track, publish, count).
        key = keys.frame("stages", n)
        r.set(key, data, ex=60)
        r.lpush(keys.in_flight("stages"), key)
        payload = FramePayload("stages", n, key, time.time())
        t = time.perf_counter()
        recognise_frame(runtime, payload)
        times["whole_task"].append((time.perf_counter() - t) * 1000)
        t0 = time.perf_counter()
        image = decode(data, "frame")
        t1 = time.perf_counter()
        faces = engine.detect(image)
        t2 = time.perf_counter()
        feats = engine.features(engine.align(image, faces)) if faces else np.zeros((0, 128), np.float32)
        t3 = time.perf_counter()
        if len(feats):
            gallery.identify(gallery.projector.project(feats), gallery.version)
        t4 = time.perf_counter()
        for name, a, b in (("decode", t0, t1), ("detect", t1, t2), ("align_embed", t2, t3), ("identify", t3, t4)):
            times[name].append((b - a) * 1000)
        times["faces"].append(float(len(faces)))
    runtime.close()
    out = {f"{k}_ms_p50": round(float(np.median(v)), 2) for k, v in times.items() if k != "faces"}
    out["faces_per_frame"] = round(float(np.mean(times["faces"])), 2)
    return out


class _Workers:
    """Several worker processes behind one worker's interface (``--pool solo``)."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

    def wait_ready(self, timeout: float) -> None:
        for w in self.workers:
            w.wait_ready(timeout=timeout)

    def rss_mb(self) -> float:
        return sum(w.rss_mb() for w in self.workers)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.system", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="streaming duration")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--pool", choices=("prefork", "solo"), default="prefork",
                        help="prefork: one worker with --concurrency pool processes; solo: --concurrency workers "
                             "that each run their tasks themselves (no parent-to-child hop)")
    parser.add_argument("--max-in-flight", type=int, default=ProducerConfig().max_in_flight, help="frames per camera before the oldest is dropped (default: the setting's)")
    parser.add_argument("--redis-url", default=os.environ.get("FAEC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    parser.add_argument("--faces", type=Path, default=FACES)
    parser.add_argument("--stages", action="store_true", help="also time each pipeline stage in-process")
    parser.add_argument("--max-frame-age", type=float, default=0.0,
                        help="workers.max_frame_age_s: shed frames older than this while newer ones wait (0: off)")
    parser.add_argument("--drain", type=int, default=100,
                        help="frames pushed as a backlog before streaming, to time the workers alone (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import redis as redis_lib

    from faec_rec.client import Client
    from faec_rec.config import load_settings
    from faec_rec.keys import Keys
    from faec_rec.producers.camera import CameraSpec, run_cameras
    from tests.integration.worker_proc import WorkerProcess

    if not (args.faces / "videos").is_dir():
        print(json.dumps({"error": f"no videos under {args.faces}/videos (set FAEC_TEST_FACES)"}))
        return 2
    prefix = "bench" + uuid.uuid4().hex[:8]
    keys = Keys(prefix)
    work = Path(tempfile.mkdtemp(prefix="faec-bench-"))
    videos = [make_640x480(args.faces / "videos" / name, work / f"cam{i}.mp4") for i, name in enumerate(VIDEOS)]
    settings = load_settings(redis_url=args.redis_url, prefix=prefix, data_dir=work / "data")
    env = {"FAEC_WORKERS__MAX_FRAME_AGE_S": str(args.max_frame_age)}
    if args.pool == "solo":  # one worker process per core, each consuming the queue itself
        worker = _Workers([WorkerProcess(args.redis_url, prefix, work / "data", queues=("frames", "enrol"),
                                         concurrency=1, pool="solo", env=env).start()
                           for _ in range(args.concurrency)])
    else:
        worker = WorkerProcess(args.redis_url, prefix, work / "data", queues=("frames", "enrol"),
                               concurrency=args.concurrency, env=env).start()
    client = Client(settings=settings)
    r = redis_lib.Redis.from_url(args.redis_url)
    result: dict[str, Any] = {"benchmark": "system", "cameras": args.cameras, "fps_per_camera": args.fps,
                              "seconds": args.seconds, "worker_processes": args.concurrency, "pool": args.pool,
                              "frame_size": [640, 480], "max_in_flight": args.max_in_flight}
    try:
        worker.wait_ready(timeout=300)
        report = client.enrol("Lin-Manuel Miranda", [args.faces.joinpath(*ENROL_PHOTO)], timeout=300)
        result["enrolled"] = report.status
        # Warm both pool processes: a burst of frames, waited for, not counted.
        specs_warm = [CameraSpec("warm", str(videos[0]), fps=args.fps)]
        warm = run_cameras(specs_warm, r, keys, client.app, ProducerConfig(max_in_flight=1000),
                           frame_ttl_s=600, max_frames=6 * args.concurrency, realtime=False)["warm"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = int(r.hget(keys.camera_stats("warm"), "processed") or 0)
            if done >= warm.pushed:
                break
            time.sleep(0.2)
        if args.drain:
            # Capacity without producers competing for the CPU: push a backlog, time the drain.
            t_drain = time.monotonic()
            backlog = run_cameras([CameraSpec("drain", str(videos[0]), fps=args.fps, loop=True)], r, keys, client.app,
                                  ProducerConfig(max_in_flight=args.drain + 10), frame_ttl_s=600,
                                  max_frames=args.drain, realtime=False)["drain"]
            while time.monotonic() < t_drain + 600:
                if int(r.hget(keys.camera_stats("drain"), "processed") or 0) >= backlog.pushed:
                    break
                time.sleep(0.05)
            result["drain_frames"] = backlog.pushed
            result["drain_per_s"] = round(backlog.pushed / (time.monotonic() - t_drain), 2)
        rss_start = worker.rss_mb()
        load_start = os.getloadavg()[0]

        cameras = [f"cam{i}" for i in range(args.cameras)]
        specs = [CameraSpec(c, str(videos[i % len(videos)]), fps=args.fps, loop=True) for i, c in enumerate(cameras)]
        config = ProducerConfig(fps=args.fps, max_in_flight=args.max_in_flight)
        t0 = time.monotonic()
        counters = run_cameras(specs, r, keys, client.app, config, frame_ttl_s=60, duration_s=args.seconds,
                               realtime=True)
        streamed = time.monotonic() - t0
        processed_at_stop = camera_totals(r, keys, cameras)["stats"].get("processed", 0)
        # Let the workers finish what is in flight (bounded by max_in_flight per camera).
        drain_deadline = time.monotonic() + 30
        while time.monotonic() < drain_deadline:
            if sum(r.llen(keys.in_flight(c)) for c in cameras) == 0:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        totals = camera_totals(r, keys, cameras)
        stats = totals["stats"]
        pushed = sum(c.pushed for c in counters.values())
        result.update({
            "streamed_s": round(streamed, 1),
            "frames_pushed": pushed,
            "frames_processed": stats.get("processed", 0),
            "frames_dropped": stats.get("dropped", 0),
            "frames_shed_stale": stats.get("stale", 0),
            "max_frame_age_s": args.max_frame_age,
            "frame_errors": stats.get("errors", 0),
            "processed_per_s": round(processed_at_stop / streamed, 2),
            "faces_per_frame": round(stats.get("faces", 0) / max(1, stats.get("processed", 0)), 2),
            "latency_ms_p50": None if totals["p50"] is None else round(totals["p50"], 1),
            "latency_ms_p95": None if totals["p95"] is None else round(totals["p95"], 1),
            "worker_rss_mb_start": round(rss_start, 1),
            "worker_rss_mb_end": round(worker.rss_mb(), 1),
            "events": r.xlen(keys.events()),
            # The box is shared: say how busy it was (1-minute load average).
            "load_avg_start": round(load_start, 1),
            "load_avg_end": round(os.getloadavg()[0], 1),
            "cpus": os.cpu_count(),
        })
        if args.stages:
            cap = cv2.VideoCapture(str(videos[0]))
            frames = []
            while len(frames) < 40:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            cap.release()
            result["stages"] = stage_split(frames, settings)
    finally:
        client.close()
        worker.stop()
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
