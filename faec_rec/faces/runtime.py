"""How the backbone runs in a worker: one frozen TensorFlow graph per embedder.

The Keras model stays the trained model; this module only changes how its arithmetic is
called. A ``tf.function`` that reads the model's variables makes oneDNN reorder every
weight tensor into its blocked layout on every call, which a batch of 32 faces amortises
and a batch of one (the camera path) does not. Freezing the variables into graph constants
lets the graph optimiser fold those reorders once. Measured on this 2-core EPYC at one
thread, bfloat16, mirror-averaged (``/tmp`` scratch runs, load ~6): 7.75 -> 5.28 ms CPU per
face at batch 1, batch 32 unchanged (2.9-3.1 ms); descriptors identical to the unfrozen call
(cosine 1.0 in float32, same bfloat16 rounding).

The frozen graph is cached next to the converted Keras model (:func:`graph_cache_path`,
checked by sha256): a cold start loads it directly, without importing Keras, loading the
``.keras`` file, building the bfloat16 copy, tracing and freezing (~3.5 s of a loaded
machine's cold ``identify``).

Tried and not adopted (same runs): XLA ``jit_compile`` (float32 16.2, bfloat16 20.0 ms CPU
per face at batch 1, slower than plain graphs), the TFLite interpreter with XNNPACK on the
converted float32 model (14.9 ms: XNNPACK has no bfloat16/AMX path here, so the float32
arithmetic itself is the floor).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
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

    run.frozen = frozen  # type: ignore[attr-defined]  # for save_frozen
    return run


# ---- the frozen graph cached on disk (cold start) ---------------------------------------
# Bump when the function that is frozen changes (input dtype, mirror averaging, outputs).
GRAPH_FORMAT = 1


def graph_cache_path(cache_dir: Path, source_sha256: str, precision: str, flip_average: bool) -> Path:
    """``<cache_dir>/<backbone>-<sha[:12]>-<precision>-flip|noflip-tf<version>-g<format>.pb``."""
    import tensorflow as tf

    from faec_rec.faces.backbone import BACKBONE_VERSION

    flip = "flip" if flip_average else "noflip"
    return Path(cache_dir) / f"{BACKBONE_VERSION}-{source_sha256[:12]}-{precision}-{flip}-tf{tf.__version__}-g{GRAPH_FORMAT}.pb"


def save_frozen(run: Callable[[np.ndarray], np.ndarray], path: Path) -> None:
    """Write the frozen graph behind ``run`` (from :func:`frozen_call`) atomically, with a
    ``.json`` sidecar (input/output names, sha256 of the graph bytes). Best effort: a cache
    folder that cannot be written only costs the next start its conversion."""
    frozen = getattr(run, "frozen", None)
    if frozen is None:
        return
    blob = frozen.graph.as_graph_def().SerializeToString()
    meta = {"input": frozen.inputs[0].name, "output": frozen.outputs[0].name,
            "sha256": hashlib.sha256(blob).hexdigest(), "format": GRAPH_FORMAT}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(fh.name, path)
        path.with_suffix(".json").write_text(json.dumps(meta))
    except OSError as exc:
        log.warning("could not cache the frozen backbone graph at %s (%s)", path, exc)


def load_frozen(path: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The callable saved by :func:`save_frozen`, or None when absent, unreadable or corrupt."""
    meta_path = path.with_suffix(".json")
    try:
        blob = path.read_bytes()
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("sha256") != hashlib.sha256(blob).hexdigest() or meta.get("format") != GRAPH_FORMAT:
        log.warning("frozen backbone graph %s fails its checksum; rebuilding it", path)
        return None
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(blob)
    placeholder = meta["input"].split(":")[0]
    inputs = [node for node in graph_def.node if node.name == placeholder]
    if len(inputs) != 1:
        log.warning("frozen backbone graph %s has no input %r; rebuilding it", path, meta["input"])
        return None
    dtype = tf.as_dtype(inputs[0].attr["dtype"].type)

    # The graph is imported with its input mapped to the wrapped function's argument: one
    # import, no pruning pass (which re-lifted the whole graph: ~1 s of every cold start).
    def imported(x: Any) -> Any:
        (out,) = tf.compat.v1.import_graph_def(graph_def, input_map={meta["input"]: x},
                                               return_elements=[meta["output"]], name="")
        return out

    dims = inputs[0].attr["shape"].shape
    shape = None if dims.unknown_rank else [d.size if d.size >= 0 else None for d in dims.dim]
    call = tf.compat.v1.wrap_function(imported, [tf.TensorSpec(shape, dtype)])

    def run(x: np.ndarray) -> np.ndarray:
        return call(tf.constant(x)).numpy()

    return run
