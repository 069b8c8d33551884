"""A user-supplied backbone (a TFLite or ONNX file plus its card) behind the Embedder interface.

:class:`SuppliedEmbedder` takes the same (n, 150, 150, 3) uint8 chips as the built-in
:class:`~faec_rec.faces.embed.Embedder` (what the pipeline aligns, and what the gallery
stores as a JPEG crop per template) and re-aligns each to the card's template by a
similarity transform from the chip's own template points. Live faces and stored crops
therefore go through the same steps, which is what lets a backbone switch re-embed the
gallery from its crops. The cost: the chip has 0.25 dlib padding, so a template with
more margin (ArcFace's 112x112 reaches further above the eyes) gets black borders where
the chip ends; measured in ``benchmarks/openset_backbone.py --from-chips``.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faec_rec.errors import ModelError, VectorError
from faec_rec.faces.align import CHIP_SIZE, TEMPLATE_150, similarity_transform
from faec_rec.faces.card import BackboneCard

log = logging.getLogger(__name__)


class _TFLiteModel:
    """One TFLite interpreter, run one face at a time (batch-1 conversions cannot resize)."""

    def __init__(self, blob: bytes, what: str) -> None:
        try:
            from faec_rec.faces.runtime import lite_interpreter

            self._interp = lite_interpreter(model_content=blob, num_threads=1)
            self._interp.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - TFLite raises ValueError/RuntimeError for bad bytes
            raise ModelError(f"{what} does not load as a TFLite model: {exc}") from exc
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{what} has {len(inputs)} inputs and {len(outputs)} outputs; a backbone has one input and one output")
        self.input_shape = tuple(int(s) for s in inputs[0]["shape"])
        self.output_shape = tuple(int(s) for s in outputs[0]["shape"])
        self.input_dtype = np.dtype(inputs[0]["dtype"])
        self._in, self._out = inputs[0]["index"], outputs[0]["index"]
        self._lock = threading.Lock()  # an interpreter is not thread-safe

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.output_shape[-1]), np.float32)
        with self._lock:
            for i in range(x.shape[0]):
                self._interp.set_tensor(self._in, np.ascontiguousarray(x[i : i + 1], dtype=self.input_dtype))
                self._interp.invoke()
                out[i] = self._interp.get_tensor(self._out).reshape(-1)
        return out


class _OnnxModel:
    """One onnxruntime session (the optional extra ``faec-rec[onnx]``)."""

    def __init__(self, blob: bytes, what: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(f"{what} is an ONNX model and onnxruntime is not installed: pip install 'faec-rec[onnx]'") from exc
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self._session = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelError(f"{what} does not load as an ONNX model: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{what} has {len(inputs)} inputs and {len(outputs)} outputs; a backbone has one input and one output")
        # Symbolic dimensions (batch) read as -1.
        self.input_shape = tuple(s if isinstance(s, int) else -1 for s in inputs[0].shape)
        self.output_shape = tuple(s if isinstance(s, int) else -1 for s in outputs[0].shape)
        self.input_dtype = np.dtype(np.float32)
        self._name = inputs[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.input_shape and self.input_shape[0] == 1:
            rows = [self._session.run(None, {self._name: x[i : i + 1]})[0] for i in range(x.shape[0])]
            return np.concatenate(rows).reshape(x.shape[0], -1).astype(np.float32)
        return np.asarray(self._session.run(None, {self._name: x})[0], np.float32).reshape(x.shape[0], -1)


def load_model(blob: bytes, card: BackboneCard, what: str = "the model file") -> Any:
    """The runnable model of ``blob``, checked against ``card``.

    Raises :class:`ModelError` when the bytes do not load, or when the model's input is
    not (batch, h, w, 3) (NHWC) / (batch, 3, h, w) (NCHW) for the card's ``input_size``,
    or its output is not (batch, embedding_size).
    """
    model = _TFLiteModel(blob, what) if card.format == "tflite" else _OnnxModel(blob, what)
    h, w = card.input_size
    want_in = (h, w, 3) if card.layout == "NHWC" else (3, h, w)
    if len(model.input_shape) != 4 or tuple(model.input_shape[1:]) != want_in:
        raise ModelError(f"{what} takes input of shape {list(model.input_shape)}, but its card says "
                         f"{card.layout} {list(want_in)} (input_size {list(card.input_size)}); fix the card's input_size or layout")
    if model.input_dtype != np.float32:
        raise ModelError(f"{what} takes {model.input_dtype} input; only float32-input models are supported (not quantised inputs)")
    if model.output_shape[-1] != card.embedding_size or int(np.prod([s for s in model.output_shape[1:] if s > 0])) != card.embedding_size:
        raise ModelError(f"{what} gives output of shape {list(model.output_shape)}, but its card says embedding_size "
                         f"{card.embedding_size}")
    return model


def chip_to_input(card: BackboneCard) -> np.ndarray:
    """(2, 3) similarity from the built-in 150x150 chip to the card's input crop."""
    return similarity_transform(TEMPLATE_150, card.template())


