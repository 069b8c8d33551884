"""One frame's capture-to-event latency over a delayed Redis link, without queueing.

    python -m benchmarks.frame_latency [--delay-ms 50] [--jitter-ms 10] [--frames 20] [--every-s 1.5]

Redis (the local one, db 13, a fresh prefix) behind tests/cluster/delay_proxy.py (the
delay each way; this kernel has no netem), one real worker process (``-c 1``) and the
producer's own push and task through the proxy, one frame every ``--every-s`` seconds so
no frame waits for another: what is left is the number of requests on the frame's path
times the round trip, plus the work. ``benchmarks.cluster --only delay`` measures the same
link under a 4 fps camera, where a worker's capacity (requests per frame) decides the queue.
Prints JSON: the camera histogram's p50/p95 (capture to the events' write) and the time
until the frame's counters were visible to a direct client, with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frame_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument("--db", type=int, default=13)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--every-s", type=float, default=1.5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import redis

    from faec_rec.client import Client
    from faec_rec.config import load_settings
    from faec_rec.keys import Keys
    from faec_rec.producers.camera import FramePusher
    from faec_rec.workers.app import QUEUE_FRAMES, TASK_RECOGNISE
    from faec_rec.workers.pipeline import latency_percentiles
    from tests.integration.worker_proc import WorkerProcess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="faec-bench-frame-latency-"))
    control = work / "link"
    control.write_text(f"{args.delay_ms} {args.jitter_ms} 0")
    proxy = subprocess.Popen([sys.executable, "-m", "tests.cluster.delay_proxy", f"127.0.0.1:{port}", args.redis,
                              str(control)], cwd=REPO)
    url = f"redis://127.0.0.1:{port}/{args.db}"
    prefix = "bf" + uuid.uuid4().hex[:8]
    lfw = FACES / "lfw"
    worker = WorkerProcess(url, prefix, work, queues=("frames", "enrol"), concurrency=1,
                           env={"FAEC_WORKERS__READ_ROOTS": json.dumps([str(lfw)]),
                                "FAEC_VISITORS__ENABLED": "false"}).start()
    client = Client(settings=load_settings(redis_url=url, prefix=prefix, data_dir=work))
    keys = Keys(prefix)
    direct = redis.Redis.from_url(f"redis://{args.redis}/{args.db}")
    out: dict = {"delay_ms_each_way": args.delay_ms, "jitter_ms": args.jitter_ms,
                 "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    try:
        worker.wait_ready(timeout=400)
        photos = sorted((lfw / "Arnold_Schwarzenegger").glob("*.jpg"))
        out["enrol"] = client.enrol("Arnold", photos[:3], timeout=300).status
        pusher = FramePusher(client.redis, keys, "cam", 60, 4)
        data = photos[5].read_bytes()
        visible = []
        for n in range(args.frames):
            captured = time.time()
            key, _ = pusher.push(n, data)
            client.app.send_task(TASK_RECOGNISE, args=[{"camera": "cam", "frame": n, "key": key,
                                                        "captured_at": captured, "width": 250, "height": 250}],
                                 queue=QUEUE_FRAMES)
            while int(direct.hget(keys.camera_stats("cam"), "processed") or 0) < n + 1 and time.time() - captured < 30:
                time.sleep(0.002)
            visible.append((time.time() - captured) * 1000)
            time.sleep(max(0.0, args.every_s - (time.time() - captured)))
        stats = direct.hgetall(keys.camera_stats("cam"))
        pct = latency_percentiles(stats)
        import numpy as np

        out.update({
            "processed": int(stats.get(b"processed", 0)), "frames": args.frames,
            "histogram_p50_ms": None if pct[0.5] is None else round(pct[0.5], 1),
            "histogram_p95_ms": None if pct[0.95] is None else round(pct[0.95], 1),
            "visible_p50_ms": round(float(np.percentile(visible, 50)), 1),
            "visible_p95_ms": round(float(np.percentile(visible, 95)), 1),
        })
    finally:
        out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(out, indent=1))
        client.close()
        worker.stop()
        proxy.terminate()
        for key in direct.scan_iter(match=f"{prefix}:*", count=1000):
            direct.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
