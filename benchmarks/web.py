"""The web server under load, side by side with the Python client.

    python -m benchmarks.web [--requests 200] [--clients 10] [--sse-clients 100] [--soak-seconds 120]

Starts a real worker (``--concurrency`` processes) and a real ``faec-rec serve``
subprocess on its own key prefix, enrols Obama, then measures and prints one JSON object:

* identify: ``POST /api/v1/identify`` of a 640x480 photo at ``--clients`` concurrent
  clients vs the same work through :meth:`Client.identify` at the same concurrency,
  interleaved in rounds (HTTP, client, HTTP, client) so both see the same machine load;
* sse: ``--sse-clients`` connected to ``/api/v1/events/stream`` while events are written
  to Redis; delivery latency = receipt minus the write time carried in the event;
* memory: the server process's RSS sampled every few seconds through a soak of
  identify + SSE traffic lasting ``--soak-seconds`` (the issue asks for 10 minutes;
  the default here is shorter to share the machine).

The machine is shared: the load average is recorded; compare the ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
FACES = Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces"))
EXAMPLES = FACES / "samples" / "face_recognition_examples" / "obama"


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 1) if values else float("nan")


def photo_640x480() -> bytes:
    image = cv2.imread(str(EXAMPLES / "obama2.jpg"))
    h, w = image.shape[:2]
    scale = min(640 / w, 480 / h)
    small = cv2.resize(image, (int(w * scale), int(h * scale)))
    canvas = np.full((480, 640, 3), 127, np.uint8)
    y, x = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
    canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    return cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_rounds(fn: Any, n: int, clients: int) -> tuple[list[float], int]:
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(_: int) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:
            with lock:
                errors += 1
            return
        with lock:
            lat.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    return lat, errors


async def sse_fanout(url: str, key: str, n_clients: int, n_events: int, publish: Any) -> dict[str, Any]:
    import httpx

    delays: list[float] = []
    ready = 0
    done = asyncio.Event()

    async def listen(client: httpx.AsyncClient) -> None:
        nonlocal ready
        got = 0
        async with client.stream("GET", f"{url}/api/v1/events/stream?camera=bench-sse",
                                 headers={"Authorization": f"Bearer {key}"}) as r:
            async for line in r.aiter_lines():
                if line.startswith(": connected"):
                    ready += 1
                elif line.startswith("data: "):
                    now = time.time()
                    event = json.loads(line[6:])
                    delays.append(now - float(event["detail"]))
                    got += 1
                    if got >= n_events:
                        return

    limits = httpx.Limits(max_connections=n_clients + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.create_task(listen(client)) for _ in range(n_clients)]
        while ready < n_clients:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        for _ in range(n_events):
            await asyncio.to_thread(publish)
            await asyncio.sleep(0.1)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    done.set()
    return {"clients": n_clients, "events": n_events, "deliveries": len(delays),
            "delivery_p50_ms": pct(delays, 50), "delivery_p95_ms": pct(delays, 95), "delivery_max_ms": pct(delays, 100)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("FAEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
    parser.add_argument("--requests", type=int, default=200, help="identify requests per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    parser.add_argument("--sse-clients", type=int, default=100)
    parser.add_argument("--sse-events", type=int, default=30)
    parser.add_argument("--soak-seconds", type=float, default=120)
    args = parser.parse_args(argv)

    import httpx
    import redis

    from faec_rec.client import Client
    from faec_rec.config import load_settings
    from faec_rec.web.auth import KeyStore
    from faec_rec.workers.events import Event, publish
    from tests.integration.worker_proc import WorkerProcess

    prefix = "bw" + uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="faec-bench-web-"))
    settings = load_settings(redis_url=args.redis_url, prefix=prefix, data_dir=work)
    worker = WorkerProcess(args.redis_url, prefix, work, queues=("frames", "enrol"), concurrency=args.concurrency,
                           env={"FAEC_VISITORS__ENABLED": "false"}).start()
    client = Client(settings=settings)
    port = free_port()
    env = {**os.environ, "FAEC_REDIS_URL": args.redis_url, "FAEC_PREFIX": prefix, "FAEC_DATA_DIR": str(work),
           "FAEC_WEB__RATE_LIMIT_PER_S": "100000", "FAEC_WEB__RATE_BURST": "100000", "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = subprocess.Popen([sys.executable, "-m", "faec_rec.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"), cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"load_avg_start": os.getloadavg(), "cpus": os.cpu_count(), "clients": args.clients,
                           "worker_processes": args.concurrency}
    try:
        _r, key = KeyStore(client.redis, client.keys).create("viewer", "bench", actor="benchmark")
        worker.wait_ready()
        client.enrol("Obama", sorted(p for p in EXAMPLES.glob("obama*.jpg") if "partial" not in p.name)[:3], timeout=300)
        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        photo = photo_640x480()
        local = threading.local()

        def via_http() -> None:
            http = getattr(local, "http", None)
            if http is None:
                http = local.http = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"})
            r = http.post("/api/v1/identify", files={"image": ("p.jpg", photo, "image/jpeg")})
            r.raise_for_status()
            assert r.json()["faces"][0]["person"] == "Obama"

        def via_client() -> None:
            faces = client.identify(photo, timeout=120)
            assert faces[0].person == "Obama"

        run_rounds(via_http, 20, args.clients)  # warm both paths
        run_rounds(via_client, 20, args.clients)
        rss = [(0.0, rss_mb(server.pid))]
        t_start = time.monotonic()
        http_lat: list[float] = []
        client_lat: list[float] = []
        errors = {"http": 0, "client": 0}
        for _ in range(args.rounds):
            lat, err = run_rounds(via_http, args.requests, args.clients)
            http_lat += lat
            errors["http"] += err
            lat, err = run_rounds(via_client, args.requests, args.clients)
            client_lat += lat
            errors["client"] += err
            rss.append((round(time.monotonic() - t_start, 1), rss_mb(server.pid)))
        out["identify"] = {
            "http_p50_ms": pct(http_lat, 50), "http_p95_ms": pct(http_lat, 95),
            "client_p50_ms": pct(client_lat, 50), "client_p95_ms": pct(client_lat, 95),
            "http_over_client_p50": round(pct(http_lat, 50) / pct(client_lat, 50), 3),
            "http_over_client_p95": round(pct(http_lat, 95) / pct(client_lat, 95), 3),
            "requests_each": len(http_lat), "errors": errors, "image": "640x480 JPEG, one face, enrolled",
        }
        print(json.dumps({"identify": out["identify"]}), file=sys.stderr)

        keys = client.keys

        def publish_one() -> None:
            publish(client.redis, keys, Event(type="arrived", camera="bench-sse", detail=repr(time.time())), 10_000)

        out["sse"] = asyncio.run(sse_fanout(url, key, args.sse_clients, args.sse_events, publish_one))
        print(json.dumps({"sse": out["sse"]}), file=sys.stderr)
        rss.append((round(time.monotonic() - t_start, 1), rss_mb(server.pid)))

        # soak: identify at the same concurrency plus a few SSE clients, RSS every 5 s
        stop = threading.Event()

        def soak() -> None:
            while not stop.is_set():
                run_rounds(via_http, args.clients * 2, args.clients)

        def sse_soak() -> None:
            async def go() -> None:
                while not stop.is_set():
                    await sse_fanout(url, key, 10, 20, publish_one)
            asyncio.run(go())

        threads = [threading.Thread(target=soak, daemon=True), threading.Thread(target=sse_soak, daemon=True)]
        for t in threads:
            t.start()
        soak_start = time.monotonic()
        while time.monotonic() - soak_start < args.soak_seconds:
            time.sleep(5)
            rss.append((round(time.monotonic() - t_start, 1), rss_mb(server.pid)))
        stop.set()
        for t in threads:
            t.join(60)
        values = [v for _, v in rss]
        half = len(values) // 2
        out["server_rss_mb"] = {"samples": [(t, round(v, 1)) for t, v in rss], "start": round(values[0], 1),
                                "end": round(values[-1], 1), "max": round(max(values), 1),
                                "second_half_growth_mb": round(values[-1] - values[half], 1),
                                "soak_seconds": args.soak_seconds}
        out["load_avg_end"] = os.getloadavg()
        print(json.dumps(out))
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        worker.stop()
        client.close()
        r = redis.Redis.from_url(args.redis_url)
        for k in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(k)
        r.close()


if __name__ == "__main__":
    main()
