"""The open-set rule: when is the nearest enrolled person really that person?

Pure functions over similarity scores (cosine of L2-normalised vectors, in
[-1, 1]). The rule, applied to each query face:

1. ``best`` is the enrolled person with the highest similarity to the query
   (the maximum over that person's templates); ``runner_up`` is the best
   *other* person.
2. The threshold is the global one, or, with per-person thresholds on, that
   person's own threshold (:func:`person_threshold`): the global threshold
   raised towards the similarities that *other* enrolled people already reach
   against this person's templates, so people who resemble many others need
   more evidence.
3. ``known`` if ``best.score >= threshold`` and ``best.score - runner_up.score
   >= margin`` (no runner-up passes the margin test); otherwise ``unknown``.
   An empty gallery answers ``unknown`` for every face.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class Decision(str, Enum):
    """The answer for one face."""

    KNOWN = "known"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RunnerUp:
    """The best-scoring person other than the match."""

    person_id: str
    name: str
    score: float


@dataclass(frozen=True)
class Match:
    """The gallery's answer for one query face.

    ``person_id``/``name``/``score`` are the nearest enrolled person even when
    the decision is ``unknown`` (None / -1.0 when the gallery is empty);
    ``threshold`` is the one the decision used; ``template_id`` is the nearest
    template of that person.
    """

    person_id: str | None
    name: str | None
    score: float
    decision: Decision
    threshold: float
    runner_up: RunnerUp | None = None
    template_id: str | None = None

    @property
    def known(self) -> bool:
        return self.decision is Decision.KNOWN

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (scores rounded to 4 decimals)."""
        return {
            "person_id": self.person_id if self.known else None,
            "name": self.name if self.known else None,
            "decision": self.decision.value,
            "score": round(self.score, 4),
            "threshold": round(self.threshold, 4),
            "nearest": {"person_id": self.person_id, "name": self.name, "template_id": self.template_id},
            "runner_up": None
            if self.runner_up is None
            else {"person_id": self.runner_up.person_id, "name": self.runner_up.name, "score": round(self.runner_up.score, 4)},
        }


def unknown_match(threshold: float) -> Match:
    """The answer when nothing is enrolled."""
    return Match(person_id=None, name=None, score=-1.0, decision=Decision.UNKNOWN, threshold=threshold)


def person_threshold(
    impostor_scores: np.ndarray,
    global_threshold: float,
    *,
    quantile: float = 0.9,
    guard: float = 0.02,
    max_raise: float = 0.15,
) -> float:
    """One person's threshold from their impostor similarities.

    ``impostor_scores``: ``(t,)``, for each of the person's ``t`` templates,
    the similarity of the nearest template of any *other* enrolled person. The
    threshold is ``clip(quantile_q(impostor_scores) + guard, global, global +
    max_raise)``: never below the global threshold, raised to just above what
    enrolled look-alikes already score against this person (a quantile, so one
    odd template of many does not decide), and capped so that nobody is made
    unrecognisable. No impostors (a gallery of one) gives the global threshold.
    """
    scores = np.asarray(impostor_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return float(global_threshold)
    level = float(np.quantile(scores, quantile)) + guard
    return float(min(global_threshold + max_raise, max(global_threshold, level)))


def decide(score: float, runner_up_score: float | None, threshold: float, margin: float) -> Decision:
    """``known`` iff ``score >= threshold`` and the lead over the runner-up is at least ``margin``."""
    if score < threshold:
        return Decision.UNKNOWN
    if runner_up_score is not None and score - runner_up_score < margin:
        return Decision.UNKNOWN
    return Decision.KNOWN
