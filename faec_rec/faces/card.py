"""The model card of a user-supplied backbone: what the model file expects and gives.

A card is a small JSON object (``extra`` keys refused, so a typo fails loudly)::

    {"name": "mobilefacenet", "format": "tflite", "input_size": [112, 112],
     "colour": "RGB", "layout": "NHWC", "mean": [0, 0, 0], "std": [1, 1, 1],
     "alignment": "arcface-112", "embedding_size": 128,
     "licence": "research only (InsightFace)", "source": "https://..."}

The model is fed ``(pixel - mean) / std`` per channel, in ``colour`` order, of a face
aligned to ``alignment``: ``"arcface-112"`` (the ArcFace 5-point template, scaled to
``input_size``), ``"dlib-150"`` (the built-in chip geometry, scaled) or five ``[x, y]``
points in input pixels (left eye, right eye, nose tip, left and right mouth corner, as
seen in the image: the detector's landmark order).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from faec_rec.errors import ModelError

# The ArcFace/InsightFace 5-point template for 112x112 crops (insightface.utils.face_align).
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
ALIGNMENTS = ("arcface-112", "dlib-150")
# The gallery and its FAISS replicas hold 128-d vectors (index/projection.DIM).
SUPPORTED_DIM = 128


class BackboneCard(BaseModel):
    """What a supplied model file expects (input) and gives (embedding), and its terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,47}$", description="backbone name (lower case, digits, _ . -)")
    format: Literal["tflite", "onnx"] = Field(description="model file format")
    input_size: tuple[int, int] = Field(description="[height, width] of the face crop the model takes, pixels")
    colour: Literal["RGB", "BGR"] = Field("RGB", description="channel order the model expects")
    layout: Literal["NHWC", "NCHW"] = Field("NHWC", description="input tensor layout")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="subtracted per channel (in colour order) from 0..255 pixels")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="then divided by, per channel")
    alignment: Union[Literal["arcface-112", "dlib-150"], list[tuple[float, float]]] = Field(
        "arcface-112", description="'arcface-112', 'dlib-150' or five [x, y] template points in input pixels")
    embedding_size: int = Field(description="length of the model's output vector")
    licence: str = Field(min_length=1, max_length=300, description="terms of the weights (shown with the backbone in service)")
    source: str = Field("", max_length=500, description="where the weights come from")
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="per-pair cosine threshold measured elsewhere (used when the deployment has too few faces to calibrate)")

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(16 <= int(s) <= 1024 for s in v):
            raise ValueError(f"input_size must be two sides of 16-1024 pixels, got {list(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s == 0 for s in v):
            raise ValueError("std must not contain 0")
        return v

    @field_validator("alignment")
    @classmethod
    def _alignment(cls, v: object) -> object:
        if isinstance(v, list) and len(v) != 5:
            raise ValueError(f"alignment points must be 5 [x, y] pairs, got {len(v)}")
        return v

    @field_validator("embedding_size")
    @classmethod
    def _dim(cls, v: int) -> int:
        if v != SUPPORTED_DIM:
            raise ValueError(f"embedding_size {v}: the gallery holds {SUPPORTED_DIM}-d vectors; only {SUPPORTED_DIM}-d backbones are supported")
        return v

    def template(self) -> np.ndarray:
        """(5, 2) float64 alignment points in the model's input pixels (x, y)."""
        from faec_rec.faces.align import CHIP_SIZE, TEMPLATE_150

        h, w = self.input_size
        if self.alignment == "arcface-112":
            return ARCFACE_112 * np.array([w / 112.0, h / 112.0])
        if self.alignment == "dlib-150":
            return TEMPLATE_150 * np.array([w / CHIP_SIZE, h / CHIP_SIZE])
        return np.asarray(self.alignment, np.float64)


def read_card(path: Path | str) -> BackboneCard:
    """Parse and validate a card file; raises :class:`ModelError` saying what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read the model card {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ModelError(f"the model card {path} is not valid JSON: {exc}") from exc
    return parse_card(data, str(path))


def parse_card(data: object, where: str = "model card") -> BackboneCard:
    """A :class:`BackboneCard` from a JSON object; :class:`ModelError` listing each bad field."""
    try:
        return BackboneCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(card)'}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"{where} is not a valid backbone card: {problems}") from exc
