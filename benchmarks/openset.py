"""Open-set identification on real photos: are enrolled people named, are strangers refused?

    python -m benchmarks.openset [--data ../shared/data/faces] [--budget-s 240] [--variants base,...]

Protocol (LFW, the deep-funneled images of ``lfw/``): people with at least
``--min-photos`` (6) photos are enrolled with their first ``--enrol`` (5)
photos (file order) through the enrolment gate at its shipped limits (a photo
the gate refuses is not enrolled; a person with no accepted photo is not
enrolled and their photos are left out); their other photos are probes. Every
photo of the people with fewer photos is a stranger. Other sets
(``samples/*``, ``classic/essex_faces94_subset``, ``classic/att_orl``,
``classic/faceapi_bbt``) are extra strangers, reported apart (some of their
people may be in LFW).

A probe counts as *named correctly* when the answer is "known" with its own
name (a probe whose photo has no face found counts as not named); *wrong* when
known with another name. *Rejection* is the share of strangers answered
"unknown" (a stranger photo with no face is left out).

Guard against tuning to it: people (enrolled and strangers) are split in two
halves by a hash of their name. ``tune`` is where thresholds may be chosen,
``test`` is never tuned on. For each target rejection (0.99, 0.995) the global
threshold (``gallery.threshold``) is set by bisection so that ``tune``'s
strangers are rejected at that rate, and the result is reported on ``test``;
``oracle_test`` (chosen on ``test`` itself) is shown only to size the gap.
The gallery holds every enrolled person of both halves.

Every figure goes through the product's own :class:`~faec_rec.index.replica.Replica`
(the decision rule, per-person thresholds, template scoring) with the
configuration of each ``variant``; features come from the engine's detector,
aligner and backbone (mirror-averaged, as served), cached under ``.cache/openset``.

Prints one JSON object; the load average is recorded (the box is shared: compare
variants measured in the same run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from faec_rec.config import FacesConfig, GalleryConfig

log = logging.getLogger("benchmarks.openset")

TARGETS = (0.99, 0.995)
EXTRA_STRANGER_SETS = (
    "samples/deepface_unit",
    "samples/face_recognition_examples",
    "samples/openface_examples",
    "samples/insightface_samples",
    "classic/essex_faces94_subset",
    "classic/att_orl",
    "classic/faceapi_bbt",
)


def half(name: str) -> str:
    """``"tune"`` or ``"test"``: a fixed split of people by name."""
    return "tune" if hashlib.sha1(name.encode()).digest()[0] % 2 == 0 else "test"


@dataclass
class Protocol:
    """Who is enrolled with which features, and the probe and stranger queries."""

    people: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (t, 128) raw features
    qualities: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (t,) sharpness
    probe_feats: list[np.ndarray] = field(default_factory=list)
    probe_names: list[str] = field(default_factory=list)
    probe_found: list[bool] = field(default_factory=list)
    stranger_feats: list[np.ndarray] = field(default_factory=list)
    stranger_names: list[str] = field(default_factory=list)
    extra_feats: list[np.ndarray] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def flip_features(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Mirror-averaged raw features, as the served embedder computes them."""
    return ((arrays["plain"] + arrays["mirror"]) * 0.5).astype(np.float32)


def build_protocol(lfw: tuple[list[str], dict[str, np.ndarray]], extras: list[tuple[list[str], dict[str, np.ndarray]]],
                   min_photos: int = 6, enrol: int = 5, gate: bool = True) -> Protocol:
    from benchmarks.openset_data import REASONS

    names, arrays = lfw
    feats = flip_features(arrays)
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, rel in enumerate(names):
        by_person[rel.split("/")[0]].append(i)
    p = Protocol()
    ok = REASONS.index("ok")
    for person, rows in sorted(by_person.items()):
        if len(rows) >= min_photos:
            first, rest = rows[:enrol], rows[enrol:]
            accepted = [i for i in first if arrays["found"][i] and (not gate or arrays["reason"][i] == ok)]
            p.counts["enrol_photos"] += len(first)
            p.counts["enrol_refused"] += len(first) - len(accepted)
            if not accepted:
                p.counts["people_not_enrolled"] += 1
                continue
            p.people[person] = feats[accepted]
            p.qualities[person] = np.nan_to_num(arrays["sharpness"][accepted], nan=0.0)
            for i in rest:
                p.probe_feats.append(feats[i])
                p.probe_names.append(person)
                p.probe_found.append(bool(arrays["found"][i]))
        else:
            for i in rows:
                if arrays["found"][i]:
                    p.stranger_feats.append(feats[i])
                    p.stranger_names.append(person)
                else:
                    p.counts["strangers_without_face"] += 1
    for names_x, arrays_x in extras:
        fx = flip_features(arrays_x)
        p.extra_feats.extend(fx[arrays_x["found"]])
    return p


