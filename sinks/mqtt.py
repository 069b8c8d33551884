"""MQTT sink (paho-mqtt v2) with Home Assistant discovery.

Topics (``<p>`` = ``mqtt.prefix``, default ``faec_rec``):

- ``<p>/events``: every event as JSON (the event's fields plus ``event_id``);
- ``<p>/<camera>/event``: the same, per camera;
- ``<p>/<camera>/person``: the name of the last known person recognised there (retained);
- ``<p>/<camera>/snapshot``: JPEG face crop of the last arrival there (retained), from the
  event's ``snapshot`` (see :mod:`faec_rec.workers.snapshots`);
- ``<p>/person/<name>``: ``{"state": "home"|"away", "camera", "at", "person_id", "person",
  "event_id"}`` (retained); a person is ``away`` once every track naming them has left;
- ``<p>/available``: ``online`` (retained) while connected, ``offline`` by the broker's
  last will when the runner dies, and on a clean stop.

Home Assistant discovery (``mqtt.discovery``): a ``sensor`` per camera (last recognised
person) and a ``device_tracker`` per person, all in one device; a person's config and
state are cleared (empty retained payloads) when the person is forgotten, which the sink
learns from the gallery events stream (its own consumer group there).

An event is acknowledged only after the broker's PUBACK for every message of it (QoS 1,
the default); while the broker is away :meth:`MqttSink.deliver` raises
:class:`SinkUnavailable` and the runner waits, so nothing is lost.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from faec_rec.config import MqttConfig
from faec_rec.errors import SinkError, SinkUnavailable
from faec_rec.keys import Keys
from faec_rec.sinks.base import Sink, payload

log = logging.getLogger(__name__)

HOME, AWAY = "home", "away"
PRESENCE_TTL_S = 86_400  # a track whose "left" never came stops keeping its person home


def topic_part(text: str) -> str:
    """``text`` as one MQTT topic level: ``/ + #``, whitespace and control characters become ``_``."""
    return re.sub(r"[/+#\s\x00-\x1f]", "_", text) or "_"


