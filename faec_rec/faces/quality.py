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
6. ``not_a_photo``: the face looks drawn (a cartoon, a flat rendering): its
   inner face has few grey tones (:func:`tone_entropy` under
   ``min_tone_entropy`` bits), where a photo's shading spreads them.
7. ``face_covered``: the mouth is hidden (a mask, a hand): the mouth region
   holds little of the face's horizontal edges (:func:`mouth_edges`), or, in a
   colour photo, no lip colour and weak mouth edges (:func:`lip_colour`).

Checks 6 and 7 read the aligned chip at fixed places of the 150x150 dlib
template (eyes at about 37 % of its height, mouth at about 75 %), scaled to the
chip's size. Signals from the backbone's descriptor were measured first and do
not work: the masked and cartoon faces sit among real ones in cosine
similarity to the mean real-face descriptor (0.91-0.94 against LFW's 0.85-0.96),
to the shipped reference features and in Mahalanobis distance.

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
    NOT_A_PHOTO = "not_a_photo"
    FACE_COVERED = "face_covered"
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
    # Drawn faces and covered mouths, measured on the chips of 748 real faces (544 LFW,
    # 92 samples/, 112 classic/ incl. small grey sets) against hard_cases/: grey-level
    # entropy of the inner face: real at least 5.52 bits (LFW 5.99), the cartoon 4.82;
    # mouth-region share of horizontal edges: real at least 0.65, the beige mask 0.16;
    # lip colour (a* 95th pct of the mouth minus the cheeks' median): the white mask -1
    # with mouth edges 0.67, which 1 of 542 colour LFW faces also shows (0.2 %).
    min_tone_entropy: float = 5.1
    min_mouth_edges: float = 0.5
    lipless_mouth_edges: float = 0.8

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


# Regions of the aligned chip, as fractions of its side (rows, cols) in dlib's 150x150
# template: the inner face, the mouth, and the two cheeks under the eyes.
INNER = ((0.20, 0.87), (0.17, 0.83))
MOUTH = ((0.65, 0.85), (0.33, 0.67))
CHEEKS = (((0.47, 0.63), (0.19, 0.33)), ((0.47, 0.63), (0.67, 0.81)))


def _region(image: np.ndarray, box: tuple[tuple[float, float], tuple[float, float]]) -> np.ndarray:
    (r0, r1), (c0, c1) = box
    h, w = image.shape[:2]
    return image[int(round(r0 * h)):int(round(r1 * h)), int(round(c0 * w)):int(round(c1 * w))]


def _grey(chip: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY) if chip.ndim == 3 else chip


def tone_entropy(chip: np.ndarray) -> float:
    """Entropy (bits) of the grey-level histogram of the inner face of an aligned chip.

    A photo's shading spreads the tones (real faces: 5.5-7.9 bits); a drawn face is a
    few flat colours and lines (the hard-case cartoon: 4.8). (h, w[, 3]) uint8 -> float.
    """
    inner = _region(_grey(chip), INNER)
    hist = np.bincount(inner.ravel(), minlength=256).astype(np.float64) / max(inner.size, 1)
    hist = hist[hist > 0]
    return float(-(hist * np.log2(hist)).sum())


def mouth_edges(chip: np.ndarray) -> float:
    """The mouth region's mean vertical gradient (horizontal edges: lips, their gap)
    over the inner face's; about 1.4 for a visible mouth, low under a mask."""
    grey = _grey(chip).astype(np.float32)
    dy = np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    return float(_region(dy, MOUTH).mean() / (_region(dy, INNER).mean() + 1e-6))


def lip_colour(chip: np.ndarray) -> float | None:
    """How much redder the mouth's reddest pixels are than the cheeks (CIELAB a*, 8-bit
    scale: 95th percentile of the mouth minus the cheeks' median); None for a grey
    image (no colour to read). A visible mouth: median 8 on LFW; a mask: about 0."""
    if chip.ndim != 3 or float(np.abs(chip[..., 0].astype(np.int16) - chip[..., 2]).mean()) <= 3.0:
        return None
    a = cv2.cvtColor(chip, cv2.COLOR_RGB2LAB)[..., 1].astype(np.float32)
    cheeks = np.concatenate([_region(a, box).ravel() for box in CHEEKS])
    return float(np.percentile(_region(a, MOUTH), 95) - np.median(cheeks))


def looks_real(chip: np.ndarray, thresholds: QualityThresholds | None = None) -> tuple[Reason, str]:
    """``(Reason.OK, "")`` for a chip that looks like an uncovered photographed face, else
    ``(Reason.NOT_A_PHOTO | Reason.FACE_COVERED, detail)``."""
    t = thresholds or QualityThresholds()
    tones = tone_entropy(chip)
    if tones < t.min_tone_entropy:
        return Reason.NOT_A_PHOTO, (f"the face looks drawn or rendered (tone entropy {tones:.1f} < "
                                    f"{t.min_tone_entropy:.1f} bits); use a photograph")
    edges = mouth_edges(chip)
    lips = lip_colour(chip)
    if edges < t.min_mouth_edges or (lips is not None and lips <= 0.0 and edges < t.lipless_mouth_edges):
        return Reason.FACE_COVERED, (f"the mouth is not visible (mouth edges {edges:.2f}"
                                     + ("" if lips is None else f", lip colour {lips:.0f}")
                                     + "): a mask or a hand? use a photo of the uncovered face")
    return Reason.OK, ""


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
    chip = chip_of(face)
    sharp = sharpness(chip)
    limit = t.sharpness_limit(face_px)
    if sharp < limit:
        return QualityVerdict(Reason.BLURRY, f"sharpness {sharp:.0f} < {limit:.0f} for a {face_px:.0f} px face; use a sharper photo", face, face_px, face_yaw, sharp)
    reason, detail = looks_real(chip, t)
    return QualityVerdict(reason, detail, face, face_px, face_yaw, sharp)


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
    chip = chip_of(verdict.face)
    sharp = sharpness(chip)
    if sharp < t.sharpness_limit(verdict.face_px or 0.0):
        return verdict
    reason, detail = looks_real(chip, t)
    if reason is not Reason.OK:
        return QualityVerdict(reason, detail, verdict.face, verdict.face_px, verdict.yaw, sharp)
    return QualityVerdict(Reason.OK, f"turned face (yaw {verdict.yaw:.2f}) kept as an extra template",
                          verdict.face, verdict.face_px, verdict.yaw, sharp)
