"""``benchmarks.openset`` with another backbone: a TFLite face model and its card (benchmarks only).

    python -m benchmarks.openset_backbone --model ../shared/data/models/mobilefacenet.tflite [--budget-s 240]
    python -m benchmarks.openset_backbone --model ../shared/data/models/mobilefacenet.tflite \
        --card benchmarks/cards/mobilefacenet.json      # the product path (faces.supplied)

With ``--card`` the features come the way a deployment serving that backbone makes them
(``faec_rec.faces.supplied.SuppliedEmbedder``: the card checked against the model, the
engine's 150x150 chip re-aligned to the card's template, mirror-averaged); without it,
each face is aligned straight from the photo to the ArcFace template (the reference
figure: what the chip's narrower margin costs is the difference).

Proves what a stronger backbone gives on the same protocol. The model card of the
benchmark's MobileFaceNet (``../shared/data/models/README.md``): 112x112 RGB, raw 0..255
input, ArcFace 5-point alignment (similarity transform), 128-d output, cosine. Faces
come from the engine's detector (same central face as ``benchmarks.openset``); the gate
fields are copied from the dlib cache (same detector, same gate). Features (plain and
mirrored) are cached under ``.cache/openset/<model>-<sha>/lfw.npz``. Variants:
``centroid_mix``/``best_template`` at the per-pair threshold of LFW View 2 (0.1 % of its
impostor pairs) and at thresholds tuned on the tune half; with ``--card``,
``served_defaults``: the threshold a deployment serves, calibrated as ``models
add-backbone`` does on the enrolled templates only (per-pair threshold and the backbone's
own leave-one-person-out search table, ``training/backbones.calibrate``), beside
``served_defaults_scaled_raise`` (the earlier rule: the built-in raise scaled by the
impostor spread). The weights are research-only: never shipped, never used by tests.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from faec_rec.config import FacesConfig, GalleryConfig

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])


def _features(model: Path, data: Path, names: list[str], budget_s: float | None, cache: Path,
              card: Path | None = None) -> tuple[dict, bool]:
    import cv2
    import tensorflow as tf

    from benchmarks.lfw import central_face
    from benchmarks.openset_data import _engine
    from faec_rec.faces.image import load_image

    arrays = dict(np.load(cache)) if cache.is_file() else {}
    if arrays and list(arrays.pop("names")) != names:
        arrays = {}
    if not arrays:
        n = len(names)
        arrays = {"plain": np.zeros((n, 128), np.float32), "mirror": np.zeros((n, 128), np.float32),
                  "found": np.zeros(n, bool), "done": np.zeros(n, bool)}
    supplied = None
    if card is not None:
        from faec_rec.faces.card import read_card
        from faec_rec.faces.supplied import SuppliedEmbedder

        supplied = SuppliedEmbedder.from_file(model, read_card(card), flip_average=True)
    interp = tf.lite.Interpreter(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    engine, fallback = _engine(FacesConfig())
    started = time.perf_counter()
    todo = np.flatnonzero(~arrays["done"])
    for k, i in enumerate(todo.tolist()):
        arrays["done"][i] = True
        image = load_image(data / names[i])
        faces = engine.detect(image) or fallback.detect(image)
        if faces:
            face = central_face(faces, image.shape)
            if supplied is not None:  # the served path: engine chip -> card template, mirror-averaged
                arrays["plain"][i] = arrays["mirror"][i] = supplied.features(engine.align(image, [face]))[0]
            else:
                m, _ = cv2.estimateAffinePartial2D(np.asarray(face.landmarks, np.float64), ARCFACE_112, method=cv2.LMEDS)
                chip = cv2.warpAffine(image, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT).astype(np.float32)
                for key, x in (("plain", chip), ("mirror", chip[:, ::-1])):
                    interp.set_tensor(inp, np.ascontiguousarray(x[None]))
                    interp.invoke()
                    arrays[key][i] = interp.get_tensor(out)[0]
            arrays["found"][i] = True
        if k % 500 == 499 or k == len(todo) - 1 or (budget_s and time.perf_counter() - started > budget_s):
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache.with_suffix(".tmp.npz"), names=np.array(names), **arrays)
            os.replace(cache.with_suffix(".tmp.npz"), cache)
            if budget_s and time.perf_counter() - started > budget_s:
                break
    return arrays, bool(arrays["done"].all())


def main(argv: list[str] | None = None) -> int:
    from benchmarks import openset
    from benchmarks.lfw import far_points, pair_scores, read_pairs, ten_fold
    from benchmarks.openset_data import CACHE_ROOT, list_set, load_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces"))
    parser.add_argument("--budget-s", type=float, default=None)
    parser.add_argument("--card", type=Path, default=None, help="a backbone card: embed through faec_rec.faces.supplied")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sha = hashlib.sha256(args.model.read_bytes()).hexdigest()[:8]
    names = list_set(args.data / "lfw")
    arrays, complete = _features(args.model, args.data / "lfw", names, args.budget_s,
                                 CACHE_ROOT / f"{args.model.stem}-{sha}{'-card' if args.card else ''}" / "lfw.npz", args.card)
    if not complete:
        print(json.dumps({"incomplete": int(arrays["done"].sum()), "of": len(names)}))
        return 3
    _, dlib_arrays, _ = load_set(args.data, "lfw", FacesConfig())
    for key in ("reason", "yaw", "sharpness", "face_px", "faces"):
        arrays[key] = dlib_arrays[key]
    pairs, fold = read_pairs(args.data / "lfw")
    index = {n: i for i, n in enumerate(names)}
    flip = (arrays["plain"] + arrays["mirror"]) / 2
    scores = pair_scores(flip, arrays["found"], index, pairs)
    same = np.array([p[2] for p in pairs])
    acc, std, _ = ten_fold(scores, same, fold)
    pair_threshold = far_points(scores, same)["0.001"]["threshold"]
    protocol = openset.build_protocol((names, arrays), [])
    result = {"model": args.model.name, "sha256_8": sha, "path": "card (faces.supplied, from chips)" if args.card else "direct ArcFace alignment", "lfw_view2": {"accuracy": round(acc, 4), "std": round(std, 4)},
              "pair_threshold_far_0.001": pair_threshold, "variants": {}}
    for name, cfg in (("centroid_mix", GalleryConfig(search_far=None)), ("best_template", GalleryConfig(search_far=None, centroid_weight=0.0))):
        result["variants"][name] = openset.evaluate(protocol, cfg, default_threshold=pair_threshold)
    # The old rule, as first measured (LFW View 2's impostor pairs): per-pair threshold plus
    # the built-in search raise scaled by the impostor-score spread ratio.
    from faec_rec.index.calibration import search_raise, supplied_threshold
    from faec_rec.training.backbones import calibrate, raise_scale

    dlib_scores = pair_scores(openset.flip_features(dlib_arrays), dlib_arrays["found"], index, pairs)
    both = ~same & np.isfinite(scores) & np.isfinite(dlib_scores)
    scale = raise_scale(scores[both], dlib_scores[both])
    people = len(protocol.people)
    served = pair_threshold + scale * search_raise(people, GalleryConfig().search_far)
    result["raise_scale_lfw_pairs"], result["served_threshold_scaled_raise_lfw"] = scale, round(served, 4)
    result["variants"]["scaled_raise_lfw_pairs"] = openset.evaluate(protocol, GalleryConfig(), default_threshold=served)
    if args.card:
        # What a deployment serving this backbone uses at defaults (index/gallery.py): the
        # calibration `models add-backbone` runs on the gallery's own crops, i.e. the enrolled
        # templates only (both halves' people; no probe or stranger photo is used).
        from faec_rec.faces.card import read_card

        dlib_protocol = openset.build_protocol((names, dlib_arrays), [])
        order = sorted(protocol.people)
        if order != sorted(dlib_protocol.people) or any(len(protocol.people[n]) != len(dlib_protocol.people[n]) for n in order):
            raise SystemExit("the two backbones enrolled different templates; cannot calibrate on the same crops")
        feats = np.concatenate([protocol.people[n] for n in order])
        builtin = np.concatenate([dlib_protocol.people[n] for n in order])
        labels = np.concatenate([np.full(len(protocol.people[n]), k) for k, n in enumerate(order)])
        cfg = GalleryConfig()
        pair, details = calibrate(feats, labels, read_card(args.card), builtin, cfg.centroid_weight)
        own = supplied_threshold(pair, people, cfg.search_far, search=details["search"], raise_scale=details["raise_scale"])
        old = supplied_threshold(pair, people, cfg.search_far, search=None, raise_scale=details["raise_scale"])
        result["gallery_calibration"] = {k: v for k, v in details.items() if k != "search"}
        result["gallery_calibration"]["search"] = details["search"]
        result["served_threshold"], result["served_threshold_scaled_raise"] = round(own, 4), round(old, 4)
        result["variants"]["served_defaults"] = openset.evaluate(protocol, cfg, default_threshold=own)
        result["variants"]["served_defaults_scaled_raise"] = openset.evaluate(protocol, cfg, default_threshold=old)
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
