"""The demo's data: who to enrol, what to identify, and what a person would answer.

With the shared face photos (``../shared/data/faces`` or ``$FAEC_DEMO_FACES``):
five people from face_recognition's examples enrolled from one to three photos
each, then twelve other photos: held-out photos of them, two group photos,
three strangers and a dog. Without them: scikit-image's astronaut() enrolled,
and a mirrored copy, a crop and a photo without a face identified.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faec_rec.errors import ConfigError

_FR = "samples/face_recognition_examples"
DEMO_ENROL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Barack Obama", (f"{_FR}/obama/obama.jpg", f"{_FR}/obama/obama1.jpg", f"{_FR}/obama/obama2.jpg")),
    ("Joe Biden", (f"{_FR}/biden/biden.jpg",)),
    ("Kit Harington", (f"{_FR}/kit_harington/john1.jpeg", f"{_FR}/kit_harington/john2.jpeg")),
    ("Rose Leslie", (f"{_FR}/rose_leslie/img1.jpg",)),
    ("Alex Lacamoire", (f"{_FR}/alex_lacamoire/alex_lacamoire1.jpg", f"{_FR}/alex_lacamoire/alex-lacamoire.png")),
)
# Held-out photos and what a person would answer: names, None for a stranger, () for no face.
DEMO_IDENTIFY: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (f"{_FR}/obama/obama3.jpg", ("Barack Obama",)),
    (f"{_FR}/obama/obama_small.jpg", ("Barack Obama",)),
    (f"{_FR}/biden/biden2.jpg", ("Joe Biden",)),
    (f"{_FR}/kit_harington/johnsnow_test1.jpg", ("Kit Harington",)),
    (f"{_FR}/rose_leslie/img2.jpg", ("Rose Leslie",)),
    (f"{_FR}/alex_lacamoire/img1.jpg", ("Alex Lacamoire",)),
    ("group_photos/face_recognition__obama_and_biden.jpg", ("Barack Obama", "Joe Biden")),
    ("group_photos/face_recognition__kit_with_rose.jpg", ("Kit Harington", "Rose Leslie")),
    ("samples/openface_examples/amy_adams/adams.jpg", (None,)),
    ("samples/openface_examples/steve_carell/carell.jpg", (None,)),
    ("samples/openface_examples/john_lennon/lennon-1.jpg", (None,)),
    ("no_face/darknet__dog.jpg", ()),
)


def find_demo_faces() -> Path | None:
    """The shared face data: ``$FAEC_DEMO_FACES`` when set (a folder without the
    photos, e.g. "none", means: use the fallback), else ``../shared/data/faces``
    next to the source tree or the current folder."""
    chosen = os.environ.get("FAEC_DEMO_FACES")
    candidates = [Path(chosen)] if chosen else [
        Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces",
        Path.cwd().parent / "shared" / "data" / "faces",
    ]
    for candidate in candidates:
        if (candidate / _FR).is_dir():
            return candidate
    return None


@dataclass
class DemoPlan:
    """Who to enrol and what to identify, with the answers a person would give."""

    description: str
    enrol: list[tuple[str, list[Path]]]
    identify: list[tuple[Path, tuple[str | None, ...]]]


def demo_plan(workdir: Path) -> DemoPlan:
    """The shared face photos when present, else scikit-image's astronaut."""
    root = find_demo_faces()
    if root is not None:
        enrol = [(name, [root / f for f in files if (root / f).is_file()]) for name, files in DEMO_ENROL]
        identify = [(root / f, expect) for f, expect in DEMO_IDENTIFY if (root / f).is_file()]
        return DemoPlan(f"shared face photos in {root}", [(n, fs) for n, fs in enrol if fs], identify)
    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise ConfigError("the demo needs ../shared/data/faces (or FAEC_DEMO_FACES) or scikit-image "
                          "(pip install scikit-image): neither is available") from exc
    import cv2

    inputs = workdir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    astronaut = skdata.astronaut()  # (512, 512, 3) RGB, Eileen Collins
    files = {
        "astronaut.png": astronaut,
        "astronaut_mirrored.png": astronaut[:, ::-1],
        "astronaut_cropped.png": astronaut[20:340, 90:330],
        "coffee.png": skdata.coffee(),
    }
    for name, pixels in files.items():
        cv2.imwrite(str(inputs / name), pixels[:, :, ::-1].copy())
    return DemoPlan(
        "scikit-image's astronaut() (no ../shared/data/faces here)",
        [("Eileen Collins", [inputs / "astronaut.png"])],
        [(inputs / "astronaut_mirrored.png", ("Eileen Collins",)),
         (inputs / "astronaut_cropped.png", ("Eileen Collins",)),
         (inputs / "coffee.png", ())],
    )


def judge(expect: tuple[str | None, ...], faces: Sequence[dict[str, Any]]) -> bool:
    """True when the names found are the expected ones, a stranger came out
    unknown, and an image without a face gave none."""
    if not expect:
        return not faces
    found = {f.get("person") for f in faces if f.get("decision") == "known"}
    wanted = {e for e in expect if e is not None}
    if found != wanted:
        return False
    return None not in expect or any(f.get("decision") != "known" for f in faces)
