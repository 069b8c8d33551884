"""Scheduled retraining of the comparison head, with a promotion gate.

One run, as named steps (:func:`run`):

1. take the training lock (``keys.train_lock()``): one training at a time;
2. gather data: the gallery's stored backbone features (a share of each
   person's templates held out as probes), usable feedback, and the generic
   reference set (LFW: people of folds 1-5 train, pairs of folds 6-10 judge;
   LFW View 2 folds hold disjoint people);
3. train a candidate head from the identity;
4. score candidate and the version in service on the same held-out data:
   gallery TAR at 1% FAR (probes against the remaining templates) and LFW
   accuracy on the held-out folds;
5. gate: promote only if the gallery figure improves by more than
   ``training.min_gain`` and LFW accuracy drops by at most
   ``training.max_lfw_drop``; the candidate is registered either way, with
   its metrics and the reason;
6. on promotion: the registry switches the version in service and publishes a
   model event, and the gallery records a version event, so every worker
   re-projects its replica from stored features and swaps live.

The lock is released in one ``finally``. A run that cannot train (too little
data, no reference set, lock held) returns a summary with status "skipped"
and the reason; the model in service never changes then.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faec_rec.errors import FaecError, TrainingError
from faec_rec.keys import Keys
from faec_rec.training.evaluate import LfwPairs, cosine_scores, kfold_accuracy, read_lfw_pairs, tar_at_far

if TYPE_CHECKING:
    import redis as redis_lib

    from faec_rec.config import Settings
    from faec_rec.index.projection import Projector

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
GATE_FAR = 0.01
# Share of training identities that come from the gallery (the rest: reference).
GALLERY_SHARE = 0.5


# ---------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class TrainingLock:
    """``SET NX EX`` lock with an owner token; released only by its owner."""

    def __init__(self, redis: "redis_lib.Redis", keys: Keys, ttl_s: int = 3600) -> None:
        self.redis = redis
        self.key = keys.train_lock()
        self.ttl_s = ttl_s
        self.token = f"{uuid.uuid4().hex}:{time.time():.0f}"

    def __enter__(self) -> TrainingLock:
        if not self.redis.set(self.key, self.token, nx=True, ex=self.ttl_s):
            holder = self.redis.get(self.key)
            since = ""
            if holder:
                try:
                    since = time.strftime(" since %H:%M:%S UTC", time.gmtime(float(holder.decode().split(":")[1])))
                except (IndexError, ValueError):
                    pass
            raise TrainingError(f"another training run holds the lock{since}; try again when it has finished")
        return self

    def __exit__(self, *exc: object) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.token)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

@dataclass
class Split:
    """Features with integer labels: (n, 128) float32 raw, (n,) int."""

    features: np.ndarray
    labels: np.ndarray

    @property
    def n(self) -> int:
        return int(self.labels.size)


@dataclass
class GalleryData:
    """The gallery's templates split into training templates and held-out probes."""

    train: Split
    probes: Split
    person_ids: list[str]

    @property
    def people(self) -> int:
        return len(self.person_ids)


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean (n,) mask of held-out probes: per person with >= 3 templates,
    round(fraction * n) of them (at least 1, leaving at least 2 for training)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 5])
    probe = np.zeros(labels.size, dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        if members.size < 3:
            continue
        k = int(min(max(1, round(fraction * members.size)), members.size - 2))
        probe[rng.choice(members, size=k, replace=False)] = True
    return probe


def gallery_data(features: np.ndarray, person_of: list[str], fraction: float, seed: int = 0) -> GalleryData:
    """Split gallery features (n, 128) with their person ids into train and probes."""
    person_ids = sorted(set(person_of))
    index = {p: n for n, p in enumerate(person_ids)}
    labels = np.array([index[p] for p in person_of], dtype=np.int64)
    probe = holdout_split(labels, fraction, seed)
    feats = np.asarray(features, dtype=np.float32)
    return GalleryData(Split(feats[~probe], labels[~probe]), Split(feats[probe], labels[probe]), person_ids)


def read_gallery(redis: "redis_lib.Redis", keys: Keys, data_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Every stored template's backbone features (n, 128) and person id, from Redis."""
    from faec_rec.index.store import Store

    store = Store(redis, keys, data_dir)
    person_of: list[str] = []
    rows: list[np.ndarray] = []
    for pid, _name, tids in store.iter_people_templates():
        for vec in store.fetch_features(tids).values():
            person_of.append(pid)
            rows.append(np.asarray(vec, dtype=np.float32))
    if not rows:
        return np.zeros((0, 128), np.float32), []
    return np.stack(rows).astype(np.float32), person_of


@dataclass
class Reference:
    """The generic reference set (LFW): features (n, 128), training identities,
    and the judging pairs as row indices (-1 = image without a usable face)."""

    features: np.ndarray
    train: Split
    left: np.ndarray
    right: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def accuracy(self, projector: "Projector") -> float:
        """LFW k-fold accuracy of ``projector`` on the judging pairs (missing face = "different")."""
        emb = projector.project(self.features)
        ok = (self.left >= 0) & (self.right >= 0)
        scores = np.full(self.same.size, -2.0)
        scores[ok] = cosine_scores(emb[self.left[ok]], emb[self.right[ok]])
        return kfold_accuracy(scores, self.same, self.fold)[0]

    def impostor_scores(self, projector: "Projector") -> tuple[np.ndarray, np.ndarray]:
        """(genuine, impostor) cosine scores of the judging pairs with both faces."""
        emb = projector.project(self.features)
        ok = (self.left >= 0) & (self.right >= 0)
        scores = cosine_scores(emb[self.left[ok]], emb[self.right[ok]])
        return scores[self.same[ok]], scores[~self.same[ok]]


def build_reference(
    features: np.ndarray,
    paths: list[Path],
    pairs: LfwPairs,
    train_folds: tuple[int, ...] = (0, 1, 2, 3, 4),
) -> Reference:
    """Split LFW features: people of ``train_folds`` pairs train the head; the
    other folds' pairs judge it. People who also appear in a judging pair are
    left out of training (LFW View 2 folds are person-disjoint, so none should)."""
    row = {Path(p): n for n, p in enumerate(paths)}
    left = np.array([row.get(Path(p), -1) for p in pairs.left], dtype=np.int64)
    right = np.array([row.get(Path(p), -1) for p in pairs.right], dtype=np.int64)
    in_train = np.isin(pairs.fold, train_folds)
    judge_people = {Path(p).parent.name for p, t in zip(pairs.left + pairs.right, np.concatenate([in_train, in_train])) if not t}
    train_people = sorted({Path(p).parent.name for p, t in zip(pairs.left + pairs.right, np.concatenate([in_train, in_train])) if t} - judge_people)
    person_index = {name: n for n, name in enumerate(train_people)}
    rows = [n for n, p in enumerate(paths) if Path(p).parent.name in person_index]
    labels = np.array([person_index[Path(paths[n]).parent.name] for n in rows], dtype=np.int64)
    feats = np.asarray(features, dtype=np.float32)
    train = Split(feats[rows], labels)
    judge = ~in_train
    return Reference(feats, train, left[judge], right[judge], pairs.same[judge], pairs.fold[judge])


def load_reference(settings: "Settings", progress: Progress | None = None, engine: Any = None) -> Reference:
    """The LFW reference from ``training.reference_dir`` (or ``<data_dir>/reference/lfw``);
    without either, the compact reference shipped with the package
    (:mod:`~faec_rec.training.shipped_reference`).

    Features come from the feature cache (``<data_dir>/cache/features``); only
    images not cached yet go through the face engine (minutes for all of LFW,
    once). Raises TrainingError when the folder or its pairs.txt is missing.
    """
    from faec_rec.training.datasets import LabelledFiles, extract_features

    root = Path(settings.training.reference_dir or Path(settings.data_dir) / "reference" / "lfw")
    pairs_txt = root / "pairs.txt"
    if not pairs_txt.is_file() and settings.training.reference_dir is None:
        # A fresh install: the compact reference shipped with the package judges instead.
        from faec_rec.training.shipped_reference import shipped_reference

        return shipped_reference()
    if not pairs_txt.is_file():
        raise TrainingError(
            f"no generic reference set at {root} (needs <person>/<images> and pairs.txt): set "
            "training.reference_dir to an LFW folder; without it a head cannot be checked for forgetting"
        )
    pairs = read_lfw_pairs(pairs_txt, root)
    images = [p for p in pairs.images if p.is_file()]
    names = sorted({p.parent.name for p in images})
    index = {n: i for i, n in enumerate(names)}
    files = LabelledFiles(images, np.array([index[p.parent.name] for p in images], dtype=np.int64), names)
    if engine is None:
        from faec_rec.faces.engine import FaceEngine

        engine = FaceEngine(settings.faces)
    cb = (lambda d, t: progress("reference features", d, t)) if progress else None
    fs = extract_features(
        files, engine, Path(settings.data_dir) / "cache" / "features", mode="detect", several="central", progress=cb
    )
    return build_reference(fs.features, fs.paths, pairs)


# ---------------------------------------------------------------------------
# Scoring and the gate
# ---------------------------------------------------------------------------

def gallery_pair_scores(projector: "Projector", data: GalleryData) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every probe against every training template: (m,) float, (m,) same-person flags."""
    probes = projector.project(data.probes.features)
    templates = projector.project(data.train.features)
    scores = probes @ templates.T
    same = data.probes.labels[:, None] == data.train.labels[None, :]
    return scores.ravel().astype(np.float64), same.ravel()


def negative_pair_scores(projector: "Projector", data: GalleryData, negatives: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Scores of each ``--not`` face against the training templates of the person it is
    *not* (impostor pairs a user has confirmed): (k,) float."""
    if not negatives or not data.train.n:
        return np.zeros(0, np.float64)
    templates = projector.project(data.train.features)
    faces = projector.project(np.stack([vec for _, vec in negatives]).astype(np.float32))
    out = []
    for face, (label, _) in zip(faces, negatives):
        own = templates[data.train.labels == label]
        out.extend((own @ face).tolist())
    return np.asarray(out, np.float64)


def score(projector: "Projector", data: GalleryData, reference: Reference | None,
          negatives: list[tuple[int, np.ndarray]] | None = None) -> dict[str, float]:
    """{"gallery_tar_at_far": TAR@1%FAR on held-out probes, "lfw_accuracy": ...}.

    ``negatives`` (label, features) from ``feedback --not`` join the impostor pairs, so a
    head that still accepts a face a user said is not that person loses TAR there."""
    out: dict[str, float] = {}
    if data.probes.n:
        s, same = gallery_pair_scores(projector, data)
        extra = negative_pair_scores(projector, data, negatives or [])
        if extra.size:
            s, same = np.concatenate([s, extra]), np.concatenate([same, np.zeros(extra.size, bool)])
        if same.any() and not same.all():
            out["gallery_tar_at_far"] = tar_at_far(s, same, GATE_FAR)[0]
    if reference is not None:
        out["lfw_accuracy"] = reference.accuracy(projector)
    return out


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def promotion_gate(current: dict[str, float], candidate: dict[str, float], max_lfw_drop: float, min_gain: float = 0.0) -> GateDecision:
    """Promote only if the gallery figure improves (by more than ``min_gain``)
    and generic accuracy drops by at most ``max_lfw_drop`` (absolute, 0.002 = 0.2 points)."""
    for name in ("gallery_tar_at_far", "lfw_accuracy"):
        if name not in current or name not in candidate:
            return GateDecision(False, f"cannot judge: {name} was not measured (too little held-out data or no reference set)")
    gain = candidate["gallery_tar_at_far"] - current["gallery_tar_at_far"]
    drop = current["lfw_accuracy"] - candidate["lfw_accuracy"]
    figures = f"gallery TAR@1%FAR {current['gallery_tar_at_far']:.4f} -> {candidate['gallery_tar_at_far']:.4f}, " \
              f"LFW {current['lfw_accuracy']:.4f} -> {candidate['lfw_accuracy']:.4f}"
    if gain <= min_gain:
        return GateDecision(False, f"no gallery improvement ({figures})")
    if drop > max_lfw_drop + 1e-12:
        return GateDecision(False, f"loses {drop * 100:.2f} LFW points, more than {max_lfw_drop * 100:.2f} allowed ({figures})")
    return GateDecision(True, f"better on the gallery within the LFW budget ({figures})")


def calibrate_threshold(candidate: "Projector", base: "Projector", reference: Reference, base_threshold: float | None) -> float | None:
    """The candidate's global threshold: the one that gives on the reference
    impostor pairs the same false-accept rate the base threshold gives there."""
    from faec_rec.index.calibration import threshold_at_far

    if base_threshold is None:
        return None
    _, base_impostor = reference.impostor_scores(base)
    far = float(np.mean(base_impostor >= base_threshold))
    genuine, impostor = reference.impostor_scores(candidate)
    return threshold_at_far(genuine, impostor, far).threshold


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

@dataclass
class TrainingSet:
    features: np.ndarray
    labels: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def training_set(
    data: GalleryData,
    reference: Reference | None,
    feedback_rows: list[tuple[int, np.ndarray]] | None = None,
    seed: int = 0,
    gallery_share: float = GALLERY_SHARE,
) -> TrainingSet:
    """Gallery training templates + confirmed feedback + a seeded sample of
    reference identities so gallery people make about ``gallery_share`` of them."""
    feats = [data.train.features]
    labels = [data.train.labels]
    counts = {"gallery_templates": data.train.n, "feedback": 0, "reference_images": 0}
    for label, vec in feedback_rows or []:
        feats.append(vec[None].astype(np.float32))
        labels.append(np.array([label]))
        counts["feedback"] += 1
    if reference is not None and reference.train.n:
        ids, c = np.unique(reference.train.labels, return_counts=True)
        ids = ids[c >= 2]
        want = int(round(data.people * (1 - gallery_share) / gallery_share)) if gallery_share < 1 else 0
        rng = np.random.default_rng([seed, 9])
        pick = rng.choice(ids, size=min(want, ids.size), replace=False) if want else np.array([], dtype=np.int64)
        mask = np.isin(reference.train.labels, pick)
        offset = data.people
        feats.append(reference.train.features[mask])
        labels.append(reference.train.labels[mask] + offset)
        counts["reference_images"] = int(mask.sum())
    return TrainingSet(np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64), counts)


def _feedback_rows(redis: "redis_lib.Redis", keys: Keys, person_ids: list[str]) -> tuple[list[tuple[int, np.ndarray]], int]:
    from faec_rec.training.feedback import read_feedback

    index = {p: n for n, p in enumerate(person_ids)}
    rows, unusable = [], 0
    for entry in read_feedback(redis, keys):
        vec = entry.vector()
        if vec is None:
            unusable += 1
            continue
        if entry.is_person and entry.person_id in index:
            rows.append((index[entry.person_id], vec))
    return rows, unusable


def _negative_rows(redis: "redis_lib.Redis", keys: Keys, person_ids: list[str]) -> list[tuple[int, np.ndarray]]:
    """``feedback --not`` faces as (label of the person they are not, features).

    Read through ``faec_rec.training.negatives`` (the visitors work; stream
    ``keys.negative_pairs()``) when it is installed; without it, none.
    """
    try:
        from faec_rec.training.negatives import read_negative_pairs  # type: ignore[import-not-found]
    except ImportError:
        return []
    index = {p: n for n, p in enumerate(person_ids)}
    rows = []
    for pair in read_negative_pairs(redis, keys, person_ids=set(person_ids)):
        vec = np.asarray(getattr(pair, "features", None), np.float32).reshape(-1)
        if pair.person_id in index and vec.shape == (128,) and np.isfinite(vec).all():
            rows.append((index[pair.person_id], vec))
    return rows


def switch_gallery(redis: "redis_lib.Redis", keys: Keys, data_dir: Path, version: str) -> bool:
    """Record a gallery version event so every replica re-projects into ``version``."""
    from faec_rec.index.store import Store

    return Store(redis, keys, data_dir).set_version(version)


def _skipped(reason: str, started: float, **extra: Any) -> dict[str, Any]:
    log.warning("training skipped: %s", reason)
    return {"status": "skipped", "reason": reason, "seconds": round(time.perf_counter() - started, 2), **extra}


def run(
    settings: "Settings",
    *,
    redis: "redis_lib.Redis | None" = None,
    reference: Reference | None = None,
    progress: Progress | None = None,
    promote: bool = True,
    **payload: Any,
) -> dict[str, Any]:
    """One retraining run (the ``train`` task and ``faec-rec train head --now``).

    Returns a JSON-able summary: status ("promoted", "rejected", "skipped"),
    reason, the candidate's version and both versions' metrics. ``promote``
    False registers the candidate without switching (dry run). Unknown
    ``payload`` keys from a task message are ignored with a warning.
    """
    from faec_rec.training.progress import ProgressReporter
    from faec_rec.training.registry import ModelRegistry

    if payload:
        log.warning("train: ignoring unknown options %s", sorted(payload))
    started = time.perf_counter()
    cfg = settings.training
    keys = Keys(settings.prefix)
    own_client = redis is None
    from faec_rec.cluster.sentinel import redis_from_url  # redis:// and redis+sentinel://

    client = redis or redis_from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
    registry = ModelRegistry.from_settings(settings, client)
    reporter = ProgressReporter(client, keys)

    def step(stage: str, done: int, total: int, loss: float | None = None) -> None:
        reporter(stage, done, total, loss)
        if progress is not None:
            progress(stage, done, total)

    try:
        with TrainingLock(client, keys, cfg.lock_ttl_s):
            reporter.start()  # only once the lock is ours: a refused run never overwrites the running one's progress
            try:
                summary = _locked_run(settings, client, keys, registry, reference, step, promote, started)
            except TrainingError as exc:
                summary = _skipped(str(exc), started, current=registry.current())
            except BaseException as exc:
                reporter.fail(f"{type(exc).__name__}: {exc}")
                raise
            reporter.finish(summary)
            return summary
    except TrainingError as exc:  # the lock is held by another run
        return _skipped(str(exc), started, current=registry.current())
    finally:
        if own_client:
            client.close()


def _locked_run(settings: "Settings", client: "redis_lib.Redis", keys: Keys, registry: Any,
                reference: "Reference | None", step: Callable[..., None], promote: bool,
                started: float) -> dict[str, Any]:
    """Steps 1-4 of :func:`run`, under the training lock; returns the run's summary."""
    from faec_rec.training.head import HeadProjector, HeadTrainConfig, train_head
    from faec_rec.training.registry import Status

    cfg = settings.training
    data_dir = Path(settings.data_dir)
    from faec_rec.index.backbone_swap import DEFAULT_BACKBONE, current_backbone

    backbone = current_backbone(client, keys)["name"]
    if backbone != DEFAULT_BACKBONE:
        # The generic reference (shipped or LFW) is the built-in backbone's features.
        return _skipped(f"the gallery is in backbone {backbone}'s features; heads are trained and judged on "
                        f"{DEFAULT_BACKBONE}'s (faec-rec models use-backbone {DEFAULT_BACKBONE} to train)",
                        started, current=registry.current())
    # 1. data
    step("gallery", 0, 1)
    feats, person_of = read_gallery(client, keys, data_dir)
    data = gallery_data(feats, person_of, cfg.holdout_fraction, cfg.seed)
    usable_people = int(np.sum(np.bincount(data.train.labels) >= 2)) if data.train.n else 0
    if usable_people < 2 or not data.probes.n:
        return _skipped(
            f"the gallery has {data.people} people and {feats.shape[0]} templates; training needs at least "
            "2 people with 3 or more templates each (2 to train, 1 held out to judge). People with one "
            "template are usable for recognition but give no positive pairs",
            started, current=registry.current(),
        )
    step("gallery", 1, 1)
    if reference is None:
        try:
            reference = load_reference(settings, step)
        except FaecError as exc:
            return _skipped(str(exc), started, current=registry.current())
    fb_rows, fb_unusable = _feedback_rows(client, keys, data.person_ids)
    tset = training_set(data, reference, fb_rows, cfg.seed)
    # 2. train
    head_cfg = HeadTrainConfig(
        loss=cfg.loss, epochs=cfg.epochs, identities_per_batch=cfg.identities_per_batch,
        images_per_identity=cfg.images_per_identity, learning_rate=cfg.learning_rate,
        anchor_weight=cfg.anchor_weight, seed=cfg.seed,
    )
    result = train_head(
        tset.features, tset.labels, head_cfg,
        progress=lambda e, n, loss: step("train", e, n, loss),
    )
    candidate = HeadProjector(result.model, "candidate")
    # 3. judge
    current_version = registry.current()
    try:
        current = registry.load(current_version)
    except FaecError as exc:
        log.error("model in service %s cannot be loaded (%s); judging against base", current_version, exc)
        current = registry.load("base")
    step("evaluate", 0, 1)
    negatives = _negative_rows(client, keys, data.person_ids)
    current_metrics = score(current, data, reference, negatives)
    candidate_metrics = score(candidate, data, reference, negatives)
    decision = promotion_gate(current_metrics, candidate_metrics, cfg.max_lfw_drop, cfg.min_gain)
    step("evaluate", 1, 1)
    base = registry.load("base")
    from faec_rec.index.calibration import default_threshold

    threshold = calibrate_threshold(candidate, base, reference, default_threshold("base"))
    metrics = {
        **{f"candidate_{k}": round(v, 5) for k, v in candidate_metrics.items()},
        **{f"parent_{k}": round(v, 5) for k, v in current_metrics.items()},
        "train_seconds": round(result.seconds, 2),
        "final_loss": round(result.losses[-1], 5) if result.losses else None,
        **tset.counts,
        "gallery_people": data.people,
        "negative_pairs": len(negatives),
        "held_out_probes": data.probes.n,
    }
    will_promote = decision.promote and promote
    record = registry.register(
        result.model, metrics=metrics, parent=current_version, threshold=threshold,
        status=Status.CANDIDATE if will_promote else Status.REJECTED, note=decision.reason,
    )
    # 4. promote
    if will_promote:
        registry.promote(record.version, reason=f"retrain: {decision.reason}")
        switch_gallery(client, keys, data_dir, record.version)
    status = "promoted" if will_promote else ("rejected" if not decision.promote else "registered")
    summary = {
        "status": status,
        "reason": decision.reason,
        "version": record.version,
        "previous": current_version,
        "current": registry.current(),
        "candidate": candidate_metrics,
        "in_service_before": current_metrics,
        "threshold": threshold,
        "training": tset.counts,
        "feedback_without_features": fb_unusable,
        "train_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("training run: %s", json.dumps(summary, default=str))
    return summary
