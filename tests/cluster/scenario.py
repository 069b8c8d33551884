"""A deployment spread over the namespaces of :class:`~tests.cluster.netbed.NetBed`,
and the faults the cluster test and ``benchmarks.cluster`` inflict on it.

Hosts: ``redis`` runs redis-server (password, AOF) on its address; ``w1`` and
``w2`` each run ``faec-rec worker`` with their own data folder; ``prod`` runs
``faec-rec camera`` on a video and the enrolment driver. The test process counts
through Redis's unix socket.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.netbed import NetBed, wait_for

CAMERA = "door"
PASSWORD = "bed-" + uuid.uuid4().hex[:12]


@dataclass
class ClusterRun:
    """One deployment on a test bed; :meth:`close` tears everything down."""

    root: Path
    prefix: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:8])
    bed: NetBed | None = None
    redis_port: int = 6379
    marks: dict[str, int] = field(default_factory=dict)
    # Redis behind tests/cluster/delay_proxy.py (netem's stand-in): set_link() changes the delay
    proxied: bool = False

    # ---- set-up -------------------------------------------------------------------
    @property
    def socket(self) -> Path:
        return self.root / "redis" / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@{self.bed.addr('redis')}:{self.redis_port}/0"

    def env(self, host: str) -> dict[str, str]:
        return {"FAEC_REDIS_URL": self.url, "FAEC_PREFIX": self.prefix,
                "FAEC_DATA_DIR": str(self.root / f"data-{host}"), "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                # a task taken by a host that vanished is handed to another after 10 s
                "FAEC_WORKERS__VISIBILITY_TIMEOUT_S": "10", "FAEC_PRODUCERS__MAX_IN_FLIGHT": "4"}

    def start(self) -> "ClusterRun":
        self.root.mkdir(parents=True, exist_ok=True)
        self.bed = NetBed(self.root / "bed").start()
        folder = self.root / "redis"
        folder.mkdir(exist_ok=True)
        from faec_rec.redis_server import find_redis_server

        bind, port = self.bed.addr("redis"), self.redis_port
        if self.proxied:  # Redis on the host's loopback, the proxy on its address
            bind, port = "127.0.0.1", self.redis_port + 1
            self.set_link(0.0)
            self.bed.run("redis", [sys.executable, "-m", "tests.cluster.delay_proxy",
                                   f"{self.bed.addr('redis')}:{self.redis_port}", f"127.0.0.1:{port}",
                                   str(self.root / "link")], self.env("redis"), self.root / "proxy.log")
        self.bed.run("redis", [find_redis_server(), "--bind", bind, "--port", str(port),
                               "--requirepass", PASSWORD, "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                               "--dir", str(folder), "--save", "", "--appendonly", "yes"], {},
                     self.root / "redis.log")
        wait_for(lambda: self.redis().ping(), 20, "redis on the redis host")
        return self

    def set_link(self, delay_ms: float, jitter_ms: float = 0.0, loss_pct: float = 0.0) -> None:
        """Delay of the (proxied) Redis link, each direction."""
        (self.root / "link").write_text(f"{delay_ms} {jitter_ms} {loss_pct}\n")

    def redis(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), password=PASSWORD, socket_timeout=10)

    def keys(self) -> Any:
        from faec_rec.keys import Keys

        return Keys(self.prefix)

    def log(self, host: str) -> Path:
        return self.root / f"{host}.log"

    def start_worker(self, host: str, processes: int = 1) -> None:
        self.bed.faec(host, ["worker", "-Q", "frames,enrol", "-c", str(processes), "-l", "INFO"], self.env(host),
                      self.log(host))

    def worker_ready(self, host: str, since: int = 0) -> bool:
        text = self.log(host).read_text(errors="replace")[since:] if self.log(host).exists() else ""
        return " ready." in text

    def wait_workers(self, hosts: list[str], timeout: float = 240.0) -> None:
        since = {h: self.marks.get(f"ready-{h}", 0) for h in hosts}
        wait_for(lambda: all(self.worker_ready(h, since[h]) for h in hosts), timeout, f"workers on {hosts}")

    def start_camera(self, video: Path, duration_s: float, fps: float = 4.0,
                     camera: str = CAMERA) -> subprocess.Popen[bytes]:
        return self.bed.faec("prod", ["camera", f"{camera}={video}", "--loop", "--fps", str(fps),
                                      "--duration", str(duration_s)], self.env("prod"), self.log("prod-camera"))

    def start_enrolments(self, people: dict[str, Path], every_s: float) -> subprocess.Popen[bytes]:
        out = self.root / "enrolments.jsonl"
        argv = [sys.executable, "-m", "tests.cluster.enrol_driver", str(out), "--every", str(every_s),
                *[f"{name}={photo}" for name, photo in people.items()]]
        return self.bed.run("prod", argv, self.env("prod"), self.log("prod-enrol"))

    # ---- faults -------------------------------------------------------------------
    def succeeded(self, host: str) -> int:
        """Tasks the worker on ``host`` logged as succeeded so far."""
        path = self.log(host)
        return path.read_text(errors="replace").count(" succeeded in ") if path.exists() else 0

    def partition(self, host: str, seconds: float) -> dict[str, Any]:
        """Cut ``host`` off for ``seconds``, heal, and time until it finishes a task again."""
        self.bed.cut(host)
        time.sleep(seconds)
        before = self.succeeded(host)
        self.bed.heal(host)
        healed = time.monotonic()
        try:
            wait_for(lambda: self.succeeded(host) > before, 120, f"{host} to work again after the partition", every=0.1)
            recovery = round(time.monotonic() - healed, 2)
        except AssertionError:
            recovery = None
        return {"host": host, "cut_s": seconds, "recovery_s": recovery}

    def kill_host(self, host: str) -> dict[str, Any]:
        """SIGKILL every process on ``host``; time until the frames' processed count moves again."""
        keys, r = self.keys(), self.redis()
        processed = int(r.hget(keys.camera_stats(CAMERA), "processed") or 0)
        killed = self.bed.kill_host(host)
        at = time.monotonic()
        try:
            wait_for(lambda: int(r.hget(keys.camera_stats(CAMERA), "processed") or 0) > processed, 120,
                     "frames processed after the host kill", every=0.1)
            resume = round(time.monotonic() - at, 2)
        except AssertionError:
            resume = None
        return {"host": host, "processes_killed": killed, "resume_s": resume}

    def restart_worker(self, host: str) -> None:
        self.marks[f"ready-{host}"] = len(self.log(host).read_text(errors="replace")) if self.log(host).exists() else 0
        self.start_worker(host)

    # ---- accounting ---------------------------------------------------------------
    def account(self, settle_s: float = 90.0) -> dict[str, Any]:
        """Lost and duplicated enrolments, frames and events, once the work has settled."""
        from faec_rec.workers.enrolment import EnrolReport
        from tests.faults.harness import audit_gallery, camera_account, enrolment_faults, frames_left

        r, keys = self.redis(), self.keys()
        try:
            wait_for(lambda: frames_left(r, keys, CAMERA) == 0, settle_s, "every pushed frame to settle")
        except AssertionError:
            pass
        lines = [json.loads(x) for x in (self.root / "enrolments.jsonl").read_text().splitlines()] \
            if (self.root / "enrolments.jsonl").exists() else []
        reports = [EnrolReport.from_json(x["report"]) for x in lines if "report" in x]
        audit = audit_gallery(r, keys)
        faults = enrolment_faults([x for x in reports if x.status == "done"], audit)
        frames = camera_account(r, keys, CAMERA)
        seen: dict[tuple[Any, ...], int] = {}
        for _, fields in r.xrange(keys.events(CAMERA)):
            event = json.loads(fields[b"event"])
            if event.get("type") in ("arrived", "updated", "error"):
                key = (event.get("type"), event.get("frame"), event.get("track_id"), tuple(event.get("box") or ()))
                seen[key] = seen.get(key, 0) + 1
        return {
            "enrolments": len(lines), "enrolments_done": sum(x.status == "done" for x in reports),
            "enrolments_unreported": sum("error" in x for x in lines),
            "enrolments_retried": sum(x.get("attempts", 1) > 1 for x in lines),
            "enrolments_lost": faults["lost"], "enrolments_duplicated": faults["duplicated"],
            "frames_pushed": frames["pushed"], "frames_processed": frames["processed"],
            "frames_dropped": frames["dropped"], "frame_errors": frames["errors"],
            "frames_unsettled": frames_left(r, keys, CAMERA),
            # "dropped" also counts frames the producer never pushed (Redis unreachable), so
            # settled may exceed pushed without any frame done twice; processed cannot
            "frames_duplicated": max(0, frames["processed"] + frames["errors"] - frames["pushed"]),
            "events": sum(seen.values()), "events_duplicated": sum(n - 1 for n in seen.values() if n > 1),
        }

    def close(self) -> None:
        if self.bed is not None:
            self.bed.close()