def make_replica(protocol: Protocol, config: GalleryConfig, projector: Any = None):  # noqa: ANN201
    from faec_rec.index.projection import BaseProjector
    from faec_rec.index.replica import Replica

    replica = Replica(config, projector or BaseProjector())
    for n, (person, feats) in enumerate(sorted(protocol.people.items())):
        replica.add_person(f"p{n}", person, [(f"p{n}t{j}", f) for j, f in enumerate(feats)])
    replica.apply([], {})
    return replica


class Evaluator:
    """Answers of one replica for the protocol's queries at any global threshold."""

    def __init__(self, protocol: Protocol, replica: Any) -> None:
        self.p = protocol
        self.replica = replica
        proj = replica.projector
        self.probes = proj.project(np.stack(protocol.probe_feats)) if protocol.probe_feats else np.zeros((0, 128), np.float32)
        self.strangers = proj.project(np.stack(protocol.stranger_feats))
        self.extra = proj.project(np.stack(protocol.extra_feats)) if protocol.extra_feats else None
        self.probe_half = np.array([half(n) for n in protocol.probe_names])
        self.stranger_half = np.array([half(n) for n in protocol.stranger_names])
        self.found = np.array(protocol.probe_found)
        self.truth = np.array(protocol.probe_names)
        self._cache: dict[int, list] = {}
        self._subsets: dict[tuple[str, bool], np.ndarray] = {}

    def _answers(self, vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(known, named) of each row at global ``threshold``: the replica's matches are
        computed once per query set (they do not depend on the threshold), then its own
        per-person threshold and decision rule are applied at each threshold asked."""
        from faec_rec.index.decision import Decision, decide

        key = id(vectors)
        if key not in self._cache:
            self._cache[key] = self.replica.identify(vectors, self.replica.version, 0.0)
        matches = self._cache[key]
        known = np.zeros(len(matches), bool)
        for i, m in enumerate(matches):
            if m.person_id is None:
                continue
            per_person = self.replica.config.per_person_thresholds
            t = self.replica.threshold_for(m.person_id, threshold) if per_person else threshold
            runner = None if m.runner_up is None else m.runner_up.score
            known[i] = decide(m.score, runner, t, self.replica.config.margin) is Decision.KNOWN
        named = np.array([m.name if k else "" for m, k in zip(matches, known)], dtype=object)
        return known, named

    def _subset(self, which: str | None, probes: bool) -> np.ndarray:
        vectors, halves = (self.probes, self.probe_half) if probes else (self.strangers, self.stranger_half)
        if which is None:
            return vectors
        key = (which, probes)
        if key not in self._subsets:
            self._subsets[key] = np.ascontiguousarray(vectors[halves == which])
        return self._subsets[key]

    def rejection(self, threshold: float, which: str | None) -> float:
        known, _ = self._answers(self._subset(which, False), threshold)
        return float(1.0 - known.mean())

    def measure(self, threshold: float, which: str | None) -> dict[str, float]:
        psel = np.ones(len(self.probes), bool) if which is None else self.probe_half == which
        known, named = self._answers(self._subset(which, True), threshold)
        found = self.found[psel]
        right = known & found & (named == self.truth[psel])
        wrong = known & found & (named != self.truth[psel])
        out = {
            "named_correctly": round(float(right.mean()), 4),
            "wrong_name": round(float(wrong.mean()), 4),
            "probes": int(psel.sum()),
            "stranger_rejection": round(self.rejection(threshold, which), 4),
            "strangers": int(len(self.strangers) if which is None else (self.stranger_half == which).sum()),
        }
        if which is None and self.extra is not None:
            k, _ = self._answers(self.extra, threshold)
            out["extra_stranger_rejection"] = round(float(1.0 - k.mean()), 4)
            out["extra_strangers"] = int(len(self.extra))
        return out

    def threshold_for(self, target: float, which: str | None, lo: float = -1.0, hi: float = 1.0, steps: int = 20) -> float:
        """Lowest global threshold (to ~2e-6) whose rejection on ``which`` strangers is >= ``target``."""
        if self.rejection(hi, which) < target:
            return hi
        for _ in range(steps):
            mid = (lo + hi) / 2.0
            if self.rejection(mid, which) >= target:
                hi = mid
            else:
                lo = mid
        return hi


def evaluate(protocol: Protocol, config: GalleryConfig, projector: Any = None, default_threshold: float | None = None) -> dict[str, Any]:
    from faec_rec.index.calibration import global_threshold

    replica = make_replica(protocol, config, projector)
    ev = Evaluator(protocol, replica)
    shipped = global_threshold(config.threshold, getattr(replica.projector, "threshold", None), replica.version,
                               replica.people_count, config.search_far)
    if default_threshold is not None:
        shipped = default_threshold
    out: dict[str, Any] = {
        "shipped_threshold": round(float(shipped), 4),
        "defaults": {"all": ev.measure(shipped, None), "tune": ev.measure(shipped, "tune"), "test": ev.measure(shipped, "test")},
    }
    for target in TARGETS:
        tuned = ev.threshold_for(target, "tune")
        oracle = ev.threshold_for(target, "test")
        out[f"at_rejection_{target:g}"] = {
            "threshold_tuned_on_tune": round(tuned, 5),
            "test": ev.measure(tuned, "test"),
            "oracle_threshold_test": round(oracle, 5),
            "oracle_test": ev.measure(oracle, "test"),
        }
    return out


SEARCH_FAR = (0.002, 0.005, 0.01, 0.02, 0.05)
SEARCH_PEOPLE = (1, 2, 3, 5, 10, 20, 50, 100, 200, 400)


def calibrate_search(lfw: tuple[list[str], dict[str, np.ndarray]], centroid_weight: float, draws: int = 400,
                     strangers_per_draw: int = 500, seed: int = 0) -> dict[str, Any]:
    """The family-wise threshold table for the model card, from the *tune* half of LFW only.

    Galleries of ``n`` people are drawn at random from the tune half's people with at
    least 2 photos (their first 5 photos as templates); strangers are tune-half photos
    of people outside that gallery. A stranger's score is the product's person score
    (``centroid_weight`` mix of the mean-template and best-template similarity; the
    per-person raise is left out, it only lifts thresholds) against the best gallery
    person; for each family-wise rate ``f`` the threshold is the ``1 - f`` quantile of
    those scores over all draws.
    """
    names, arrays = lfw
    feats = flip_features(arrays)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
    by_person: dict[str, list[int]] = defaultdict(list)
    for i, rel in enumerate(names):
        person = rel.split("/")[0]
        if half(person) == "tune" and arrays["found"][i]:
            by_person[person].append(i)
    people = sorted(p for p, rows in by_person.items() if len(rows) >= 2)
    images = np.array(sorted(i for rows in by_person.values() for i in rows))
    owner = {i: p for p, rows in by_person.items() for i in rows}
    image_person = np.array([people.index(owner[i]) if owner[i] in people else -1 for i in images])
    q = feats[images]
    score = np.zeros((len(images), len(people)), np.float32)
    for j, person in enumerate(people):
        t = feats[by_person[person][:5]]
        best = (q @ t.T).max(axis=1)
        c = t.mean(axis=0)
        c /= max(float(np.linalg.norm(c)), 1e-12)
        score[:, j] = centroid_weight * (q @ c) + (1 - centroid_weight) * best if len(t) > 1 else best
    rng = np.random.default_rng(seed)
    table = []
    for n in SEARCH_PEOPLE:
        best_scores = []
        for _ in range(draws):
            chosen = rng.choice(len(people), size=n, replace=False)
            outside = np.flatnonzero(~np.isin(image_person, chosen))
            pick = rng.choice(outside, size=min(strangers_per_draw, len(outside)), replace=False)
            best_scores.append(score[np.ix_(pick, chosen)].max(axis=1))
        table.append(np.concatenate(best_scores))
    thresholds = [[round(float(np.quantile(b, 1.0 - f)), 4) for b in table] for f in SEARCH_FAR]
    return {
        "far": list(SEARCH_FAR),
        "people": list(SEARCH_PEOPLE),
        "thresholds": thresholds,
        "centroid_weight": centroid_weight,
        "calibrated_on": f"LFW tune half of benchmarks.openset ({len(people)} people with >= 2 photos, "
                         f"{draws} random galleries x {strangers_per_draw} strangers per size)",
    }


def write_search_card(table: dict[str, Any]) -> None:
    from benchmarks.lfw import CARD

    card = json.loads(CARD.read_text())
    card["projections"]["base"]["search"] = table
    CARD.write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote the search table to %s", CARD)


def retrain_head(protocol: Protocol) -> tuple[Any, dict[str, Any]]:
    """The built-in retraining on this gallery, as ``training.retrain.run`` does it on a
    fresh install (no LFW under data_dir): the gallery's templates train a head (a
    share held out), the shipped generic reference judges it and calibrates its
    threshold. Returns the candidate projector (threshold set) and the run's figures."""
    from faec_rec.config import Settings
    from faec_rec.index.calibration import default_threshold
    from faec_rec.index.projection import BaseProjector
    from faec_rec.training.head import HeadProjector, HeadTrainConfig, train_head
    from faec_rec.training.retrain import calibrate_threshold, gallery_data, promotion_gate, score, training_set
    from faec_rec.training.shipped_reference import shipped_reference

    cfg = Settings().training
    feats, person_of = [], []
    for person, f in sorted(protocol.people.items()):
        feats.append(f)
        person_of.extend([person] * len(f))
    data = gallery_data(np.concatenate(feats), person_of, cfg.holdout_fraction, cfg.seed)
    reference = shipped_reference()
    tset = training_set(data, reference, [], cfg.seed)
    head_cfg = HeadTrainConfig(loss=cfg.loss, epochs=cfg.epochs, identities_per_batch=cfg.identities_per_batch,
                               images_per_identity=cfg.images_per_identity, learning_rate=cfg.learning_rate,
                               anchor_weight=cfg.anchor_weight, seed=cfg.seed)
    result = train_head(tset.features, tset.labels, head_cfg)
    candidate = HeadProjector(result.model, "candidate")
    base = BaseProjector()
    before, after = score(base, data, reference), score(candidate, data, reference)
    decision = promotion_gate(before, after, cfg.max_lfw_drop, cfg.min_gain)
    candidate.threshold = calibrate_threshold(candidate, base, reference, default_threshold("base"))
    return candidate, {
        "gate_promotes": decision.promote, "gate_reason": decision.reason, "threshold": candidate.threshold,
        "base": before, "candidate": after, "training": tset.counts, "train_seconds": round(result.seconds, 1),
    }


