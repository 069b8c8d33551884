"""The backend a command talks to: a real deployment, or the embedded default.

With ``redis_url`` configured (``FAEC_REDIS_URL`` or the config file) a command
talks to that Redis, and tasks go to whatever workers consume it. Without one,
the *embedded default* starts a private ``redis-server`` with its data under
``data_dir/redis`` (append-only file, so the gallery persists between runs) and,
when the command needs recognition, a Celery worker inside this process (solo
pool, in a thread); the worker stops when the command ends.

Several faec-rec commands may run at once on one data folder: the first one
starts the private Redis (its port in ``data_dir/redis/port``, its password in
``data_dir/redis/secret``, mode 0600 in a 0700 folder); the others find it and
use it; it stops when the last of them ends (:class:`PrivateRedisLease`), and a
Ctrl-C in one terminal does not stop it under the others.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from faec_rec.config import Settings
from faec_rec.errors import BackendUnavailable, ConfigError
from faec_rec.keys import Keys
from faec_rec.files import private_dir, writable_dir
from faec_rec.redis_server import PrivateRedis, answers, is_ours, read_secret, shutdown

if TYPE_CHECKING:
    import redis as redis_lib
    from celery import Celery

log = logging.getLogger(__name__)

WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 120.0
OWNER_WAIT_S = 15.0


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    if url.split("://", 1)[0].lower() == "redis+sentinel":  # several hosts: not urlsplit's shape
        from faec_rec.cluster.sentinel import redact

        return redact(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(url: str, timeout_s: float = 3.0) -> "redis_lib.Redis":
    """A Redis client for ``url`` that answered PING; raises :class:`BackendUnavailable`
    with a message saying what to do."""
    import redis as redis_lib

    try:
        from faec_rec.cluster.sentinel import redis_from_url  # redis:// and redis+sentinel://

        client = redis_from_url(url, socket_connect_timeout=timeout_s, socket_timeout=max(timeout_s, 10.0))
        client.ping()
    except (redis_lib.RedisError, OSError, ValueError) as exc:
        raise BackendUnavailable(
            f"cannot reach Redis at {redact_url(url)} ({exc}): start it, fix FAEC_REDIS_URL, "
            "or unset FAEC_REDIS_URL to use the private embedded Redis"
        ) from exc
    return client


# ---- the private Redis, shared between concurrent commands ------------------

@dataclass
class PrivateRedisLease:
    """Use of the private Redis in ``directory`` by this process: start it when it
    is not running, join it when it is, and stop it when the last user leaves.

    Every user holds a shared ``flock`` on ``users.lock`` for as long as it uses
    the server; the kernel drops it when the process ends however it ends, so a
    crashed or killed holder never keeps the server up nor takes it down. Start and
    stop decisions happen under an exclusive ``control.lock``: on leaving, a user
    that can then take ``users.lock`` exclusively was the last one and shuts the
    server down (SHUTDOWN flushes the append-only file). The server runs in its own
    session, so a Ctrl-C in the terminal of the command that started it does not
    stop it under the others. ``owner`` is True for the only user at acquire time
    (no other command runs, so leftovers in the queues belong to nobody).
    """

    directory: Path
    owner: bool = False
    url: str = ""
    started: bool = False
    _server: PrivateRedis | None = field(default=None, repr=False)
    _users_fd: int | None = field(default=None, repr=False)

    @property
    def port_file(self) -> Path:
        return self.directory / "port"

    @contextlib.contextmanager
    def _control(self) -> Iterator[None]:
        fd = os.open(self.directory / "control.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + OWNER_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BackendUnavailable(
                            f"another faec-rec process has been starting or stopping the private Redis in "
                            f"{self.directory} for {OWNER_WAIT_S:.0f}s: wait for it, or stop it") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # drops the lock

    def acquire(self) -> "PrivateRedisLease":
        try:
            private_dir(self.directory.parent, tighten=False)  # the data folder: 0700 when made here
            private_dir(self.directory)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.directory} for the private Redis: {exc.strerror or exc}; "
                              "set FAEC_DATA_DIR to a folder you can write") from exc
        with self._control():
            fd = os.open(self.directory / "users.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.owner = True  # nobody else uses it now
            except BlockingIOError:
                self.owner = False
            fcntl.flock(fd, fcntl.LOCK_SH)  # (a conversion: nobody can take it meanwhile, we hold control)
            self._users_fd = fd
            try:
                port = self._read_port()
                if port and answers("127.0.0.1", port) and is_ours(self.directory, port):
                    log.info("using the private redis already running on port %d", port)
                else:
                    if port:
                        self._stop_unprotected(port)
                    self._server = PrivateRedis(self.directory).start()
                    self.started = True
                    port = self._server.port
                    self.port_file.write_text(str(port))
            except BaseException:
                self._drop_users_lock()
                raise
        self.url = f"redis://:{read_secret(self.directory)}@127.0.0.1:{port}/0"
        return self

    def release(self) -> None:
        if self._users_fd is None:
            return
        try:
            with self._control():
                self._drop_users_lock()
                fd = os.open(self.directory / "users.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("the private redis stays up for the other faec-rec commands using it")
                    return
                finally:
                    os.close(fd)
                self._stop_server()
        except BackendUnavailable as exc:  # leaving must not fail: the next user finds the server
            log.warning("left the private redis running: %s", exc)
        finally:
            self._drop_users_lock()
            self.owner = False

    def _drop_users_lock(self) -> None:
        if self._users_fd is not None:
            os.close(self._users_fd)
            self._users_fd = None

    def _stop_server(self) -> None:
        """The last user leaves: stop the server, whichever process started it."""
        port = self._read_port()
        if port and answers("127.0.0.1", port):
            shutdown(self.directory, port)
        self.port_file.unlink(missing_ok=True)
        if self._server is not None and self._server.process is not None:
            self._server.stop()  # reaps our child (already gone after SHUTDOWN)
        self._server = None

    def _read_port(self) -> int | None:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_unprotected(self, port: int) -> None:
        """A server of an older faec-rec (no password) left on our data by a killed
        run: shut it down before starting ours, so two servers never write one file."""
        if not answers("127.0.0.1", port):
            return
        import redis as redis_lib

        client = redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            served = client.config_get("dir").get("dir")
            if served is None or Path(served).resolve() != self.directory.resolve():
                return  # someone else's Redis took that port since
            log.warning("stopping a private redis left running on port %d by an earlier run", port)
            client.shutdown()
        except redis_lib.ConnectionError:
            pass  # SHUTDOWN closes the connection: that is success
        except redis_lib.RedisError as exc:
            log.debug("redis on port %d is not an unprotected one of ours: %s", port, exc)
        finally:
            client.close()
        for _ in range(100):
            if not answers("127.0.0.1", port):
                break
            time.sleep(0.05)


# ---- an in-process worker -------------------------------------------------

@contextlib.contextmanager
def inprocess_worker(app: "Celery", queues: Sequence[str], loglevel: str = "WARNING") -> Iterator[Any]:
    """Run a Celery worker (solo pool) for ``queues`` in a daemon thread of this
    process while the block runs; it finishes the task in hand before stopping.

    Raises :class:`BackendUnavailable` if it does not start in time.
    """
    from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
    from celery.worker import state

    setup_app_for_worker(app, loglevel, None)
    worker = TestWorkController(
        app=app,
        concurrency=1,
        pool="solo",
        hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
        loglevel=loglevel,
        logfile=None,
        queues=list(queues),
        ready_callback=None,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    failure: list[BaseException] = []

    def run() -> None:
        try:
            worker.start()
        except BaseException as exc:  # surfaced below instead of dying silently in the thread
            failure.append(exc)
            worker._on_started.set()

    thread = threading.Thread(target=run, name="faec-embedded-worker", daemon=True)
    thread.start()
    if not worker._on_started.wait(WORKER_START_TIMEOUT_S) or failure:
        state.should_terminate = 0
        reason = f": {failure[0]}" if failure else f" within {WORKER_START_TIMEOUT_S:.0f}s"
        raise BackendUnavailable(f"the embedded worker did not start{reason}")
    log.info("embedded worker consuming %s", ",".join(queues))
    try:
        yield worker
    finally:
        state.should_terminate = 0
        thread.join(WORKER_STOP_TIMEOUT_S)
        if thread.is_alive():
            log.warning("embedded worker still busy after %.0fs; leaving it", WORKER_STOP_TIMEOUT_S)
        state.should_terminate = None


def purge_stale_tasks(app: "Celery") -> int:
    """Drop every queued and unacknowledged task of ``app``'s queues; returns how many.

    Only for the private Redis, by the process that just became its owner: no
    other command runs on it then, so whatever waits there is left over from a
    run that was interrupted (Ctrl-C, a crash) and belongs to nobody. Without
    this, the next command would first work through those leftovers.
    """
    from faec_rec.workers.app import QUEUES

    dropped = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in QUEUES:
            dropped += int(channel.queue_purge(queue) or 0)
        # acks_late: tasks taken but never acknowledged come back after the
        # visibility timeout unless their bookkeeping goes too
        dropped += int(channel.client.hlen(channel.unacked_key) or 0)
        channel.client.delete(channel.unacked_key, channel.unacked_index_key)
    if dropped:
        log.info("dropped %d tasks left over from an interrupted run", dropped)
    return dropped


def consumers(app: "Celery", queue: str, timeout_s: float = 2.0) -> list[str]:
    """Names of the workers that consume ``queue`` now (empty if none answers)."""
    try:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    except Exception as exc:  # broker trouble is reported by the caller's own calls
        log.debug("inspect failed: %s", exc)
        return []
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues or ()))


# ---- the backend a command uses ----------------------------------------------

@dataclass
class Backend:
    """What a command talks to. ``settings.redis_url`` is always set here."""

    settings: Settings
    redis: "redis_lib.Redis"
    embedded: bool
    worker_here: bool = False  # an in-process worker runs for this backend
    _app: "Celery | None" = field(default=None, repr=False)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.prefix)

    @property
    def url(self) -> str:
        return redact_url(self.settings.redis_url or "")

    @property
    def app(self) -> "Celery":
        """The Celery app for this backend (built on first use)."""
        if self._app is None:
            from faec_rec.workers.app import make_app

            self._app = make_app(self.settings)
        return self._app

    def require_consumers(self, queue: str, timeout_s: float = 2.0) -> list[str]:
        """Raise :class:`BackendUnavailable` unless some worker consumes ``queue``."""
        found = consumers(self.app, queue, timeout_s)
        if not found:
            raise BackendUnavailable(
                f"no worker is consuming queue {queue!r} on {self.url}: start one with `faec-rec worker` "
                "(same FAEC_REDIS_URL and FAEC_PREFIX)"
            )
        return found


@contextlib.contextmanager
def open_backend(
    settings: Settings,
    *,
    worker_queues: Sequence[str] = (),
    worker_loglevel: str = "WARNING",
) -> Iterator[Backend]:
    """Open the backend for ``settings`` for the duration of the block.

    With ``settings.redis_url``: connect to it (no worker started: tasks go to
    the deployment's workers). Without: lease the private Redis under
    ``settings.data_dir / "redis"`` and, if ``worker_queues`` is not empty, run
    an in-process worker on them (unless another faec-rec process runs that
    Redis and a worker there already consumes them). Everything started here is stopped on exit.
    Raises :class:`BackendUnavailable` when Redis cannot be reached or started.
    """
    if settings.redis_url:
        client = connect(settings.redis_url)
        try:
            yield Backend(settings=settings, redis=client, embedded=False)
        finally:
            client.close()
        return

    with contextlib.suppress(OSError):  # made 0700 if new: crops are faces
        private_dir(Path(settings.data_dir), tighten=False)
    writable_dir(Path(settings.data_dir), "the data folder (FAEC_DATA_DIR)")  # else say why, before any work
    lease = PrivateRedisLease(Path(settings.data_dir) / "redis").acquire()
    try:
        live = settings.model_copy(update={"redis_url": lease.url})
        if not settings.workers.read_roots:
            # Only this user's commands reach the private Redis: its tasks may name any
            # file this user can read (a deployment's workers read none by default).
            live = live.model_copy(update={"workers": live.workers.model_copy(update={"read_roots": (Path("/"),)})})
        if "tf_threads" not in settings.workers.model_fields_set:
            # the in-process worker is the only one (solo pool): its model calls may use every core
            live = live.model_copy(update={"workers": live.workers.model_copy(update={"tf_threads": os.cpu_count() or 1})})
        client = connect(lease.url)
        backend = Backend(settings=live, redis=client, embedded=True)
        try:
            if lease.owner:
                purge_stale_tasks(backend.app)
            # A `faec-rec worker` that owns the private Redis already consumes: use it
            # instead of loading a second model here.
            shared = not lease.owner and all(consumers(backend.app, q, 1.0) for q in worker_queues)
            if worker_queues and not shared:
                from faec_rec.workers.runtime import preload_engine

                preloading = preload_engine(live)  # TensorFlow and the model load while the worker starts
                with inprocess_worker(backend.app, worker_queues, worker_loglevel):
                    preloading.join()  # (already done: the worker's warm-up waited for the same engine)
                    backend.worker_here = True
                    yield backend
            else:
                yield backend
        finally:
            client.close()
    finally:
        lease.release()
