"""LFW View 2 verification through the full detect -> align -> embed path.

    python -m benchmarks.lfw --data ../shared/data/faces/lfw [--no-cache] [--write-card] [--precision bfloat16]

The standard protocol from ``pairs.txt``: 10 folds of 300 same + 300 different
pairs; for each fold the threshold is chosen on the other nine (the midpoint that
maximises their accuracy) and tested on it. Each image goes through the engine's
detector; the most central face (the largest among those containing the image
centre, else the nearest) is aligned and described; pairs are scored by cosine
similarity of L2-normalised descriptors. An image where no face is found even by
the fallback (the same detector with a lower score threshold and smaller minimum
face) makes its pairs count as "different".

Prints one JSON line: ``accuracy``, ``std``, ``threshold`` (mean of the ten fold
thresholds), ``pairs_without_face``, ``seconds``, plus ``options`` (the same
figures without the mirror-average), ``images_fallback`` and the open-set
operating points on the 3000 impostor pairs: ``far_thresholds`` maps a
false-accept rate to the lowest similarity threshold with at most that rate
(accept = similarity >= threshold) and the true-accept rate there.
``--write-card`` stores the FAR 0.1 % point in ``faec_rec/faces/model_card.json``.

Per-image descriptors (with and without the mirror) are cached in an ``.npz``
under ``/tmp/faec_rec_lfw`` keyed by the detector/alignment settings, so reruns
only redo the statistics; ``--no-cache`` recomputes. ``--precision`` runs the
backbone in that precision (``faces.precision``; the default is the setting's default).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from faec_rec.config import FacesConfig
from faec_rec.faces.backbone import PRECISIONS, resolve_precision

log = logging.getLogger("benchmarks.lfw")

CACHE_DIR = Path("/tmp/faec_rec_lfw")
CARD = Path(__file__).resolve().parent.parent / "faec_rec" / "faces" / "model_card.json"
FAR_TARGETS = (0.001, 0.005)
CARD_FAR = 0.001


def read_pairs(data: Path) -> tuple[list[tuple[str, str, bool]], int]:
    """The pairs of ``pairs.txt`` as (path1, path2, same) relative to ``data``, and the fold size."""
    lines = (data / "pairs.txt").read_text().split("\n")
    folds, per = (int(v) for v in lines[0].split())
    pairs: list[tuple[str, str, bool]] = []
    for line in lines[1:]:
        f = line.split()
        if len(f) == 3:
            pairs.append((_path(f[0], f[1]), _path(f[0], f[2]), True))
        elif len(f) == 4:
            pairs.append((_path(f[0], f[1]), _path(f[2], f[3]), False))
    if len(pairs) != folds * 2 * per:
        raise ValueError(f"pairs.txt: expected {folds * 2 * per} pairs, read {len(pairs)}")
    return pairs, 2 * per


def _path(name: str, index: str) -> str:
    return f"{name}/{name}_{int(index):04d}.jpg"


def central_face(faces: list, shape: tuple[int, ...]):  # noqa: ANN001, ANN201 - Face records
    """The face covering the image centre (largest if several), else the one nearest to it."""
    cy, cx = shape[0] / 2.0, shape[1] / 2.0
    covering = [f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
    if covering:
        return max(covering, key=lambda f: f.width * f.height)
    return min(faces, key=lambda f: np.hypot((f.box[0] + f.box[2]) / 2 - cx, (f.box[1] + f.box[3]) / 2 - cy))


def describe_images(data: Path, names: list[str], config: FacesConfig, batch: int = 64) -> dict[str, np.ndarray]:
    """Detect, align and describe each image: features (n, 128) plain and mirrored, found flags."""
    from tqdm import tqdm

    from faec_rec.faces.detect import BlazeFaceDetector
    from faec_rec.faces.embed import Embedder
    from faec_rec.faces.engine import FaceEngine
    from faec_rec.faces.image import load_image

    engine = FaceEngine(config, embedder=Embedder(config, flip_average=False))
    fallback = BlazeFaceDetector(min_face_px=20, max_side=config.detect_max_side, score_threshold=0.3)
    n = len(names)
    plain = np.zeros((n, 128), np.float32)
    mirror = np.zeros((n, 128), np.float32)
    found = np.zeros(n, bool)
    used_fallback = np.zeros(n, bool)
    for start in tqdm(range(0, n, batch), desc="lfw images", unit="batch", file=sys.stderr):
        chips, idx = [], []
        for i in range(start, min(start + batch, n)):
            image = load_image(data / names[i])
            faces = engine.detect(image)
            if not faces:
                faces = fallback.detect(image)
                used_fallback[i] = bool(faces)
            if not faces:
                continue
            chips.append(engine.align(image, [central_face(faces, image.shape)])[0])
            idx.append(i)
        if not idx:
            continue
        crops = np.stack(chips)
        plain[idx] = engine.features(crops)
        mirror[idx] = engine.features(np.ascontiguousarray(crops[:, :, ::-1]))
        found[idx] = True
    return {"plain": plain, "mirror": mirror, "found": found, "fallback": used_fallback}


def cache_key(config: FacesConfig) -> str:
    """Changes whenever detection, alignment or embedding settings change."""
    import importlib

    # the package re-exports functions named align/detect over the module names
    align = importlib.import_module("faec_rec.faces.align")
    detect = importlib.import_module("faec_rec.faces.detect")
    parts = [
        config.model_dump_json(),
        align.TEMPLATE_150.tobytes().hex(),
        align.TEMPLATE_WEIGHTS.tobytes().hex(),
        repr(detect.MOUTH_WIDTH_PER_EYE_DISTANCE),
        repr((detect._MIN_INPUT_FACE, detect._MAX_INPUT_FACE, detect._LEVEL_RATIO, detect._CANDIDATE_SCORE)),
        repr(detect._BOX_SLACK),
        repr((detect._SECOND_LOOK_SCORE, detect._SECOND_LOOK_SIDE, detect._SECOND_LOOK_FACE, detect._SECOND_LOOK_MAX, detect._WEAK_SCORE, detect._WEAK_CONFIRM)),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def pair_scores(features: np.ndarray, found: np.ndarray, index: dict[str, int], pairs: list[tuple[str, str, bool]]) -> np.ndarray:
    """(n_pairs,) cosine similarity; -inf where either image has no face (always 'different')."""
    norm = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    a = np.array([index[p[0]] for p in pairs])
    b = np.array([index[p[1]] for p in pairs])
    scores = (norm[a] * norm[b]).sum(1)
    scores[~(found[a] & found[b])] = -np.inf
    return scores


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (accept = score >= t) maximising accuracy; midpoints between sorted finite scores."""
    finite = np.sort(scores[np.isfinite(scores)])
    candidates = np.concatenate([[finite[0] - 1e-6], (finite[1:] + finite[:-1]) / 2.0, [finite[-1] + 1e-6]])
    # accuracy for every candidate at once: sorted counts instead of a loop over 6000 values
    pos = np.sort(scores[same])
    neg = np.sort(scores[~same])
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")
    tn = np.searchsorted(neg, candidates, side="left")
    return float(candidates[int(np.argmax(tp + tn))])


