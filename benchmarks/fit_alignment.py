"""Fit the alignment template: where our detector's landmarks fall inside dlib's face chip.

    python -m benchmarks.fit_alignment --data ../shared/data/faces/lfw [--n 400] [--seed 0]

For a seeded sample of LFW images: dlib finds the face (HOG), its 5-point model
gives the landmarks, and ``dlib.get_face_chip_details(shape, 150, 0.25)`` gives the
chip, i.e. the exact image->chip transform dlib's descriptor expects. Our
BlazeFace detector runs on the same image; its eye, nose and mouth points are
mapped through dlib's transform into chip coordinates. The template is their
mean (the least-squares solution in the chip frame). The mouth width per eye
distance (to place BlazeFace's mouth corners) comes from dlib's 68-point model.

Prints one JSON line: the template, the chosen landmark weights, the mouth ratio
and the residuals (chip pixels): landmark scatter around the template, and the
displacement between our fitted chip and dlib's (over a 5x5 grid of chip points).
Needs dlib-bin (a test/benchmark extra); never used at run time.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("fit_alignment")

WEIGHT_OPTIONS = {
    "all": [1.0, 1.0, 1.0, 1.0, 1.0],
    "nose_half": [1.0, 1.0, 0.5, 1.0, 1.0],
    "no_nose": [1.0, 1.0, 0.0, 1.0, 1.0],
    "eyes_heavy": [2.0, 2.0, 0.5, 1.0, 1.0],
}


def dlib_chip_to_image(details) -> np.ndarray:  # noqa: ANN001 - dlib.chip_details
    """(2, 3) affine chip pixel -> image pixel, as dlib's get_mapping_to_chip builds it."""
    r = details.rect
    cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
    c, s = np.cos(details.angle), np.sin(details.angle)

    def rot(x: float, y: float) -> tuple[float, float]:
        return c * (x - cx) - s * (y - cy) + cx, s * (x - cx) + c * (y - cy) + cy

    src = np.array([[0, 0], [details.cols - 1, 0], [0, details.rows - 1]], dtype=np.float64)
    dst = np.array([rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.left(), r.bottom())])
    a = np.c_[src, np.ones(3)]
    return np.linalg.solve(a, dst).T


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map."""
    full = np.vstack([m, [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def collect(data: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    import dlib
    import face_recognition_models

    from faec_rec.faces.detect import BlazeFaceDetector
    from faec_rec.faces.image import load_image
    from faec_rec.faces.blazeface import box_iou

    models = Path(face_recognition_models.__file__).parent / "models"
    hog = dlib.get_frontal_face_detector()
    sp5 = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    sp68 = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    detector = BlazeFaceDetector(min_face_px=40)
    files = sorted(data.glob("*/*.jpg"))
    random.Random(seed).shuffle(files)
    raw, chip_to_img, mouth_w, pix_check = [], [], [], []
    for path in files:
        if len(raw) >= n:
            break
        image = load_image(path)
        dets = hog(image, 1)
        if not dets:
            continue
        centre = np.array(image.shape[1::-1]) / 2.0
        det = min(dets, key=lambda d: np.hypot(d.center().x - centre[0], d.center().y - centre[1]))
        faces = detector.detect(image)
        if not faces:
            continue
        box = np.array([det.left(), det.top(), det.right(), det.bottom()], dtype=np.float64)
        ious = box_iou(box, np.array([f.box for f in faces], dtype=np.float64))
        if ious.max() < 0.3:
            continue
        face = faces[int(ious.argmax())]
        shape = dlib.shape_predictor.__call__(sp5, image, det)
        details = dlib.get_face_chip_details(shape, 150, 0.25)
        m = dlib_chip_to_image(details)
        if len(pix_check) < 5:  # our reading of dlib's geometry must reproduce its chip
            import cv2

            ours = cv2.warpAffine(image, invert(m), (150, 150), flags=cv2.INTER_LINEAR)
            theirs = np.asarray(dlib.get_face_chip(image, shape, 150, 0.25))
            pix_check.append(float(np.abs(ours.astype(int) - theirs.astype(int)).mean()))
        s68 = sp68(image, det)
        p68 = np.array([[s68.part(i).x, s68.part(i).y] for i in range(68)], dtype=np.float64)
        lm = face.landmarks.astype(np.float64)
        mouth = (lm[3] + lm[4]) / 2.0
        eye_dist = np.hypot(*(lm[1] - lm[0]))
        mouth_w.append(np.hypot(*(p68[54] - p68[48])) / eye_dist)
        raw.append(np.vstack([lm[:3], mouth]))
        chip_to_img.append(m)
    log.info("collected %d faces; dlib chip reproduction mean abs pixel diff %s", len(raw), pix_check)
    return {"raw": np.array(raw), "chip_to_img": np.array(chip_to_img), "mouth_w": np.array(mouth_w), "pix_check": np.array(pix_check)}


def five_points(raw4: np.ndarray, ratio: float) -> np.ndarray:
    """(m, 4, 2) eyes, nose, mouth centre -> (m, 5, 2) with mouth corners as the detector places them."""
    half = 0.5 * ratio * (raw4[:, 1] - raw4[:, 0])
    return np.concatenate([raw4[:, :3], (raw4[:, 3] - half)[:, None], (raw4[:, 3] + half)[:, None]], axis=1)


def fit(samples: dict[str, np.ndarray]) -> dict[str, object]:
    from faec_rec.faces.align import similarity_transform

    ratio = float(np.median(samples["mouth_w"]))
    pts = five_points(samples["raw"], ratio)
    img_to_chip = np.array([invert(m) for m in samples["chip_to_img"]])
    in_chip = np.array([apply(m, p) for m, p in zip(img_to_chip, pts)])
    template = in_chip.mean(axis=0)
    scatter = float(np.sqrt(((in_chip - template) ** 2).sum(-1).mean()))
    grid = np.stack(np.meshgrid(np.linspace(0, 149, 5), np.linspace(0, 149, 5)), -1).reshape(-1, 2)
    errors: dict[str, float] = {}
    for name, weights in WEIGHT_OPTIONS.items():
        disp = []
        for m_dlib, p in zip(samples["chip_to_img"], pts):
            ours = similarity_transform(p, template, np.array(weights))
            back = apply(ours, apply(m_dlib, grid))  # dlib chip -> image -> our chip
            disp.append(np.sqrt(((back - grid) ** 2).sum(-1).mean()))
        errors[name] = float(np.mean(disp))
    best = min(errors, key=errors.get)
    return {
        "faces": int(len(pts)),
        "template_150": np.round(template, 3).tolist(),
        "weights": WEIGHT_OPTIONS[best],
        "weights_name": best,
        "mouth_width_per_eye_distance": round(ratio, 4),
        "landmark_scatter_px": round(scatter, 3),
        "chip_displacement_px": {k: round(v, 3) for k, v in errors.items()},
        "dlib_chip_reproduction_abs_diff": round(float(samples["pix_check"].mean()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces/lfw"))
    parser.add_argument("--n", type=int, default=400, help="faces to fit on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if not args.data.is_dir():
        print(json.dumps({"error": f"no LFW folder at {args.data}"}))
        return 2
    t0 = time.perf_counter()
    result = fit(collect(args.data, args.n, args.seed))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
