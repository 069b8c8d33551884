"""`faec-rec serve` and `faec-rec keys` as a new user would run them: a fresh home, the
embedded default (private Redis, in-process worker), no FAEC_REDIS_URL."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.web.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update({"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"), "TF_CPP_MIN_LOG_LEVEL": "2"})
    return env


def _cli(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "faec_rec.cli", *args], env=_env(home), input=input,
                          capture_output=True, text=True, timeout=120)


def test_serve_on_the_embedded_default_with_keys_from_the_cli(tmp_path: Path) -> None:
    import httpx

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "faec_rec.cli", "serve", "--port", str(port)],
                              env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not answer /healthz"
            time.sleep(0.3)
        text = (tmp_path / "serve.log").read_text()
        assert "no API key exists yet" in text and "faec-rec keys create --role admin" in text, text
        assert "embedded" in text and "in-process worker" in text, text
        assert httpx.get(f"{url}/api/v1/people").status_code == 401

        made = _cli(tmp_path, "keys", "create", "--role", "admin", "--name", "me", "--password",
                    input="a-long-password\na-long-password\n")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        assert key.startswith("faec_")
        h = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/api/v1/me", headers=h).json() == {"key_id": httpx.get(
            f"{url}/api/v1/me", headers=h).json()["key_id"], "name": "me", "role": "admin", "via": "key"}
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text  # the in-process worker consumes 'frames'
        listed = _cli(tmp_path, "keys", "list")
        assert "me" in listed.stdout and "admin" in listed.stdout and key not in listed.stdout
        assert _cli(tmp_path, "keys", "revoke", "me").returncode == 0
        assert httpx.get(f"{url}/api/v1/me", headers=h).status_code == 401
        assert _cli(tmp_path, "keys", "create", "--role", "boss").returncode == 2
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    # SIGTERM (docker stop) ends serve cleanly: its private Redis, whose last user it was, is gone
    deadline = time.monotonic() + 20
    while _private_redis_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _private_redis_under(tmp_path), "serve left its private Redis running"


def _private_redis_under(home: Path) -> list[int]:
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server" and \
                    os.readlink(f"/proc/{pid}/cwd").startswith(str(home)):
                found.append(int(pid))
        except OSError:
            continue
    return found
