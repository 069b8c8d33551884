"""Counting Redis round trips: a redis-py connection that records every request it sends.

A plain command is one request (one round trip); a pipeline (with or without MULTI/EXEC)
is one request however many commands it carries; a WATCH'd transaction costs its
WATCH, its reads and its MULTI/EXEC block. ``counting_redis(url)`` returns a client
whose connections append to a shared :class:`RoundTrips` log.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from redis.connection import Connection


@dataclass
class RoundTrips:
    """Every request sent, as the list of command names it carried (in order)."""

    requests: list[list[str]] = field(default_factory=list)

    def mark(self) -> int:
        """A position to count from (see :meth:`since`)."""
        return len(self.requests)

    def since(self, mark: int) -> list[list[str]]:
        return self.requests[mark:]

    def count(self, mark: int = 0) -> int:
        return len(self.requests) - mark


def _names(args: Any) -> list[str]:
    name = args[0]
    name = name.decode() if isinstance(name, bytes) else str(name)
    # "MULTI", "EXEC", and two-word commands ("CLIENT SETINFO") keep their first word
    return [name.split()[0].upper()]


class CountingConnection(Connection):
    """A :class:`redis.connection.Connection` that logs each request to ``self.log``."""

    def __init__(self, *args: Any, log: RoundTrips, **kwargs: Any) -> None:
        self.log = log
        self._pending: list[str] = []
        super().__init__(*args, **kwargs)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._pending.extend(_names(args))
        super().send_command(*args, **kwargs)

    def pack_command(self, *args: Any) -> list[bytes]:
        self._pending.extend(_names(args))
        return super().pack_command(*args)

    def pack_commands(self, commands: Any) -> list[bytes]:
        for args in commands:
            self._pending.extend(_names(args))
        return super().pack_commands(commands)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._pending:  # connection set-up (HELLO, CLIENT SETINFO, SELECT) is logged too
            self.log.requests.append(self._pending)
            self._pending = []
        super().send_packed_command(command, check_health)


def counting_redis(url: str, log: RoundTrips, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` whose every request is logged to ``log``."""
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection, log=log, **kwargs)
    return redis.Redis(connection_pool=pool)
