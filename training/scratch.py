"""A small CNN trained from scratch: the seed's three ways, as options of one run.

- ``classify``: softmax over the training identities; the 128-d layer before
  the classifier is the embedding, compared by cosine similarity.
- ``joint``: softmax and a contrastive pair loss at once, weighted
  (``class_weight``, ``pair_weight``), on balanced P x K batches.
- ``sequential``: ``classify`` first; then the CNN is frozen and a comparison
  head (:mod:`faec_rec.training.head`) is trained on its embeddings with
  balanced batches and a metric loss.

Every way is scored the same way on identities it never saw: the decision
threshold is chosen on validation identities' pairs, then pair accuracy, TAR
(same pairs accepted) and TRR (different pairs rejected) are measured on test
identities' pairs. Different-person pairs are drawn within one source set so
that image style alone (size, lighting of a set) cannot give the answer.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from faec_rec.errors import TrainingError
from faec_rec.training.batches import BalancedBatches
from faec_rec.training.datasets import CropSet, split_identities
from faec_rec.training.evaluate import PairMetrics, sample_pairs, verify
from faec_rec.training.head import HeadProjector, HeadTrainConfig, train_head

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WAYS: tuple[str, ...] = ("classify", "joint", "sequential")


@dataclass(frozen=True)
class ScratchConfig:
    """One scratch training run. Sizes in pixels (h, w); epochs count passes over the training images."""

    way: str = "sequential"
    size: tuple[int, int] = (48, 40)
    filters: tuple[int, ...] = (16, 32, 64)
    embedding_dim: int = 128
    epochs: int = 25
    batch_size: int = 64
    learning_rate: float = 2e-3
    class_weight: float = 1.0
    pair_weight: float = 1.0
    pair_margin: float = 0.9
    head_epochs: int = 30
    # Measured on a frozen classify CNN (validation / test pair accuracy):
    # contrastive 0.895/0.859, triplet 0.925/0.875, triplet + anchor 1.0
    # 0.930/0.885, AM-softmax 0.932/0.885. The triplet keeps the head's family.
    head_loss: str = "triplet"
    head_anchor: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.way not in WAYS:
            raise TrainingError(f"unknown way {self.way!r}: choose one of {', '.join(WAYS)}")


def build_cnn(size: tuple[int, int], n_classes: int, filters: tuple[int, ...] = (16, 32, 64), embedding_dim: int = 128, seed: int = 0) -> tuple["keras.Model", "keras.Model"]:
    """(embedder, classifier): the embedder maps (n, h, w, 1) uint8 grey to
    (n, embedding_dim) float32; the classifier adds softmax logits over
    ``n_classes`` on top of the same layers (training only)."""
    import keras

    init = keras.initializers.HeNormal(seed=seed)
    inp = keras.Input((size[0], size[1], 1), name="grey")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    for n, f in enumerate(filters):
        for m in range(2):
            x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, kernel_initializer=init, name=f"conv{n}_{m}")(x)
            x = keras.layers.BatchNormalization(name=f"bn{n}_{m}")(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3, seed=seed)(x)
    emb = keras.layers.Dense(embedding_dim, kernel_initializer=init, name="embedding")(x)
    embedder = keras.Model(inp, emb, name="scratch_embedder")
    h = keras.layers.ReLU()(emb)
    logits = keras.layers.Dense(n_classes, name="classes")(h)
    classifier = keras.Model(inp, [emb, logits], name="scratch_classifier")
    return embedder, classifier


def _augment(images, seed):  # noqa: ANN001, ANN202 - tf tensors
    """Random horizontal flip and a small shift (+-3 px), per image."""
    import tensorflow as tf

    flip = tf.random.stateless_uniform((tf.shape(images)[0], 1, 1, 1), seed=seed) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    pad = 3
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
    offs = tf.random.stateless_uniform((2,), seed=seed + 1, maxval=2 * pad + 1, dtype=tf.int32)
    return tf.slice(padded, [0, offs[0], offs[1], 0], [-1, h, w, -1])


@dataclass
class ScratchResult:
    """A trained scratch model and its scores. ``embed(images)`` gives the way's embedding."""

    way: str
    embedder: "keras.Model"
    head: HeadProjector | None = None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def embed(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """(n, h, w) uint8 grey -> (n, d) float32 (L2-normalised when a head is on top)."""
        out = []
        for s in range(0, images.shape[0], batch):
            out.append(np.asarray(self.embedder(images[s:s + batch, :, :, None], training=False)))
        feats = np.concatenate(out).astype(np.float32)
        return self.head.project(feats) if self.head is not None else feats


def train_scratch(
    train: CropSet,
    config: ScratchConfig,
    *,
    progress: Callable[[str, int, int, float], None] | None = None,
    base: ScratchResult | None = None,
) -> ScratchResult:
    """Train one way on ``train`` (labels may be any identity ids).

    ``base``: for "sequential", a finished "classify" result whose frozen CNN
    is reused instead of training stage one again.
    """
    import keras
    import tensorflow as tf

    from faec_rec.training.head import contrastive_loss

    if np.unique(train.labels).size < 2:
        raise TrainingError("scratch training needs at least 2 identities")
    if config.way == "sequential":
        stage_one = base if base is not None and base.way == "classify" else train_scratch(
            train, replace(config, way="classify"), progress=progress
        )
        started = time.perf_counter()
        feats = stage_one.embed(train.images)
        head_cfg = HeadTrainConfig(
            loss=config.head_loss, epochs=config.head_epochs, seed=config.seed, anchor_weight=config.head_anchor,
            learning_rate=1e-3,
        )
        hp = (lambda e, n, loss: progress("sequential-head", e, n, loss)) if progress else None
        head = train_head(feats, train.labels, head_cfg, progress=hp)
        return ScratchResult(
            "sequential",
            stage_one.embedder,
            HeadProjector(head.model, "scratch-head"),
            stage_one.losses + head.losses,
            stage_one.seconds + time.perf_counter() - started,
        )

    keras.utils.set_random_seed(config.seed)
    _, dense = np.unique(train.labels, return_inverse=True)
    dense = dense.astype(np.int32)
    n_classes = int(dense.max()) + 1
    embedder, classifier = build_cnn(config.size, n_classes, config.filters, config.embedding_dim, config.seed)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    images = train.images[:, :, :, None]
    joint = config.way == "joint"
    wc, wp, margin = float(config.class_weight), float(config.pair_weight), float(config.pair_margin)

    @tf.function(reduce_retracing=True)
    def step(x, y, seed):  # noqa: ANN001, ANN202
        x = _augment(tf.cast(x, tf.float32), seed)
        with tf.GradientTape() as tape:
            emb, logits = classifier(x, training=True)
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            loss = wc * ce if joint else ce
            if joint:
                loss += wp * contrastive_loss(tf.math.l2_normalize(emb, axis=1), y, margin)
        grads = tape.gradient(loss, classifier.trainable_variables)
        optimizer.apply_gradients(zip(grads, classifier.trainable_variables))
        return loss

    steps = max(1, images.shape[0] // config.batch_size)
    builder = BalancedBatches(dense, max(2, config.batch_size // 4), 4, config.seed) if joint else None
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(config.epochs):
        rng = np.random.default_rng([config.seed, epoch, 11])
        order = rng.permutation(images.shape[0])
        total = 0.0
        for s in range(steps):
            idx = builder.batch(epoch, s) if builder is not None else order[s * config.batch_size:(s + 1) * config.batch_size]
            seed = tf.constant([config.seed, epoch * 100_003 + s], dtype=tf.int32)
            total += float(step(tf.constant(images[idx]), tf.constant(dense[idx]), seed))
        losses.append(total / steps)
        if progress is not None:
            progress(config.way, epoch + 1, config.epochs, losses[-1])
    return ScratchResult(config.way, embedder, None, losses, time.perf_counter() - started)


@dataclass(frozen=True)
class WayScore:
    """Held-out scores of one way: test metrics at the validation threshold."""

    way: str
    test: PairMetrics
    val_accuracy: float
    test_mixed: PairMetrics  # different pairs drawn across sets too (easier)
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {
            "way": self.way,
            "pair_accuracy": round(self.test.accuracy, 4),
            "tar": round(self.test.tar, 4),
            "trr": round(self.test.trr, 4),
            "threshold": round(self.test.threshold, 4),
            "val_accuracy": round(self.val_accuracy, 4),
            "pair_accuracy_any_set_negatives": round(self.test_mixed.accuracy, 4),
            "test_pairs": self.test.n_same + self.test.n_different,
            "train_seconds": round(self.seconds, 1),
        }


def score_way(result: ScratchResult, val: CropSet, test: CropSet, n_pairs: int = 2000, seed: int = 0) -> WayScore:
    """Threshold on validation pairs, metrics on test pairs (identities unseen in training)."""
    val_emb = result.embed(val.images)
    test_emb = result.embed(test.images)
    val_pairs = sample_pairs(val.labels, n_pairs, seed, groups=val.groups)
    val_metrics = verify(val_emb, val_pairs)
    test_pairs = sample_pairs(test.labels, n_pairs, seed + 1, groups=test.groups)
    test_metrics = verify(test_emb, test_pairs, threshold=val_metrics.threshold)
    mixed_pairs = sample_pairs(test.labels, n_pairs, seed + 2)
    mixed = verify(test_emb, mixed_pairs, threshold=val_metrics.threshold)
    return WayScore(result.way, test_metrics, val_metrics.accuracy, mixed, result.seconds)


def run_ways(
    crops: CropSet,
    ways: tuple[str, ...] = WAYS,
    config: ScratchConfig | None = None,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    n_pairs: int = 2000,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> list[WayScore]:
    """Split ``crops`` by identity (per source set), train each way on the
    training identities and score it on held-out ones. "sequential" reuses
    the "classify" CNN when both are asked for, so the comparison is fair."""
    config = config or ScratchConfig()
    for way in ways:
        if way not in WAYS:
            raise TrainingError(f"unknown way {way!r}: choose from {', '.join(WAYS)}")
    train_ids, val_ids, test_ids = split_identities(
        len(crops.names), fractions, config.seed, groups=crops.identity_groups()
    )
    train, val, test = crops.subset(train_ids), crops.subset(val_ids), crops.subset(test_ids)
    log.info("scratch split: %d/%d/%d identities, %d/%d/%d images",
             train_ids.size, val_ids.size, test_ids.size, len(train.labels), len(val.labels), len(test.labels))
    scores: list[WayScore] = []
    done: dict[str, ScratchResult] = {}
    order = sorted(ways, key=lambda w: WAYS.index(w))
    for way in order:
        cfg = replace(config, way=way)
        result = train_scratch(train, cfg, progress=progress, base=done.get("classify"))
        done[way] = result
        scores.append(score_way(result, val, test, n_pairs, config.seed))
        log.info("way %s: %s", way, scores[-1].to_json())
    return scores
