"""Verification metrics on pair scores: accuracy at a threshold, TAR and TRR
separately, TAR at a fixed FAR, the LFW 10-fold protocol, and pair sampling.

Everything here is pure numpy on similarity scores (higher = more alike) and
boolean "same person" flags; the LFW file format is read at the edge
(:func:`read_lfw_pairs`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from faec_rec.errors import TrainingError


@dataclass(frozen=True)
class PairMetrics:
    """Verification figures at one threshold.

    accuracy: fraction of pairs decided right; tar: true accept rate (same pairs
    accepted); trr: true reject rate (different pairs rejected); far = 1 - trr.
    """

    accuracy: float
    tar: float
    trr: float
    threshold: float
    n_same: int
    n_different: int

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _check(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(same, dtype=bool).ravel()
    if scores.shape != same.shape:
        raise TrainingError(f"scores {scores.shape} and same-flags {same.shape} differ in length")
    if not same.any() or same.all():
        raise TrainingError("pair metrics need both same-person and different-person pairs")
    if not np.isfinite(scores).all():
        raise TrainingError("pair scores contain NaN or inf")
    return scores, same


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (n, d) and (n, d) arrays -> (n,) float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-12)


def metrics_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> PairMetrics:
    """Accept a pair as "same" when score >= threshold."""
    scores, same = _check(scores, same)
    accept = scores >= threshold
    tar = float(accept[same].mean())
    trr = float((~accept[~same]).mean())
    acc = float((accept == same).mean())
    return PairMetrics(acc, tar, trr, float(threshold), int(same.sum()), int((~same).sum()))


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the highest pair accuracy on these pairs.

    Candidates are midpoints between consecutive sorted scores (and the ends),
    evaluated in one vectorised pass: O(n log n).
    """
    scores, same = _check(scores, same)
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    y = same[order]
    n = s.size
    # Threshold just above s[i-1] accepts s[i:]: correct = negatives below + positives at/above.
    neg_below = np.concatenate([[0], np.cumsum(~y)])
    pos_at_or_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = neg_below + pos_at_or_above  # index i: accept s[i:]
    # Only cut between distinct values.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] != s[:-1]
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        return float(s[0] - 1e-6)
    if best == n:
        return float(s[-1] + 1e-6)
    return float((s[best - 1] + s[best]) / 2)


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 0.01) -> tuple[float, float]:
    """(TAR, threshold) at the lowest threshold whose false-accept rate is <= ``far``.

    The threshold sits just above the impostor score at the (1 - far) quantile,
    so at most ``floor(far * n_different)`` impostor pairs are accepted.
    """
    scores, same = _check(scores, same)
    if not 0 <= far < 1:
        raise TrainingError(f"far must be in [0, 1), got {far}")
    impostor = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * impostor.size))
    threshold = float(np.nextafter(impostor[allowed], np.inf)) if allowed < impostor.size else float(impostor[-1])
    tar = float((scores[same] >= threshold).mean())
    return tar, threshold


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float, list[float]]:
    """The LFW protocol: for each fold, pick the threshold on the other folds and
    score this one. Returns (mean accuracy, std, per-fold thresholds)."""
    scores, same = _check(scores, same)
    folds = np.asarray(folds).ravel()
    if folds.shape != scores.shape:
        raise TrainingError("folds must give one fold number per pair")
    accs: list[float] = []
    thresholds: list[float] = []
    for fold in np.unique(folds):
        test = folds == fold
        t = best_threshold(scores[~test], same[~test])
        thresholds.append(t)
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
    return float(np.mean(accs)), float(np.std(accs)), thresholds


def sample_pairs(
    labels: np.ndarray,
    n_pairs: int,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced same/different index pairs over labelled samples.

    labels: (n,) int identity per sample. Returns (i, j, same): each (m,), with
    m <= n_pairs, half same-person pairs and half different-person pairs, no
    pair of a sample with itself. ``groups`` (n,), when given, draws each
    different-person pair from one group (e.g. one source data set), so a pair
    cannot be told apart by image style alone.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 7])
    by_label: dict[int, np.ndarray] = {}
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        by_label[int(value)] = members
    multi = [v for v, m in by_label.items() if m.size >= 2]
    if not multi:
        raise TrainingError("no identity has two samples: cannot form same-person pairs")
    if len(by_label) < 2:
        raise TrainingError("only one identity: cannot form different-person pairs")
    half = n_pairs // 2
    # Same pairs: pick identities proportionally to how many pairs they hold.
    weights = np.array([by_label[v].size * (by_label[v].size - 1) for v in multi], dtype=np.float64)
    ids = rng.choice(len(multi), size=half, p=weights / weights.sum())
    si, sj = [], []
    for k in ids:
        a, b = rng.choice(by_label[multi[k]], size=2, replace=False)
        si.append(a)
        sj.append(b)
    # Different pairs.
    di, dj = [], []
    if groups is not None:
        groups = np.asarray(groups)
        group_members = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
        group_ok = [g for g, m in group_members.items() if np.unique(labels[m]).size >= 2]
        if not group_ok:
            raise TrainingError("no group holds two identities: cannot form within-group different pairs")
        sizes = np.array([group_members[g].size for g in group_ok], dtype=np.float64)
    tries = 0
    while len(di) < half and tries < half * 50:
        tries += 1
        if groups is not None:
            g = group_ok[int(rng.choice(len(group_ok), p=sizes / sizes.sum()))]
            a, b = rng.choice(group_members[g], size=2, replace=False)
        else:
            a, b = rng.choice(labels.size, size=2, replace=False)
        if labels[a] != labels[b]:
            di.append(a)
            dj.append(b)
    i = np.array(si + di, dtype=np.int64)
    j = np.array(sj + dj, dtype=np.int64)
    same = np.array([True] * len(si) + [False] * len(di))
    return i, j, same


