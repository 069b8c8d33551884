"""The enrolment quality gate: is this photo good enough to become a template?

A bad template hurts every later decision about that person, so enrolment is
stricter than recognition. Checks, in order (the first failure is the reason):

1. ``no_face``: the detector found nothing.
2. ``several_faces``: more than one face and none clearly dominant. A face is
   dominant when its side is at least ``dominance`` (default 2x) the side of
   the next largest; then it is taken and the small background faces ignored
   (a portrait with a stranger far behind still enrols; a group photo does not).
3. ``face_too_small``: the chosen face's shorter box side is under
   ``min_face_px`` pixels: its 150x150 chip would be upsampled mush.
4. ``not_frontal``: the nose is too far off the eyes' midline. ``yaw`` is the
   nose's offset from the eye midpoint along the eye axis, in inter-eye
   distances (0 frontal; about 0.5 near profile); refused above ``max_yaw``.
5. ``blurry``: the variance of the Laplacian of the grey 150x150 chip is under
   ``min_sharpness`` (focus or motion blur; measured on the aligned chip so the
   figure does not depend on the photo's resolution), raised for faces larger
   than the chip (:meth:`QualityThresholds.sharpness_limit`: shrinking sharpens,
   so a large blurred face must not pass on the small-face limit).

Pure functions of arrays; the enrolment use case (faec_rec.workers.enrolment)
calls :func:`assess` with the detector's faces and an aligner.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import cv2
import numpy as np

from faec_rec.faces.types import Face

# Landmark rows used for the pose check: both eyes, then the nose. Both
# detectors the engine uses (BlazeFace, MTCNN) put the two eye centres first
# and the nose third.
EYE_ROWS = (0, 1)
NOSE_ROW = 2


class Reason(str, Enum):
    """Why an image was accepted or refused."""

    OK = "ok"
    BAD_IMAGE = "bad_image"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    FACE_TOO_SMALL = "face_too_small"
    NOT_FRONTAL = "not_frontal"
    BLURRY = "blurry"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class QualityThresholds:
    """Limits of the gate, chosen on real photos.

    Chosen on dlib-aligned chips of 60 random LFW images plus the
    face_recognition examples (sharpness 5th percentile 18.8, median 49; the
    same photos under a Gaussian blur of sigma 2 px at 250 px width: median 6,
    95th percentile 12.5, hence 15), then checked with this project's engine
    (detector landmarks, aligned chips) on 139 random LFW faces: 2.9 % refused
    as blurry, 5.8 % as not frontal (yaw median 0.095, 95th percentile 0.357:
    LFW has turned heads); all of 56 blurred LFW faces refused; 74 % of UMIST
    faces (mostly profiles, yaw median 0.57) refused as not frontal.
    """

    min_face_px: float = 60.0
    dominance: float = 2.0
    max_yaw: float = 0.35
    min_sharpness: float = 15.0
    # A face larger than the chip is *shrunk* into it, which sharpens it: a real photo's
    # face of 200 px or more gave a chip sharpness of at least 210 (68 faces of the
    # samples/ sets), the motion-blurred 292 px face of hard_cases/inspireface__blur.jpg
    # 20.7. So the limit grows with (face side / chip side)^2, at most this many times.
    large_face_gain_cap: float = 6.0
    chip_side: float = 150.0
    # A moderately turned face (yaw up to this) is kept as an *extra* template once the
    # person has ``min_frontal_for_extra`` templates: on benchmarks.openset it added 0.5
    # (tune half) and 0.9 (test half) points of named-correctly for 0.06 points of
    # stranger rejection (0.45 and 0.55 gave +0 on the tune half).
    extra_max_yaw: float = 0.7
    min_frontal_for_extra: int = 2

    def sharpness_limit(self, face_px: float) -> float:
        """The least chip sharpness accepted for a face whose shorter side is ``face_px``."""
        gain = min(self.large_face_gain_cap, max(1.0, (float(face_px) / self.chip_side) ** 2))
        return self.min_sharpness * gain


@dataclass(frozen=True)
class QualityVerdict:
    """The gate's answer for one image.

    face: the face to enrol (None when refused before one was chosen);
    face_px: its shorter box side, pixels; yaw: nose offset in inter-eye
    distances; sharpness: variance of the Laplacian of the grey chip.
    """

    reason: Reason
    detail: str = ""
    face: Face | None = None
    face_px: float | None = None
    yaw: float | None = None
    sharpness: float | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is Reason.OK

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"accepted": self.accepted, "reason": self.reason.value}
        if self.detail:
            out["detail"] = self.detail
        for name in ("face_px", "yaw", "sharpness"):
            value = getattr(self, name)
            if value is not None:
                out[name] = round(float(value), 3)
        if self.face is not None:
            out["box"] = [round(float(v), 1) for v in self.face.box]
        return out


def choose_face(faces: Sequence[Face], dominance: float = 2.0) -> tuple[Face | None, Reason, str]:
    """The one face to enrol: the only face, or the largest if clearly dominant.

    Returns ``(face, Reason.OK, "")`` or ``(None, reason, detail)``.
    """
    if not faces:
        return None, Reason.NO_FACE, "no face found"
    by_size = sorted(faces, key=lambda f: min(f.width, f.height), reverse=True)
    if len(by_size) == 1:
        return by_size[0], Reason.OK, ""
    first, second = (min(f.width, f.height) for f in by_size[:2])
    if first >= dominance * max(second, 1e-6):
        return by_size[0], Reason.OK, ""
    return None, Reason.SEVERAL_FACES, f"{len(faces)} faces of similar size; crop the photo to one person"


def yaw(landmarks: np.ndarray) -> float:
    """Nose offset from the eye midpoint along the eye axis, in inter-eye distances.

    landmarks: (5, 2) float; rows :data:`EYE_ROWS` and :data:`NOSE_ROW` are used.
    Invariant to in-plane rotation and scale; 0 for a frontal face. Returns
    ``inf`` when the eyes coincide (a degenerate detection).
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    a, b = pts[EYE_ROWS[0]], pts[EYE_ROWS[1]]
    axis = b - a
    dist = float(np.hypot(*axis))
    if dist < 1e-6:
        return float("inf")
    offset = float(np.dot(pts[NOSE_ROW] - (a + b) / 2.0, axis / dist))
    return abs(offset) / dist


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: (h, w, 3) or (h, w) uint8 -> float."""
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY) if chip.ndim == 3 else chip
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def assess(
    faces: Sequence[Face],
    chip_of: Callable[[Face], np.ndarray],
    thresholds: QualityThresholds | None = None,
) -> QualityVerdict:
    """Run the gate on one image's detected faces.

    ``chip_of(face)`` returns the face's aligned (150, 150, 3) uint8 RGB chip;
    it is called once, only for the chosen face and only if the cheaper checks
    pass.
    """
    t = thresholds or QualityThresholds()
    face, reason, detail = choose_face(faces, t.dominance)
    if face is None:
        return QualityVerdict(reason, detail)
    face_px = min(face.width, face.height)
    if face_px < t.min_face_px:
        return QualityVerdict(Reason.FACE_TOO_SMALL, f"face is {face_px:.0f} px, need {t.min_face_px:.0f} px; use a closer or larger photo", face, face_px)
    face_yaw = yaw(face.landmarks)
    if face_yaw > t.max_yaw:
        return QualityVerdict(Reason.NOT_FRONTAL, f"head turned (yaw {face_yaw:.2f} > {t.max_yaw:.2f}); use a photo facing the camera", face, face_px, face_yaw)
    sharp = sharpness(chip_of(face))
    limit = t.sharpness_limit(face_px)
    if sharp < limit:
        return QualityVerdict(Reason.BLURRY, f"sharpness {sharp:.0f} < {limit:.0f} for a {face_px:.0f} px face; use a sharper photo", face, face_px, face_yaw, sharp)
    return QualityVerdict(Reason.OK, "", face, face_px, face_yaw, sharp)


def assess_extra(
    verdict: QualityVerdict,
    chip_of: Callable[[Face], np.ndarray],
    thresholds: QualityThresholds | None = None,
) -> QualityVerdict:
    """Second look at a face refused as ``not_frontal``: accepted (reason OK, with a
    detail saying so) when its yaw is at most ``extra_max_yaw`` and it is sharp enough.

    For the caller to use only when the person already has (or gets in the same
    request) ``min_frontal_for_extra`` templates: the first templates keep the gate.
    """
    t = thresholds or QualityThresholds()
    if verdict.reason is not Reason.NOT_FRONTAL or verdict.face is None or verdict.yaw is None or verdict.yaw > t.extra_max_yaw:
        return verdict
    sharp = sharpness(chip_of(verdict.face))
    if sharp < t.sharpness_limit(verdict.face_px or 0.0):
        return verdict
    return QualityVerdict(Reason.OK, f"turned face (yaw {verdict.yaw:.2f}) kept as an extra template",
                          verdict.face, verdict.face_px, verdict.yaw, sharp)
