"""The sink runner against the real Redis, the real Mosquitto on 127.0.0.1:1883 (a real paho
subscriber) and a real local HTTP receiver."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from faec_rec.index.events import EventOp, GalleryEvent
from faec_rec.sinks.mqtt import MqttSink
from faec_rec.sinks.runner import SinkRunner, dead_letters, replay, stats
from faec_rec.sinks.webhook import WebhookSink, verify
from tests.sinks_helpers import (Receiver, Subscriber, broker_up, emit, event, fast_sinks, mqtt_settings,
                                 wait_for, webhook)

pytestmark = pytest.mark.integration

needs_broker = pytest.mark.skipif(not broker_up(), reason="no MQTT broker on 127.0.0.1:1883 (make test starts one)")

# Home Assistant's documented discovery schema, the parts we use: key -> type, and the
# required keys (https://www.home-assistant.io/integrations/sensor.mqtt/,
# .../device_tracker.mqtt/, .../mqtt/#discovery-messages).
HA_COMMON = {"name": str, "unique_id": str, "state_topic": str, "availability_topic": str,
             "payload_available": str, "payload_not_available": str, "icon": str, "device": dict,
             "value_template": str, "json_attributes_topic": str}
HA_SCHEMA = {
    "sensor": ({"state_topic"}, HA_COMMON),
    "device_tracker": ({"state_topic"}, {**HA_COMMON, "payload_home": str, "payload_not_home": str,
                                         "source_type": str}),
}
HA_DEVICE = {"identifiers": list, "name": str, "manufacturer": str, "model": str, "sw_version": str}


def check_discovery(component: str, config: dict) -> None:
    required, types = HA_SCHEMA[component]
    assert required <= config.keys(), f"{component}: missing {required - config.keys()}"
    for key, value in config.items():
        assert key in types, f"{component}: {key} is not a documented option"
        assert isinstance(value, types[key]), f"{component}.{key} must be {types[key].__name__}"
    device = config["device"]
    assert device.get("identifiers") or device.get("connections"), "device needs identifiers or connections"
    for key, value in device.items():
        assert isinstance(value, HA_DEVICE[key]), f"device.{key} must be {HA_DEVICE[key].__name__}"
    if component == "device_tracker":
        assert config["source_type"] in {"gps", "router", "bluetooth", "bluetooth_le"}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@needs_broker
def test_mqtt_topics_presence_discovery_and_forget(redis_client, keys):
    ms = mqtt_settings()
    sub = Subscriber([f"{ms.prefix}/#", f"{ms.discovery_prefix}/#"])
    sink = MqttSink(ms, redis_client, keys, consumer="c1")
    runner = SinkRunner(redis_client, keys, fast_sinks(), [sink], consumer="c1").start()
    try:
        wait_for(lambda: sub.last(f"{ms.prefix}/available") == b"online", 10, "online")
        snap = keys.event_snapshot("door", 1, 0)
        redis_client.hset(snap, mapping={"face": b"\xff\xd8jpeg-bytes", "frame": b"\xff\xd8..."})
        emit(redis_client, keys,
             replace(event("arrived", "door", 1), snapshot=snap), event("arrived", "lab", 7),  # Ada on two cameras
             event("left", "door", 1, person=None), event("arrived", "door", 2, person=None))
        wait_for(lambda: len(sub.on(f"{ms.prefix}/events")) == 4, 10, "4 events")
        ids = [json.loads(p)["event_id"] for p in sub.on(f"{ms.prefix}/events")]
        assert len(set(ids)) == 4 and all("-" in i for i in ids)
        assert len(sub.on(f"{ms.prefix}/door/event")) == 3 and len(sub.on(f"{ms.prefix}/lab/event")) == 1
        assert sub.last(f"{ms.prefix}/door/person") == b"Ada Lovelace"
        assert sub.last(f"{ms.prefix}/door/snapshot") == b"\xff\xd8jpeg-bytes"
        person_topic = f"{ms.prefix}/person/Ada_Lovelace"
        state = json.loads(sub.last(person_topic))
        assert state["state"] == "home" and state["camera"] == "lab"  # still on lab after leaving door
        emit(redis_client, keys, event("left", "lab", 7, person=None))
        wait_for(lambda: json.loads(sub.last(person_topic) or b"{}").get("state") == "away", 10, "away")
        assert json.loads(sub.last(person_topic))["camera"] == "lab"

        # retained: a new subscriber sees the states at once
        late = Subscriber([f"{ms.prefix}/door/person", person_topic])
        wait_for(lambda: late.last(person_topic) and late.last(f"{ms.prefix}/door/person"), 5, "retained states")
        late.close()

        tracker_topic = f"{ms.discovery_prefix}/device_tracker/{ms.node_id}/person_p-ada/config"
        for component, topic in (("sensor", f"{ms.discovery_prefix}/sensor/{ms.node_id}/door_person/config"),
                                 ("sensor", f"{ms.discovery_prefix}/sensor/{ms.node_id}/lab_person/config"),
                                 ("device_tracker", tracker_topic)):
            config = json.loads(sub.last(topic))
            check_discovery(component, config)
            assert config["availability_topic"] == f"{ms.prefix}/available"
            assert config["device"]["identifiers"] == [ms.node_id]
        assert json.loads(sub.last(tracker_topic))["state_topic"] == person_topic

        # forgetting the person removes the entity and its state (empty retained payloads)
        redis_client.xadd(keys.gallery_events(), GalleryEvent(EventOp.FORGET, person="p-ada").to_fields())
        wait_for(lambda: sub.last(tracker_topic) == b"" and sub.last(person_topic) == b"", 10, "entity removed")
    finally:
        runner.stop()
        sub.close()
    # a clean stop says offline (retained)
    after = Subscriber([f"{ms.prefix}/available"])
    wait_for(lambda: after.last(f"{ms.prefix}/available") == b"offline", 5, "offline")
    after.close()
    assert stats(redis_client, keys)["mqtt"]["delivered"] == 5


def test_webhook_signed_filtered_and_dead_letter_replay(redis_client, keys, receiver, monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    all_hook = WebhookSink(webhook(receiver.url, name="all", secret_env="HOOK_SECRET"), ["127.0.0.1/32"])
    door_known = WebhookSink(webhook(receiver.url + "?only=door", name="door", cameras=["door"],
                                     decisions=["known"], types=["arrived"]), ["127.0.0.1/32"])
    runner = SinkRunner(redis_client, keys, fast_sinks(), [all_hook, door_known], consumer="c1").start()
    try:
        emit(redis_client, keys, event("arrived", "door", 1), event("arrived", "lab", 2),
             event("arrived", "door", 3, person=None))
        wait_for(lambda: len(receiver.delivered()) == 4, 10, "3 + 1 deliveries")
        by_path = {}
        for r in receiver.requests:
            by_path.setdefault(r["path"], []).append(r)
        assert len(by_path["/hook"]) == 3 and len(by_path["/hook?only=door"]) == 1
        for r in by_path["/hook"]:
            h = r["headers"]
            assert verify(b"s3cret", h["x-faec-timestamp"], r["body"], h["x-faec-signature"])
            assert not verify(b"wrong", h["x-faec-timestamp"], r["body"], h["x-faec-signature"])
            assert json.loads(r["body"])["event_id"] == h["x-faec-event-id"]
        assert "x-faec-signature" not in by_path["/hook?only=door"][0]["headers"]  # no secret, no signature

        # the receiver fails: events are retried, then parked; the good sink is not held up
        receiver.status = 500
        emit(redis_client, keys, event("arrived", "door", 4), event("left", "door", 4))
        wait_for(lambda: len(dead_letters(redis_client, keys, "all")) == 2, 10, "2 parked")
        parked = dead_letters(redis_client, keys, "all")
        assert parked[0]["attempts"] == 3 and "500" in parked[0]["error"]
        assert parked[0]["event"]["track_id"] == 4
        assert stats(redis_client, keys)["all"]["failed_attempts"] >= 6
    finally:
        runner.stop()
    receiver.status = 200
    before = len(receiver.delivered())
    delivered, failed = replay(redis_client, keys, all_hook)
    assert (delivered, failed) == (2, [])
    assert dead_letters(redis_client, keys, "all") == []
    replayed = receiver.delivered()[before:]
    assert [b["event_id"] for b in replayed] == [p["event_id"] for p in parked]


def test_forbidden_address_and_malformed_entry_are_parked_and_counted(redis_client, keys, receiver):
    forbidden = WebhookSink(webhook(receiver.url, name="internal"))  # 127.0.0.1 not allowed
    meta = WebhookSink(webhook("http://169.254.169.254/latest/meta-data/", name="meta"), ["127.0.0.1/32"])
    good = WebhookSink(webhook(receiver.url, name="good"), ["127.0.0.1/32"])
    runner = SinkRunner(redis_client, keys, fast_sinks(), [forbidden, meta, good], consumer="c1").start()
    try:
        redis_client.xadd(keys.events(), {"event": b"{not json"})
        emit(redis_client, keys, event("arrived", "door", 1))
        wait_for(lambda: len(receiver.delivered()) == 1, 10, "the good delivery")
        for name in ("internal", "meta", "good"):
            wait_for(lambda: len(dead_letters(redis_client, keys, name)) >= (1 if name == "good" else 2), 10, name)
    finally:
        runner.stop()
    assert len(receiver.requests) == 1  # nothing ever reached the receiver through "internal"
    counters = stats(redis_client, keys)
    for name in ("internal", "meta", "good"):
        assert counters[name]["malformed"] == 1
    assert counters["internal"]["refused"] == 1 and counters["meta"]["refused"] == 1
    internal = dead_letters(redis_client, keys, "internal")
    assert internal[0]["event"] == "{not json" and "malformed" in internal[0]["error"]
    assert "loopback" in internal[1]["error"] and internal[1]["attempts"] == 1
    assert "metadata" in dead_letters(redis_client, keys, "meta")[1]["error"]
    # every sink's group has nothing pending: parked entries are acknowledged
    for g in redis_client.xinfo_groups(keys.events()):
        assert g["pending"] == 0


def test_restart_resumes_and_two_runners_share(redis_client, keys, receiver):
    hook = webhook(receiver.url, name="hook")
    first = SinkRunner(redis_client, keys, fast_sinks(), [WebhookSink(hook, ["127.0.0.1/32"])], consumer="a").start()
    emit(redis_client, keys, event("arrived", "door", 1))
    wait_for(lambda: len(receiver.delivered()) == 1, 10, "first delivery")
    first.stop()
    emit(redis_client, keys, *[event("arrived", "door", i) for i in range(2, 12)])  # while no runner runs
    runners = [SinkRunner(redis_client, keys, fast_sinks(), [WebhookSink(hook, ["127.0.0.1/32"])], consumer=c).start()
               for c in ("a", "b")]
    try:
        emit(redis_client, keys, *[event("arrived", "door", i) for i in range(12, 40)])
        wait_for(lambda: len({b["track_id"] for b in receiver.delivered()}) == 39, 15, "all 39 events")
    finally:
        for r in runners:
            r.stop()
    tracks = [b["track_id"] for b in receiver.delivered()]
    assert sorted(set(tracks)) == list(range(1, 40)) and len(tracks) == 39  # none lost, none twice


def test_cli_status_and_dead_letter_list_and_replay(redis_client, keys, receiver, monkeypatch, redis_url):
    from click.testing import CliRunner

    from faec_rec import cli
    from faec_rec.sinks.runner import ensure_group, park

    monkeypatch.setenv("FAEC_REDIS_URL", redis_url)
    monkeypatch.setenv("FAEC_PREFIX", keys.prefix)
    monkeypatch.setenv("FAEC_WEBHOOKS", json.dumps([{"url": receiver.url, "name": "hook"}]))
    monkeypatch.setenv("FAEC_SINKS__ALLOW_NETWORKS", '["127.0.0.1/32"]')
    ensure_group(redis_client, keys.events(), keys.sink_group("hook"))
    emit(redis_client, keys, event("arrived", "door", 5))
    [(entry_id, fields)] = redis_client.xrange(keys.events())
    park(redis_client, keys, "hook", entry_id.decode(), fields[b"event"], "SinkError: 500", 8, 1000)
    cli._register_plugins()
    runner = CliRunner()

    status = json.loads(runner.invoke(cli.cli, ["sinks", "status"]).output)
    assert status["hook"]["dead_letters"] == 1 and status["hook"]["pending"] == 0
    listed = runner.invoke(cli.cli, ["sinks", "dead-letter", "list", "hook"])
    [item] = [json.loads(line) for line in listed.output.splitlines()]
    assert item["event_id"] == entry_id.decode() and item["attempts"] == 8 and item["event"]["track_id"] == 5

    receiver.status = 500
    failed = runner.invoke(cli.cli, ["sinks", "dead-letter", "replay", "hook"])
    assert failed.exit_code == 1 and "0 delivered, 1 still parked" in failed.output
    receiver.status = 200
    done = runner.invoke(cli.cli, ["sinks", "dead-letter", "replay", "hook", item["id"]])
    assert done.exit_code == 0 and "1 delivered" in done.output
    assert [b["event_id"] for b in receiver.delivered()] == [entry_id.decode()]
    assert redis_client.xlen(keys.sink_dead_letter("hook")) == 0
    nothing = runner.invoke(cli.cli, ["sinks", "dead-letter", "replay", "nosuch"])
    assert nothing.exit_code != 0 and "no sink named 'nosuch'" in nothing.output


def test_events_left_pending_by_a_dead_runner_are_reclaimed(redis_client, keys, receiver):
    from faec_rec.sinks.runner import ensure_group

    ensure_group(redis_client, keys.events(), keys.sink_group("hook"))
    emit(redis_client, keys, event("arrived", "door", 1), event("arrived", "door", 2))
    # a runner on another host read both, then died before acknowledging them
    taken = redis_client.xreadgroup(keys.sink_group("hook"), "dead-host", {keys.events(): ">"}, count=10)
    assert len(taken[0][1]) == 2
    hook = WebhookSink(webhook(receiver.url, name="hook"), ["127.0.0.1/32"])
    with SinkRunner(redis_client, keys, fast_sinks(claim_idle_ms=200), [hook], consumer="alive"):
        wait_for(lambda: len(receiver.delivered()) == 2, 10, "the reclaimed events")
    assert [b["track_id"] for b in receiver.delivered()] == [1, 2]
    assert stats(redis_client, keys)["hook"]["reclaimed"] == 2
    assert redis_client.xpending(keys.events(), keys.sink_group("hook"))["pending"] == 0


def test_https_webhook_checks_the_certificate_against_the_host_name(redis_client, keys, tmp_path):
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    from tests.sinks_helpers import tls_receiver

    receiver, ca = tls_receiver(tmp_path)
    try:
        local = ["127.0.0.0/8", "::1/128"]
        trusted = WebhookSink(webhook(receiver.url, name="tls", ca_file=ca), local)
        untrusted = WebhookSink(webhook(receiver.url, name="tls-untrusted"), local)  # system CAs only
        with SinkRunner(redis_client, keys, fast_sinks(max_attempts=1), [trusted, untrusted], consumer="c"):
            emit(redis_client, keys, event("arrived", "door", 1))
            wait_for(lambda: receiver.delivered() and dead_letters(redis_client, keys, "tls-untrusted"), 10,
                     "one delivery and one refusal")
        assert receiver.delivered()[0]["track_id"] == 1
        assert "CERTIFICATE_VERIFY_FAILED" in dead_letters(redis_client, keys, "tls-untrusted")[0]["error"]
    finally:
        receiver.close()


def test_delivery_connects_to_the_address_it_checked(redis_client, keys, receiver, monkeypatch):
    """The name is resolved once per delivery and that very address is used: a DNS answer
    that turns into a metadata address is refused, and a checked one carries the URL's Host."""
    import socket

    answers = {"hooks.example.test": "127.0.0.1"}
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    hook = WebhookSink(webhook(f"http://hooks.example.test:{receiver.port}/hook", name="dns"), ["127.0.0.1/32"])
    hook.deliver("1-0", {"type": "arrived", "camera": "door"})
    assert receiver.requests[-1]["headers"]["host"] == f"hooks.example.test:{receiver.port}"
    answers["hooks.example.test"] = "169.254.169.254"  # rebinding to the metadata service
    from faec_rec.errors import DeliveryRefused

    with pytest.raises(DeliveryRefused, match="metadata"):
        hook.deliver("2-0", {"type": "arrived", "camera": "door"})
    assert len(receiver.requests) == 1


