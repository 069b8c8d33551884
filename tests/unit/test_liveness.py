"""/healthz follows the consumer's heartbeat; the health HTTP handler drops idle clients."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

from faec_rec import metrics


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthz_fails_when_the_consumer_heartbeat_is_stale_or_missing(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_consumer_beat", None)
    with metrics.HealthServer(0, host="127.0.0.1", heartbeat_stale_s=30) as srv:
        url = f"http://127.0.0.1:{srv.port}/healthz"
        status, body = _get(url)
        assert status == 503 and "not run yet" in body["detail"]
        metrics.consumer_heartbeat()
        status, body = _get(url)
        assert status == 200 and body["alive"] is True
        metrics.consumer_heartbeat(time.time() - 31)  # the loop stopped beating 31 s ago
        status, body = _get(url)
        assert status == 503 and "broker connection" in body["detail"]
    # Servers that are not Celery workers have no heartbeat to check.
    with metrics.HealthServer(0, host="127.0.0.1") as srv:
        assert _get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200


def test_a_client_that_sends_nothing_is_disconnected() -> None:
    with metrics.HealthServer(0, host="127.0.0.1", request_timeout_s=0.5) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request, then silence
            assert sock.recv(1024) == b""  # the server closed it (without the timeout: blocks)
