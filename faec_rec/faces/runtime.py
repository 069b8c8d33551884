"""How the backbone runs in a worker: one frozen TensorFlow graph per embedder.

The Keras model stays the trained model; this module only changes how its arithmetic is
called. A ``tf.function`` that reads the model's variables makes oneDNN reorder every
weight tensor into its blocked layout on every call, which a batch of 32 faces amortises
and a batch of one (the camera path) does not. Freezing the variables into graph constants
lets the graph optimiser fold those reorders once. Measured on this 2-core EPYC at one
thread, bfloat16, mirror-averaged (``/tmp`` scratch runs, load ~6): 7.75 -> 5.28 ms CPU per
face at batch 1, batch 32 unchanged (2.9-3.1 ms); descriptors identical to the unfrozen call
(cosine 1.0 in float32, same bfloat16 rounding).

Tried and not adopted (same runs): XLA ``jit_compile`` (float32 16.2, bfloat16 20.0 ms CPU
per face at batch 1, slower than plain graphs), the TFLite interpreter with XNNPACK on the
converted float32 model (14.9 ms: XNNPACK has no bfloat16/AMX path here, so the float32
arithmetic itself is the floor).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


def frozen_call(fn: Callable[[Any], Any], input_spec: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` traced once for ``input_spec`` with every variable it reads turned into a constant.

    fn: a TensorFlow-traceable function of one tensor returning one tensor (e.g. the
    backbone applied to uint8 chips). Returns a callable numpy -> numpy. Falls back to the
    plain (unfrozen) ``tf.function`` when freezing fails, with a warning: same results,
    only slower at small batches.
    """
    import tensorflow as tf

    traced = tf.function(fn, input_signature=[input_spec])
    concrete = traced.get_concrete_function()
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        frozen = convert_variables_to_constants_v2(concrete)
    except Exception as exc:  # noqa: BLE001 - a private TF API: keep working without it
        log.warning("could not freeze the backbone graph (%s); running it unfrozen", exc)

        def run_plain(x: np.ndarray) -> np.ndarray:
            return concrete(tf.constant(x)).numpy()

        return run_plain

    def run(x: np.ndarray) -> np.ndarray:
        out = frozen(tf.constant(x))
        return (out[0] if isinstance(out, (list, tuple)) else out).numpy()

    return run
