"""Events out, measured: latency from the events stream to an MQTT subscriber and to a local
webhook receiver, and the account of every event id under faults. Prints one JSON object.

    python -m benchmarks.sinks [--rate 200] [--seconds 10] [--outage-s 30] [--fail-s 60]
                               [--kills 20] [--only latency,broker_outage,receiver_500,kills]

* ``latency``: events written the workers' way (``workers.events.publish``) at ``--rate``
  per second for ``--seconds``, while one ``faec-rec sinks run`` process (a real
  subprocess) delivers them to the shared Mosquitto (QoS 1, a real paho subscriber) and to
  a local HTTP receiver. Latency = arrival at the subscriber/receiver minus the event's
  stream id time (its arrival in Redis). Targets: MQTT p95 <= 50 ms, webhook p95 <= 100 ms.
* ``broker_outage``: a private Mosquitto (own port, persistence) stopped for ``--outage-s``
  mid-run; a durable subscriber counts event ids. Target: 0 lost.
* ``receiver_500``: the receiver answers 500 for ``--fail-s``; 0 lost (retried, not parked).
* ``kills``: the runner SIGKILLed ``--kills`` times while events flow; 0 lost, duplicates
  (at-least-once redeliveries) counted by event id.

Uses its own key prefix on ``--redis-url`` (default: the tests' database 13), deletes its keys
afterwards. The machine is shared: the load average is recorded with the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import redis

from faec_rec.keys import Keys
from tests.sinks_helpers import (DurableSubscriber, PrivateBroker, Receiver, Subscriber, emit, event,
                                 mqtt_settings, wait_for)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = os.environ.get("FAEC_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
PARTS = ("latency", "broker_outage", "receiver_500", "kills")


def _pcts(values_ms: list[float]) -> dict[str, Any]:
    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "max_ms": round(float(a.max()), 2)}


def _id_time(event_id: str) -> float:
    return int(event_id.partition("-")[0]) / 1000.0


class Runner:
    """``faec-rec sinks run`` as a subprocess with settings in its environment."""

    def __init__(self, redis_url: str, prefix: str, mqtt: Any | None, hook_url: str | None, **sinks: Any) -> None:
        self.env = {**os.environ, "FAEC_REDIS_URL": redis_url, "FAEC_PREFIX": prefix,
                    "FAEC_SINKS__ALLOW_NETWORKS": '["127.0.0.1/32"]', "FAEC_SINKS__BLOCK_MS": "200",
                    "FAEC_SINKS__CLAIM_IDLE_MS": "2000"}
        for k, v in sinks.items():
            self.env[f"FAEC_SINKS__{k.upper()}"] = str(v)
        if mqtt is not None:
            self.env.update({"FAEC_MQTT__URL": mqtt.url, "FAEC_MQTT__PREFIX": mqtt.prefix,
                             "FAEC_MQTT__DISCOVERY_PREFIX": mqtt.discovery_prefix, "FAEC_MQTT__NODE_ID": mqtt.node_id})
        if hook_url:
            self.env["FAEC_WEBHOOKS"] = json.dumps([{"url": hook_url, "name": "hook"}])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, redis_client: Any, keys: Keys, groups: int) -> "Runner":
        self.proc = subprocess.Popen([sys.executable, "-m", "faec_rec.cli", "sinks", "run", "--consumer", "bench"],
                                     env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready() -> bool:
            try:
                return len(redis_client.xinfo_groups(keys.events())) >= groups
            except redis.ResponseError:
                return False
        wait_for(ready, 30, "the runner's consumer groups")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def _produce(client: Any, keys: Keys, rate: float, seconds: float) -> int:
    """Publish ``rate`` events per second for ``seconds`` on a fixed schedule; returns the count."""
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        emit(client, keys, event("arrived", f"cam{i % 4}", i, person="Ada Lovelace" if i % 3 else None))
    return n


def _ids(client: Any, keys: Keys) -> list[str]:
    return [eid.decode() for eid, _ in client.xrange(keys.events())]


def latency(client: Any, keys: Keys, args: argparse.Namespace) -> dict[str, Any]:
    ms = mqtt_settings()
    sub = Subscriber([f"{ms.prefix}/events"])
    receiver = Receiver()
    runner = Runner(args.redis_url, keys.prefix, ms, receiver.url).start(client, keys, groups=2)
    try:
        time.sleep(1.0)  # the runner connects to the broker
        load_start = os.getloadavg()[0]
        n = _produce(client, keys, args.rate, args.seconds)
        wait_for(lambda: len(sub.on(f"{ms.prefix}/events")) >= n and len(receiver.delivered()) >= n, 60,
                 "every event at both sinks")
    finally:
        runner.stop()
        sub.close()
        receiver.close()
    with sub.lock:
        mqtt_ms = [(ts - _id_time(json.loads(p)["event_id"])) * 1000 for t, p, _r, ts in sub.messages]
    hook_ms = [(r["at"] - _id_time(json.loads(r["body"])["event_id"])) * 1000 for r in receiver.requests]
    return {"events": n, "rate_per_s": args.rate, "mqtt": _pcts(mqtt_ms), "webhook": _pcts(hook_ms),
            "targets": {"mqtt_p95_ms": 50, "webhook_p95_ms": 100}, "load_avg_start": round(load_start, 2),
            "load_avg_end": round(os.getloadavg()[0], 2)}


def broker_outage(client: Any, keys: Keys, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    broker = PrivateBroker(root / "broker").start()
    ms = mqtt_settings(port=broker.port, discovery=False)
    sub = DurableSubscriber([f"{ms.prefix}/events"], broker.port)
    runner = Runner(args.redis_url, keys.prefix, ms, None).start(client, keys, groups=1)
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            emit(client, keys, event("arrived", "door", i))
            i += 1
            time.sleep(1 / 50)

    producer = threading.Thread(target=produce, daemon=True)
    try:
        producer.start()
        time.sleep(3)
        broker.stop()
        down_at = time.monotonic()
        time.sleep(args.outage_s)
        broker.start()
        back_at = time.monotonic()
        time.sleep(3)
        stop.set()
        producer.join()
        ids = _ids(client, keys)
        wait_for(lambda: set(ids) <= {json.loads(p)["event_id"] for p in sub.on(f"{ms.prefix}/events")}, 120,
                 "every event after the outage")
        caught_up_s = time.monotonic() - back_at
    finally:
        stop.set()
        runner.stop()
        sub.close()
        broker.stop()
    got = Counter(json.loads(p)["event_id"] for p in sub.on(f"{ms.prefix}/events"))
    return {"events": len(ids), "outage_s": round(back_at - down_at, 1), "lost": len(set(ids) - set(got)),
            "duplicates": sum(c - 1 for c in got.values()), "caught_up_after_restart_s": round(caught_up_s, 1)}


def receiver_500(client: Any, keys: Keys, args: argparse.Namespace) -> dict[str, Any]:
    receiver = Receiver()
    runner = Runner(args.redis_url, keys.prefix, None, receiver.url, max_attempts=1000,
                    backoff_max_s=5).start(client, keys, groups=1)
    try:
        receiver.status = 500
        n = _produce(client, keys, 20, args.fail_s)
        receiver.status = 200
        ids = _ids(client, keys)
        wait_for(lambda: set(ids) <= {b["event_id"] for b in receiver.delivered()}, 120, "every event after the 500s")
    finally:
        runner.stop()
        receiver.close()
    got = Counter(b["event_id"] for b in receiver.delivered())
    failed = sum(1 for r in receiver.requests if r["status"] == 500)
    return {"events": n, "fail_s": args.fail_s, "answers_500": failed, "lost": len(set(ids) - set(got)),
            "duplicates": sum(c - 1 for c in got.values()),
            "parked": int(client.xlen(keys.sink_dead_letter("hook")))}


def kills(client: Any, keys: Keys, args: argparse.Namespace) -> dict[str, Any]:
    receiver = Receiver()
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            emit(client, keys, event("arrived", "door", i))
            i += 1
            time.sleep(1 / 100)

    producer = threading.Thread(target=produce, daemon=True)
    runner = Runner(args.redis_url, keys.prefix, None, receiver.url)
    try:
        for k in range(args.kills):
            runner.start(client, keys, groups=1)
            if k == 0:
                producer.start()
            seen = len(receiver.requests)
            wait_for(lambda: len(receiver.requests) > seen, 30, "deliveries")
            time.sleep(0.5)
            runner.kill()
        stop.set()
        producer.join()
        runner.start(client, keys, groups=1)
        ids = _ids(client, keys)
        wait_for(lambda: set(ids) <= {b["event_id"] for b in receiver.delivered()}, 120, "every event")
    finally:
        stop.set()
        runner.stop()
        receiver.close()
    got = Counter(b["event_id"] for b in receiver.delivered())
    return {"events": len(ids), "kills": args.kills, "lost": len(set(ids) - set(got)),
            "duplicates": sum(c - 1 for c in got.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sinks")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--fail-s", type=float, default=60.0)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else set(PARTS)
    client = redis.Redis.from_url(args.redis_url)
    out: dict[str, Any] = {"cores": os.cpu_count(), "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    root = Path(tempfile.mkdtemp(prefix="faec-sinks-bench-"))
    for part in PARTS:
        if part not in only:
            continue
        keys = Keys("bs" + uuid.uuid4().hex[:8])
        start = time.monotonic()
        try:
            out[part] = (broker_outage(client, keys, args, root) if part == "broker_outage"
                         else globals()[part](client, keys, args))
        except Exception as exc:  # noqa: BLE001 (one part failing must not hide the others)
            out[part] = {"failed": f"{type(exc).__name__}: {exc}"}
        finally:
            for key in client.scan_iter(match=f"{keys.prefix}:*", count=1000):
                client.delete(key)
        out[part]["wall_s"] = round(time.monotonic() - start, 1)
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
