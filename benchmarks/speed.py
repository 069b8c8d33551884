"""Per-stage speed of the face engine, and of dlib's pipeline on the same inputs.

    python -m benchmarks.speed [--data ../shared/data/faces] [--no-dlib]
    python -m benchmarks.speed --embed-variants     # the embedding tuning table

Prints ONE line of JSON:

- ``detect_ms_640x480``, ``detect_ms_1920x1080``: median detection time per frame; frames are
  taken from ``videos/facenet_pytorch__video.mp4`` (1920x1080 street scene with several faces)
  and resized to 640x480 for the small size;
- ``embed_ms_per_face_b1``, ``embed_ms_per_face_b32``: median backbone time per face with the
  default configuration (descriptor averaged with the mirror chip: two network passes per
  face; ``faces.precision="auto"``, resolved to ``embed_precision``: bfloat16 on CPUs with
  native bfloat16, float32 elsewhere), ``embed_ms_per_face_b1_noflip``,
  ``embed_ms_per_face_b32_noflip`` for one pass, ``*_float32`` with ``precision="float32"``
  (and mirror averaging), and ``embed_cpu_ms_per_face_b32*``: CPU time of all threads per
  face, which other load on the machine disturbs less than wall time;
- ``faces_per_s_end_to_end``: detect + align + embed on the group photos (decoded beforehand,
  downscaled to 1280 px like producer frames), faces found / seconds; ``faces_end_to_end``;
- ``peak_rss_mb``: peak resident memory of this process after detection, end to end and
  the default embedding figures with one engine (what one worker process holds), before
  the extra embedders for the ``_noflip`` and ``_float32`` figures are built;
- ``dlib_*``: the same figures for dlib's pipeline (HOG detector upsampled once, as
  face_recognition does, 5-point landmarks, ResNet descriptor, no mirror averaging), run in a
  separate process so its memory is its own; present where ``dlib`` is importable;
- ``ratio_*``: dlib time / our time (or our faces/s / dlib faces/s): how many times faster
  ours is;
- ``embed_runtime`` ("litert" or "tensorflow": what runs the default configuration) and
  ``*_tensorflow``: the default configuration on the frozen TensorFlow graph, side by side;
- ``threads``: inference threads of this process (``--threads``, default 1: what one worker
  process of the default prefork pool uses; the embedded default uses every core);
- ``machine`` (cpu model, cores) and ``date``.

``--embed-variants`` instead times one network pass per face (no mirror averaging) for each
way of running the backbone that was tried while tuning: ``predict`` (``model.predict``,
the untuned start), ``eager`` (``model(x)``), ``graph_unfolded`` (compiled function, affine as
separate layers), ``graph`` (compiled function, affine folded into the convs: the default),
``graph_xla`` (the same with ``jit_compile``), ``graph_bf16`` (bfloat16 precision), and
what the engine runs, ``Embedder.features`` with the mirror average (two passes per face):
``embedder_flip`` (float32: LiteRT), ``embedder_flip_bf16`` and ``embedder_flip_tensorflow``
(float32 on the frozen TensorFlow graph). Keys ``<variant>_ms_per_face_b1`` / ``_b32``
(wall time) and ``<variant>_cpu_ms_per_face_b1`` / ``_b32`` (CPU time of all threads, less
disturbed by other load), each the minimum over interleaved rounds.

Decoding is not timed. Timings are medians of repeated runs; on a shared machine they vary
(``machine.load_avg_1m`` says how busy it was at the start).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

log = logging.getLogger("benchmarks.speed")

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "faces"
VIDEO = "videos/facenet_pytorch__video.mp4"
N_FRAMES = 6
PHOTO_MAX_SIDE = 1280
N_PHOTOS = 16
DLIB_UPSAMPLE = 1


# ----------------------------------------------------------------- inputs


def machine() -> dict[str, Any]:
    """CPU model and core count of this machine."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def load_frames(data: Path, n: int = N_FRAMES) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` evenly spaced RGB frames of the 1080p street video, and the same at 640x480."""
    path = data / VIDEO
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {path}: pass --data pointing at shared/data/faces")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 100
    wanted = set(np.linspace(0, total - 1, n).astype(int).tolist())
    big: list[np.ndarray] = []
    index = 0
    while len(big) < n:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            big.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        index += 1
    cap.release()
    small = [cv2.resize(f, (640, 480), interpolation=cv2.INTER_AREA) for f in big]
    return small, big


def load_photos(data: Path, n: int = N_PHOTOS) -> list[np.ndarray]:
    """The first ``n`` group photos (sorted by name), RGB, longer side at most 1280 px."""
    from faec_rec.faces.image import load_image

    photos = []
    for path in sorted((data / "group_photos").glob("*.jpg"))[:n]:
        image = load_image(path)
        scale = PHOTO_MAX_SIDE / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        photos.append(image)
    return photos


