"""Choosing the global similarity threshold from data.

:func:`threshold_at_far` picks the lowest threshold whose false-accept rate on
impostor pairs is at most a target; :func:`default_threshold` reads the value
calibrated for a projection version from ``faec_rec/faces/model_card.json``
(written from measured LFW figures), falling back to
``FALLBACK_THRESHOLD`` with a warning while no card holds that version.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from faec_rec.errors import GalleryError

log = logging.getLogger(__name__)

MODEL_CARD = Path(__file__).resolve().parent.parent / "faec_rec" / "faces" / "model_card.json"
# Used only where the model card lacks the version: close to the base
# projection's LFW calibration (0.921 at 0.1% FAR, model card of 2026-11-27)
# and on the strict side of it. dlib's own "distance < 0.6" rule would be
# cos ≈ 0.82 for unit vectors, which accepts far more impostors.
FALLBACK_THRESHOLD = 0.92


@dataclass(frozen=True)
class Calibration:
    """A threshold and what it achieves on the data it was chosen on."""

    threshold: float
    far: float  # impostor pairs accepted / impostor pairs
    tar: float  # genuine pairs accepted / genuine pairs


def threshold_at_far(genuine: np.ndarray, impostor: np.ndarray, target_far: float) -> Calibration:
    """The lowest threshold ``t`` (accept when ``score >= t``) with FAR ≤ ``target_far``.

    ``genuine``/``impostor``: ``(n,)`` similarity scores of same-person and
    different-person pairs. Raises :class:`GalleryError` when either is empty
    or ``target_far`` is outside [0, 1].
    """
    genuine = np.asarray(genuine, dtype=np.float64).reshape(-1)
    impostor = np.asarray(impostor, dtype=np.float64).reshape(-1)
    if genuine.size == 0 or impostor.size == 0:
        raise GalleryError("calibration needs at least one genuine and one impostor score")
    if not 0.0 <= target_far <= 1.0:
        raise GalleryError(f"target FAR {target_far} must be within [0, 1]")
    ordered = np.sort(impostor)[::-1]
    allowed = int(np.floor(target_far * impostor.size))  # impostors that may score >= t
    if allowed >= impostor.size:
        threshold = float(ordered[-1])
    else:
        # Just above the (allowed+1)-th highest impostor score, so it is rejected.
        threshold = float(np.nextafter(ordered[allowed], np.inf))
    far = float(np.mean(impostor >= threshold))
    tar = float(np.mean(genuine >= threshold))
    return Calibration(threshold=threshold, far=far, tar=tar)


@lru_cache(maxsize=None)
def _card(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("model card %s is unreadable (%s); ignoring it", path, exc)
        return {}


def default_threshold(version: str, card_path: Path | None = None) -> float:
    """The global threshold calibrated for projection ``version``.

    Reads ``projections[version].threshold`` of the model card; where the card
    or the entry is missing, logs a warning and returns ``FALLBACK_THRESHOLD``.
    """
    card = _card(card_path or MODEL_CARD)
    entry = card.get("projections", {}).get(version, {}) if isinstance(card, dict) else {}
    value = entry.get("threshold") if isinstance(entry, dict) else None
    if isinstance(value, (int, float)) and -1.0 <= float(value) <= 1.0:
        return float(value)
    _warn_fallback(version)
    return FALLBACK_THRESHOLD


@lru_cache(maxsize=None)
def _warn_fallback(version: str) -> None:
    log.warning(
        "no calibrated threshold for projection version %r in %s; using %.2f "
        "(set gallery.threshold or calibrate the model card)",
        version,
        MODEL_CARD,
        FALLBACK_THRESHOLD,
    )


def search_table(card_path: Path | None = None) -> dict | None:
    """The model card's ``search`` table of the base projection (None when absent or malformed).

    ``{"far": [f...], "people": [n...], "thresholds": [[t per n] per f], ...}``: for each
    family-wise false-accept rate ``f`` and gallery size ``n``, the global threshold at
    which a share ``f`` of strangers score at least that high against the best of ``n``
    enrolled people (written by ``benchmarks.openset --calibrate-search``).
    """
    card = _card(card_path or MODEL_CARD)
    entry = card.get("projections", {}).get("base", {}) if isinstance(card, dict) else {}
    table = entry.get("search") if isinstance(entry, dict) else None
    try:
        far = np.asarray(table["far"], np.float64)
        people = np.asarray(table["people"], np.float64)
        thresholds = np.asarray(table["thresholds"], np.float64)
    except (TypeError, KeyError, ValueError):
        return None
    if far.ndim != 1 or people.ndim != 1 or thresholds.shape != (len(far), len(people)) or len(people) < 2:
        return None
    if not (np.all(np.diff(far) > 0) and np.all(np.diff(people) > 0) and people[0] >= 1):
        return None
    return {"far": far, "people": people, "thresholds": thresholds, "pair_threshold": float(entry.get("threshold", FALLBACK_THRESHOLD))}


def search_threshold(n_people: int, far: float, card_path: Path | None = None) -> float | None:
    """The base projection's global threshold for a search over ``n_people`` at family-wise ``far``.

    Interpolated in ``log(n)`` and ``log(far)`` over the card's table; past its largest
    gallery it continues the last segment's slope in ``log(n)`` (a tail that grows
    like a Gaussian maximum), capped at 0.995. None when the card has no table.
    """
    table = search_table(card_path)
    if table is None or n_people < 1:
        return None
    logn = np.log(table["people"])
    x = float(np.log(n_people))
    per_far = []
    for row in table["thresholds"]:
        if x <= logn[-1]:
            per_far.append(float(np.interp(x, logn, row)))
        else:
            slope = (row[-1] - row[-2]) / (logn[-1] - logn[-2])
            per_far.append(float(row[-1] + max(slope, 0.0) * (x - logn[-1])))
    logf = np.log(table["far"])
    value = float(np.interp(np.log(far), logf, per_far))
    return min(value, 0.995)


def search_raise(n_people: int, far: float | None, card_path: Path | None = None) -> float:
    """How far a search over ``n_people`` must lift the per-pair threshold (>= 0).

    ``search_threshold(n, far) - pair threshold`` of the base projection, never
    negative: a small gallery keeps the per-pair threshold (never more lenient than
    0.1% per pair). A head's own threshold is lifted by the same amount (its scores
    are calibrated to the same false-accept rates as base). 0 when ``far`` is None or
    the card has no table.
    """
    if far is None:
        return 0.0
    value = search_threshold(n_people, far, card_path)
    if value is None:
        return 0.0
    table = search_table(card_path)
    assert table is not None
    return max(0.0, value - table["pair_threshold"])


def global_threshold(configured: float | None, own: float | None, version: str, people: int, far: float | None) -> float:
    """The threshold a search uses: ``configured`` as is when set; else the projector's
    ``own`` per-pair threshold (or the model card's for ``version``) lifted by
    :func:`search_raise` for ``people`` enrolled people at family-wise ``far``."""
    if configured is not None:
        return float(configured)
    pair = float(own) if isinstance(own, (int, float)) else default_threshold(version)
    return pair + search_raise(people, far) if people > 0 else pair