def object_id(text: str) -> str:
    """``text`` as a Home Assistant discovery object id (letters, digits, ``_ -``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("faec-rec")
    except Exception:  # noqa: BLE001
        return "unknown"


class Topics:
    """Every topic and discovery payload of one configuration (pure: no connection)."""

    def __init__(self, settings: MqttConfig) -> None:
        self.s = settings
        self.p = settings.prefix

    @property
    def available(self) -> str:
        return f"{self.p}/available"

    @property
    def events(self) -> str:
        return f"{self.p}/events"

    def camera_event(self, camera: str) -> str:
        return f"{self.p}/{topic_part(camera)}/event"

    def camera_person(self, camera: str) -> str:
        return f"{self.p}/{topic_part(camera)}/person"

    def camera_snapshot(self, camera: str) -> str:
        return f"{self.p}/{topic_part(camera)}/snapshot"

    def person(self, name: str) -> str:
        return f"{self.p}/person/{topic_part(name)}"

    def device(self) -> dict[str, Any]:
        """The device block every entity shares, so Home Assistant groups them."""
        return {"identifiers": [self.s.node_id], "name": "faec_rec", "manufacturer": "faec_rec",
                "model": "face recognition", "sw_version": _version()}

    def camera_config_topic(self, camera: str) -> str:
        return f"{self.s.discovery_prefix}/sensor/{self.s.node_id}/{object_id(camera)}_person/config"

    def camera_config(self, camera: str) -> dict[str, Any]:
        return {
            "name": f"{camera} person", "unique_id": f"{self.s.node_id}_{object_id(camera)}_person",
            "state_topic": self.camera_person(camera), "availability_topic": self.available,
            "payload_available": "online", "payload_not_available": "offline",
            "icon": "mdi:face-recognition", "device": self.device(),
        }

    def person_config_topic(self, person_id: str) -> str:
        return f"{self.s.discovery_prefix}/device_tracker/{self.s.node_id}/person_{object_id(person_id)}/config"

    def person_config(self, person_id: str, name: str, state_topic: str) -> dict[str, Any]:
        return {
            "name": name, "unique_id": f"{self.s.node_id}_person_{object_id(person_id)}",
            "state_topic": state_topic, "value_template": "{{ value_json.state }}",
            "payload_home": HOME, "payload_not_home": AWAY, "source_type": "router",
            "json_attributes_topic": state_topic, "availability_topic": self.available,
            "payload_available": "online", "payload_not_available": "offline",
            "icon": "mdi:account", "device": self.device(),
        }


Message = tuple[str, bytes, bool]  # topic, payload, retain


class MqttSink(Sink):
    """Publishes events to an MQTT broker; see the module docstring."""

    def __init__(self, settings: MqttConfig, redis: Any, keys: Keys, name: str = "mqtt",
                 consumer: str | None = None, watch_gallery: bool = True) -> None:
        if not settings.url:
            raise SinkError("mqtt.url is not set")
        self.name = name
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.topics = Topics(settings)
        self.consumer = consumer or socket.gethostname()[:64] or "sinks"
        parts = urlsplit(settings.url)
        self.host = parts.hostname or "localhost"
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self.where = f"{parts.scheme}://{self.host}:{self.port}"  # for logs: never the password
        self._connected = threading.Event()
        self._last_problem = "not connected yet"
        self._announced: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.client: Any = None
        self.watch_gallery = watch_gallery and settings.discovery

    # ---- connection ------------------------------------------------------------------
    def start(self) -> None:
        import paho.mqtt.client as mqtt

        client_id = self.settings.client_id or f"faec_rec-{socket.gethostname()[:40]}-{os.getpid()}"
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self.tls:
            client.tls_set(ca_certs=str(self.settings.ca_file) if self.settings.ca_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(self.settings.tls_insecure)
        client.will_set(self.topics.available, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=5)  # a returning broker is found within 5 s
        client.max_queued_messages_set(10_000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self.client = client
        client.connect_async(self.host, self.port, keepalive=self.settings.keepalive_s)
        client.loop_start()
        log.info("mqtt sink connecting to %s as %s", self.where, client_id)
        if self.watch_gallery:
            from faec_rec.sinks.runner import ensure_group

            ensure_group(self.redis, self.keys.gallery_events(), self.keys.sink_group(self.name + "-gallery"))
            self._watcher = threading.Thread(target=self._watch_gallery, name=f"{self.name}-gallery", daemon=True)
            self._watcher.start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._last_problem = f"broker refused the connection: {reason_code}"
            log.error("mqtt %s refused the connection: %s (check the user and password in mqtt.url)",
                      self.where, reason_code)
            from faec_rec.sinks.runner import Outcome, count

            count(self.redis, self.keys, self.name, Outcome.REFUSED)
            return
        log.info("mqtt connected to %s", self.where)
        with self._lock:
            self._announced.clear()  # a restarted broker may have lost retained configs
        client.publish(self.topics.available, "online", qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self._last_problem = f"disconnected: {reason_code}"
            log.warning("mqtt disconnected from %s: %s; reconnecting", self.where, reason_code)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._last_problem = f"cannot reach {self.where}"
        log.warning("mqtt cannot reach %s; retrying", self.where)

    def close(self) -> None:
        self._stop.set()
        if self.client is None:
            return
        try:
            if self._connected.is_set():
                self.client.publish(self.topics.available, "offline", qos=1, retain=True).wait_for_publish(2)
        except (RuntimeError, ValueError):
            pass
        self.client.disconnect()
        self.client.loop_stop()
        if self._watcher is not None:
            self._watcher.join(5)

    # ---- publishing ------------------------------------------------------------------
    def publish_all(self, messages: list[Message]) -> None:
        """Publish ``messages`` and return after the broker took each (PUBACK at QoS 1).

        One at a time, each waiting for its acknowledgement: measured on Mosquitto with its
        default ``set_tcp_nodelay false``, five messages sent back to back took 26 ms to be
        acknowledged (Nagle holds the broker's second PUBACK until our TCP ACK of the first)
        against 5 x 0.2 ms one after another.
        """
        if not self._connected.wait(self.settings.connect_timeout_s):
            raise SinkUnavailable(f"mqtt {self.where}: {self._last_problem}")
        for topic, body, retain in messages:
            info = self.client.publish(topic, body, qos=self.settings.qos, retain=retain)
            try:
                info.wait_for_publish(self.settings.connect_timeout_s)
            except (RuntimeError, ValueError) as exc:
                raise SinkUnavailable(f"mqtt {self.where}: {exc}") from exc
            if not info.is_published():
                raise SinkUnavailable(f"mqtt {self.where}: no acknowledgement within {self.settings.connect_timeout_s:g} s")

    def deliver(self, event_id: str, event: dict[str, Any]) -> None:
        body = payload(event_id, event)
        camera = str(event.get("camera") or "unknown")
        messages: list[Message] = [(self.topics.events, body, False), (self.topics.camera_event(camera), body, False)]
        announce: list[str] = []
        if self.settings.discovery:
            key = "camera:" + camera
            if key not in self._announced:
                messages.append((self.topics.camera_config_topic(camera),
                                 _json(self.topics.camera_config(camera)), True))
                announce.append(key)
        known = event.get("decision") == "known" and event.get("person_id") and event.get("person")
        if event.get("type") in ("arrived", "updated") and known:
            messages.append((self.topics.camera_person(camera), str(event["person"]).encode(), self.settings.retain))
        if event.get("type") == "arrived" and event.get("snapshot"):
            from faec_rec.workers.snapshots import read_snapshot

            try:  # None once expired: nothing to show
                face = read_snapshot(self.redis, self.keys, str(event["snapshot"]), "face")
            except ValueError as exc:  # only snapshot keys can reach the broker
                log.warning("mqtt: event %s: %s; no snapshot published", event_id, exc)
                face = None
            if face:
                messages.append((self.topics.camera_snapshot(camera), bytes(face), self.settings.retain))
        messages += self._presence(event_id, event, camera, announce)
        self.publish_all(messages)
        with self._lock:
            self._announced.update(announce)

    def _presence(self, event_id: str, event: dict[str, Any], camera: str, announce: list[str]) -> list[Message]:
        """Home/away messages; the tracks naming each person live in Redis so that several
        runners and restarts agree."""
        kind = event.get("type")
        if kind not in ("arrived", "updated", "left") or event.get("track_id") is None:
            return []
        track = f"{camera}:{event['track_id']}"
        at = event.get("captured_at") or event.get("processed_at") or time.time()
        out: list[Message] = []
        previous = self.redis.hget(self.keys.mqtt_tracks(), track)
        previous = previous.decode() if isinstance(previous, bytes) else previous
        pid = event.get("person_id")
        if kind in ("arrived", "updated") and event.get("decision") == "known" and pid and event.get("person"):
            name = str(event["person"])
            stored = self.redis.hget(self.keys.mqtt_people(), pid)
            topic_name = stored.decode() if stored else topic_part(name)
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.keys.mqtt_tracks(), track, pid)
            pipe.sadd(self.keys.mqtt_presence(pid), track)
            pipe.expire(self.keys.mqtt_presence(pid), PRESENCE_TTL_S)
            pipe.hset(self.keys.mqtt_people(), pid, topic_name)
            pipe.execute()
            state_topic = f"{self.settings.prefix}/person/{topic_name}"
            out.append((state_topic, self._state(HOME, camera, at, pid, name, event_id), self.settings.retain))
            if self.settings.discovery and "person:" + pid not in self._announced:
                out.append((self.topics.person_config_topic(pid),
                            _json(self.topics.person_config(pid, name, state_topic)), True))
                announce.append("person:" + pid)
            if previous and previous != pid:
                out += self._maybe_away(previous, track, camera, at, event_id)
        elif kind == "left" and previous:
            self.redis.hdel(self.keys.mqtt_tracks(), track)
            out += self._maybe_away(previous, track, camera, at, event_id)
        return out

    def _maybe_away(self, pid: str, track: str, camera: str, at: float, event_id: str) -> list[Message]:
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.keys.mqtt_presence(pid), track)
        pipe.scard(self.keys.mqtt_presence(pid))
        pipe.hget(self.keys.mqtt_people(), pid)
        _, left, stored = pipe.execute()
        if left or not stored:
            return []
        topic_name = stored.decode()
        return [(f"{self.settings.prefix}/person/{topic_name}",
                 self._state(AWAY, camera, at, pid, None, event_id), self.settings.retain)]

    @staticmethod
    def _state(state: str, camera: str, at: float, pid: str, name: str | None, event_id: str) -> bytes:
        return _json({"state": state, "camera": camera, "at": at, "person_id": pid, "person": name,
                      "event_id": event_id})

    # ---- forgotten people ------------------------------------------------------------
    def forget(self, person_id: str) -> bool:
        """Clear a forgotten person's discovery config and state (empty retained payloads).
        Returns False when this sink never published them."""
        stored = self.redis.hget(self.keys.mqtt_people(), person_id)
        messages: list[Message] = [(self.topics.person_config_topic(person_id), b"", True)]
        if stored:
            messages.append((f"{self.settings.prefix}/person/{stored.decode()}", b"", True))
        self.publish_all(messages)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.mqtt_people(), person_id)
        pipe.delete(self.keys.mqtt_presence(person_id))
        pipe.execute()
        with self._lock:
            self._announced.discard("person:" + person_id)
        log.info("mqtt: removed the discovery entity of forgotten person %s", person_id)
        return bool(stored)

    def _watch_gallery(self) -> None:
        """Follow the gallery events stream (own consumer group) for forgets and renames."""
        from faec_rec.index.events import EventOp, GalleryEvent
        from faec_rec.sinks.runner import ensure_group

        stream = self.keys.gallery_events()
        group = self.keys.sink_group(self.name + "-gallery")
        start = "0"  # own pending entries first
        while not self._stop.is_set():
            try:
                ensure_group(self.redis, stream, group)
                reply = self.redis.xreadgroup(group, self.consumer, {stream: start}, count=100,
                                              block=None if start == "0" else 1000)
                entries = reply[0][1] if reply else []
                if start == "0" and not entries:
                    start = ">"
                    continue
                for entry_id, fields in entries:
                    if not fields:  # trimmed while pending
                        self.redis.xack(stream, group, entry_id)
                        continue
                    try:
                        event = GalleryEvent.from_fields(fields)
                    except (ValueError, KeyError) as exc:
                        log.error("mqtt: unreadable gallery event %r: %s; skipped", entry_id, exc)
                        self.redis.xack(stream, group, entry_id)
                        continue
                    if event.op is EventOp.FORGET and event.person:
                        self.forget(event.person)
                    elif event.op is EventOp.RENAME and event.person and event.name:
                        self._rename(event.person, event.name)
                    self.redis.xack(stream, group, entry_id)
            except SinkUnavailable as exc:
                log.warning("mqtt: gallery change waits for the broker: %s", exc)
                start = "0"
                self._stop.wait(1.0)
            except Exception as exc:  # noqa: BLE001 (Redis away: wait, then go on)
                if self._stop.is_set():
                    return
                log.error("mqtt: following gallery events failed: %s; retrying", exc)
                start = "0"
                self._stop.wait(1.0)

    def _rename(self, person_id: str, name: str) -> None:
        stored = self.redis.hget(self.keys.mqtt_people(), person_id)
        if not stored or not self.settings.discovery:
            return
        state_topic = f"{self.settings.prefix}/person/{stored.decode()}"
        self.publish_all([(self.topics.person_config_topic(person_id),
                           _json(self.topics.person_config(person_id, name, state_topic)), True)])


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