@needs_broker
def test_mqtt_identity_switch_moves_presence_and_rename_updates_discovery(redis_client, keys):
    ms = mqtt_settings()
    sub = Subscriber([f"{ms.prefix}/person/#", f"{ms.discovery_prefix}/#"])
    runner = SinkRunner(redis_client, keys, fast_sinks(), [MqttSink(ms, redis_client, keys, consumer="c")],
                        consumer="c").start()
    ada, bob = f"{ms.prefix}/person/Ada_Lovelace", f"{ms.prefix}/person/Bob"
    try:
        emit(redis_client, keys, event("arrived", "door", 1))
        wait_for(lambda: json.loads(sub.last(ada) or b"{}").get("state") == "home", 10, "Ada home")
        # the track turns out to be Bob: Ada was never there after all
        emit(redis_client, keys, event("updated", "door", 1, person="Bob", person_id="p-bob"))
        wait_for(lambda: json.loads(sub.last(ada) or b"{}").get("state") == "away"
                 and json.loads(sub.last(bob) or b"{}").get("state") == "home", 10, "Ada away, Bob home")
        redis_client.xadd(keys.gallery_events(), GalleryEvent(EventOp.RENAME, person="p-bob", name="Robert").to_fields())
        topic = f"{ms.discovery_prefix}/device_tracker/{ms.node_id}/person_p-bob/config"
        wait_for(lambda: json.loads(sub.last(topic) or b"{}").get("name") == "Robert", 10, "renamed entity")
        assert json.loads(sub.last(topic))["state_topic"] == bob  # same topic: HA keeps its history
    finally:
        runner.stop()
        sub.close()
