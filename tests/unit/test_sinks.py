"""Pure parts of the sinks: signatures, the address policy, filters, topics and settings."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from faec_rec.config import MqttConfig, WebhookConfig, load_settings
from faec_rec.errors import ConfigError, DeliveryRefused
from faec_rec.sinks.mqtt import Topics, object_id, topic_part
from faec_rec.sinks.webhook import (WebhookSink, forbidden_reason, parse_networks, read_secret,
                                    resolve_checked, sign, verify)


def test_signature_is_hmac_of_timestamp_dot_body_and_verify_refuses_tampering_and_replays():
    import hashlib
    import hmac

    body = b'{"type":"arrived","event_id":"1-0"}'
    sig = sign(b"k", "1700000000", body)
    assert sig == "sha256=" + hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify(b"k", "1700000000", body, sig, now=1700000010)
    assert not verify(b"k", "1700000000", body + b" ", sig, now=1700000010)      # body changed
    assert not verify(b"k", "1700000001", body, sig, now=1700000010)             # timestamp changed
    assert not verify(b"k", "1700000000", body, sig, now=1700000000 + 301)       # too old: replay


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.9", "private"),
    ("172.16.5.5", "private"), ("169.254.169.254", "metadata"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("fd00:ec2::254", "metadata"), ("fc00::5", "private"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("100.64.0.1", "CGNAT"), ("::ffff:127.0.0.1", "loopback"),
    ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_forbidden_addresses(address, reason):
    got = forbidden_reason(address)
    assert (got is None) if reason is None else (reason in got)


def test_allow_networks_lets_an_internal_address_through_only_inside_them():
    allowed = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])
    assert forbidden_reason("127.0.0.1", allowed) is None and forbidden_reason("10.9.9.9", allowed) is None
    assert "loopback" in forbidden_reason("127.0.0.2", allowed)
    with pytest.raises(ConfigError):
        parse_networks(["not-a-network"])


def test_resolve_checked_refuses_a_name_that_resolves_to_loopback():
    with pytest.raises(DeliveryRefused, match="localhost resolves only to forbidden"):
        resolve_checked("localhost", 80)
    assert resolve_checked("localhost", 80, parse_networks(["127.0.0.0/8", "::1/128"])) in {"127.0.0.1", "::1"}


def test_filters_on_camera_person_decision_and_type():
    sink = WebhookSink(WebhookConfig(url="https://example.com/h", cameras=["door"], people=["Ada"],
                                     decisions=["known"], types=["arrived", "updated"]))
    base = {"type": "arrived", "camera": "door", "person": "Ada", "person_id": "p1", "decision": "known"}
    assert sink.wants(base)
    assert sink.wants({**base, "person": "Ada Renamed", "person_id": "p1"}) is False
    for change in ({"camera": "lab"}, {"decision": "unknown"}, {"type": "left"}, {"person": "Bob"}):
        assert not sink.wants({**base, **change})
    by_id = WebhookSink(WebhookConfig(url="https://example.com/h", people=["p1"]))
    assert by_id.wants({**base, "person": "Someone"})
    assert sink.name.startswith("webhook-") and sink.name != WebhookSink(WebhookConfig(url="https://x.org/")).name


def test_secret_from_file_and_env(tmp_path, monkeypatch):
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert read_secret(WebhookConfig(url="https://x.org/", secret_file=f)) == b"from-file"
    monkeypatch.setenv("MY_HOOK_SECRET", "from-env")
    assert read_secret(WebhookConfig(url="https://x.org/", secret_env="MY_HOOK_SECRET")) == b"from-env"
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        read_secret(WebhookConfig(url="https://x.org/", secret_env="NOT_SET_ANYWHERE"))


@pytest.mark.parametrize("values, field", [
    ({"mqtt": {"url": "http://broker"}}, "mqtt.url"),
    ({"mqtt": {"qos": 3}}, "mqtt.qos"),
    ({"webhooks": [{"url": "ftp://x"}]}, "webhooks.0.url"),
    ({"webhooks": [{"url": "https://x", "decisions": ["maybe"]}]}, "webhooks.0.decisions"),
    ({"webhooks": [{"url": "https://x", "typo": 1}]}, "webhooks.0.typo"),
    ({"sinks": {"max_attempts": 0}}, "sinks.max_attempts"),
])
def test_bad_sink_settings_fail_naming_the_field(values, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(**values)


def test_config_output_masks_the_broker_password_and_webhook_secrets(monkeypatch):
    from faec_rec import cli

    monkeypatch.setenv("FAEC_MQTT__URL", "mqtts://bob:hunter2@broker.example:8883")
    monkeypatch.setenv("FAEC_WEBHOOKS", json.dumps([{"url": "https://x.org/h", "secret": "topsecret"}]))
    result = CliRunner().invoke(cli.cli, ["config"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "topsecret" not in result.output
    data = json.loads(result.output)
    assert data["mqtt"]["url"] == "mqtts://bob:***@broker.example:8883"
    assert data["webhooks"][0]["secret"] == "***"


def test_topics_and_discovery_ids_are_safe():
    assert topic_part("Ada Lovelace/+#") == "Ada_Lovelace___"
    assert object_id("cam.1:x@y") == "cam_1_x_y"
    t = Topics(MqttConfig(url="mqtt://h", prefix="site/a"))
    assert t.person("Ada L") == "site/a/person/Ada_L"
    assert t.camera_config_topic("door") == "homeassistant/sensor/faec_rec/door_person/config"
    assert t.person_config("p1", "Ada", "x")["unique_id"] != t.camera_config("p1")["unique_id"]
