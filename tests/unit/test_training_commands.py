"""`models`, `train head` and `feedback` commands against a real Redis."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from faec_rec.index.store import NewTemplates, Store
from faec_rec.training.commands import commands, feedback, models, train
from faec_rec.training.feedback import read_feedback
from faec_rec.training.head import build_head
from faec_rec.training.registry import ModelRegistry


@pytest.fixture
def env(redis_url, prefix, tmp_path) -> dict[str, str]:
    return {"FAEC_REDIS_URL": redis_url, "FAEC_PREFIX": prefix, "FAEC_DATA_DIR": str(tmp_path)}


def test_exported_commands():
    assert [c.name for c in commands] == ["models", "train", "feedback"]
    assert set(models.commands) == {"list", "show", "promote", "rollback", "export", "add-backbone", "backbones", "use-backbone"}
    assert set(train.commands) == {"head"}


def test_models_list_promote_rollback(env, redis_client, keys, tmp_path):
    registry = ModelRegistry(redis_client, keys, tmp_path / "models")
    version = registry.register(build_head(), metrics={"candidate_lfw_accuracy": 0.991}, note="test head").version
    runner = CliRunner()
    out = runner.invoke(models, ["list"], env=env)
    assert out.exit_code == 0, out.output
    assert "* base" in out.output and "head-1" in out.output and "0.9910" in out.output
    out = runner.invoke(models, ["promote", version], env=env)
    assert out.exit_code == 0, out.output
    assert "in service: head-1 (was base)" in out.output
    assert registry.current() == "head-1"
    assert Store(redis_client, keys, tmp_path).version() == "head-1"
    shown = json.loads(runner.invoke(models, ["show", version], env=env).output)
    assert shown["in_service"] and shown["checksum_ok"]
    out = runner.invoke(models, ["rollback"], env=env)
    assert out.exit_code == 0 and "in service: base" in out.output
    assert Store(redis_client, keys, tmp_path).version() == "base"
    out = runner.invoke(models, ["promote", "head-9"], env=env)
    assert out.exit_code != 0 and "no model version 'head-9'" in out.output
    assert registry.current() == "base"


def test_train_head_now_with_an_empty_gallery_says_why(env):
    out = CliRunner().invoke(train, ["head", "--now"], env=env)
    assert out.exit_code == 1
    assert "training skipped" in out.output and "in service: base (unchanged)" in out.output


def _enrol_one(redis_client, keys, tmp_path) -> None:
    feats = np.random.default_rng(0).normal(size=(2, 128)).astype(np.float32)
    Store(redis_client, keys, tmp_path).enrol("Ada", NewTemplates.check(feats, ["a", "b"], ["h1", "h2"], None, None), version="base")


def test_feedback_on_a_live_event_is_recorded(env, redis_client, keys, tmp_path):
    _enrol_one(redis_client, keys, tmp_path)
    event = {"type": "arrived", "camera": "cam1", "person": None, "decision": "unknown", "model_version": "dlib-resnet-v1/base"}
    event_id = redis_client.xadd(keys.events(), {"event": json.dumps(event)}).decode()
    out = CliRunner().invoke(feedback, [event_id, "--is", "ada"], env=env)
    assert out.exit_code == 0, out.output
    assert f"event {event_id} was Ada" in out.output and "cannot train the head" in out.output
    [entry] = read_feedback(redis_client, keys)
    assert entry.is_person and entry.person == "Ada" and entry.camera == "cam1" and not entry.usable


def test_feedback_with_features_is_usable_for_training(redis_client, keys, tmp_path):
    import base64

    from faec_rec.training.feedback import record_feedback

    vec = np.arange(128, dtype=np.float32) + 1
    event = {"type": "arrived", "camera": "c", "features": base64.b64encode(vec.tobytes()).decode()}
    event_id = redis_client.xadd(keys.events(), {"event": json.dumps(event)}).decode()
    _, entry = record_feedback(redis_client, keys, event_id, "p1", "Ada", False)
    assert entry.usable and not entry.is_person
    np.testing.assert_array_equal(read_feedback(redis_client, keys)[0].vector(), vec)


def test_feedback_bad_input_gives_clear_messages(env, redis_client, keys, tmp_path):
    _enrol_one(redis_client, keys, tmp_path)
    runner = CliRunner()
    out = runner.invoke(feedback, ["1-0", "--is", "Ada"], env=env)
    assert out.exit_code != 0 and "expired from the event stream" in out.output
    out = runner.invoke(feedback, ["not-an-id", "--is", "Ada"], env=env)
    assert out.exit_code != 0 and "is not an event id" in out.output
    out = runner.invoke(feedback, ["1-0", "--is", "Nobody"], env=env)
    assert out.exit_code == 2 and "Nobody" in out.output
    out = runner.invoke(feedback, ["1-0", "--is", "Ada", "--not", "Ada"], env=env)
    assert out.exit_code == 2 and "exactly one of" in out.output
    assert read_feedback(redis_client, keys) == []
