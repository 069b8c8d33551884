"""The records the face engine passes around."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    box: (4,) float32 ``[x1, y1, x2, y2]``; score: detector confidence in [0, 1];
    landmarks: (5, 2) float32 ``(x, y)`` rows in the detector's own order,
    documented by the detector (see ``faec_rec.faces.detect``).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    def to_json(self) -> dict[str, object]:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
        }
