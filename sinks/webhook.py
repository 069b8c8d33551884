"""Webhook sink: each event POSTed as JSON, signed, to an address that was checked.

Request: ``POST <url>`` with the body of :func:`faec_rec.sinks.base.payload` and headers
``Content-Type: application/json``, ``X-Faec-Event-Id`` (the stream id, for dropping
duplicates), ``X-Faec-Timestamp`` (unix seconds) and, with a secret,
``X-Faec-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``.
Any 2xx answer is a delivery; anything else (a redirect included: never followed), a
timeout or a refused connection is a failed attempt.

Server-side request forgery: the host is resolved at every delivery and each address
checked (:func:`forbidden_reason`): loopback, private, link-local (cloud metadata at
169.254.169.254 included), shared, multicast, reserved and unspecified addresses are
refused unless ``sinks.allow_networks`` holds them. The connection then goes to the very
address that was checked (TLS still verifies the certificate for the host name), so a
DNS answer that changes between check and connect (rebinding) cannot redirect it.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from faec_rec.config import WebhookConfig
from faec_rec.errors import ConfigError, DeliveryRefused, SinkError
from faec_rec.sinks.base import Sink, payload

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Faec-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``timestamp + "." + body``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """What a receiver does (README has the same snippet): constant-time compare, and refuse
    a timestamp older than ``tolerance_s`` (replays)."""
    if abs((time.time() if now is None else now) - float(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    try:
        return [ipaddress.ip_network(c, strict=False) for c in cidrs]
    except ValueError as exc:
        raise ConfigError(f"sinks.allow_networks: {exc}") from exc


def forbidden_reason(address: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why a webhook may not connect to ``address``, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    if ip in _METADATA:
        return "cloud metadata address"
    for reason, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                        ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                        ("private", ip.is_private), ("reserved", ip.is_reserved),
                        ("shared (CGNAT)", ip.version == 4 and ip in _SHARED),
                        ("not globally routable", not ip.is_global)):
        if hit:
            return f"{reason} address"
    return None


def resolve_checked(host: str, port: int, allowed: Sequence[Network] = ()) -> str:
    """The first address of ``host`` that a webhook may reach; raises :class:`DeliveryRefused`
    when every address is forbidden, :class:`SinkError` when the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SinkError(f"cannot resolve {host}: {exc}") from exc
    reasons = []
    for info in infos:
        address = str(info[4][0])
        reason = forbidden_reason(address, allowed)
        if reason is None:
            return address
        reasons.append(f"{address} ({reason})")
    raise DeliveryRefused(f"{host} resolves only to forbidden addresses: {', '.join(reasons)}; "
                          "allow them with sinks.allow_networks if this is intended")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a fixed, already checked address (Host header from the URL)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address; the certificate is still checked against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def read_secret(config: WebhookConfig) -> bytes | None:
    """The webhook's secret from ``secret``, ``secret_file`` or ``secret_env`` (first set wins)."""
    if config.secret:
        return config.secret.encode()
    if config.secret_file:
        try:
            return config.secret_file.read_text().rstrip("\r\n").encode()
        except OSError as exc:
            raise ConfigError(f"webhook secret_file {config.secret_file}: {exc.strerror}") from exc
    if config.secret_env:
        value = os.environ.get(config.secret_env)
        if not value:
            raise ConfigError(f"webhook secret_env {config.secret_env} is not set")
        return value.encode()
    return None


def sink_name(config: WebhookConfig) -> str:
    return config.name or "webhook-" + hashlib.sha1(config.url.encode()).hexdigest()[:8]


class WebhookSink(Sink):
    """POSTs events to one URL; see the module docstring."""

    def __init__(self, config: WebhookConfig, allow_networks: Sequence[str] = ()) -> None:
        self.config = config
        self.name = sink_name(config)
        self.allowed = parse_networks(allow_networks)
        self.secret = read_secret(config)
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.where = f"{parts.scheme}://{self.host}:{self.port}{parts.path or '/'}"  # no query, no user info
        self._people = set(config.people)
        self._tls = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None) \
            if self.https else None

    def wants(self, event: dict[str, Any]) -> bool:
        c = self.config
        if c.cameras and event.get("camera") not in c.cameras:
            return False
        if c.types and event.get("type") not in c.types:
            return False
        if c.decisions and event.get("decision") not in c.decisions:
            return False
        if self._people and event.get("person") not in self._people and event.get("person_id") not in self._people:
            return False
        return True

    def deliver(self, event_id: str, event: dict[str, Any]) -> None:
        body = payload(event_id, event)
        timestamp = str(int(time.time()))
        # configured headers first: they may add (Authorization) but never replace ours
        headers = {**self.config.headers, "Content-Type": "application/json", "User-Agent": "faec-rec-webhook/1",
                   "X-Faec-Event-Id": event_id, "X-Faec-Timestamp": timestamp}
        if self.secret is not None:
            headers["X-Faec-Signature"] = sign(self.secret, timestamp, body)
        address = resolve_checked(self.host, self.port, self.allowed)  # at every delivery: DNS may change
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = _PinnedHTTPSConnection(self.host, self.port, address, self.config.timeout_s, self._tls)
        else:
            conn = _PinnedHTTPConnection(self.host, self.port, address, self.config.timeout_s)
        try:
            conn.request("POST", self.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            raise SinkError(f"POST {self.where} ({address}): {type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise SinkError(f"POST {self.where} answered {response.status} {response.reason}")
