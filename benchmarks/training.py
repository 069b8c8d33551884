"""Training benchmark: ``python -m benchmarks.training [--part scratch|head|timing|all]``.

Prints one JSON line per part:

- ``scratch``: the seed's three ways (classify, joint, sequential) on a small
  CNN trained from scratch on the combined grey classic sets; pair accuracy,
  TAR and TRR on held-out identities at a threshold chosen on validation
  identities (different-person pairs drawn within one source set).
- ``head``: the comparison head on the pretrained backbone's features. A
  gallery from one domain (the grey classic sets, 3 images per person
  enrolled; the rest are probes) plus the generic reference (LFW folds 1-5
  people train, folds 6-10 pairs judge). TAR@1%FAR of probes against the
  gallery for the untrained (identity) head and each loss, LFW accuracy for
  each, and the same for people the head never saw (half the domain's people
  held out of training).
- ``timing``: head training on 10,000 stored feature vectors, seconds.

Backbone features are cached under ``--cache-dir`` (by file hash), so only the
first run embeds images. LFW faces go through the face engine (detect + align)
when ``faec_rec.faces.engine`` is available; otherwise through a fixed central
150x150 crop of the 250x250 deep-funneled images (reported as ``lfw_crops``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger("benchmarks.training")

GREY_SETS = (
    "att_orl",
    "yalefaces",
    "georgia_tech_gt_40x30",
    "ar_face_subset_60x43",
    "imm_face_48x64",
    "umist_112x92",
    "faceapi_bbt",
)
SEED_FIGURES = {"classify": 0.70, "joint": 0.70, "sequential": 0.83}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


# ---------------------------------------------------------------------------

def part_scratch(faces: Path, epochs: int, head_epochs: int) -> dict[str, Any]:
    from faec_rec.training.datasets import read_tight_crops
    from faec_rec.training.scratch import ScratchConfig, run_ways

    crops = read_tight_crops([faces / "classic" / s for s in GREY_SETS])
    started = time.perf_counter()
    scores = run_ways(crops, config=ScratchConfig(epochs=epochs, head_epochs=head_epochs))
    return {
        "part": "scratch",
        "sets": list(GREY_SETS),
        "identities": len(crops.names),
        "images": int(crops.labels.size),
        "epochs": epochs,
        "ways": [s.to_json() for s in scores],
        "seed_pair_accuracy": SEED_FIGURES,
        "seconds": round(time.perf_counter() - started, 1),
        **_machine(),
    }


# ---------------------------------------------------------------------------

@dataclass
class _Analysed:
    face: Any
    crop: np.ndarray
    features: np.ndarray


class _CentralCrop:
    """Stand-in for the engine on LFW deep-funneled 250x250 images when the
    detector is not available: the central 150x150 as the face chip."""

    backbone_version = "dlib-resnet-v1"

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.flip_average = embedder.flip_average

    def features(self, crops: np.ndarray) -> np.ndarray:
        return self.embedder.features(crops)

    def analyse(self, image: np.ndarray) -> list[Any]:
        import cv2

        from faec_rec.faces.types import Face

        h, w = image.shape[:2]
        s = min(h, w) * 0.6
        x0, y0 = (w - s) / 2, (h - s) / 2
        crop = cv2.resize(image[int(y0):int(y0 + s), int(x0):int(x0 + s)], (150, 150), interpolation=cv2.INTER_AREA)
        feats = self.embedder.features(crop[None])[0]
        face = Face(np.array([x0, y0, x0 + s, y0 + s], np.float32), 1.0, np.zeros((5, 2), np.float32))
        return [_Analysed(face, crop, feats)]


def _engines(cache_models: Path | None) -> tuple[Any, Any, str]:
    """(engine for tight crops, engine for LFW, how LFW faces are cropped)."""
    from faec_rec.faces.embed import Embedder

    embedder = Embedder()
    try:
        from faec_rec.faces.engine import FaceEngine

        return embedder, FaceEngine(), "engine detect+align"
    except ImportError:
        return embedder, _CentralCrop(embedder), "central 150x150 crop (engine not available)"


def _classic_features(faces: Path, engine: Any, cache: Path) -> tuple[Any, np.ndarray]:
    """Features of the grey classic sets (tight crops, no detection), labels per set/person."""
    from faec_rec.training.datasets import LabelledFiles, extract_features, scan_tree

    paths, labels, names, groups = [], [], [], []
    for g, s in enumerate(GREY_SETS):
        files = scan_tree(faces / "classic" / s, min_people=1)
        offset = len(names)
        names += [f"{s}/{n}" for n in files.names]
        paths += files.paths
        labels += [offset + int(x) for x in files.labels]
        groups += [g] * len(files)
    files = LabelledFiles(paths, np.array(labels), names)
    fs = extract_features(files, engine, cache, mode="tight")
    group_of = {p: g for p, g in zip(paths, groups)}
    return fs, np.array([group_of[p] for p in fs.paths])


def _lfw(faces: Path, engine: Any, cache: Path) -> Any:
    from faec_rec.training.datasets import LabelledFiles, extract_features
    from faec_rec.training.evaluate import read_lfw_pairs
    from faec_rec.training.retrain import build_reference

    root = faces / "lfw"
    pairs = read_lfw_pairs(root / "pairs.txt", root)
    images = [p for p in pairs.images if p.is_file()]
    names = sorted({p.parent.name for p in images})
    idx = {n: i for i, n in enumerate(names)}
    files = LabelledFiles(images, np.array([idx[p.parent.name] for p in images]), names)
    if isinstance(engine, _CentralCrop):
        cache = cache / "central-crop"  # never mix with the engine's cached features
    fs = extract_features(files, engine, cache, mode="detect", several="central", min_people=2)
    return build_reference(fs.features, fs.paths, pairs), fs


def _domain_gallery(features: np.ndarray, labels: np.ndarray, per: int, seed: int, people: np.ndarray | None = None) -> Any:
    """GalleryData: ``per`` templates per person enrolled, the rest probes."""
    from faec_rec.training.retrain import GalleryData, Split

    rng = np.random.default_rng([seed, 21])
    keep = np.unique(labels) if people is None else people
    tmask = np.zeros(labels.size, bool)
    pmask = np.zeros(labels.size, bool)
    for p in keep:
        rows = rng.permutation(np.flatnonzero(labels == p))
        if rows.size <= per:
            continue
        tmask[rows[:per]] = True
        pmask[rows[per:]] = True
    dense = {int(p): n for n, p in enumerate(keep)}
    relabel = np.array([dense.get(int(x), -1) for x in labels])
    return GalleryData(
        Split(features[tmask], relabel[tmask]), Split(features[pmask], relabel[pmask]), [str(p) for p in keep]
    )


def part_head(faces: Path, cache: Path, epochs: int, losses: list[str], anchor: float) -> dict[str, Any]:
    from faec_rec.index.projection import BaseProjector
    from faec_rec.training.head import HeadProjector, HeadTrainConfig, train_head
    from faec_rec.training.retrain import score, training_set

    started = time.perf_counter()
    tight, lfw_engine, lfw_crops = _engines(None)
    classic, _groups = _classic_features(faces, tight, cache)
    reference, lfw_fs = _lfw(faces, lfw_engine, cache)
    feature_seconds = time.perf_counter() - started

    labels = classic.labels
    people = np.unique(labels)
    rng = np.random.default_rng(3)
    seen = np.sort(rng.choice(people, size=people.size // 2, replace=False))
    unseen = np.setdiff1d(people, seen)
    full = _domain_gallery(classic.features, labels, 3, 0)
    seen_g = _domain_gallery(classic.features, labels, 3, 0, seen)
    unseen_g = _domain_gallery(classic.features, labels, 3, 0, unseen)

    base = BaseProjector()
    rows: list[dict[str, Any]] = []
    base_full = score(base, full, reference)
    base_unseen = score(base, unseen_g, None)
    rows.append({
        "head": "untrained (base)",
        "gallery_tar_at_1far": round(base_full["gallery_tar_at_far"], 4),
        "lfw_accuracy": round(base_full["lfw_accuracy"], 4),
        "unseen_people_tar_at_1far": round(base_unseen["gallery_tar_at_far"], 4),
    })
    for loss in losses:
        cfg = HeadTrainConfig(loss=loss, epochs=epochs, anchor_weight=anchor)
        tset = training_set(full, reference, None, cfg.seed)
        res = train_head(tset.features, tset.labels, cfg)
        m = score(HeadProjector(res.model, loss), full, reference)
        # the same loss trained without the held-out half of the people
        tset_seen = training_set(seen_g, reference, None, cfg.seed)
        res_seen = train_head(tset_seen.features, tset_seen.labels, cfg)
        m_unseen = score(HeadProjector(res_seen.model, loss), unseen_g, None)
        rows.append({
            "head": loss,
            "gallery_tar_at_1far": round(m["gallery_tar_at_far"], 4),
            "lfw_accuracy": round(m["lfw_accuracy"], 4),
            "lfw_drop_points": round((base_full["lfw_accuracy"] - m["lfw_accuracy"]) * 100, 2),
            "unseen_people_tar_at_1far": round(m_unseen["gallery_tar_at_far"], 4),
            "train_seconds": round(res.seconds, 1),
            "train_vectors": int(tset.features.shape[0]),
        })
    return {
        "part": "head",
        "domain": "grey classic sets, 3 images per person enrolled, the rest probes",
        "gallery_people": full.people,
        "gallery_templates": full.train.n,
        "probes": full.probes.n,
        "lfw_crops": lfw_crops,
        "lfw_images_used": int(lfw_fs.features.shape[0]),
        "lfw_dropped": lfw_fs.report.total,
        "lfw_judging_pairs": int(reference.same.size),
        "epochs": epochs,
        "anchor_weight": anchor,
        "rows": rows,
        "feature_seconds": round(feature_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
        **_machine(),
    }


def part_timing(faces: Path, cache: Path, n: int = 10_000) -> dict[str, Any]:
    """Head training with the default settings on ``n`` stored feature vectors."""
    from faec_rec.config import TrainingConfig
    from faec_rec.training.head import HeadTrainConfig, train_head

    tight, lfw_engine, _ = _engines(None)
    classic, _ = _classic_features(faces, tight, cache)
    _, lfw_fs = _lfw(faces, lfw_engine, cache)
    feats = np.concatenate([classic.features, lfw_fs.features])
    labels = np.concatenate([classic.labels, lfw_fs.labels + classic.labels.max() + 1])
    if feats.shape[0] < n:  # top up with jittered copies, as a gallery of n templates
        rng = np.random.default_rng(0)
        extra = rng.integers(0, feats.shape[0], n - feats.shape[0])
        feats = np.concatenate([feats, feats[extra] + rng.normal(size=(extra.size, 128)).astype(np.float32) * 0.01])
        labels = np.concatenate([labels, labels[extra]])
    feats, labels = feats[:n], labels[:n]
    t = TrainingConfig()
    cfg = HeadTrainConfig(loss=t.loss, epochs=t.epochs, identities_per_batch=t.identities_per_batch,
                          images_per_identity=t.images_per_identity, learning_rate=t.learning_rate,
                          anchor_weight=t.anchor_weight)
    started = time.perf_counter()
    res = train_head(feats, labels, cfg)
    total = time.perf_counter() - started
    return {
        "part": "timing",
        "vectors": int(feats.shape[0]),
        "identities": int(np.unique(labels).size),
        "epochs": cfg.epochs,
        "steps": res.steps,
        "loss": cfg.loss,
        "train_seconds": round(total, 1),
        "ms_per_step": round(1000 * total / max(res.steps, 1), 2),
        **_machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["scratch", "head", "timing", "all"], default="all")
    parser.add_argument("--faces", type=Path, default=Path(os.environ.get("FAEC_TEST_FACES", Path(__file__).resolve().parents[2] / "shared" / "data" / "faces")))
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default <data_dir>/cache/features)")
    parser.add_argument("--epochs", type=int, default=25, help="scratch CNN epochs")
    parser.add_argument("--head-epochs", type=int, default=30, help="head epochs")
    parser.add_argument("--losses", default="contrastive,triplet,amsoftmax")
    parser.add_argument("--anchor", type=float, default=None, help="anchor weight (default: the configured one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.faces.is_dir():
        parser.error(f"face data not found at {args.faces}")
    from faec_rec.config import load_settings

    settings = load_settings()
    cache = args.cache_dir or Path(settings.data_dir) / "cache" / "features"
    anchor = settings.training.anchor_weight if args.anchor is None else args.anchor
    parts = ["scratch", "head", "timing"] if args.part == "all" else [args.part]
    for part in parts:
        if part == "scratch":
            out = part_scratch(args.faces, args.epochs, args.head_epochs)
        elif part == "head":
            out = part_head(args.faces, cache, args.head_epochs, [x for x in args.losses.split(",") if x], anchor)
        else:
            out = part_timing(args.faces, cache)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