def variants() -> dict[str, Callable[[], tuple[GalleryConfig, Any]]]:
    """Named configurations compared side by side (the first is the shipped default)."""
    return {
        "shipped": lambda: (GalleryConfig(), None),
        "before": lambda: (GalleryConfig(centroid_weight=0.0, search_far=None, per_person_thresholds=True), None),
        "best_template_only": lambda: (GalleryConfig(centroid_weight=0.0), None),
        "no_search_rule": lambda: (GalleryConfig(search_far=None), None),
        "per_person_thresholds": lambda: (GalleryConfig(per_person_thresholds=True), None),
        "search_far_0.01": lambda: (GalleryConfig(search_far=0.01), None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces"))
    parser.add_argument("--budget-s", type=float, default=None, help="stop describing images after this long (resume later)")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--min-photos", type=int, default=6)
    parser.add_argument("--enrol", type=int, default=5)
    parser.add_argument("--retrain", action="store_true", help="also run the built-in retraining (shipped reference) and measure its head")
    parser.add_argument("--calibrate-search", action="store_true", help="write the family-wise threshold table (tune half) to the model card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.openset_data import load_set

    t0 = time.perf_counter()
    config = FacesConfig()
    if not (args.data / "lfw").is_dir():
        print(json.dumps({"error": f"no lfw/ under {args.data}"}))
        return 2
    sets = {}
    for name in ("lfw",) + EXTRA_STRANGER_SETS:
        if not (args.data / name).is_dir():
            continue
        left = None if args.budget_s is None else max(1.0, args.budget_s - (time.perf_counter() - t0))
        names, arrays, complete = load_set(args.data, name, config, budget_s=left)
        if not complete:
            print(json.dumps({"incomplete": name, "described": int(arrays["done"].sum()), "of": len(names)}))
            return 3
        sets[name] = (names, arrays)
    if args.calibrate_search:
        table = calibrate_search(sets["lfw"], GalleryConfig().centroid_weight)
        write_search_card(table)
        print(json.dumps({"search": table}))
    protocol = build_protocol(sets["lfw"], [v for k, v in sets.items() if k != "lfw"], args.min_photos, args.enrol)
    result: dict[str, Any] = {
        "protocol": {
            "people_enrolled": len(protocol.people),
            "templates": int(sum(len(v) for v in protocol.people.values())),
            "probes": len(protocol.probe_names),
            "probes_without_face": int(sum(not f for f in protocol.probe_found)),
            "strangers": len(protocol.stranger_names),
            "extra_strangers": len(protocol.extra_feats),
            **dict(protocol.counts),
        },
        "variants": {},
    }
    wanted = None if args.variants is None else set(args.variants.split(","))
    for name, make in variants().items():
        if wanted is not None and name not in wanted:
            continue
        started = time.perf_counter()
        gallery_config, projector = make()
        result["variants"][name] = evaluate(protocol, gallery_config, projector)
        result["variants"][name]["seconds"] = round(time.perf_counter() - started, 1)
    if args.retrain:
        started = time.perf_counter()
        head, figures = retrain_head(protocol)
        result["retraining"] = figures
        result["variants"]["retrained"] = evaluate(protocol, GalleryConfig(), head)
        result["variants"]["retrained"]["seconds"] = round(time.perf_counter() - started, 1)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
