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


def table_threshold(table: dict, n_people: int, far: float) -> float:
    """The global threshold of a search ``table`` (``{"far": [f...], "people": [n...],
    "thresholds": [[t per n] per f]}``) for ``n_people`` at family-wise ``far``.

    Interpolated in ``log(n)`` and ``log(far)``; past its largest gallery it continues the
    last segment's slope in ``log(n)`` (a tail that grows like a Gaussian maximum), capped
    at 0.995. Outside the table's rates it takes the nearest row.
    """
    people = np.asarray(table["people"], np.float64)
    logn = np.log(people)
    x = float(np.log(max(n_people, 1)))
    per_far = []
    for row in np.asarray(table["thresholds"], np.float64):
        if x <= logn[-1]:
            per_far.append(float(np.interp(x, logn, row)))
        else:
            slope = (row[-1] - row[-2]) / (logn[-1] - logn[-2])
            per_far.append(float(row[-1] + max(slope, 0.0) * (x - logn[-1])))
    logf = np.log(np.asarray(table["far"], np.float64))
    value = float(np.interp(np.log(far), logf, per_far))
    return min(value, 0.995)


def search_threshold(n_people: int, far: float, card_path: Path | None = None) -> float | None:
    """The base projection's global threshold for a search over ``n_people`` at family-wise ``far``
    (:func:`table_threshold` of the model card's table). None when the card has no table."""
    table = search_table(card_path)
    if table is None or n_people < 1:
        return None
    return table_threshold(table, n_people, far)


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


SEARCH_FAR = (0.002, 0.005, 0.01, 0.02, 0.05)  # the rates of the built-in card's table
SEARCH_PEOPLE = (1, 2, 3, 5, 10, 20, 50, 100, 200, 400, 1000, 2000, 5000)
MIN_SEARCH_PEOPLE = 21  # a leave-one-person-out table needs 20 other people at least ...
MIN_SEARCH_PROBES = 200  # ... and enough probes to resolve a 0.5% family-wise rate


def person_scores(vectors: np.ndarray, labels: np.ndarray, centroid_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Each template against every person, the way the replica scores a query.

    ``vectors`` (t, d) (normalised here), ``labels`` (t,) person of each template.
    Returns ``(scores (t, p) float32, people (p,))``: ``centroid_weight * cos(template,
    unit mean of the person's templates) + (1 - centroid_weight) * best single template``
    (best template only for a person with one template), as
    :meth:`~faec_rec.index.replica.Replica._rescore` does.
    """
    x = np.asarray(vectors, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    labels = np.asarray(labels)
    people, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    best = np.maximum.reduceat((x @ x[order].T), starts, axis=1)
    centres = np.zeros((len(people), x.shape[1]))
    np.add.at(centres, inverse, x)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True).clip(1e-12)
    mixed = centroid_weight * (x @ centres.T) + (1.0 - centroid_weight) * best
    return np.where(counts[None, :] > 1, mixed, best).astype(np.float32), people


def gallery_search_table(vectors: np.ndarray, labels: np.ndarray, centroid_weight: float,
                         far: tuple[float, ...] = SEARCH_FAR) -> dict | None:
    """A search table (see :func:`table_threshold`) measured on a gallery's own templates.

    Leave one person out: each enrolled template is a stranger to a gallery made of the
    other ``m = people - 1`` people, scored like the replica scores (:func:`person_scores`).
    For a gallery of ``n <= m`` of them drawn at random, a probe whose score reaches ``θ``
    against ``c`` of the ``m`` passes with probability ``1 - C(m-c, n) / C(m, n)`` (exact,
    no sampling); the table's threshold for rate ``f`` is the lowest ``θ`` at which the
    mean of that over all probes is at most ``f``. Sizes: ``SEARCH_PEOPLE`` below ``m``,
    and ``m``. None when the gallery is too small to say (fewer than ``MIN_SEARCH_PEOPLE``
    people or ``MIN_SEARCH_PROBES`` templates).
    """
    scores, people = person_scores(vectors, labels, centroid_weight)
    t, p = scores.shape
    m = p - 1
    if p < MIN_SEARCH_PEOPLE or t < MIN_SEARCH_PROBES:
        return None
    own = np.searchsorted(people, np.asarray(labels))
    scores[np.arange(t), own] = -np.inf
    ranked = -np.sort(-scores, axis=1)[:, :m]  # each probe's m impostor scores, highest first
    flat = ranked.ravel()
    order = np.argsort(-flat, kind="stable")
    rank = (order % m) + 1  # the k-th highest of its probe: reaching it makes c = k
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, m + 1)))])
    sizes = sorted({n for n in SEARCH_PEOPLE if n < m} | {m})
    thresholds = []
    for n in sizes:
        c = np.arange(m + 1)
        fits = m - c >= n
        miss = np.zeros(m + 1)
        miss[fits] = np.exp(log_fact[m - c[fits]] - log_fact[m - c[fits] - n] - log_fact[m] + log_fact[m - n])
        reach = 1.0 - miss  # P(best of n others >= θ) with c of the m at or above θ
        exceed = np.cumsum(np.diff(reach)[rank - 1]) / t  # family-wise rate as θ falls past each score
        row = []
        for f in far:
            k = int(np.searchsorted(exceed, f, side="right"))  # first score whose inclusion passes f
            value = float(flat[order[k]]) if k < len(order) else float(flat[order[-1]]) - 1e-4
            row.append(round(float(np.ceil(np.nextafter(value, np.inf) * 1e4) / 1e4), 4))
        thresholds.append(row)
    return {"far": list(far), "people": sizes, "thresholds": [list(r) for r in np.array(thresholds).T],
            "centroid_weight": centroid_weight, "probes": int(t), "gallery_people": int(p)}


def supplied_threshold(pair: float, people: int, far: float | None, *, search: dict | None = None,
                       raise_scale: float = 1.0) -> float:
    """The served threshold of a supplied backbone over ``people`` enrolled people.

    With its own ``search`` table (:func:`gallery_search_table`, measured on the
    deployment's crops): that table's threshold; without one (a gallery too small to
    measure it), the built-in search raise scaled by ``raise_scale``. Never below the
    per-pair threshold ``pair``, capped at 0.995; ``far`` None: ``pair`` at any size.
    """
    if far is None or people < 1:
        return float(pair)
    if search is not None:
        lifted = table_threshold(search, people, far)
    else:
        lifted = float(pair) + raise_scale * search_raise(people, far)
    return max(float(pair), min(lifted, 0.995))
