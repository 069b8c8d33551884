"""Build ``training/reference/generic.npz``, the reference shipped for retraining.

    python -m benchmarks.build_reference [--data ../shared/data/faces]

Only sets whose terms allow redistribution (``../shared/data/faces/README.md``):
samples/deepface_unit (MIT), samples/face_recognition_examples (MIT),
samples/openface_examples (Apache-2.0), classic/faceapi_bbt (MIT). Features come
from the engine exactly as served (detector, alignment, mirror-averaged backbone;
cached by ``benchmarks.openset_data``), stored as float16; images are not shipped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from faec_rec.config import FacesConfig

SETS = {
    "samples/deepface_unit": "MIT (serengil/deepface, tests/unit/dataset)",
    "samples/face_recognition_examples": "MIT (ageitgey/face_recognition, examples and tests/test_images)",
    "samples/openface_examples": "Apache-2.0 (cmusatyalab/openface, images/examples)",
    "classic/faceapi_bbt": "MIT (justadudewhohacks/face-api.js, examples/images)",
}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.openset import flip_features
    from benchmarks.openset_data import load_set
    from faec_rec.training.shipped_reference import REFERENCE_FILE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces"))
    args = parser.parse_args(argv)
    feats, labels, people, sources = [], [], [], []
    for name in SETS:
        names, arrays, _ = load_set(args.data, name, FacesConfig())
        f = flip_features(arrays)
        for i, rel in enumerate(names):
            if not arrays["found"][i]:
                continue
            person = f"{name}/{rel.split('/')[0]}"
            if person not in people:
                people.append(person)
            feats.append(f[i])
            labels.append(people.index(person))
            sources.append(f"{name}/{rel}")
    REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE_FILE, features=np.stack(feats).astype(np.float16), labels=np.array(labels, np.int16),
                        people=np.array(people), sources=np.array(sources))
    print(json.dumps({"file": str(REFERENCE_FILE), "bytes": REFERENCE_FILE.stat().st_size, "faces": len(labels),
                      "people": len(people), "sets": SETS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
