"""The enrolment gate's false refusals on real photos, and its verdicts on the hard cases.

    python -m benchmarks.enrol_gate [--lfw 400] [--seed 11] [--faces ../shared/data/faces]

Prints JSON: for a seeded sample of LFW photos, the samples/ photos and a seeded sample
of the classic sets, how many were refused for each reason (every LFW photo shows a real,
uncovered face, so ``not_a_photo`` and ``face_covered`` there are false refusals), and
the reason given to every image of ``hard_cases/``. Accuracy only: no timing.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from faec_rec.faces import FaceEngine, load_image
from faec_rec.faces.quality import Reason, assess

DEFAULT_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"
NEW_CHECKS = (Reason.NOT_A_PHOTO.value, Reason.FACE_COVERED.value)


def verdicts(engine: FaceEngine, paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        image = load_image(path)
        out[str(path)] = assess(engine.detect(image), lambda f, image=image: engine.align(image, [f])[0]).reason.value
    return out


def summary(found: dict[str, str]) -> dict[str, object]:
    counts = Counter(found.values())
    reached = counts[Reason.OK.value] + sum(counts[r] for r in NEW_CHECKS)  # faces the last two checks saw
    false = sum(counts[r] for r in NEW_CHECKS)
    return {"photos": len(found), "by_reason": dict(sorted(counts.items())),
            "reached_drawn_and_covered_checks": reached,
            "refused_as_drawn_or_covered": false,
            "rate": round(false / reached, 4) if reached else None,
            "which": sorted(Path(p).name for p, r in found.items() if r in NEW_CHECKS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES)
    parser.add_argument("--lfw", type=int, default=400)
    parser.add_argument("--classic", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    lfw = sorted((args.faces / "lfw").glob("*/*.jpg"))
    classic = sorted(p for p in (args.faces / "classic").glob("*/*/*") if p.is_file())
    engine = FaceEngine()
    result = {
        "seed": args.seed,
        "lfw": summary(verdicts(engine, rng.sample(lfw, min(args.lfw, len(lfw))))),
        "samples": summary(verdicts(engine, sorted(p for p in (args.faces / "samples").glob("*/*/*") if p.is_file()))),
        "classic": summary(verdicts(engine, rng.sample(classic, min(args.classic, len(classic))))),
        "hard_cases": {Path(p).name: r for p, r in verdicts(engine, sorted(
            p for p in (args.faces / "hard_cases").iterdir() if p.is_file())).items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
