"""``python -m faec_rec.sinks.broker ensure --port 1883``: start Mosquitto unless one answers
(``make test`` and ``.ci/run``), the same pattern as :mod:`faec_rec.redis_server`."""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = Path("/etc/mosquitto/mosquitto.conf")


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if an MQTT broker accepts a CONNECT on host:port (CONNACK comes back)."""
    # CONNECT, MQTT 3.1.1, clean session, keepalive 10, client id "faec-probe"
    connect = bytes([0x10, 22, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 10]) + b"faec-probe"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(connect)
            return sock.recv(4)[:1] == b"\x20"
    except OSError:
        return False


def ensure(port: int) -> int:
    if answers("127.0.0.1", port):
        print(f"mqtt broker already answers on 127.0.0.1:{port}")
        return 0
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        print("mosquitto is not installed: apt-get install -y mosquitto", file=sys.stderr)
        return 1
    if port == 1883 and CONF.exists():
        args = [binary, "-d", "-c", str(CONF)]
    else:
        args = [binary, "-d", "-p", str(port)]
    subprocess.run(args, check=True)
    for _ in range(100):
        if answers("127.0.0.1", port):
            print(f"started mosquitto on 127.0.0.1:{port}")
            return 0
        time.sleep(0.1)
    print(f"mosquitto did not start on port {port}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faec_rec.sinks.broker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("ensure", help="start mosquitto on a port unless a broker answers")
    e.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    return ensure(args.port)


if __name__ == "__main__":
    sys.exit(main())
