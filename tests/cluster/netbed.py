"""A multi-host test bed on one machine: network namespaces joined by veth links.

Hosts (one namespace each, names ``fc<tag>-<host>``): ``redis``, ``w1``, ``w2``,
``prod`` and a switch namespace holding a bridge; every host has one ``eth0``
(veth) on that bridge, in a private subnet ``10.200.<n>.0/24`` that exists only
inside these namespaces (no route to it from the machine's own namespace, and
none out). Each host runs the real commands: ``redis-server``, ``faec-rec
worker``, ``faec-rec camera``, the Python client. The test process itself reaches
Redis through its unix socket (a file, not the network) to count.

Faults: :meth:`cut`/:meth:`heal` (the host's switch port down/up: a partition),
:meth:`kill_host` (SIGKILL every process in the namespace), :meth:`delay`
(Redis link latency/loss; needs the kernel's ``sch_netem``, absent on some
machines: :func:`netem_available`).

Needs root (CAP_NET_ADMIN) and iproute2; :func:`unavailable_reason` says why not.
Everything is torn down by :meth:`close` (called from a ``finally``).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"redis": 1, "w1": 11, "w2": 12, "prod": 21}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"fcprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def netem_available() -> bool:
    probe = f"fcprobe{uuid.uuid4().hex[:6]}"
    _ip("netns", "add", probe, check=False)
    try:
        done = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                               "delay", "1ms"], capture_output=True, text=True)
        return done.returncode == 0
    finally:
        _ip("netns", "del", probe, check=False)


@dataclass
class NetBed:
    """The namespaces, links and processes of one test bed."""

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    subnet: int = field(default_factory=lambda: 1 + int(uuid.uuid4().hex[:4], 16) % 250)
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"fc{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return f"10.200.{self.subnet}.{HOSTS[host]}"

    def _port(self, host: str) -> str:
        return f"p{self.tag}{host}"  # the switch side of the host's link (<= 15 chars)

    def start(self) -> "NetBed":
        self.root.mkdir(parents=True, exist_ok=True)
        sw = self.ns("sw")
        _ip("netns", "add", sw)
        self.made.append(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        for host in HOSTS:
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            peer = self._port(host)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", sw)
            _ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", sw, "link", "set", peer, "master", "br0")
            _ip("-n", sw, "link", "set", peer, "up")
        return self

    # ---- faults -------------------------------------------------------------------
    def cut(self, host: str) -> None:
        """Partition ``host`` from every other (its switch port goes down)."""
        _ip("-n", self.ns("sw"), "link", "set", self._port(host), "down")

    def heal(self, host: str) -> None:
        _ip("-n", self.ns("sw"), "link", "set", self._port(host), "up")

    def delay(self, host: str, delay_ms: float, jitter_ms: float = 0.0, loss_pct: float = 0.0) -> None:
        """netem on ``host``'s link (both directions: its eth0 and its switch port)."""
        spec = ["delay", f"{delay_ms}ms", f"{jitter_ms}ms", "loss", f"{loss_pct}%"]
        for ns, dev in ((self.ns(host), "eth0"), (self.ns("sw"), self._port(host))):
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec],
                           check=True, capture_output=True)

    def pids(self, host: str) -> list[int]:
        out = _ip("netns", "pids", self.ns(host), check=False).stdout.split()
        return [int(p) for p in out if p.isdigit()]

    def kill_host(self, host: str) -> int:
        """SIGKILL every process in ``host``'s namespace (the machine is gone); returns how many."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs.get(host, []):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return len(pids)

    # ---- processes ----------------------------------------------------------------
    def run(self, host: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace, output to ``log``."""
        full = dict(os.environ)
        full.update(env)
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], cwd=REPO, env=full,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.setdefault(host, []).append(proc)
        return proc

    def faec(self, host: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Run the real ``faec-rec`` command on ``host``."""
        script = Path(sys.executable).with_name("faec-rec")
        return self.run(host, [str(script), *args], env, log)

    def close(self) -> None:
        for host in list(HOSTS):
            if self.ns(host) in self.made:
                self.kill_host(host)
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)
        self.made.clear()


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