def ten_fold(scores: np.ndarray, same: np.ndarray, fold_size: int) -> tuple[float, float, float]:
    """(mean accuracy, std, mean threshold) of the View 2 protocol."""
    folds = len(scores) // fold_size
    accs, thresholds = [], []
    for k in range(folds):
        test = np.zeros(len(scores), bool)
        test[k * fold_size : (k + 1) * fold_size] = True
        t = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
        thresholds.append(t)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(thresholds))


def far_points(scores: np.ndarray, same: np.ndarray) -> dict[str, dict[str, float]]:
    """For each FAR target: the lowest threshold with FAR <= target over the impostor pairs, and the TAR there."""
    neg = np.sort(scores[~same & np.isfinite(scores)])[::-1]
    n_neg = int((~same).sum())
    out = {}
    for target in FAR_TARGETS:
        allowed = int(np.floor(target * n_neg))
        # accept = score >= t; put t just above the (allowed+1)-th highest impostor score
        t = float(np.nextafter(np.float32(neg[allowed]), np.float32(np.inf))) if allowed < len(neg) else float(neg[-1])
        t = float(np.ceil(t * 1e4) / 1e4)  # stored with 4 decimals: round up, never admit one more impostor
        far = float((scores[~same] >= t).mean())
        tar = float((scores[same] >= t).mean())
        out[f"{target:g}"] = {"threshold": round(t, 4), "far": round(far, 5), "tar": round(tar, 4)}
    return out


