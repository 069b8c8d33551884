"""The visitor quality gate: which unknown faces may seed or bridge a visitor.

Every unknown face is kept, but a blurry, tiny or side-on face describes its
owner poorly: its features sit between people. Such a face may *join* a
visitor that other faces already hold strongly, but it never starts one, is
never a neighbour that lets another face join, and never counts in a
visitor's centre. The limits are the enrolment gate's
(:class:`faec_rec.faces.quality.QualityThresholds`), so a face good enough
to group is good enough to enrol when the visitor is named.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faec_rec.faces.quality import QualityThresholds, sharpness, yaw


@dataclass(frozen=True)
class FaceQuality:
    """Measurements of one face: shorter box side (px), yaw (inter-eye distances), sharpness
    (variance of the Laplacian of the chip) and the verdict ``good``."""

    face_px: float
    yaw: float
    sharpness: float
    good: bool

    def score(self) -> float:
        """A single number in [0, 1] for sorting (1: large, frontal, sharp)."""
        size = min(1.0, self.face_px / 120.0)
        pose = max(0.0, 1.0 - self.yaw / 0.5) if np.isfinite(self.yaw) else 0.0
        sharp = min(1.0, self.sharpness / 60.0)
        return round(float(size * pose * sharp), 4)


def assess_face(box: np.ndarray, landmarks: np.ndarray, chip: np.ndarray,
                thresholds: QualityThresholds | None = None) -> FaceQuality:
    """Measure one detected face: ``box`` (4,) ``[x1, y1, x2, y2]``, ``landmarks`` (5, 2),
    ``chip`` its (150, 150, 3) uint8 aligned crop."""
    t = thresholds or QualityThresholds()
    px = float(min(box[2] - box[0], box[3] - box[1]))
    turn = float(yaw(landmarks))
    sharp = float(sharpness(chip))
    good = px >= t.min_face_px and turn <= t.max_yaw and sharp >= t.min_sharpness
    return FaceQuality(px, turn, sharp, bool(good))