class SuppliedEmbedder:
    """A supplied backbone with the :class:`~faec_rec.faces.embed.Embedder` interface.

    blob: the model file's bytes; card: its card; ``backbone_version`` is the card's name.
    ``features`` returns raw outputs (n, embedding_size) float32, mirror-averaged when
    ``flip_average``; ``embed`` returns them L2-normalised.
    """

    def __init__(self, blob: bytes, card: BackboneCard, *, flip_average: bool = True, what: str = "the model file") -> None:
        self.card = card
        self.backbone_version = card.name
        self.sha256 = hashlib.sha256(blob).hexdigest()
        self.flip_average = bool(flip_average)
        self._model = load_model(blob, card, what)
        self._warp = chip_to_input(card)
        self._mean = np.asarray(card.mean, np.float32)
        self._std = np.asarray(card.std, np.float32)

    @classmethod
    def from_file(cls, path: Path, card: BackboneCard, *, flip_average: bool = True) -> SuppliedEmbedder:
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read the model file {path}: {exc.strerror or exc}") from exc
        return cls(blob, card, flip_average=flip_average, what=f"model file {path}")

    def inputs(self, crops: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 RGB chips -> (n, ...) float32 model input (aligned, ordered, normalised)."""
        arr = np.asarray(crops)
        if arr.ndim != 4 or arr.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise VectorError(f"expected chips of shape (n, {CHIP_SIZE}, {CHIP_SIZE}, 3) RGB, got {arr.shape}")
        h, w = self.card.input_size
        out = np.empty((arr.shape[0], h, w, 3), np.float32)
        for i, chip in enumerate(arr.astype(np.uint8, copy=False)):
            out[i] = cv2.warpAffine(chip, self._warp, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if self.card.colour == "BGR":
            out = out[..., ::-1]
        out = (out - self._mean) / self._std
        if self.card.layout == "NCHW":
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out, np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._model(x)

    def features(self, crops: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 chips -> (n, embedding_size) float32 raw model outputs."""
        x = self.inputs(crops)
        if x.shape[0] == 0:
            return np.zeros((0, self.card.embedding_size), np.float32)
        feats = self._run(x)
        if self.flip_average:
            mirror = x[..., ::-1] if self.card.layout == "NCHW" else x[:, :, ::-1]
            feats = (feats + self._run(np.ascontiguousarray(mirror))) * 0.5
        if not np.isfinite(feats).all():
            raise VectorError(f"backbone {self.card.name} gave NaN or infinite outputs")
        return feats.astype(np.float32, copy=False)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """L2-normalised :meth:`features`."""
        from faec_rec.faces.embed import l2_normalise

        feats = self.features(crops)
        return feats if feats.shape[0] == 0 else l2_normalise(feats)