def write_card(result: dict[str, object], backbone_version: str) -> None:
    point = result["far_thresholds"][f"{CARD_FAR:g}"]  # type: ignore[index]
    card = {
        "backbone_version": backbone_version,
        "projections": {
            "base": {
                "threshold": point["threshold"],
                "far": point["far"],
                "tar": point["tar"],
                "far_target": CARD_FAR,
                "lfw_accuracy": result["accuracy"],
                "lfw_std": result["std"],
                "lfw_threshold": result["threshold"],
                "calibrated_on": f"LFW View 2 pairs, {dt.date.today().isoformat()}",
                "note": (
                    "cosine similarity of L2-normalised, mirror-averaged backbone features; threshold "
                    "is the lowest with at most 0.1% of the 3000 LFW impostor pairs accepted "
                    "(accept = similarity >= threshold); benchmarks/lfw.py --write-card"
                ),
            }
        },
    }
    CARD.write_text(json.dumps(card, indent=2) + "\n")
    log.info("wrote %s", CARD)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces/lfw"))
    parser.add_argument("--no-cache", action="store_true", help="recompute every image's descriptor")
    parser.add_argument("--write-card", action="store_true", help="store the open-set threshold in the model card")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="backbone precision (default: the faces.precision default)")
    args = parser.parse_args(argv)
    config = FacesConfig() if args.precision is None else FacesConfig(precision=args.precision)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (args.data / "pairs.txt").is_file():
        print(json.dumps({"error": f"no pairs.txt under {args.data}"}))
        return 2
    t0 = time.perf_counter()
    pairs, fold_size = read_pairs(args.data)
    names = sorted({p[0] for p in pairs} | {p[1] for p in pairs})
    index = {name: i for i, name in enumerate(names)}
    cache = CACHE_DIR / f"lfw-{cache_key(config)}.npz"
    if cache.is_file() and not args.no_cache:
        arrays = dict(np.load(cache))
        if list(arrays.pop("names")) != names:
            arrays = {}
    else:
        arrays = {}
    if not arrays:
        arrays = describe_images(args.data, names, config)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(cache, names=np.array(names), **arrays)
    same = np.array([p[2] for p in pairs])
    found = arrays["found"]
    flip = (arrays["plain"] + arrays["mirror"]) / 2.0
    scores = pair_scores(flip, found, index, pairs)
    acc, std, thr = ten_fold(scores, same, fold_size)
    plain_scores = pair_scores(arrays["plain"], found, index, pairs)
    acc_p, std_p, thr_p = ten_fold(plain_scores, same, fold_size)
    result: dict[str, object] = {
        "accuracy": round(acc, 4),
        "std": round(std, 4),
        "threshold": round(thr, 4),
        "pairs_without_face": int((~np.isfinite(scores)).sum()),
        "seconds": round(time.perf_counter() - t0, 1),
        "images": len(names),
        "images_without_face": int((~found).sum()),
        "images_fallback": int(arrays["fallback"].sum()),
        "precision": resolve_precision(config.precision),
        "options": {"no_flip": {"accuracy": round(acc_p, 4), "std": round(std_p, 4), "threshold": round(thr_p, 4)}},
        "far_thresholds": far_points(scores, same),
        "cached": cache.name,
    }
    if args.write_card:
        from faec_rec.faces.backbone import BACKBONE_VERSION

        write_card(result, BACKBONE_VERSION)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
