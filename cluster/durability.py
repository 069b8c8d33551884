"""Make an enrolment durable before it is reported "done".

What each Redis setup gives (measured in tests/faults/test_durable_enrolment.py):

* AOF on, any ``appendfsync``: Redis write()s the AOF before it replies, so a
  reply the worker got survives ``kill -9`` of redis-server (the kernel holds the
  bytes). With ``everysec`` up to ~1-2 s of writes are lost if the *host* dies.
* ``appendfsync always`` (Redis 7.0 and older, where WAITAOF is missing): the AOF
  is fsynced before the reply, so it also survives host loss. It fsyncs every
  write, frames included.
* ``WAITAOF numlocal numreplicas timeout`` (Redis >= 7.2): ``everysec`` for the
  bulk and an explicit fsync wait for this one enrolment.
* ``WAIT n timeout``: n replicas hold the write in memory (another host).

``confirm`` runs after the gallery transaction and before the report becomes
visible, so the client never sees "done" for a write that is not confirmed.
WAIT/WAITAOF wait for the *calling connection's* last write offset: a tiny write
on the same connection first makes that offset cover every earlier write,
whichever pooled connection made it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from faec_rec.errors import DurabilityError
from faec_rec.keys import Keys

log = logging.getLogger(__name__)

PROBE_TTL_S = 30.0  # seconds a server's persistence answers are cached per process


class Local(str, Enum):
    """What the Redis host itself guarantees for a confirmed write."""

    FSYNC = "fsync"  # on disk: survives the host going away
    WRITTEN = "written"  # in the kernel: survives kill -9 of redis-server, not host loss
    NONE = "none"  # memory only (no AOF)


@dataclass(frozen=True)
class ServerPersistence:
    """What a Redis server says about its persistence."""

    version: tuple[int, ...]
    aof: bool
    appendfsync: str | None  # None where CONFIG is not allowed (managed Redis)
    replicas: int

    @property
    def has_waitaof(self) -> bool:
        return self.version >= (7, 2)

    @property
    def local_without_wait(self) -> Local:
        if not self.aof:
            return Local.NONE
        return Local.FSYNC if self.appendfsync == "always" else Local.WRITTEN


@dataclass(frozen=True)
class Durability:
    """What was confirmed for one write: the local level, replicas that hold it, how."""

    local: Local
    replicas: int
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"local": self.local.value, "replicas": self.replicas, "method": self.method}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe(redis: Any) -> ServerPersistence:
    """Ask the server for its version, AOF state, fsync policy and connected replicas."""
    info = redis.info("server")
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:3] if p.isdigit())
    persistence = redis.info("persistence")
    replication = redis.info("replication")
    try:
        appendfsync = _text(redis.config_get("appendfsync").get("appendfsync"))
    except Exception:  # CONFIG may be renamed or refused on managed Redis
        appendfsync = None
    return ServerPersistence(version=version, aof=bool(int(persistence.get("aof_enabled", 0))),
                             appendfsync=appendfsync, replicas=int(replication.get("connected_slaves", 0)))


_cache: dict[int, tuple[float, ServerPersistence]] = {}


def cached_probe(redis: Any) -> ServerPersistence:
    now = time.monotonic()
    hit = _cache.get(id(redis))
    if hit is None or now - hit[0] > PROBE_TTL_S:
        hit = (now, probe(redis))
        _cache[id(redis)] = hit
    return hit[1]


def confirm(redis: Any, keys: Keys, mode: str = "auto", *, min_replicas: int = 1, timeout_ms: int = 2000) -> Durability:
    """Wait until every write made so far is durable at the level ``mode`` asks for.

    ``mode``: "off" (nothing checked), "auto" (the best this server offers without
    configuration: WAITAOF where present, connected replicas waited for),
    "fsync" (on disk locally or raise), "replicas" (fsync where AOF is on, and
    ``min_replicas`` replicas, or raise). Raises :class:`DurabilityError` when the
    level asked for is not reached within ``timeout_ms``.
    """
    if mode == "off":
        return Durability(Local.NONE, 0, "off")
    server = cached_probe(redis)
    want_replicas = min_replicas if mode == "replicas" else (min(server.replicas, min_replicas) if mode == "auto" else 0)
    if mode == "replicas" and server.replicas < min_replicas:
        raise DurabilityError(f"durability.enrolments='replicas' needs {min_replicas} replica(s); "
                              f"the Redis master has {server.replicas} connected")
    if server.has_waitaof and (server.aof or want_replicas):
        numlocal = 1 if server.aof else 0
        local_acks, replica_acks = _on_one_connection(redis, keys, "WAITAOF", numlocal, want_replicas, timeout_ms)
        local = Local.FSYNC if local_acks >= 1 else server.local_without_wait
        method = "WAITAOF"
        replicas = int(replica_acks)
    else:
        local = server.local_without_wait
        method = f"appendfsync {server.appendfsync}" if server.aof else "no AOF"
        replicas = 0
        if want_replicas:
            replicas = int(_on_one_connection(redis, keys, "WAIT", want_replicas, timeout_ms))
            method += " + WAIT"
    result = Durability(local, replicas, method)
    if mode == "fsync" and local is not Local.FSYNC:
        raise DurabilityError(
            f"durability.enrolments='fsync' but the write is only {local.value} ({method}); "
            "set appendonly yes and appendfsync always (Redis < 7.2) or use Redis >= 7.2 (WAITAOF)")
    if mode == "replicas" and replicas < want_replicas:
        raise DurabilityError(f"only {replicas} of {want_replicas} replica(s) acknowledged the enrolment within {timeout_ms} ms")
    return result


def _on_one_connection(redis: Any, keys: Keys, command: str, *args: int) -> Any:
    """INCR a probe key, then ``command`` on the same connection (its write offset)."""
    pool = redis.connection_pool
    conn = pool.get_connection("INCR")
    try:
        conn.send_command("INCR", keys.durability_probe())
        conn.read_response()
        conn.send_command(command, *args)
        return conn.read_response()
    finally:
        pool.release(conn)
