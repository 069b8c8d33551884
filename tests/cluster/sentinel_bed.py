"""A Sentinel-managed Redis on private ports: a master, a replica and three real
sentinels (``redis-server --sentinel``), each a process with its own folder, plus
the failover scenario the test and ``benchmarks.cluster`` share: an enrolment
burst through a real worker with the master killed (SIGKILL) part-way."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.servers import RedisProcess

SERVICE = "faec"


@dataclass
class SentinelBed:
    """Master + replica + 3 sentinels; ``url`` is the ``redis+sentinel://`` URL."""

    directory: Path
    down_after_ms: int = 1000
    nodes: list[RedisProcess] = field(default_factory=list)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> "SentinelBed":
        persist = ("--appendonly", "yes")
        master = RedisProcess(self.directory / "node-a", extra=persist).start()
        replica = RedisProcess(self.directory / "node-b",
                               extra=(*persist, "--replicaof", "127.0.0.1", str(master.port))).start()
        self.nodes = [master, replica]
        conf = (f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
        self.sentinels = [RedisProcess(self.directory / f"sentinel-{i}", sentinel_conf=conf).start() for i in range(3)]
        self.wait(lambda: self.replicas_synced(master) >= 1, 30, "the replica to sync")
        self.wait(lambda: all(self._sentinel(s).sentinel_slaves(SERVICE) and
                              int(self._sentinel(s).sentinel_master(SERVICE).get("num-other-sentinels", 0)) >= 2
                              for s in self.sentinels), 30, "the sentinels to know the replica and each other")
        return self

    @staticmethod
    def _sentinel(s: RedisProcess) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=2, decode_responses=True)

    @staticmethod
    def replicas_synced(node: RedisProcess) -> int:
        import redis

        info = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2).info("replication")
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels see it."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            try:
                _, port = self._sentinel(s).sentinel_get_master_addr_by_name(SERVICE)
                votes[int(port)] = votes.get(int(port), 0) + 1
            except Exception:
                continue
        best = max(votes.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] >= 2 else None

    def master(self) -> RedisProcess:
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    @staticmethod
    def wait(predicate: Any, timeout: float, what: str, every: float = 0.1) -> float:
        start = time.monotonic()
        while True:
            try:
                if predicate():
                    return time.monotonic() - start
            except Exception:
                pass
            if time.monotonic() - start > timeout:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(every)

    def close(self) -> None:
        for proc in [*self.sentinels, *self.nodes]:
            proc.kill()


def enrol_with_retries(client_factory: Any, name: str, photos: list[Path], deadline_s: float = 120.0) -> tuple[Any, int]:
    """Enrol until a report comes back, retrying the *same* request id through
    connection errors (a failover): returns (report, attempts)."""
    request_id = uuid.uuid4().hex
    attempts = 0
    end = time.monotonic() + deadline_s
    client = client_factory()
    try:
        while True:
            attempts += 1
            try:
                return client.enrol(name, photos, request_id=request_id, timeout=15), attempts
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.5)
                client.close()
                client = client_factory()
    finally:
        client.close()


def failover_burst(bed: SentinelBed, dep: Any, people: dict[str, list[Path]], kill_after: int) -> dict[str, Any]:
    """Enrol ``people`` one after another; once ``kill_after`` reports are in,
    SIGKILL the master. Returns the accounting: lost/duplicated images of
    reported enrolments, failover time (kill -> sentinels name the replica), and
    resume time (kill -> the next enrolment reported done)."""
    from tests.faults.harness import audit_gallery, enrolment_faults

    reports: list[Any] = []
    done_at: list[float] = []
    attempts: list[int] = []
    errors: list[str] = []
    killed = threading.Event()
    kill_time: dict[str, float] = {}

    def burst() -> None:
        for name, photos in people.items():
            try:
                report, tries = enrol_with_retries(dep.new_client, name, photos)
            except Exception as exc:  # counted: an enrolment never reported
                errors.append(f"{name}: {exc!r}")
                continue
            reports.append(report)
            done_at.append(time.monotonic())
            attempts.append(tries)

    thread = threading.Thread(target=burst, name="enrol-burst")
    old_master = bed.master()
    thread.start()
    SentinelBed.wait(lambda: len(reports) >= kill_after, 300, f"{kill_after} enrolments before the failover")
    durability_before = [r.durability for r in reports]
    kill_time["t"] = time.monotonic()
    old_master.kill()
    killed.set()
    failover_s = SentinelBed.wait(lambda: bed.master_port() not in (None, old_master.port), 60, "the failover")
    thread.join(timeout=600)
    after = [t - kill_time["t"] for t in done_at if t > kill_time["t"]]
    client = dep.new_client()
    try:
        audit = audit_gallery(client.redis, dep.keys)
    finally:
        client.close()
    faults = enrolment_faults([r for r in reports if r.status == "done"], audit)
    return {
        "people": len(people), "reported_done": sum(r.status == "done" for r in reports),
        "not_reported": len(errors), "errors": errors[:3],
        "lost": faults["lost"], "duplicated": faults["duplicated"],
        "failover_s": round(failover_s, 2),
        "resume_s": round(min(after), 2) if after else None,
        "retried_requests": sum(a > 1 for a in attempts),
        "durability_before_kill": durability_before[-1] if durability_before else None,
        "stored_people": len(audit.people),
    }
