"""The face engine: detect -> align -> embed behind one object, arrays in and out.

``FaceEngine`` composes the three stages (a :class:`~faec_rec.faces.detect.Detector`,
:func:`~faec_rec.faces.align.align` and an :class:`~faec_rec.faces.embed.Embedder`);
the detector and the model are created on first use, once per engine, so building
an engine is free and a worker process pays for the model only when the first
frame arrives. All faces of one call are embedded in one batch.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from faec_rec.config import FacesConfig
from faec_rec.faces.align import CHIP_SIZE
from faec_rec.faces.align import align as align_faces
from faec_rec.faces.detect import Detector, check_image, make_detector
from faec_rec.faces.types import Face

if TYPE_CHECKING:
    from faec_rec.faces.embed import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysedFace:
    """One face found and described.

    face: the detection (box, score, landmarks in image pixels);
    crop: (150, 150, 3) uint8 RGB aligned chip; features: (128,) float32 raw
    backbone descriptor (dlib scale; L2-normalise or project before comparing).
    """

    face: Face
    crop: np.ndarray
    features: np.ndarray


class FaceEngine:
    """Detection, alignment and embedding with one configuration.

    config: detector choice and limits, flip averaging, batch size (defaults:
    ``FacesConfig()``); cache_dir: where the converted backbone is cached.
    ``detector`` / ``embedder`` replace the configured ones (any object with the
    same methods), e.g. to share one model between engines.
    """

    def __init__(
        self,
        config: FacesConfig | None = None,
        cache_dir: Path | None = None,
        *,
        detector: Detector | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.config = config or FacesConfig()
        self.cache_dir = cache_dir
        self._detector = detector
        self._embedder = embedder
        self._lock = threading.Lock()

    @property
    def detector(self) -> Detector:
        """The detector (created on first use)."""
        if self._detector is None:
            with self._lock:
                if self._detector is None:
                    self._detector = make_detector(self.config)
        return self._detector

    @property
    def embedder(self) -> Embedder:
        """The embedder (created on first use; its model loads on its first call)."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from faec_rec.faces.embed import Embedder  # keeps TF/Keras out of import time

                    self._embedder = Embedder(self.config, self.cache_dir)
        return self._embedder

    def set_embedder(self, embedder: Embedder | None) -> None:
        """Embed with ``embedder`` from now on (None: the configured built-in one, made on first use)."""
        with self._lock:
            self._embedder = embedder

    @property
    def backbone_version(self) -> str:
        """Name of the descriptor model, e.g. ``"dlib-resnet-v1"``."""
        return str(self.embedder.backbone_version)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in (h, w, 3) uint8 RGB ``image``, best score first; ``[]`` when none."""
        return self.detector.detect(image)

    def align(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """(n, 150, 150, 3) uint8 RGB chips of ``faces`` cut from ``image``."""
        return align_faces(image, faces, CHIP_SIZE)

    def features(self, crops: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 chips -> (n, 128) float32 raw backbone descriptors."""
        return self.embedder.features(crops)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 chips -> (n, 128) float32 L2-normalised descriptors."""
        return self.embedder.embed(crops)

    def analyse(self, image: np.ndarray) -> list[AnalysedFace]:
        """Detect, align and describe every face of one image (one model call for all)."""
        return self.analyse_many([image])[0]

    def analyse_many(self, images: Sequence[np.ndarray]) -> list[list[AnalysedFace]]:
        """:meth:`analyse` for several images, their faces embedded together in batches.

        Returns one list per image, in order; an image without faces gives ``[]``.
        """
        for image in images:
            check_image(image)
        found = [self.detect(image) for image in images]
        chips = [self.align(image, faces) for image, faces in zip(images, found)]
        total = sum(len(faces) for faces in found)
        if total == 0:
            return [[] for _ in images]
        feats = self.features(np.concatenate(chips))
        out: list[list[AnalysedFace]] = []
        start = 0
        for faces, crops in zip(found, chips):
            out.append([AnalysedFace(face, crop, feats[start + i]) for i, (face, crop) in enumerate(zip(faces, crops))])
            start += len(faces)
        return out