# ----------------------------------------------------------------- timing


def median_ms(fn: Callable[[Any], Any], items: list[Any], rounds: int = 1) -> float:
    """Median wall time of ``fn(item)`` in ms over ``rounds`` passes over ``items`` (after one warm-up)."""
    fn(items[0])
    times = []
    for _ in range(rounds):
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MB (VmHWM: unlike ru_maxrss it is not
    inherited by a spawned child from its parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------- our engine


def bench_ours(frames_small: list[np.ndarray], frames_big: list[np.ndarray], photos: list[np.ndarray]) -> dict[str, Any]:
    from faec_rec.faces.embed import Embedder
    from faec_rec.faces.engine import FaceEngine

    engine = FaceEngine()
    out: dict[str, Any] = {}
    out["detect_ms_640x480"] = median_ms(engine.detect, frames_small, rounds=3)
    out["detect_ms_1920x1080"] = median_ms(engine.detect, frames_big, rounds=2)

    start = time.perf_counter()
    n_faces = 0
    chips = []
    for photo in photos:
        found = engine.analyse(photo)
        n_faces += len(found)
        chips.extend(a.crop for a in found)
    seconds = time.perf_counter() - start
    out["faces_end_to_end"] = n_faces
    out["faces_per_s_end_to_end"] = n_faces / seconds if seconds > 0 else None

    if not chips:
        raise SystemExit("no face found in the group photos: cannot time embedding")
    batch = np.stack([chips[i % len(chips)] for i in range(32)])
    singles = [batch[i : i + 1] for i in range(16)]
    # the engine's own embedder first: peak memory is then what one worker process holds
    out["embed_precision"] = engine.embedder.precision
    out["embed_runtime"] = engine.embedder.runtime
    variants = (("", engine.embedder), ("_noflip", None), ("_float32", None), ("_tensorflow", None))
    for suffix, embedder in variants:
        if embedder is None:
            embedder = {"_noflip": lambda: Embedder(flip_average=False),
                        "_float32": lambda: Embedder(precision="float32"),
                        # the frozen TensorFlow graph, side by side with the default runtime
                        "_tensorflow": lambda: Embedder(runtime="tensorflow")}[suffix]()
        embedder.features(singles[0])  # load and trace outside the CPU clock
        cpu_start = time.process_time()
        out[f"embed_ms_per_face_b1{suffix}"] = median_ms(embedder.features, singles, rounds=2)
        # CPU time of all threads (median_ms makes one warm-up call plus 2 rounds)
        out[f"embed_cpu_ms_per_face_b1{suffix}"] = (time.process_time() - cpu_start) * 1000 / (2 * len(singles) + 1)
        embedder.features(batch)  # warm-up at this batch size
        walls, cpu_start = [], time.process_time()
        for _ in range(6):
            start = time.perf_counter()
            embedder.features(batch)
            walls.append(time.perf_counter() - start)
        out[f"embed_ms_per_face_b32{suffix}"] = float(np.median(walls)) * 1000 / 32
        # CPU time of all threads: less disturbed by other load than wall time
        out[f"embed_cpu_ms_per_face_b32{suffix}"] = (time.process_time() - cpu_start) * 1000 / (6 * 32)
        if suffix == "":
            out["peak_rss_mb"] = peak_rss_mb()
    return out


# ----------------------------------------------------------------- dlib's pipeline


def bench_dlib(data: str) -> dict[str, Any]:
    """dlib's own pipeline on the same frames and photos (runs in a child process)."""
    import dlib
    import face_recognition_models as frm

    frames_small, frames_big = load_frames(Path(data))
    photos = load_photos(Path(data))
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    model = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    out: dict[str, Any] = {"dlib_upsample": DLIB_UPSAMPLE}
    out["dlib_detect_ms_640x480"] = median_ms(lambda f: detector(f, DLIB_UPSAMPLE), frames_small)
    out["dlib_detect_ms_1920x1080"] = median_ms(lambda f: detector(f, DLIB_UPSAMPLE), frames_big[:3])

    start = time.perf_counter()
    n_faces = 0
    chips = []
    for photo in photos:
        shapes = dlib.full_object_detections()
        for rect in detector(photo, DLIB_UPSAMPLE):
            shapes.append(predictor(photo, rect))
        if len(shapes):
            model.compute_face_descriptor(photo, shapes)
            n_faces += len(shapes)
            if len(chips) < 32:
                chips.extend(dlib.get_face_chips(photo, shapes, size=150, padding=0.25))
    seconds = time.perf_counter() - start
    out["dlib_faces_end_to_end"] = n_faces
    out["dlib_faces_per_s_end_to_end"] = n_faces / seconds if seconds > 0 else None

    if chips:
        batch = [chips[i % len(chips)] for i in range(32)]
        out["dlib_embed_ms_per_face_b1"] = median_ms(model.compute_face_descriptor, batch[:6])
        out["dlib_embed_ms_per_face_b32"] = median_ms(model.compute_face_descriptor, [batch]) / 32
    out["dlib_peak_rss_mb"] = peak_rss_mb()
    return out


def _dlib_child(data: str, queue: Any) -> None:
    try:
        queue.put(bench_dlib(data))
    except Exception as exc:  # reported in the JSON rather than killing the run
        queue.put({"dlib_error": f"{type(exc).__name__}: {exc}"})


def run_dlib_isolated(data: Path) -> dict[str, Any]:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return {"dlib_error": "dlib not importable (install the [dlib] extra)"}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_dlib_child, args=(str(data), queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """dlib time / our time for each timed stage; our faces/s / dlib faces/s."""
    out = {}
    for key in ("detect_ms_640x480", "detect_ms_1920x1080", "embed_ms_per_face_b1", "embed_ms_per_face_b32"):
        if ours.get(key) and theirs.get("dlib_" + key):
            out["ratio_" + key] = theirs["dlib_" + key] / ours[key]
    if ours.get("faces_per_s_end_to_end") and theirs.get("dlib_faces_per_s_end_to_end"):
        out["ratio_faces_per_s_end_to_end"] = ours["faces_per_s_end_to_end"] / theirs["dlib_faces_per_s_end_to_end"]
    return out


def bench_embed_variants(rounds: int = 5) -> dict[str, Any]:
    """Per-face time of one backbone pass for each way of running it (see the module doc)."""
    import tensorflow as tf

    from faec_rec.faces import backbone, dlib_format

    net = dlib_format.read_file()
    folded = backbone.load_backbone()
    unfolded = backbone.build_model(net, fold_affine=False)
    bf16 = backbone.with_precision(folded, "bfloat16")
    spec = [tf.TensorSpec([None, 150, 150, 3], tf.float32)]

    def graph(model: Any, **kw: Any) -> Callable[[np.ndarray], Any]:
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec, **kw)
        return lambda x: fn(x).numpy()

    from faec_rec.faces.embed import Embedder

    def embedder(**kw: Any) -> Callable[[np.ndarray], Any]:
        e = Embedder(**kw)
        return lambda x: e.features(x.astype(np.uint8))

    variants: dict[str, Callable[[np.ndarray], Any]] = {
        "predict": lambda x: folded.predict(x, batch_size=32, verbose=0),
        "eager": lambda x: folded(x, training=False).numpy(),
        "graph_unfolded": graph(unfolded),
        "graph": graph(folded),
        "graph_xla": graph(folded, jit_compile=True),
        "graph_bf16": graph(bf16),
        # what the engine runs: Embedder.features, with the mirror average (two passes)
        "embedder_flip": embedder(flip_average=True, precision="float32"),
        "embedder_flip_bf16": embedder(flip_average=True, precision="bfloat16"),
        "embedder_flip_tensorflow": embedder(flip_average=True, precision="float32", runtime="tensorflow"),
    }
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(32, 150, 150, 3)).astype(np.float32)
    one = batch[:1]
    best: dict[str, float] = {}
    for fn in variants.values():  # compile and warm up every variant before timing any
        fn(batch)
        fn(one)
    for _ in range(rounds):
        for name, fn in variants.items():
            for size, x, reps in (("b1", one, 4), ("b32", batch, 1)):
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(reps):
                    fn(x)
                per_face = 1000 / reps / len(x)
                for key, value in (
                    (f"{name}_ms_per_face_{size}", (time.perf_counter() - start) * per_face),
                    # CPU time of all threads: less disturbed by other load than wall time
                    (f"{name}_cpu_ms_per_face_{size}", (time.process_time() - cpu_start) * per_face),
                ):
                    best[key] = min(best.get(key, float("inf")), value)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data/faces folder")
    parser.add_argument("--no-dlib", action="store_true", help="skip dlib's pipeline")
    parser.add_argument("--embed-variants", action="store_true", help="only time the ways of running the backbone")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (1: a worker process; 0: the runtimes' defaults)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from faec_rec.faces import runtime

    runtime.set_threads(args.threads)  # before TensorFlow or any interpreter starts
    if args.embed_variants:
        result = {k: round(v, 3) for k, v in bench_embed_variants().items()}
        result["machine"] = machine()
        result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(json.dumps(result))
        return 0

    frames_small, frames_big = load_frames(args.data)
    photos = load_photos(args.data)
    result: dict[str, Any] = bench_ours(frames_small, frames_big, photos)
    if not args.no_dlib:
        theirs = run_dlib_isolated(args.data)
        result.update(theirs)
        result.update(ratios(result, theirs))
    result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    result["threads"] = args.threads
    result["machine"] = machine()
    result["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
