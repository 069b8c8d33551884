"""Real things the sink tests share: an MQTT subscriber (paho), a local HTTP receiver that
records requests (and can be told to fail), events written the workers' way, and settings."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from faec_rec.config import MqttConfig, SinksConfig, WebhookConfig
from faec_rec.workers.events import Event, publish
from tests import waiting

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


def broker_up(port: int = MQTT_PORT) -> bool:
    from faec_rec.sinks.broker import answers

    return answers(MQTT_HOST, port)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """:func:`tests.waiting.wait_for`, polling faster: sink deliveries take milliseconds."""
    return waiting.wait_for(predicate, timeout, what, every)


def fast_sinks(**overrides: Any) -> SinksConfig:
    """Short backoffs and blocks, so retries and dead-lettering happen in test time."""
    values = dict(block_ms=100, backoff_base_s=0.05, backoff_max_s=0.2, max_attempts=3, claim_idle_ms=1000)
    values.update(overrides)
    return SinksConfig(**values)


def mqtt_settings(port: int = MQTT_PORT, **overrides: Any) -> MqttConfig:
    """A private topic space on the shared broker: prefix, discovery prefix and node id unique."""
    tag = "t" + uuid.uuid4().hex[:8]
    values = dict(url=f"mqtt://{MQTT_HOST}:{port}", prefix=f"faec_rec_{tag}", discovery_prefix=f"ha_{tag}",
                  node_id=f"node_{tag}", connect_timeout_s=2.0)
    values.update(overrides)
    return MqttConfig(**values)


class Subscriber:
    """A real paho subscriber that records (topic, payload, retain) in arrival order."""

    def __init__(self, topics: list[str], port: int = MQTT_PORT, host: str = MQTT_HOST,
                 ca_file: str | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="sub-" + uuid.uuid4().hex[:8])
        self.topics = topics

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            client.subscribe([(t, 1) for t in self.topics])

        def on_subscribe(*_: Any) -> None:
            self._subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self.lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        if ca_file:
            self.client.tls_set(ca_certs=ca_file)
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscriber did not subscribe"

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _r, _ts in self.messages if t == topic]

    def last(self, topic: str) -> bytes | None:
        got = self.on(topic)
        return got[-1] if got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Receiver:
    """A local HTTP server recording every POST; ``status`` is what it answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                status = owner.status
                owner.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                       "body": body, "status": status, "at": time.time(), "path": self.path})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict[str, Any]]:
        """Bodies (JSON) of the requests answered 2xx."""
        return [json.loads(r["body"]) for r in list(self.requests) if 200 <= r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook(url: str, **overrides: Any) -> WebhookConfig:
    return WebhookConfig(url=url, name=overrides.pop("name", "hook"), **overrides)


def event(kind: str = "arrived", camera: str = "door", track: int = 1, person: str | None = "Ada Lovelace",
          person_id: str | None = "p-ada", frame: int = 1) -> Event:
    known = person is not None
    return Event(type=kind, camera=camera, frame=frame, captured_at=time.time(), processed_at=time.time(),
                 box=[1, 2, 3, 4] if kind != "left" else None, person_id=person_id if known else None,
                 person=person, score=0.95 if known else 0.3, decision="known" if known else "unknown",
                 model_version="dlib-resnet-v1/base", track_id=track)


def emit(redis: Any, keys: Any, *events: Event) -> None:
    for e in events:
        publish(redis, keys, e, maxlen=100_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """A Mosquitto of our own on a free port (so a fault test can stop it without touching the
    shared one), with persistence so a subscriber's session and queue survive a restart."""

    def __init__(self, directory: Any, port: int | None = None, anonymous: bool = True,
                 tls: tuple[str, str] | None = None) -> None:
        import shutil
        from pathlib import Path

        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous {'true' if anonymous else 'false'}\n"
            f"persistence true\npersistence_location {self.dir}/\nlog_dest file {self.dir}/mosquitto.log\n"
            + (f"certfile {tls[0]}\nkeyfile {tls[1]}\n" if tls else "")
            # as root mosquitto would switch to its own user, who cannot read pytest's 0700 folders
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.tls = tls is not None
        self.process: Any = None

    def start(self) -> "PrivateBroker":
        import subprocess

        self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_for(lambda: (port_open(self.port) if self.tls else broker_up(self.port)) or self.process.poll() is not None,
                 10, "private mosquitto")
        assert self.process.poll() is None, (self.dir / "mosquitto.log").read_text()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(10)
        self.process = None


class DurableSubscriber(Subscriber):
    """A subscriber with a persistent session (clean_session False, QoS 1): the broker queues
    messages for it while it is away, so 'received' means every message the broker took."""

    def __init__(self, topics: list[str], port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages = []
        self.lock = threading.Lock()
        self.topics = topics
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="durable-" + uuid.uuid4().hex[:8], clean_session=False)

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            client.subscribe([(t, 1) for t in self.topics])

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            with self.lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect_async(MQTT_HOST, port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscriber did not subscribe"


def port_open(port: int) -> bool:
    try:
        socket.create_connection((MQTT_HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def self_signed(directory: Any) -> tuple[str, str]:
    """A fresh certificate and key for ``localhost`` (the certificate is its own CA)."""
    import subprocess
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def tls_receiver(directory: Any) -> tuple[Receiver, str]:
    """A :class:`Receiver` serving HTTPS with a fresh self-signed certificate for ``localhost``;
    returns it and the certificate's path (the CA bundle a client must trust)."""
    import ssl

    cert, key = self_signed(directory)
    receiver = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    receiver.url = f"https://localhost:{receiver.port}/hook"
    return receiver, str(cert)
