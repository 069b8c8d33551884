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
per face at batch 1, slower than plain graphs).

**LiteRT for float32.** Where the CPU has no native bfloat16 (AVX2 only, as this VM has
been since 2026-11-29) the worker runs in float32, and there the TFLite runtime (LiteRT,
``ai_edge_litert``, XNNPACK) on the same frozen function converted once is faster than the
frozen TensorFlow graph: 13.5 vs 17.2 ms per face at batch 1 and 13.2 vs 17.0 at batch 32,
one thread each, mirror-averaged, minimum cosine 0.9999999 (``/tmp`` scratch runs, load ~1).
It also needs no TensorFlow import (3.1-3.7 s of a cold start), so a cached ``.tflite``
(:func:`lite_cache_path`) is what a cold ``faec-rec identify`` loads. bfloat16 stays on the
TensorFlow graph (XNNPACK has no bfloat16/AMX path), and so does ``faces.runtime = "tensorflow"``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from faec_rec.quiet import quieted

log = logging.getLogger(__name__)

# ---- threads, and TensorFlow imported only when it is needed ----------------------------
_threads = 0  # 0: the runtimes' defaults
_tf_threads_set = False


def set_threads(threads: int) -> None:
    """Threads per inference call in this process (TensorFlow intra/inter-op and LiteRT
    interpreters made from now on); 0 leaves the defaults. TensorFlow is not imported for
    this: the limit applies when :func:`tensorflow` first imports it (or now, if it is loaded)."""
    global _threads
    _threads = max(0, int(threads))
    if "tensorflow" in sys.modules:
        tensorflow()


def tensorflow() -> Any:
    """``import tensorflow``, with this process's thread limit applied before its first op."""
    global _tf_threads_set
    import tensorflow as tf

    if _threads and not _tf_threads_set:
        _tf_threads_set = True
        try:
            tf.config.threading.set_intra_op_parallelism_threads(_threads)
            tf.config.threading.set_inter_op_parallelism_threads(_threads)
        except RuntimeError:
            log.debug("TensorFlow already initialised in this process; thread limit %d not applied", _threads)
    return tf


def lite_interpreter(*, model_content: bytes | None = None, model_path: str | None = None, num_threads: int | None = None) -> Any:
    """A TFLite interpreter from LiteRT (``ai_edge_litert``, no TensorFlow import), or from
    TensorFlow's ``tf.lite`` where LiteRT is not installed. ``num_threads`` defaults to the
    limit :func:`set_threads` set, or every core when none is set (as TensorFlow's own default: a library
    caller gets the machine; a worker process sets 1). Its "Created TensorFlow Lite XNNPACK
    delegate" line is kept off the terminal."""
    count = num_threads if num_threads is not None else (_threads or os.cpu_count() or 1)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT is a core dependency; this is a broken install's fallback
        Interpreter = tensorflow().lite.Interpreter
    with warnings.catch_warnings(), quieted():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return Interpreter(model_content=model_content, model_path=model_path, num_threads=count)


