"""Start-up checks of the Redis a deployment runs on (ours, or a managed one).

The queues, uploads and the gallery live in Redis: a Redis that evicts keys
under memory pressure loses tasks and people silently, one without ``maxmemory``
grows until the kernel kills it, one without persistence forgets everything on
a restart. Managed services often default to an eviction policy
(``volatile-lru``) or to no persistence, so these are checked at start-up, not
assumed from our own manifests. ``INFO`` is used where it suffices (``CONFIG``
is often disabled on managed services); what cannot be read is reported as unknown.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from faec_rec.errors import ConfigError

log = logging.getLogger(__name__)

_checked: set[str] = set()  # Redis servers (redacted URLs) this process has checked


@dataclass
class RedisFindings:
    """What the checks found: ``refusals`` stop a worker (unless allowed), ``warnings`` are logged."""

    policy: str | None = None
    maxmemory: int | None = None
    aof: bool | None = None
    save: str | None = None  # RDB save points ("" = none), None = could not read
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def inspect_redis(client: Any) -> RedisFindings:
    """Read eviction policy, maxmemory and persistence of ``client``'s server."""
    found = RedisFindings()
    memory = client.info("memory")
    found.policy = str(memory.get("maxmemory_policy", "")) or None
    found.maxmemory = int(memory.get("maxmemory", 0) or 0)
    found.aof = bool(int(client.info("persistence").get("aof_enabled", 0) or 0))
    try:
        found.save = str(client.config_get("save").get("save", "")).strip()
    except Exception:  # CONFIG disabled or not allowed for this user
        found.save = None
    if found.policy and found.policy != "noeviction":
        found.refusals.append(
            f"Redis evicts keys when full (maxmemory-policy {found.policy}): queued tasks, uploads and gallery "
            "records could vanish without an error. Set maxmemory-policy noeviction (on a managed Redis: its "
            "parameter group), or set redis_require_noeviction=false to run anyway")
    if not found.maxmemory:
        found.warnings.append(
            "Redis has no maxmemory: it grows until the kernel kills it. Set maxmemory to about half the memory "
            "it may use (the append-only rewrite forks and copies pages), with maxmemory-policy noeviction")
    if not found.aof and found.save == "":
        found.warnings.append(
            "Redis keeps nothing on disk (appendonly no, no save points): a restart loses the gallery, the "
            "model registry and queued tasks. Set appendonly yes")
    elif not found.aof and found.save is None:
        found.warnings.append("Redis has appendonly off and its save points could not be read (CONFIG not "
                              "allowed): make sure it persists, or a restart loses the gallery")
    return found


def check_redis(client: Any, *, require_noeviction: bool = True, where: str = "Redis") -> RedisFindings:
    """Log the warnings; raise :class:`ConfigError` for a refusal when ``require_noeviction``."""
    found = inspect_redis(client)
    _checked.add(where)
    for text in found.warnings:
        log.warning("%s: %s", where, text)
    for text in found.refusals:
        if require_noeviction:
            raise ConfigError(f"{where}: {text}")
        log.warning("%s: %s", where, text)
    return found



def check_redis_once(client: Any, *, require_noeviction: bool = True, where: str = "Redis") -> RedisFindings | None:
    """:func:`check_redis` unless this process already checked ``where`` (``faec-rec worker``
    checks before Celery starts; the worker's start-up hook then skips it)."""
    if where in _checked:
        return None
    return check_redis(client, require_noeviction=require_noeviction, where=where)
