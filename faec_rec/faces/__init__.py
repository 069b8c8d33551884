"""Faces: find, align and describe faces in images.

The whole API in four verbs on numpy arrays::

    from faec_rec import faces
    image = faces.load_image("photo.jpg")          # (h, w, 3) uint8 RGB
    found = faces.detect(image)                    # list[Face], best first
    chips = faces.align(image, found)              # (n, 150, 150, 3) uint8
    vectors = faces.embed(chips)                   # (n, 128) float32, unit norm

The module-level functions share one default :class:`FaceEngine` (default
configuration), created on first use; nothing heavy loads at import time.
Build a ``FaceEngine(config)`` for other settings.

Note: ``faces.align``, ``faces.detect`` and ``faces.embed`` are these functions, not
the modules of the same names; import from the modules with
``from faec_rec.faces.detect import BlazeFaceDetector`` (``import
faec_rec.faces.detect as m`` would give the function).
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

# Python sets a package attribute for each submodule when it is first imported, which
# would replace the functions below named like the modules (align, detect, embed) the
# first time one of them loaded late. Import all three now (cheap: no TF/Keras at
# import time), before the functions are defined.
import faec_rec.faces.align  # noqa: F401
import faec_rec.faces.detect  # noqa: F401
import faec_rec.faces.embed  # noqa: F401
from faec_rec.faces.engine import AnalysedFace, FaceEngine
from faec_rec.faces.image import encode_jpeg, load_image
from faec_rec.faces.types import Face

__all__ = ["AnalysedFace", "Face", "FaceEngine", "align", "default_engine", "detect", "embed", "encode_jpeg", "load_image"]

_default: FaceEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> FaceEngine:
    """The shared engine behind :func:`detect`, :func:`align` and :func:`embed`."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = FaceEngine()
    return _default


def detect(image: np.ndarray) -> list[Face]:
    """Faces in (h, w, 3) uint8 RGB ``image``, best first; ``[]`` when there is none."""
    return default_engine().detect(image)


def align(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """(n, 150, 150, 3) uint8 RGB chips (dlib geometry) of ``faces`` in ``image``."""
    return default_engine().align(image, faces)


def embed(crops: np.ndarray) -> np.ndarray:
    """(n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32 L2-normalised descriptors."""
    return default_engine().embed(crops)
