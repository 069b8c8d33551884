"""A REAL worker's /healthz follows its consumer loop: alive while it consumes, failing
once its broker is gone (a Redis of this test's own, killed)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.faults


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def test_worker_liveness_fails_when_its_broker_connection_is_lost(tmp_path, prefix) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    redis_port, health_port = _free_port(), _free_port()
    server = subprocess.Popen([binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    worker = WorkerProcess(f"redis://127.0.0.1:{redis_port}/0", prefix, tmp_path / "data", queues=("frames",),
                           app="tests.faults.poison_app",
                           env={"FAEC_TEST_RUNS_FILE": str(tmp_path / "runs.txt"),
                                "FAEC_WORKERS__HEALTH_PORT": str(health_port),
                                "FAEC_WORKERS__LIVENESS_STALE_S": "5"})
    try:
        with worker:
            worker.wait_ready()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _healthz(health_port)[0] != 200:
                time.sleep(0.5)
            status, body = _healthz(health_port)
            assert status == 200 and body["consumer_heartbeat_age_s"] is not None, worker.log_text()[-2000:]
            server.kill()  # the broker goes away; the worker process itself stays up
            server.wait(10)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and _healthz(health_port)[0] != 503:
                time.sleep(0.5)
            status, body = _healthz(health_port)
            assert worker.alive
            assert status == 503 and "consumer loop" in body["detail"], (status, body, worker.log_text()[-2000:])
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
