"""`faec-rec models add-backbone / backbones / use-backbone / list` as a user runs them
(subprocesses, a fresh home, the embedded Redis), with a model the test builds itself."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli import _env, run
from tests.tiny_backbone import build_tflite, write_card

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_backbone_commands(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    (tmp_path / "home").mkdir()
    model = build_tflite(tmp_path)

    refused = run(env, "models", "add-backbone", str(model), "--card", str(write_card(tmp_path, name="big", input_size=[96, 96])))
    assert refused.returncode == 2, refused.stderr
    assert "takes input of shape [1, 64, 64, 3], but its card says NHWC [96, 96, 3]" in refused.stderr
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    refused = run(env, "models", "add-backbone", str(junk), "--card", str(write_card(tmp_path)))
    assert refused.returncode == 2 and "does not load as a TFLite model" in refused.stderr, refused.stderr

    added = run(env, "models", "add-backbone", str(model), "--card", str(write_card(tmp_path)))
    assert added.returncode == 0, added.stderr
    assert "added backbone tiny-test" in added.stdout and "licence: CC0-1.0 (built by the test)" in added.stdout
    # an empty gallery has no impostor pairs to map the visitor thresholds on: said so
    assert "visitors: no gallery crops to map the visitor thresholds on; visitors pause under this backbone" in added.stdout

    listing = run(env, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert "backbone in service: dlib-resnet-v1 (weights: CC0-1.0" in listing.stdout
    rows = json.loads(run(env, "models", "backbones", "--json").stdout)
    assert [b["name"] for b in rows["backbones"]] == ["dlib-resnet-v1", "tiny-test"]

    switched = run(env, "models", "use-backbone", "tiny-test")
    assert switched.returncode == 0, switched.stderr
    assert "backbone in service: tiny-test (was dlib-resnet-v1); 0 templates and 0 unknown faces re-embedded" in switched.stdout
    listing = run(env, "models", "list")
    assert "backbone in service: tiny-test (weights: CC0-1.0 (built by the test))" in listing.stdout
    table = run(env, "models", "backbones").stdout
    assert "* tiny-test" in table and "CC0-1.0 (built by the test)" in table

    unknown = run(env, "models", "use-backbone", "nope")
    assert unknown.returncode == 2 and "no backbone named 'nope'" in unknown.stderr