def verify(
    embeddings: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float | None = None,
) -> PairMetrics:
    """Pair metrics of (n, d) embeddings on (i, j, same) pairs by cosine similarity.

    threshold None picks the best one on these same pairs (use that only on a
    validation split; pass the validation threshold when scoring a test split).
    """
    i, j, same = pairs
    scores = cosine_scores(embeddings[i], embeddings[j])
    t = best_threshold(scores, same) if threshold is None else threshold
    return metrics_at(scores, same, t)


@dataclass(frozen=True)
class LfwPairs:
    """LFW View 2 pairs as image paths: left (m,), right (m,), same (m,) bool, fold (m,) int."""

    left: list[Path]
    right: list[Path]
    same: np.ndarray
    fold: np.ndarray

    @property
    def images(self) -> list[Path]:
        """Every distinct image path the pairs name, sorted."""
        return sorted(set(self.left) | set(self.right))


def read_lfw_pairs(pairs_txt: Path, image_root: Path | None = None) -> LfwPairs:
    """Parse ``pairs.txt`` (header "folds n", then per fold n same lines
    ``name i j`` and n different lines ``name1 i name2 j``) into image paths
    under ``image_root`` (default: the file's folder): ``<name>/<name>_<i:04d>.jpg``."""
    pairs_txt = Path(pairs_txt)
    root = Path(image_root) if image_root else pairs_txt.parent
    try:
        lines = [line.split() for line in pairs_txt.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise TrainingError(f"cannot read LFW pairs file {pairs_txt}: {exc.strerror}") from exc
    try:
        n_folds, per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as exc:
        raise TrainingError(f"{pairs_txt}: first line must be '<folds> <pairs per class>'") from exc
    body = lines[1:]
    if len(body) != n_folds * per * 2:
        raise TrainingError(f"{pairs_txt}: expected {n_folds * per * 2} pair lines, found {len(body)}")

    def path(name: str, idx: str) -> Path:
        return root / name / f"{name}_{int(idx):04d}.jpg"

    left, right, same, fold = [], [], [], []
    for n, parts in enumerate(body):
        if len(parts) == 3:
            left.append(path(parts[0], parts[1]))
            right.append(path(parts[0], parts[2]))
            same.append(True)
        elif len(parts) == 4:
            left.append(path(parts[0], parts[1]))
            right.append(path(parts[2], parts[3]))
            same.append(False)
        else:
            raise TrainingError(f"{pairs_txt}: line {n + 2} is not a pair: {' '.join(parts)!r}")
        fold.append(n // (per * 2))
    return LfwPairs(left, right, np.array(same), np.array(fold))


def lfw_accuracy(
    embeddings: dict[Path, np.ndarray] | None,
    pairs: LfwPairs,
    *,
    vectors: np.ndarray | None = None,
    index: dict[Path, int] | None = None,
) -> tuple[float, float]:
    """LFW 10-fold accuracy (mean, std) of embeddings by cosine similarity.

    Give either ``embeddings`` (path -> (d,) vector) or ``vectors`` (n, d) with
    ``index`` (path -> row). A pair with a missing image counts as "different"
    (score -inf), as the LFW protocol for a pipeline that missed a face.
    """
    if embeddings is None:
        if vectors is None or index is None:
            raise TrainingError("lfw_accuracy needs embeddings, or vectors with an index")
        lookup = {p: vectors[r] for p, r in index.items()}
    else:
        lookup = embeddings
    scores = np.full(pairs.same.size, -2.0)
    for n, (a, b) in enumerate(zip(pairs.left, pairs.right)):
        va = lookup.get(a)
        vb = lookup.get(b)
        if va is not None and vb is not None:
            scores[n] = float(cosine_scores(va[None], vb[None])[0])
    mean, std, _ = kfold_accuracy(scores, pairs.same, pairs.fold)
    return mean, std
