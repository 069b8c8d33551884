"""Model registry on a real Redis: round trip, checksums, promote/rollback events."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faec_rec.errors import ModelError
from faec_rec.training.head import HeadProjector, HeadTrainConfig, build_head, train_head
from faec_rec.training.registry import ModelRegistry, Status, load_projector


@pytest.fixture
def registry(redis_client, keys, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(redis_client, keys, tmp_path / "models")


def _trained(rng: np.random.Generator):
    labels = np.repeat(np.arange(8), 4)
    feats = (rng.normal(size=(8, 128))[labels] + rng.normal(size=(32, 128)) * 0.5).astype(np.float32)
    return train_head(feats, labels, HeadTrainConfig(epochs=2, identities_per_batch=4, anchor_weight=0)).model, feats


def test_register_list_load_round_trip(registry, rng):
    model, feats = _trained(rng)
    rec = registry.register(model, metrics={"candidate_lfw_accuracy": 0.99}, parent="base", threshold=0.5, note="t")
    assert rec.version == "head-1"
    assert registry.register(build_head(), parent="head-1").version == "head-2"
    assert [r.version for r in registry.records()] == ["head-1", "head-2"]
    again = registry.record("head-1")
    assert again.metrics == {"candidate_lfw_accuracy": 0.99} and again.threshold == 0.5 and again.sha256 == rec.sha256
    projector = registry.load("head-1")
    np.testing.assert_allclose(projector.project(feats), HeadProjector(model, "x").project(feats), atol=1e-6)
    assert projector.version == "head-1" and projector.threshold == 0.5
    assert registry.load("base").version == "base"


def test_a_tampered_file_is_refused_and_the_current_version_stays(registry, rng):
    model, _ = _trained(rng)
    rec = registry.register(model)
    registry.promote(rec.version)
    other = registry.register(build_head())
    path = registry.path(other)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        registry.load(other.version)
    with pytest.raises(ModelError, match="checksum"):
        registry.promote(other.version)
    assert registry.current() == rec.version
    path.unlink()
    with pytest.raises(ModelError, match="missing"):
        registry.verify(other.version)


def test_promote_and_rollback_publish_events(registry, rng, redis_client, keys):
    a = registry.register(build_head()).version
    b = registry.register(build_head()).version
    assert registry.current() == "base"
    registry.promote(a, reason="first")
    registry.promote(b, reason="second")
    assert registry.current() == b
    assert registry.record(b).status == Status.PROMOTED
    event = registry.rollback(reason="oops")
    assert event["version"] == a and event["previous"] == b
    assert registry.current() == a
    assert registry.record(b).status == Status.RETIRED
    registry.rollback()
    assert registry.current() == "base"
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()
    kinds = [(e["type"], e["version"], e["previous"]) for e in registry.events()]
    assert kinds == [("promote", a, "base"), ("promote", b, a), ("rollback", a, b), ("rollback", "base", a)]
    assert redis_client.xlen(keys.model_events()) == 4


def test_unknown_version_names_the_known_ones(registry):
    registry.register(build_head())
    with pytest.raises(ModelError, match="head-1"):
        registry.record("head-7")


def test_load_projector_for_workers(redis_client, keys, prefix, tmp_path, rng):
    from faec_rec.config import load_settings

    settings = load_settings(prefix=prefix, data_dir=tmp_path)
    reg = ModelRegistry.from_settings(settings, redis_client)
    version = reg.register(build_head()).version
    assert load_projector(version, settings=settings, redis=redis_client).version == version
    assert load_projector("base", settings=settings, redis=redis_client).version == "base"


# ---- file names confined, same bytes hashed and loaded, signed records, fsync ---------------

def _set_record(redis_client, keys, record) -> None:
    redis_client.hset(keys.models(), record.version, record.to_json())


@pytest.mark.parametrize("name", ["../x.keras", "../../etc/passwd", "/etc/passwd", "/tmp/head-1.keras",
                                  "sub/head-1.keras", "..keras", "head-1.h5", ""])
def test_a_stored_file_name_outside_the_heads_folder_is_refused(registry, redis_client, keys, tmp_path, name):
    rec = registry.register(build_head())
    outside = tmp_path / "models" / "x.keras"  # what "../x.keras" would reach
    outside.write_bytes(registry.path(rec).read_bytes())
    rec.file = name
    _set_record(redis_client, keys, rec)
    with pytest.raises(ModelError, match="plain .keras name"):
        registry.load(rec.version)
    with pytest.raises(ModelError, match="plain .keras name"):
        registry.promote(rec.version)


def test_the_verified_bytes_are_the_loaded_bytes(registry, rng, monkeypatch):
    """The file swapped between the check and the load: the checked bytes are still what loads."""
    from faec_rec.training import head as head_module

    model, feats = _trained(rng)
    rec = registry.register(model)
    evil = registry.register(build_head(seed=7))
    real_load = head_module.load_head

    def swap_then_load(path, version):
        registry.path(rec).write_bytes(registry.path(evil).read_bytes())  # after the checksum passed
        return real_load(path, version)

    monkeypatch.setattr(head_module, "load_head", swap_then_load)
    projector = registry.load(rec.version)
    np.testing.assert_allclose(projector.project(feats), HeadProjector(model, "x").project(feats), atol=1e-6)


def test_with_a_signing_key_a_file_and_checksum_changed_together_are_refused(redis_client, keys, tmp_path, rng):
    import hashlib

    signed = ModelRegistry(redis_client, keys, tmp_path / "models", signing_key=b"k" * 32)
    model, _ = _trained(rng)
    rec = signed.register(model)
    assert rec.signature and signed.load(rec.version).version == rec.version
    # Someone who can write the folder and Redis replaces the weights and fixes the checksum.
    path = signed.path(rec)
    ModelRegistry(redis_client, keys, tmp_path / "other").register(build_head(seed=3))
    evil = (tmp_path / "other" / "heads" / "head-2.keras").read_bytes()
    path.write_bytes(evil)
    rec.sha256 = hashlib.sha256(evil).hexdigest()
    _set_record(redis_client, keys, rec)
    with pytest.raises(ModelError, match="signature does not match"):
        signed.load(rec.version)
    with pytest.raises(ModelError, match="signature does not match"):
        signed.promote(rec.version)
    # Another key, or no signature at all, is refused as well.
    with pytest.raises(ModelError, match="signature does not match"):
        ModelRegistry(redis_client, keys, tmp_path / "models", signing_key=b"other").verify(rec.version)
    rec.signature = ""
    _set_record(redis_client, keys, rec)
    with pytest.raises(ModelError, match="not signed"):
        signed.verify(rec.version)
    with pytest.raises(ModelError, match="cannot be changed"):
        signed.update(rec.version, signature="00")


def test_the_signing_key_comes_from_the_settings(redis_client, keys, prefix, tmp_path, monkeypatch):
    from faec_rec.config import load_settings

    secret = tmp_path / "signing_key"
    secret.write_text("s3cret-key\n")
    monkeypatch.setenv("FAEC_TRAINING__SIGNING_KEY", "s3cret-key")
    settings = load_settings(prefix=prefix, data_dir=tmp_path)
    assert "s3cret" not in repr(settings)
    reg = ModelRegistry.from_settings(settings, redis_client)
    assert reg.signing_key == b"s3cret-key"
    rec = reg.register(build_head())
    assert load_projector(rec.version, settings=settings, redis=redis_client).version == rec.version


def test_save_head_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    import os
    import stat

    from faec_rec.training.head import save_head

    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_head(build_head(), tmp_path / "heads" / "head-1.keras")
    assert synced == [False, True]  # the file, then the folder holding the new name
