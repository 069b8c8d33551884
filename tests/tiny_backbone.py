"""A tiny face "backbone" that tests build themselves (never real weights).

Pooled, centred pixels times a fixed seeded random projection: two crops of the same photo
give nearly the same vector, different faces clearly different ones, which is all a test
of the backbone path needs. Exported to TFLite with the real converter, with a card.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 64


def build_tflite(folder: Path, *, size: int = SIZE, dim: int = 128, seed: int = 0) -> Path:
    """Write ``tiny.tflite`` (float32 NHWC [1, size, size, 3] -> [1, dim]) under ``folder``."""
    import tensorflow as tf

    pooled = (size // 8) ** 2 * 3
    weights = (np.random.default_rng(seed).standard_normal((pooled, dim)) / np.sqrt(pooled)).astype(np.float32)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
        def __call__(self, x: Any) -> Any:
            pooled_x = tf.nn.avg_pool2d(x, 8, 8, "VALID")
            flat = tf.reshape(pooled_x, [1, -1])
            flat = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
            return tf.matmul(flat, tf.constant(weights))

    module = Tiny()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    path = Path(folder) / "tiny.tflite"
    path.write_bytes(converter.convert())
    return path


def write_card(folder: Path, **changes: Any) -> Path:
    """A card matching :func:`build_tflite`'s defaults, with ``changes`` applied; returns its path."""
    card = {"name": "tiny-test", "format": "tflite", "input_size": [SIZE, SIZE], "colour": "RGB",
            "mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0], "alignment": "arcface-112",
            "embedding_size": 128, "licence": "CC0-1.0 (built by the test)"}
    card.update(changes)
    path = Path(folder) / f"card-{card['name']}.json"
    path.write_text(json.dumps(card))
    return path
