"""The generic reference shipped with the package: retraining needs no dataset placed by hand.

``training/reference/generic.npz`` holds backbone features (float16, 128-d, raw dlib
scale, mirror-averaged as served) of every face the engine finds in four small face
sets whose terms allow redistribution (MIT and Apache-2.0; see
``training/reference/NOTICE.md``): 31 people, about 120 photos. No image is shipped.

It is too small to teach a head anything generic, so it only *judges*: every
same-person pair and every different-person pair of it, in 10 folds, make the
"does the head still work on faces it was not trained on" check of the promotion
gate and the threshold calibration of a new head (same false-accept rate as base
there). The head itself trains on the gallery, named visitors and feedback.

Rebuilt with ``python -m benchmarks.build_reference`` (from the engine's features).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from faec_rec.errors import TrainingError

log = logging.getLogger(__name__)

REFERENCE_FILE = Path(__file__).resolve().parent / "reference" / "generic.npz"
FOLDS = 10


def load_arrays(path: Path = REFERENCE_FILE) -> dict[str, np.ndarray]:
    """``features`` (n, 128) float32, ``labels`` (n,) int, ``people`` names, ``sources``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise TrainingError(f"the shipped reference {path} cannot be read ({exc}); reinstall faec-rec") from exc
    feats = np.asarray(arrays.get("features"), dtype=np.float32)
    labels = np.asarray(arrays.get("labels"), dtype=np.int64)
    if feats.ndim != 2 or feats.shape[1] != 128 or labels.shape != (feats.shape[0],) or not np.isfinite(feats).all():
        raise TrainingError(f"the shipped reference {path} is malformed; reinstall faec-rec")
    arrays["features"], arrays["labels"] = feats, labels
    return arrays


def shipped_reference(path: Path = REFERENCE_FILE, seed: int = 0):  # noqa: ANN201 - Reference (import cycle)
    """A :class:`~faec_rec.training.retrain.Reference` from the shipped features: no
    training identities; judging pairs = all same-person and all different-person pairs,
    assigned to ``FOLDS`` folds at random (seeded)."""
    from faec_rec.training.retrain import Reference, Split

    arrays = load_arrays(path)
    feats, labels = arrays["features"], arrays["labels"]
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    fold = np.random.default_rng([seed, 15]).integers(0, FOLDS, size=i.size)
    empty = Split(np.zeros((0, 128), np.float32), np.zeros(0, np.int64))
    log.info("generic reference: the shipped one (%d faces of %d people, %d same / %d different pairs)",
             len(labels), len(np.unique(labels)), int(same.sum()), int((~same).sum()))
    return Reference(feats, empty, i.astype(np.int64), j.astype(np.int64), same, fold)