def frozen_call(fn: Callable[[Any], Any], input_spec: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` traced once for ``input_spec`` with every variable it reads turned into a constant.

    fn: a TensorFlow-traceable function of one tensor returning one tensor (e.g. the
    backbone applied to uint8 chips). Returns a callable numpy -> numpy. Falls back to the
    plain (unfrozen) ``tf.function`` when freezing fails, with a warning: same results,
    only slower at small batches.
    """
    tf = tensorflow()
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


def write_cached(path: Path, blob: bytes, meta: dict[str, Any], what: str) -> None:
    """Write a converted model ``blob`` to ``path`` and ``meta`` (which holds its sha256) to
    the ``.json`` beside it, each atomically and fsynced. Best effort: a cache folder that
    cannot be written only costs the next start its conversion (logged)."""
    from faec_rec.files import atomic_write_bytes

    try:
        atomic_write_bytes(path, blob, fsync=True)
        atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta).encode(), fsync=True)
    except OSError as exc:
        log.warning("could not cache %s at %s (%s)", what, path, exc)


def read_cached(path: Path, fmt: int, what: str) -> tuple[bytes, dict[str, Any]] | None:
    """The blob and sidecar :func:`write_cached` wrote, or None when either is missing or
    unreadable, or the blob fails its sha256 or is of another format than ``fmt`` (logged:
    the caller rebuilds it)."""
    try:
        blob = path.read_bytes()
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("sha256") != hashlib.sha256(blob).hexdigest() or meta.get("format") != fmt:
        log.warning("%s %s fails its checksum; rebuilding it", what, path)
        return None
    return blob, meta


# ---- the frozen graph cached on disk (cold start) ---------------------------------------
# Bump when the function that is frozen changes (input dtype, mirror averaging, outputs).
GRAPH_FORMAT = 1


def graph_cache_path(cache_dir: Path, source_sha256: str, precision: str, flip_average: bool) -> Path:
    """``<cache_dir>/<backbone>-<sha[:12]>-<precision>-flip|noflip-tf<version>-g<format>.pb``."""
    tf = tensorflow()

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
    write_cached(path, blob, meta, "the frozen backbone graph")


def load_frozen(path: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The callable saved by :func:`save_frozen`, or None when absent, unreadable or corrupt."""
    cached = read_cached(path, GRAPH_FORMAT, "frozen backbone graph")
    if cached is None:
        return None
    blob, meta = cached
    tf = tensorflow()

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


# ---- the same function as a LiteRT model (float32) --------------------------------------
# Bump when what is converted changes (with GRAPH_FORMAT) or how it is checked.
LITE_FORMAT = 1
# Below this cosine against the TensorFlow graph on the check chips a conversion is refused.
LITE_MIN_COSINE = 0.9999


def lite_cache_path(cache_dir: Path, source_sha256: str, flip_average: bool) -> Path:
    """``<cache_dir>/<backbone>-<sha[:12]>-float32-flip|noflip-l<format>.tflite`` (no
    TensorFlow version in the name: the file is a self-contained model, and naming it must
    not import TensorFlow)."""
    from faec_rec.faces.backbone import BACKBONE_VERSION

    flip = "flip" if flip_average else "noflip"
    return Path(cache_dir) / f"{BACKBONE_VERSION}-{source_sha256[:12]}-float32-{flip}-l{LITE_FORMAT}.tflite"


def check_chips(n: int = 6, size: int = 150) -> np.ndarray:
    """Deterministic uint8 chips for a conversion check: noise, smooth gradients and blobs
    (a real-face parity test lives in the test suite, where the photos are)."""
    rng = np.random.default_rng(20261129)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    chips = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)]
    for i in range(1, n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.02, 0.1))
        base = np.stack([xx * rng.uniform(60, 200), yy * rng.uniform(60, 200), blob * 255], -1)
        chips.append(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    return np.stack(chips)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine between (n, d) arrays ``a`` and ``b``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def convert_lite(fn: Callable[[Any], Any], input_spec: Any, path: Path | None,
                 reference: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray] | None:
    """``fn`` (as :func:`frozen_call` takes it) converted to a TFLite model and run by LiteRT,
    cached at ``path`` (when given) with a ``.json`` sidecar (sha256, format, the parity
    measured). The model is used only when it gives ``reference``'s outputs on
    :func:`check_chips` (cosine >= :data:`LITE_MIN_COSINE`). Returns the callable, or None
    when the conversion fails or misses that parity (logged: the caller keeps the TensorFlow
    graph). A cache that cannot be written costs only the next start its conversion."""
    tf = tensorflow()
    try:
        concrete = tf.function(fn, input_signature=[input_spec]).get_concrete_function()
        # Without a trackable object TF takes its older conversion path, and says so: that path
        # is the one that works here (given the Keras model, the converted model gave NaN).
        deprecation = _DropMessage("trackable_obj")
        logging.getLogger("absl").addFilter(deprecation)
        try:
            with quieted():  # the converter logs its MLIR passes to fd 2
                blob = tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()
        finally:
            logging.getLogger("absl").removeFilter(deprecation)
        run = _LiteRun(lite_interpreter(model_content=blob))
        chips = check_chips()
        cosine = min_cosine(run(chips), reference(chips))
    except Exception as exc:  # noqa: BLE001 - the converter raises many types; TF keeps serving
        log.warning("could not convert the backbone to LiteRT (%s); staying on the TensorFlow graph", exc)
        return None
    if not cosine >= LITE_MIN_COSINE:
        log.warning("the LiteRT backbone gives cosine %.6f < %s against TensorFlow; staying on the TensorFlow graph",
                    cosine, LITE_MIN_COSINE)
        return None
    if path is None:
        return run
    meta = {"sha256": hashlib.sha256(blob).hexdigest(), "format": LITE_FORMAT, "min_cosine_vs_tensorflow": cosine,
            "converted_with": f"tensorflow {tf.__version__}"}
    write_cached(path, blob, meta, "the LiteRT backbone")
    return run


class _DropMessage(logging.Filter):
    """Drops log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class _LiteRun:
    """A TFLite interpreter as a numpy -> numpy call on batches of any size.

    The input is resized only when the batch size changes (the camera path always sends
    one face, a folder job 32), so a steady stream pays no re-allocation. Calls are
    serialised (an interpreter is not thread-safe)."""

    def __init__(self, interpreter: Any) -> None:
        self._it = interpreter
        self._in = interpreter.get_input_details()[0]["index"]
        self._out = interpreter.get_output_details()[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            if x.shape[0] != self._batch:
                self._it.resize_tensor_input(self._in, list(x.shape))
                # the first allocation creates XNNPACK's delegate, which says so on fd 2
                with quieted() if self._batch < 0 else contextlib.nullcontext():
                    self._it.allocate_tensors()
                self._batch = x.shape[0]
            self._it.set_tensor(self._in, np.ascontiguousarray(x))
            self._it.invoke()
            return self._it.get_tensor(self._out).copy()


def load_lite(path: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The model cached by :func:`convert_lite` as a callable (threads: :func:`set_threads`), or None
    when absent, unreadable, corrupt or LiteRT cannot load it. Imports no TensorFlow."""
    cached = read_cached(path, LITE_FORMAT, "LiteRT backbone")
    if cached is None:
        return None
    try:
        return _LiteRun(lite_interpreter(model_content=cached[0]))
    except Exception as exc:  # noqa: BLE001 - a model LiteRT rejects: rebuild from Keras
        log.warning("LiteRT cannot load %s (%s); rebuilding it", path, exc)
        return None
