"""Redis Sentinel URLs: one ``redis_url`` that names the sentinels, not a master.

Syntax (chosen here; ``redis-py`` has no URL form for Sentinel)::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?options]

* ``host:port`` pairs are the *sentinels* (default port 26379), comma-separated;
* ``service_name`` is the name the sentinels monitor (``sentinel monitor NAME ...``);
* ``db`` the database number (default 0);
* the user/password are the *Redis* master's; options:
  ``sentinel_password=...`` (sentinels with ``requirepass``),
  ``socket_timeout=SECONDS``.

Everything that takes a ``redis_url`` accepts it: the client and workers
(:func:`redis_from_url`, a redis-py client bound to whichever node the sentinels
name master, re-resolved after a failover), Celery's broker (kombu's
``sentinel://`` transport) and result backend (Celery's sentinel backend)
through :func:`celery_urls`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from faec_rec.errors import ConfigError

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    socket_timeout: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


def is_sentinel_url(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0].lower() == SCHEME  # type: ignore[union-attr]


def parse(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL; :class:`ConfigError` says what is wrong (never echoing a password)."""
    if not is_sentinel_url(url):
        raise ConfigError(f"not a {SCHEME}:// URL")
    rest = url.split("://", 1)[1]
    netloc, _, path_query = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    sentinels = []
    for part in hosts.split(","):
        host, sep, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        host = host.strip("[]")
        if not host:
            raise ConfigError(f"{SCHEME} URL: empty sentinel host in {hosts!r}")
        try:
            sentinels.append((host, int(port) if sep else DEFAULT_SENTINEL_PORT))
        except ValueError as exc:
            raise ConfigError(f"{SCHEME} URL: bad sentinel port in {part!r}") from exc
    path, _, query = path_query.partition("?")
    segments = [s for s in path.split("/") if s]
    if not segments:
        raise ConfigError(f"{SCHEME} URL needs the monitored service name: {SCHEME}://host:port/SERVICE[/db]")
    if len(segments) > 2:
        raise ConfigError(f"{SCHEME} URL path is /SERVICE[/db], got /{path}")
    try:
        db = int(segments[1]) if len(segments) == 2 else 0
    except ValueError as exc:
        raise ConfigError(f"{SCHEME} URL: database {segments[1]!r} is not a number") from exc
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    timeout = options.pop("socket_timeout", None)
    return SentinelURL(tuple(sentinels), segments[0], db, username, password,
                       options.pop("sentinel_password", None), float(timeout) if timeout else None, options)


def redis_from_url(url: str, **kwargs: Any) -> Any:
    """A ``redis.Redis`` for ``url``: a plain ``redis://``/``rediss://``/``unix://`` URL as
    redis-py reads it, or a ``redis+sentinel://`` URL as the current master (re-resolved
    through the sentinels when a connection fails or the node turns read-only)."""
    import redis

    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    from redis.sentinel import Sentinel

    parsed = parse(url)
    sentinel_kwargs: dict[str, Any] = {}
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in kwargs:
            sentinel_kwargs[name] = kwargs[name]
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.socket_timeout is not None:
        kwargs.setdefault("socket_timeout", parsed.socket_timeout)
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs or None)
    return sentinel.master_for(parsed.service, db=parsed.db, username=parsed.username,
                               password=parsed.password, **kwargs)


def celery_urls(url: str) -> tuple[str, dict[str, Any]]:
    """``(broker/backend URL, transport options)`` for Celery from a sentinel URL: kombu's
    ``sentinel://h1:p1;sentinel://h2:p2/db`` form with ``master_name`` (and the
    sentinels' password in ``sentinel_kwargs``)."""
    from urllib.parse import quote

    parsed = parse(url)
    auth = ""
    if parsed.password is not None:
        auth = f"{quote(parsed.username or '', safe='')}:{quote(parsed.password, safe='')}@"
    hosts = ";".join(f"sentinel://{auth}{h}:{p}" for h, p in parsed.sentinels)
    options: dict[str, Any] = {"master_name": parsed.service}
    if parsed.sentinel_password:
        options["sentinel_kwargs"] = {"password": parsed.sentinel_password}
    return f"{hosts}/{parsed.db}", options


def redact(url: str) -> str:
    """``url`` with the master's and the sentinels' passwords replaced by ``***``."""
    import re

    scheme, rest = url.split("://", 1)
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    tail = re.sub(r"(sentinel_password=)[^&]*", r"\1***", tail)
    return f"{scheme}://{userinfo}{at}{hosts}{slash}{tail}"
