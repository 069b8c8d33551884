"""Sinks under faults: the broker stopped mid-run, a receiver answering 500 or hanging, the
runner killed again and again, refused credentials, an unreachable broker. Each ends with an
account of every event id: delivered (duplicates counted, allowed: at least once) or parked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from faec_rec.sinks.mqtt import MqttSink
from faec_rec.sinks.runner import SinkRunner, dead_letters, stats
from faec_rec.sinks.webhook import WebhookSink
from tests.conftest import REPO
from tests.sinks_helpers import (DurableSubscriber, PrivateBroker, Receiver, emit, event, fast_sinks,
                                 mqtt_settings, wait_for, webhook)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

needs_mosquitto = pytest.mark.skipif(
    not any(os.access(os.path.join(d, "mosquitto"), os.X_OK) for d in (*os.environ["PATH"].split(":"), "/usr/sbin")),
    reason="mosquitto is not installed (apt-get install mosquitto; make test does)")


def stream_ids(redis_client, keys) -> list[str]:
    return [eid.decode() for eid, _ in redis_client.xrange(keys.events())]


@needs_mosquitto
def test_broker_stopped_mid_run_loses_nothing(redis_client, keys, tmp_path):
    broker = PrivateBroker(tmp_path / "broker").start()
    ms = mqtt_settings(port=broker.port, discovery=False)
    sub = DurableSubscriber([f"{ms.prefix}/events"], broker.port)
    runner = SinkRunner(redis_client, keys, fast_sinks(), [MqttSink(ms, redis_client, keys, consumer="c")],
                        consumer="c").start()
    try:
        emit(redis_client, keys, *[event("arrived", "door", i) for i in range(20)])
        wait_for(lambda: len(sub.on(f"{ms.prefix}/events")) >= 20, 10, "first 20")
        broker.stop()
        emit(redis_client, keys, *[event("arrived", "door", i) for i in range(20, 60)])  # broker away
        time.sleep(3)
        assert stats(redis_client, keys)["mqtt"].get("unavailable_waits", 0) >= 1
        broker.start()
        emit(redis_client, keys, *[event("arrived", "door", i) for i in range(60, 80)])
        wait_for(lambda: len({json.loads(p)["event_id"] for p in sub.on(f"{ms.prefix}/events")}) >= 80, 30,
                 "all 80 events after the broker came back")
    finally:
        runner.stop()
        sub.close()
        broker.stop()
    got = Counter(json.loads(p)["event_id"] for p in sub.on(f"{ms.prefix}/events"))
    assert set(got) == set(stream_ids(redis_client, keys))  # zero lost
    assert dead_letters(redis_client, keys, "mqtt") == []  # a broker outage never parks events


def test_receiver_failing_then_back_and_a_hanging_receiver(redis_client, keys):
    receiver = Receiver()
    hanging = Receiver()
    hanging.delay_s = 1.0
    try:
        ok_hook = WebhookSink(webhook(receiver.url, name="flaky"), ["127.0.0.1/32"])
        slow_hook = WebhookSink(webhook(hanging.url, name="hangs", timeout_s=0.2), ["127.0.0.1/32"])
        settings = fast_sinks(max_attempts=1000)  # outlasts the outage: retried, not parked
        receiver.status = 500
        with SinkRunner(redis_client, keys, settings, [ok_hook], consumer="c"):
            emit(redis_client, keys, *[event("arrived", "door", i) for i in range(10)])
            wait_for(lambda: len(receiver.requests) >= 8, 10, "failed attempts")
            receiver.status = 200
            wait_for(lambda: len({b["event_id"] for b in receiver.delivered()}) == 10, 20, "all 10 after recovery")
        assert [b["track_id"] for b in receiver.delivered()] == list(range(10))  # in order, none twice
        assert stats(redis_client, keys)["flaky"]["failed_attempts"] >= 8

        with SinkRunner(redis_client, keys, fast_sinks(max_attempts=2), [slow_hook], consumer="c"):
            emit(redis_client, keys, event("arrived", "door", 99))
            wait_for(lambda: dead_letters(redis_client, keys, "hangs"), 15, "the hanging delivery parked")
        parked = dead_letters(redis_client, keys, "hangs")
        assert len(parked) == 1 and "timed out" in parked[0]["error"] and parked[0]["attempts"] == 2
    finally:
        receiver.close()
        hanging.close()


def test_runner_killed_repeatedly_loses_nothing(redis_client, keys, prefix, redis_url):
    receiver = Receiver()
    env = {**os.environ, "FAEC_REDIS_URL": redis_url, "FAEC_PREFIX": prefix,
           "FAEC_WEBHOOKS": json.dumps([{"url": receiver.url, "name": "hook"}]),
           "FAEC_SINKS__ALLOW_NETWORKS": '["127.0.0.1/32"]', "FAEC_SINKS__BLOCK_MS": "100",
           "FAEC_SINKS__CLAIM_IDLE_MS": "1000"}
    command = [sys.executable, "-m", "faec_rec.cli", "sinks", "run", "--consumer", "kill-me"]
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            emit(redis_client, keys, event("arrived", "door", i))
            i += 1
            time.sleep(0.01)

    producer = threading.Thread(target=produce, daemon=True)
    proc = None
    try:
        for kill in range(6):
            proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if kill == 0:
                wait_for(lambda: redis_client.exists(keys.events()) and redis_client.xinfo_groups(keys.events()),
                         20, "the runner's group")
                producer.start()
            seen = len(receiver.requests)
            wait_for(lambda: len(receiver.requests) > seen or proc.poll() is not None, 20, "deliveries")
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.3)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        stop.set()
        producer.join()
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ids = stream_ids(redis_client, keys)
        wait_for(lambda: set(ids) <= {b["event_id"] for b in receiver.delivered()}, 30, "every event delivered")
    finally:
        stop.set()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        receiver.close()
    got = Counter(b["event_id"] for b in receiver.delivered())
    assert set(got) == set(ids)  # zero lost
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= 6 * fast_sinks().batch  # at most the in-flight batch of each kill, counted by id


@needs_mosquitto
def test_refused_credentials_and_unreachable_broker_wait_without_losing(redis_client, keys, tmp_path):
    broker = PrivateBroker(tmp_path / "auth", anonymous=False).start()
    from tests.sinks_helpers import free_port

    refused = mqtt_settings(port=broker.port, url=f"mqtt://bob:wrong@127.0.0.1:{broker.port}", discovery=False)
    unreachable = mqtt_settings(url=f"mqtt://127.0.0.1:{free_port()}", discovery=False)
    sinks = [MqttSink(refused, redis_client, keys, name="refused", consumer="c"),
             MqttSink(unreachable, redis_client, keys, name="unreachable", consumer="c")]
    try:
        with SinkRunner(redis_client, keys, fast_sinks(), sinks, consumer="c"):
            emit(redis_client, keys, event("arrived", "door", 1))
            wait_for(lambda: stats(redis_client, keys).get("refused", {}).get("refused"), 15, "refusal counted")
            wait_for(lambda: stats(redis_client, keys).get("unreachable", {}).get("unavailable_waits"), 15,
                     "waits counted")
    finally:
        broker.stop()
    groups = {g["name"].decode(): g for g in redis_client.xinfo_groups(keys.events())}
    for name in ("refused", "unreachable"):  # the event waits in its group: not skipped, not parked
        assert groups[f"sink:{name}"]["pending"] + (groups[f"sink:{name}"]["lag"] or 0) >= 1
        assert dead_letters(redis_client, keys, name) == []
        assert stats(redis_client, keys)[name].get("delivered", 0) == 0


@needs_mosquitto
def test_mqtts_checks_the_brokers_certificate(redis_client, keys, tmp_path):
    from tests.sinks_helpers import Subscriber, self_signed

    cert, key = self_signed(tmp_path / "tls")
    broker = PrivateBroker(tmp_path / "broker", tls=(cert, key)).start()
    try:
        url = f"mqtts://localhost:{broker.port}"
        trusted = mqtt_settings(url=url, ca_file=cert, discovery=False)
        untrusted = mqtt_settings(url=url, discovery=False)  # system CAs: the self-signed broker is refused
        sub = Subscriber([f"{trusted.prefix}/events"], port=broker.port, host="localhost", ca_file=cert)
        sinks = [MqttSink(trusted, redis_client, keys, name="tls", consumer="c"),
                 MqttSink(untrusted, redis_client, keys, name="tls-untrusted", consumer="c")]
        with SinkRunner(redis_client, keys, fast_sinks(), sinks, consumer="c"):
            emit(redis_client, keys, event("arrived", "door", 1))
            wait_for(lambda: sub.on(f"{trusted.prefix}/events"), 10, "the event over TLS")
            wait_for(lambda: stats(redis_client, keys).get("tls-untrusted", {}).get("unavailable_waits"), 15,
                     "the untrusted broker waited on")
        sub.close()
        assert json.loads(sub.on(f"{trusted.prefix}/events")[0])["track_id"] == 1
        assert stats(redis_client, keys)["tls-untrusted"].get("delivered", 0) == 0
    finally:
        broker.stop()
