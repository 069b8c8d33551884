"""Real redis-server and redis-sentinel processes on private ports with their own
folders, for the durability, failover and cluster tests (never the shared 6379)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from faec_rec.redis_server import answers, find_redis_server, free_port


@dataclass
class RedisProcess:
    """One ``redis-server`` (or ``--sentinel``) with ``extra`` arguments and data in ``directory``.

    ``bind``/``host`` let a test bed put it on a namespace's address; ``netns``
    runs it inside that network namespace.
    """

    directory: Path
    port: int = 0
    extra: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    sentinel_conf: str | None = None
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        if self.sentinel_conf is not None:
            conf = self.directory / "sentinel.conf"
            if not conf.exists():  # sentinel rewrites its own file; keep it across restarts
                conf.write_text(f"port {self.port}\nbind {self.host}\ndir {self.directory}\n" + self.sentinel_conf)
            cmd = [find_redis_server(), str(conf), "--sentinel", "--logfile", str(self.directory / "sentinel.log")]
        else:
            cmd = [find_redis_server(), "--bind", self.host, "--port", str(self.port), "--dir", str(self.directory),
                   "--save", "", "--logfile", str(self.directory / "redis.log"), *self.extra]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, timeout: float = 15.0) -> "RedisProcess":
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers():
                return self
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err.strip()} (see {self.directory})")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server on {self.host}:{self.port} did not answer in {timeout:.0f}s")

    def _answers(self) -> bool:
        if self.netns:
            out = subprocess.run(["ip", "netns", "exec", self.netns, "redis-cli", "-h", self.host, "-p", str(self.port),
                                  "PING"], capture_output=True, text=True)
            return out.stdout.strip() == "PONG"
        return answers(self.host, self.port)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed by Redis itself."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
