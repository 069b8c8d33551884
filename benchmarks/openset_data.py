"""Per-image backbone features and gate measurements for ``benchmarks.openset``, cached.

Every image of a face set (``<set>/<identity>/<image>``) goes through the
engine's detector (with the LFW benchmark's low-threshold fallback), the most
central face is aligned and described (plain and mirrored, raw dlib-scale
features), and the enrolment gate's measurements are kept (reason at the
shipped limits, yaw, sharpness, face size). Results are cached per set under
``.cache/openset/<settings key>/<set>.npz`` (git-ignored), written after every
chunk, so an interrupted run (``--budget-s``) resumes where it stopped.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from faec_rec.config import FacesConfig

log = logging.getLogger("benchmarks.openset")

REPO = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO / ".cache" / "openset"
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".webp"}
CHUNK = 128
REASONS = ("ok", "no_face", "several_faces", "face_too_small", "not_frontal", "blurry", "bad_image",
           "not_a_photo", "face_covered")  # new reasons go last: cached arrays keep their codes


def list_set(root: Path) -> list[str]:
    """Relative ``identity/image`` paths of a set, sorted."""
    out = []
    for ident in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in sorted(ident.iterdir()):
            if img.suffix.lower() in IMAGE_EXT:
                out.append(f"{ident.name}/{img.name}")
    return out


def cache_path(set_name: str, config: FacesConfig) -> Path:
    from benchmarks.lfw import cache_key

    return CACHE_ROOT / cache_key(config) / (set_name.replace("/", "__") + ".npz")


def _empty(n: int) -> dict[str, np.ndarray]:
    return {
        "plain": np.zeros((n, 128), np.float32),
        "mirror": np.zeros((n, 128), np.float32),
        "found": np.zeros(n, bool),
        "done": np.zeros(n, bool),
        "reason": np.full(n, -1, np.int8),
        "yaw": np.full(n, np.nan, np.float32),
        "sharpness": np.full(n, np.nan, np.float32),
        "face_px": np.full(n, np.nan, np.float32),
        "faces": np.zeros(n, np.int16),
    }


def load_set(root: Path, set_name: str, config: FacesConfig, budget_s: float | None = None) -> tuple[list[str], dict[str, np.ndarray], bool]:
    """``(names, arrays, complete)`` for set ``set_name`` under ``root``; computes what the cache lacks."""
    names = list_set(root / set_name)
    path = cache_path(set_name, config)
    arrays = None
    if path.is_file():
        data = dict(np.load(path))
        if list(data.pop("names")) == names:
            arrays = data
    if arrays is None:
        arrays = _empty(len(names))
    todo = np.flatnonzero(~arrays["done"])
    if len(todo) == 0:
        return names, arrays, True
    started = time.perf_counter()
    engine, fallback = _engine(config)
    from tqdm import tqdm

    for start in tqdm(range(0, len(todo), CHUNK), desc=set_name, unit="chunk", disable=None):
        _describe(root / set_name, names, todo[start : start + CHUNK], arrays, engine, fallback)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(names), **arrays)
        os.replace(tmp, path)
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
    return names, arrays, bool(arrays["done"].all())


_ENGINES: dict[str, tuple[object, object]] = {}


def _engine(config: FacesConfig):  # noqa: ANN202
    key = config.model_dump_json()
    if key not in _ENGINES:
        from faec_rec.faces.detect import BlazeFaceDetector
        from faec_rec.faces.embed import Embedder
        from faec_rec.faces.engine import FaceEngine

        engine = FaceEngine(config, embedder=Embedder(config, flip_average=False))
        fallback = BlazeFaceDetector(min_face_px=20, max_side=config.detect_max_side, score_threshold=0.3)
        _ENGINES[key] = (engine, fallback)
    return _ENGINES[key]


def _describe(folder: Path, names: list[str], idx: np.ndarray, arrays: dict[str, np.ndarray], engine, fallback) -> None:  # noqa: ANN001
    from benchmarks.lfw import central_face
    from faec_rec.faces.image import load_image
    from faec_rec.faces.quality import assess

    chips, rows = [], []
    for i in idx.tolist():
        arrays["done"][i] = True
        try:
            image = load_image(folder / names[i])
        except Exception as exc:  # noqa: BLE001 - a benchmark records and goes on
            log.warning("%s: %s", names[i], exc)
            arrays["reason"][i] = REASONS.index("bad_image")
            continue
        faces = engine.detect(image)
        verdict = assess(faces, lambda f, im=image: engine.align(im, [f])[0])
        arrays["reason"][i] = REASONS.index(verdict.reason.value)
        for field in ("yaw", "sharpness", "face_px"):
            value = getattr(verdict, field)
            if value is not None:
                arrays[field][i] = value
        arrays["faces"][i] = len(faces)
        if not faces:
            faces = fallback.detect(image)
        if not faces:
            continue
        chips.append(engine.align(image, [central_face(faces, image.shape)])[0])
        rows.append(i)
    if not rows:
        return
    crops = np.stack(chips)
    arrays["plain"][rows] = engine.features(crops)
    arrays["mirror"][rows] = engine.features(np.ascontiguousarray(crops[:, :, ::-1]))
    arrays["found"][rows] = True
