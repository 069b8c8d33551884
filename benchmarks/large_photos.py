"""Detection cost and recall on large photos (issue 17 item 17): the pixel budget and tiles
(``faces.detect_max_pixels``, default) against the old rule (downscale to ``detect_max_side``).

    python -m benchmarks.large_photos [--data ../shared/data/faces]

A real photo (``samples/face_recognition_examples/obama/obama.jpg``) is scaled so its face is
``face_px`` wide and pasted into a grey canvas: 6000x4000 with a 150 px face, 20000x1300 with
a 350 px face, 1920x1080 with a 60 px face. For each: ``found`` (IoU > 0.5 with the pasted
face), median detection ms over 3 runs after one warm-up, for ``budget`` (default settings)
and ``old`` (``detect_max_pixels=0``); ``jpeg_decode_ms`` of the canvas saved at quality 90 for
scale; ``peak_rss_mb``, ``load_avg``, ``date``. Prints one line of JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from faec_rec import quiet

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    quiet.install()
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FAEC_TEST_FACES", REPO.parent / "shared" / "data" / "faces")))
    args = ap.parse_args(argv)
    from faec_rec.config import FacesConfig
    from faec_rec.faces.blazeface import box_iou
    from faec_rec.faces.detect import make_detector
    from faec_rec.faces.image import load_image

    out: dict[str, object] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_avg_before": os.getloadavg()}
    photo = load_image(args.data / "samples" / "face_recognition_examples" / "obama" / "obama.jpg")
    budget, old = make_detector(FacesConfig()), make_detector(FacesConfig(detect_max_pixels=0))
    box = budget.detect(photo)[0].box
    for (w, h), face_px, (x0, y0) in (((6000, 4000), 150, (3900, 2500)), ((20000, 1300), 350, (13000, 200)), ((1920, 1080), 60, (900, 500))):
        k = face_px / float(box[2] - box[0])
        scaled = cv2.resize(photo, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
        canvas = np.full((h, w, 3), 118, np.uint8)
        ph, pw = min(scaled.shape[0], h - y0), min(scaled.shape[1], w - x0)
        canvas[y0 : y0 + ph, x0 : x0 + pw] = scaled[:ph, :pw]
        want = box * k + np.array([x0, y0, x0, y0], np.float32)
        name = f"{w}x{h}_face{face_px}"
        for label, det in (("budget", budget), ("old", old)):
            faces = det.detect(canvas)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                det.detect(canvas)
                times.append((time.perf_counter() - start) * 1000)
            found = bool(faces) and float(box_iou(want, np.stack([f.box for f in faces])).max()) > 0.5
            out[f"{name}_{label}_found"] = found
            out[f"{name}_{label}_detect_ms"] = round(float(np.median(times)), 1)
        ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
        start = time.perf_counter()
        load_image(jpeg.tobytes(), name=name)
        out[f"{name}_jpeg_decode_ms"] = round((time.perf_counter() - start) * 1000, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["load_avg_after"] = os.getloadavg()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
