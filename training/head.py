"""The comparison head: a small residual dense block on the frozen backbone's
features, initialised to the identity, trained with a metric loss on balanced
P x K batches.

Architecture (built-in Keras layers only, so a saved ``.keras`` file reloads
with ``safe_mode=True``)::

    x = l2(features)                      (n, 128)
    y = x + W2 relu(W1 x + b1) + b2       W2, b2 start at zero
    out = l2(y)                           (n, 128), L2-normalised

Because W2 and b2 start at zero, an untrained head returns exactly the
L2-normalised backbone features: the "base" projection. Training moves it
away from the identity only as far as the data asks, and ``anchor_weight``
penalises drifting from the base embedding so that faces in general (the
generic reference set) are not forgotten.

:class:`HeadProjector` implements the gallery's Projector protocol
(``version``, ``project``) with a pure numpy forward pass, so projecting a
gallery needs no TensorFlow call and is thread-safe.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from faec_rec.errors import ModelError, TrainingError, VectorError
from faec_rec.training.batches import BalancedBatches

if TYPE_CHECKING:  # keras is imported lazily: importing this module must stay cheap
    import keras

log = logging.getLogger(__name__)

FEATURE_DIM = 128
LossName = Literal["contrastive", "triplet", "amsoftmax"]
LOSSES: tuple[str, ...] = ("contrastive", "triplet", "amsoftmax")

_HIDDEN = "residual_hidden"
_OUT = "residual_out"


def build_head(dim: int = FEATURE_DIM, hidden: int = 256, seed: int = 0) -> "keras.Model":
    """A fresh identity-initialised head: (n, dim) raw features -> (n, dim) L2-normalised."""
    import keras

    inp = keras.Input((dim,), name="features")
    x = keras.layers.UnitNormalization(name="normalise_in")(inp)
    h = keras.layers.Dense(
        hidden,
        activation="relu",
        kernel_initializer=keras.initializers.HeUniform(seed=seed),
        name=_HIDDEN,
    )(x)
    delta = keras.layers.Dense(dim, kernel_initializer="zeros", bias_initializer="zeros", name=_OUT)(h)
    y = keras.layers.Add(name="residual_add")([x, delta])
    out = keras.layers.UnitNormalization(name="normalise_out")(y)
    return keras.Model(inp, out, name="comparison_head")


def _l2(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(norms).all():
        raise VectorError(f"{what} contain NaN or inf: check the features fed to the projection")
    if (norms < 1e-12).any():
        raise VectorError(f"{what} contain an all-zero row: a face whose features are zero cannot be projected")
    return (x / norms).astype(np.float32)


def check_features(features: np.ndarray, dim: int = FEATURE_DIM) -> np.ndarray:
    """Validate (n, dim) finite features and return them as float32."""
    arr = np.asarray(features)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise VectorError(f"expected features of shape (n, {dim}), got {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise VectorError(f"features must be numbers, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


class HeadProjector:
    """A trained head as a Projector: ``project((n,128) raw features) -> (n,128) L2-normalised``.

    Built from a Keras head model; the forward pass runs in numpy from the
    model's weights (identical to the Keras output to float32 rounding).
    """

    def __init__(self, model: "keras.Model", version: str) -> None:
        try:
            w1, b1 = (np.asarray(v, dtype=np.float32) for v in model.get_layer(_HIDDEN).get_weights())
            w2, b2 = (np.asarray(v, dtype=np.float32) for v in model.get_layer(_OUT).get_weights())
        except ValueError as exc:
            raise ModelError(f"model {model.name!r} is not a comparison head (no {_HIDDEN}/{_OUT} layers)") from exc
        if w1.shape[0] != w2.shape[1]:
            raise ModelError(f"comparison head {version}: input {w1.shape[0]} and output {w2.shape[1]} sizes differ")
        self.version = version
        self.threshold: float | None = None  # calibrated global threshold, set by the registry
        self.dim = int(w1.shape[0])
        self._w1, self._b1, self._w2, self._b2 = w1, b1, w2, b2
        self.model = model

    def project(self, features: np.ndarray) -> np.ndarray:
        """(n, 128) raw backbone features -> (n, 128) float32 L2-normalised embeddings."""
        x = _l2(check_features(features, self.dim), "features")
        h = np.maximum(x @ self._w1 + self._b1, 0.0)
        return _l2(x + h @ self._w2 + self._b2, "projected features")

    def __repr__(self) -> str:
        return f"HeadProjector(version={self.version!r})"


def save_head(model: "keras.Model", path: Path) -> Path:
    """Write the head as a ``.keras`` file atomically (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"{path}: a comparison head is saved as a .keras file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    # fsync the file, then the folder after the rename: a power cut must not leave
    # a registered version whose file is empty or absent.
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_head(path: Path, version: str) -> HeadProjector:
    """Load a head saved by :func:`save_head` in Keras safe mode (no code runs from the file)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"comparison head file {path} does not exist")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # keras raises many types for a bad archive
        raise ModelError(f"cannot load comparison head {path}: {exc}") from exc
    return HeadProjector(model, version)


# ---------------------------------------------------------------------------
# Losses on one batch: embeddings (m, d) L2-normalised, labels (m,) int.
# ---------------------------------------------------------------------------

def _pair_masks(tf, labels):  # noqa: ANN001, ANN202 - tf module and tensors
    """(positive, negative) boolean (m, m) masks; the diagonal is neither."""
    same = tf.equal(labels[:, None], labels[None, :])
    eye = tf.eye(tf.shape(labels)[0], dtype=tf.bool)
    return tf.logical_and(same, tf.logical_not(eye)), tf.logical_not(same)


def contrastive_loss(emb, labels, margin: float = 0.9):  # noqa: ANN001, ANN201
    """Mean over positive pairs of d^2 plus mean over negative pairs of
    max(0, margin - d)^2, d the Euclidean distance of unit vectors (0..2).
    Positives and negatives are averaged separately so both weigh the same."""
    import tensorflow as tf

    sim = tf.matmul(emb, emb, transpose_b=True)
    d2 = tf.maximum(2.0 - 2.0 * sim, 0.0)
    d = tf.sqrt(d2 + 1e-12)
    pos, neg = _pair_masks(tf, labels)
    pos_f = tf.cast(pos, emb.dtype)
    neg_f = tf.cast(neg, emb.dtype)
    pos_term = tf.reduce_sum(d2 * pos_f) / tf.maximum(tf.reduce_sum(pos_f), 1.0)
    neg_term = tf.reduce_sum(tf.square(tf.nn.relu(margin - d)) * neg_f) / tf.maximum(tf.reduce_sum(neg_f), 1.0)
    return pos_term + neg_term


def triplet_semihard_loss(emb, labels, margin: float = 0.2):  # noqa: ANN001, ANN201
    """Triplet loss with semi-hard mining (FaceNet): for each anchor-positive
    pair, the closest negative that is farther than the positive; where none
    is, the farthest negative. Distances are Euclidean on unit vectors."""
    import tensorflow as tf

    sim = tf.matmul(emb, emb, transpose_b=True)
    d = tf.sqrt(tf.maximum(2.0 - 2.0 * sim, 0.0) + 1e-12)
    pos, neg = _pair_masks(tf, labels)
    big = tf.constant(1e4, emb.dtype)
    d_ap = d[:, :, None]  # (a, p, 1)
    d_an = d[:, None, :]  # (a, 1, n)
    neg3 = tf.broadcast_to(neg[:, None, :], tf.shape(d_an * d_ap))
    semi = tf.logical_and(neg3, d_an > d_ap)
    closest_semi = tf.reduce_min(tf.where(semi, d_an + 0 * d_ap, big), axis=2)  # (a, p)
    farthest = tf.reduce_max(tf.where(neg, d, -big), axis=1)[:, None]  # (a, 1)
    has_semi = tf.reduce_any(semi, axis=2)
    chosen = tf.where(has_semi, closest_semi, farthest + 0 * closest_semi)
    per_pair = tf.nn.relu(d - chosen + margin)
    pos_f = tf.cast(pos, emb.dtype)
    return tf.reduce_sum(per_pair * pos_f) / tf.maximum(tf.reduce_sum(pos_f), 1.0)


def amsoftmax_loss(emb, labels, class_weights, margin: float = 0.35, scale: float = 30.0):  # noqa: ANN001, ANN201
    """Additive-margin softmax (CosFace): cross-entropy of scale * (cos - margin
    on the true class) against L2-normalised class weights (c, d)."""
    import tensorflow as tf

    w = tf.math.l2_normalize(class_weights, axis=1)
    cos = tf.matmul(emb, w, transpose_b=True)
    onehot = tf.one_hot(labels, tf.shape(w)[0], dtype=emb.dtype)
    logits = scale * (cos - margin * onehot)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class HeadTrainConfig:
    """Hyper-parameters of one head training run.

    Defaults as measured by benchmarks/training.py (grey classic sets gallery
    + LFW reference): semi-hard triplet with anchor 2.0 raised gallery
    TAR@1%FAR 0.684 -> 0.841 for a 0.06-point LFW loss; contrastive gained
    less and lost more LFW; additive-margin softmax gained most but lost
    0.5-0.6 LFW points whatever the anchor."""

    loss: str = "triplet"
    epochs: int = 30
    identities_per_batch: int = 16
    images_per_identity: int = 4
    learning_rate: float = 1e-3
    margin: float | None = None  # None: the loss's own default
    hidden: int = 256
    anchor_weight: float = 2.0  # penalty on moving away from the base embedding
    seed: int = 0
    max_steps: int | None = None  # cap on steps in total (tests, quick runs)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise TrainingError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")


@dataclass
class HeadTrainResult:
    """The trained head model, per-epoch mean losses and wall time in seconds."""

    model: "keras.Model"
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def _dense_labels(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.astype(np.int32)


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    config: HeadTrainConfig | None = None,
    *,
    model: "keras.Model | None" = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> HeadTrainResult:
    """Train a comparison head on stored backbone features.

    features: (n, d) raw features (d = 128 for the backbone); labels: (n,) identity ids (any
    ints). ``model`` continues training an existing head (default: a fresh
    identity-initialised one). ``progress(epoch, epochs, loss)`` is called
    after each epoch. Raises TrainingError when the data cannot give balanced
    batches (fewer than two identities with two images each).
    """
    import keras
    import tensorflow as tf

    config = config or HeadTrainConfig()
    feats = check_features(features, int(np.shape(features)[-1]) if np.ndim(features) == 2 else FEATURE_DIM)
    if not np.isfinite(feats).all():
        raise VectorError("training features contain NaN or inf")
    labels = _dense_labels(labels)
    if labels.shape[0] != feats.shape[0]:
        raise TrainingError(f"{feats.shape[0]} feature rows but {labels.shape[0]} labels")
    batches = BalancedBatches(labels, config.identities_per_batch, config.images_per_identity, config.seed)
    keras.utils.set_random_seed(config.seed)
    head = model if model is not None else build_head(feats.shape[1], config.hidden, config.seed)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    n_classes = int(labels.max()) + 1
    trainable = list(head.trainable_variables)
    class_weights = None
    if config.loss == "amsoftmax":
        init = tf.random.stateless_normal((n_classes, feats.shape[1]), seed=(config.seed, 1))
        # Start each class weight at its mean base embedding: fast, stable start.
        base = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        sums = np.zeros((n_classes, feats.shape[1]), np.float32)
        np.add.at(sums, labels, base)
        counts = np.bincount(labels, minlength=n_classes)[:, None]
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), init.numpy())
        class_weights = tf.Variable(centres.astype(np.float32), name="class_weights")
        trainable.append(class_weights)
    margin = config.margin
    anchor = float(config.anchor_weight)

    def loss_fn(emb, y, x):  # noqa: ANN001, ANN202
        if config.loss == "contrastive":
            metric = contrastive_loss(emb, y, 0.9 if margin is None else margin)
        elif config.loss == "triplet":
            metric = triplet_semihard_loss(emb, y, 0.2 if margin is None else margin)
        else:
            metric = amsoftmax_loss(emb, y, class_weights, 0.35 if margin is None else margin)
        base = tf.math.l2_normalize(x, axis=1)
        drift = tf.reduce_mean(tf.reduce_sum(tf.square(emb - base), axis=1))
        return metric + anchor * drift

    @tf.function(reduce_retracing=True)
    def step(x, y):  # noqa: ANN001, ANN202
        with tf.GradientTape() as tape:
            emb = head(x, training=True)
            loss = loss_fn(emb, y, x)
        grads = tape.gradient(loss, trainable)
        optimizer.apply_gradients(zip(grads, trainable))
        return loss

    result = HeadTrainResult(model=head)
    started = time.perf_counter()
    steps = 0
    for epoch in range(config.epochs):
        total = 0.0
        count = 0
        for idx in batches.epoch(epoch):
            loss = step(tf.constant(feats[idx]), tf.constant(labels[idx]))
            total += float(loss)
            count += 1
            steps += 1
            if config.max_steps is not None and steps >= config.max_steps:
                break
        result.losses.append(total / max(count, 1))
        if progress is not None:
            progress(epoch + 1, config.epochs, result.losses[-1])
        log.debug("head epoch %d/%d loss %.4f", epoch + 1, config.epochs, result.losses[-1])
        if config.max_steps is not None and steps >= config.max_steps:
            break
    result.seconds = time.perf_counter() - started
    result.steps = steps
    return result


def batch_loss(
    model: "keras.Model",
    features: np.ndarray,
    labels: np.ndarray,
    config: HeadTrainConfig | None = None,
    batches: int = 20,
) -> float:
    """Mean metric loss (contrastive or triplet, without the anchor term) of a
    head over ``batches`` seeded balanced batches: a before/after check."""
    import tensorflow as tf

    config = config or HeadTrainConfig()
    labels = _dense_labels(labels)
    feats = check_features(features, int(np.shape(features)[-1]) if np.ndim(features) == 2 else FEATURE_DIM)
    builder = BalancedBatches(labels, config.identities_per_batch, config.images_per_identity, config.seed + 10_000)
    values = []
    for n in range(batches):
        idx = builder.batch(0, n)
        emb = model(tf.constant(feats[idx]), training=False)
        y = tf.constant(labels[idx])
        if config.loss == "triplet":
            values.append(float(triplet_semihard_loss(emb, y, 0.2 if config.margin is None else config.margin)))
        else:
            values.append(float(contrastive_loss(emb, y, 0.9 if config.margin is None else config.margin)))
    return float(np.mean(values))
