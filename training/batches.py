"""Balanced P x K batches: P identities, K images each, seeded and deterministic.

Every batch of ``P * K`` indices holds exactly ``P`` identities with ``K``
samples each, so each anchor has ``K - 1`` positives and ``(P - 1) * K``
negatives: the same/different ratio is fixed by P and K instead of by the
accident of how many images each person has (the seed's joint run guessed
"different" for everything because its pairs were ~all negatives).

Identities with a single image cannot give a positive pair; they are left out
of the batches (they are still usable for enrolment) and
:func:`usable_identities` reports them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from faec_rec.errors import TrainingError


def usable_identities(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split identity labels into (usable, single-image) arrays of label values.

    labels: (n,) int. An identity needs at least two images to give a positive pair.
    """
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return values[counts >= 2], values[counts < 2]


@dataclass
class BalancedBatches:
    """P x K batch builder over integer identity ``labels`` (n,).

    ``batch(epoch, step)`` is a pure function of (seed, epoch, step): the same
    call always gives the same indices. Within an epoch the identities are
    visited in a seeded permutation, so every usable identity appears about
    equally often. An identity with fewer than K images contributes all its
    images and is topped up by repeats (never fewer than 2 distinct images).
    """

    labels: np.ndarray
    identities_per_batch: int = 16
    images_per_identity: int = 4
    seed: int = 0
    _by_identity: dict[int, np.ndarray] = field(init=False, repr=False)
    _usable: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.size == 0:
            raise TrainingError("batch builder needs a non-empty 1-d array of identity labels")
        if self.identities_per_batch < 2:
            raise TrainingError("identities_per_batch must be at least 2 (negatives need two people)")
        if self.images_per_identity < 2:
            raise TrainingError("images_per_identity must be at least 2 (positives need two images)")
        self.labels = labels
        usable, single = usable_identities(labels)
        if usable.size < 2:
            raise TrainingError(
                f"need at least 2 identities with 2 or more images each to build balanced batches; "
                f"found {usable.size} (and {single.size} with a single image, usable for enrolment only)"
            )
        self._usable = usable
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.searchsorted(sorted_labels, usable, side="left")
        ends = np.searchsorted(sorted_labels, usable, side="right")
        self._by_identity = {int(u): order[s:e] for u, s, e in zip(usable, starts, ends)}

    @property
    def p(self) -> int:
        """Identities per batch (capped at the number of usable identities)."""
        return min(self.identities_per_batch, int(self._usable.size))

    @property
    def k(self) -> int:
        return self.images_per_identity

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: enough that each usable identity appears at least
        once and about every usable sample is drawn once (at least 1)."""
        n_samples = sum(m.size for m in self._by_identity.values())
        by_identity = -(-int(self._usable.size) // self.p)
        by_sample = -(-n_samples // self.batch_size)
        return max(1, by_identity, by_sample)

    @property
    def usable(self) -> np.ndarray:
        """Label values of identities with two or more images."""
        return self._usable

    def _identity_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 0])
        return rng.permutation(self._usable)

    def batch(self, epoch: int, step: int) -> np.ndarray:
        """Indices into ``labels`` of one batch: (P * K,) int64, grouped by identity."""
        order = self._identity_order(epoch)
        n = order.size
        start = (step * self.p) % n
        chosen = np.take(order, np.arange(start, start + self.p), mode="wrap")
        rng = np.random.default_rng([self.seed, epoch, step + 1])
        out = np.empty(self.p * self.k, dtype=np.int64)
        for slot, identity in enumerate(chosen):
            members = self._by_identity[int(identity)]
            if members.size >= self.k:
                pick = rng.choice(members, size=self.k, replace=False)
            else:
                extra = rng.choice(members, size=self.k - members.size, replace=True)
                pick = np.concatenate([rng.permutation(members), extra])
            out[slot * self.k:(slot + 1) * self.k] = pick
        return out

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        """The ``steps_per_epoch`` batches of one epoch."""
        for step in range(self.steps_per_epoch):
            yield self.batch(epoch, step)


def pair_counts(batch_labels: np.ndarray) -> tuple[int, int]:
    """(positive, negative) unordered pair counts in one batch's labels (m,)."""
    labels = np.asarray(batch_labels)
    same = labels[:, None] == labels[None, :]
    iu = np.triu_indices(labels.size, k=1)
    pos = int(same[iu].sum())
    return pos, int(iu[0].size - pos)
