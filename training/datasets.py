"""Labelled face data for training: a folder tree ``ROOT/<person>/<images>``.

Two readers:

- :func:`read_tight_crops` for data sets that are already tight face crops
  (the grey classic sets): images read directly, converted to grey and resized,
  for the CNN trained from scratch.
- :func:`extract_features` for anything else: every image goes through the
  face engine (detect, align, embed); the aligned crop (JPEG) and the backbone
  features are cached on disk keyed by the file's sha256, so a second run reads
  no model. What was dropped (unreadable, no face, several faces) is reported
  per folder.

:func:`split_identities` splits by identity so no person is in two splits.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from faec_rec.errors import FaecError, ImageError, TrainingError
from faec_rec.files import IMAGE_SUFFIXES, sha256_file  # IMAGE_SUFFIXES: the loader's formats

if TYPE_CHECKING:
    from faec_rec.faces.engine import FaceEngine

log = logging.getLogger(__name__)

Several = Literal["drop", "largest", "central"]
Mode = Literal["detect", "tight", "detect_or_tight"]


@dataclass(frozen=True)
class LabelledFiles:
    """Image files with identity labels: paths (n,), labels (n,) int into names."""

    paths: list[Path]
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def single_image_people(self) -> list[str]:
        """People with exactly one image: usable for enrolment, not for positive pairs."""
        counts = np.bincount(self.labels, minlength=len(self.names))
        return [self.names[i] for i in np.flatnonzero(counts == 1)]


def scan_tree(root: Path, *, min_people: int = 2) -> LabelledFiles:
    """List ``root/<person>/<image>`` files (sorted, so labels are stable).

    Raises TrainingError when root is missing, holds no images, or fewer than
    ``min_people`` people (training needs at least two to have negatives).
    Hidden files and non-image suffixes are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"dataset folder {root} does not exist: give a folder of <person>/<images> sub-folders")
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in person_dir.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            log.warning("dataset %s: folder %s holds no images, skipped", root, person_dir.name)
            continue
        names.append(person_dir.name)
        paths.extend(files)
        labels.extend([len(names) - 1] * len(files))
    if not paths:
        raise TrainingError(f"dataset folder {root} holds no images in <person>/ sub-folders")
    if len(names) < min_people:
        raise TrainingError(
            f"dataset {root} has {len(names)} person folder(s) ({', '.join(names)}); training needs at least "
            f"{min_people} people so that there are different-person pairs"
        )
    return LabelledFiles(paths, np.asarray(labels, dtype=np.int64), names)


def split_identities(
    n_identities: int,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split identity ids 0..n-1 into disjoint sorted arrays (train, val, test...).

    ``groups`` (n_identities,), when given, splits each group (e.g. each source
    data set) by the same fractions so every split sees every group. Each split
    gets at least one identity per group where the group has enough.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if (fractions <= 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise TrainingError(f"split fractions must be positive and sum to 1, got {fractions.tolist()}")
    if n_identities < len(fractions):
        raise TrainingError(f"{n_identities} identities cannot be split {len(fractions)} ways")
    rng = np.random.default_rng([seed, 3])
    groups = np.zeros(n_identities, dtype=np.int64) if groups is None else np.asarray(groups)
    parts: list[list[int]] = [[] for _ in fractions]
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        cuts = np.floor(np.cumsum(fractions)[:-1] * members.size + 0.5).astype(int)
        for n, chunk in enumerate(np.split(members, cuts)):
            parts[n].extend(int(i) for i in chunk)
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


# ---------------------------------------------------------------------------
# Tight crops (no detection): the grey classic sets for the scratch CNN
# ---------------------------------------------------------------------------

@dataclass
class CropSet:
    """Grey face crops: images (n, h, w) uint8, labels (n,) int into names,
    groups (n,) int into group_names (the source set of each image)."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    groups: np.ndarray
    group_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)

    def identity_groups(self) -> np.ndarray:
        """(n_identities,) group of each identity."""
        out = np.zeros(len(self.names), dtype=np.int64)
        out[self.labels] = self.groups
        return out

    def subset(self, identities: np.ndarray) -> CropSet:
        """Only the images of these identity ids (labels kept as they are)."""
        keep = np.isin(self.labels, identities)
        return CropSet(self.images[keep], self.labels[keep], self.names, self.groups[keep], self.group_names)


def read_grey(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file -> (h, w) uint8 grey resized to ``size`` = (h, w). Raises ImageError."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(str(path), f"cannot read: {exc.strerror}") from exc
    if data.size == 0:
        raise ImageError(str(path), "empty file")
    img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ImageError(str(path), "not a decodable image (corrupt or unsupported format)")
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def read_tight_crops(roots: Iterable[Path], size: tuple[int, int] = (48, 40)) -> CropSet:
    """Read several labelled trees of tight crops into one :class:`CropSet`.

    Identity names become ``<set>/<person>``, so two sets' "s01" never merge.
    Unreadable images are skipped and counted in ``dropped`` per folder.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    groups: list[int] = []
    names: list[str] = []
    group_names: list[str] = []
    dropped: dict[str, int] = {}
    for root in roots:
        root = Path(root)
        files = scan_tree(root, min_people=1)
        group_names.append(root.name)
        offset = len(names)
        names.extend(f"{root.name}/{n}" for n in files.names)
        for path, label in zip(files.paths, files.labels):
            try:
                images.append(read_grey(path, size))
            except ImageError as exc:
                key = f"{root.name}/{path.parent.name}"
                dropped[key] = dropped.get(key, 0) + 1
                log.warning("skipped %s", exc)
                continue
            labels.append(offset + int(label))
            groups.append(len(group_names) - 1)
    if not images:
        raise TrainingError("no readable images in the given data sets")
    return CropSet(
        np.stack(images), np.asarray(labels, dtype=np.int64), names, np.asarray(groups, dtype=np.int64), group_names, dropped
    )


# ---------------------------------------------------------------------------
# Engine features with an on-disk cache
# ---------------------------------------------------------------------------

@dataclass
class DropReport:
    """What :func:`extract_features` could not use, per person folder."""

    unreadable: dict[str, int] = field(default_factory=dict)
    no_face: dict[str, int] = field(default_factory=dict)
    several_faces: dict[str, int] = field(default_factory=dict)
    single_image: list[str] = field(default_factory=list)

    def add(self, reason: str, folder: str) -> None:
        table = getattr(self, reason)
        table[folder] = table.get(folder, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.unreadable.values()) + sum(self.no_face.values()) + sum(self.several_faces.values())

    def to_json(self) -> dict[str, object]:
        return {
            "unreadable": self.unreadable,
            "no_face": self.no_face,
            "several_faces": self.several_faces,
            "single_image_people": self.single_image,
            "dropped_total": self.total,
        }

    def lines(self) -> list[str]:
        """Human-readable summary, one line per folder with drops."""
        out = []
        folders = sorted(set(self.unreadable) | set(self.no_face) | set(self.several_faces))
        for f in folders:
            parts = [
                f"{self.unreadable.get(f, 0)} unreadable" if self.unreadable.get(f) else "",
                f"{self.no_face.get(f, 0)} without a face" if self.no_face.get(f) else "",
                f"{self.several_faces.get(f, 0)} with several faces" if self.several_faces.get(f) else "",
            ]
            out.append(f"{f}: dropped " + ", ".join(p for p in parts if p))
        if self.single_image:
            out.append(
                f"{len(self.single_image)} people have a single usable image (enrolment only, no positive pairs): "
                + ", ".join(self.single_image[:10]) + (" ..." if len(self.single_image) > 10 else "")
            )
        return out


@dataclass
class FeatureSet:
    """Backbone features of labelled images: features (n, 128) float32 raw,
    labels (n,) int into names, paths (n,), crops (n, 150, 150, 3) uint8 or None."""

    features: np.ndarray
    labels: np.ndarray
    names: list[str]
    paths: list[Path]
    report: DropReport
    crops: np.ndarray | None = None

    def index(self) -> dict[Path, int]:
        """path -> row."""
        return {p: n for n, p in enumerate(self.paths)}


class FeatureCache:
    """Per-file cache: ``<dir>/<tag>/<hh>/<sha256>.npz`` with the features
    (or none, with the reason) and the aligned crop as JPEG bytes.

    ``tag`` names everything that changes the result: backbone version, mode,
    flip averaging, multi-face policy.
    """

    def __init__(self, directory: Path, tag: str) -> None:
        self.dir = Path(directory) / tag

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npz"

    def get(self, digest: str) -> tuple[np.ndarray | None, str, bytes] | None:
        """(features (128,) or None, reason, crop JPEG bytes) or None when not cached."""
        path = self._path(digest)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                feats = data["features"]
                reason = str(data["reason"])
                crop = data["crop"].tobytes()
        except (OSError, ValueError, KeyError):
            log.warning("feature cache entry %s is damaged; recomputing", path)
            return None
        return (feats if feats.size else None), reason, crop

    def put(self, digest: str, features: np.ndarray | None, reason: str, crop: bytes = b"") -> None:
        path = self._path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(
            tmp,
            features=np.zeros(0, np.float32) if features is None else np.asarray(features, np.float32),
            reason=np.array(reason),
            crop=np.frombuffer(crop, dtype=np.uint8),
        )
        tmp.replace(path)


def _pick_face(faces: list, image_shape: tuple[int, ...], several: Several) -> int | None:  # noqa: ANN001
    if len(faces) == 1:
        return 0
    if several == "drop":
        return None
    boxes = np.stack([np.asarray(f.face.box, dtype=np.float64) for f in faces])
    if several == "largest":
        return int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    centre = np.array([image_shape[1] / 2, image_shape[0] / 2])
    mids = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    return int(np.argmin(np.linalg.norm(mids - centre, axis=1)))


def _tight_crop(image: np.ndarray, size: int = 150) -> np.ndarray:
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC)


def _encode(crop: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", crop[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return buf.tobytes() if ok else b""


def _decode(data: bytes) -> np.ndarray | None:
    import cv2

    if not data:
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else img[:, :, ::-1]


def extract_features(
    files: LabelledFiles,
    engine: FaceEngine,
    cache_dir: Path | None = None,
    *,
    mode: Mode = "detect",
    several: Several = "drop",
    keep_crops: bool = False,
    progress: Callable[[int, int], None] | None = None,
    min_people: int = 2,
) -> FeatureSet:
    """Backbone features of every usable image in ``files``.

    mode "detect": detect + align with the engine (an image with no face is
    dropped; with several faces it is dropped, or the largest/most central is
    taken per ``several``). mode "tight": the image is already a tight face
    crop: resized to 150x150 and embedded without detection. "detect_or_tight":
    detect, and fall back to the tight crop where no face is found.

    Returns a FeatureSet whose report lists drops per folder and people left
    with a single image. Raises TrainingError when fewer than ``min_people``
    people keep an image.
    """
    from faec_rec.faces.image import load_image

    backbone = getattr(engine, "backbone_version", "dlib-resnet-v1")
    flip = getattr(engine, "flip_average", None)
    if flip is None:
        flip = getattr(getattr(engine, "config", None), "flip_average", True)
    cache = FeatureCache(cache_dir, f"{backbone}-{mode}-{several}-flip{int(bool(flip))}") if cache_dir else None
    report = DropReport()
    feats: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    crops: list[np.ndarray] = []
    pending: list[tuple[int, str, np.ndarray]] = []  # tight crops waiting for one batched embed

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([c for _, _, c in pending])
        out = engine.features(batch)
        for (n, digest, crop), f in zip(pending, out):
            if cache:
                cache.put(digest, f, "ok", _encode(crop))
            _keep(n, f, crop)
        pending.clear()

    def _keep(n: int, f: np.ndarray, crop: np.ndarray | None) -> None:
        feats.append(np.asarray(f, np.float32))
        labels.append(int(files.labels[n]))
        paths.append(files.paths[n])
        if keep_crops:
            crops.append(crop if crop is not None else np.zeros((150, 150, 3), np.uint8))

    total = len(files)
    for n, path in enumerate(files.paths):
        folder = f"{path.parent.name}"
        try:
            digest = sha256_file(path)
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc.strerror)
            report.add("unreadable", folder)
            continue
        hit = cache.get(digest) if cache else None
        if hit is not None:
            f, reason, crop_bytes = hit
            if f is None:
                report.add(reason, folder)
            else:
                _keep(n, f, _decode(crop_bytes) if keep_crops else None)
        else:
            try:
                image = load_image(path)
            except (ImageError, FaecError) as exc:
                log.warning("skipped %s", exc)
                report.add("unreadable", folder)
                if cache:
                    cache.put(digest, None, "unreadable")
                image = None
            if image is not None:
                if mode == "tight":
                    pending.append((n, digest, _tight_crop(image)))
                else:
                    analysed = engine.analyse(image)
                    pick = _pick_face(analysed, image.shape, several) if analysed else None
                    if pick is None and mode == "detect_or_tight" and not analysed:
                        pending.append((n, digest, _tight_crop(image)))
                    elif pick is None:
                        reason = "no_face" if not analysed else "several_faces"
                        report.add(reason, folder)
                        if cache:
                            cache.put(digest, None, reason)
                    else:
                        face = analysed[pick]
                        if cache:
                            cache.put(digest, face.features, "ok", _encode(face.crop))
                        _keep(n, face.features, face.crop)
        if len(pending) >= 32:
            flush()
        if progress is not None:
            progress(n + 1, total)
    flush()
    if not feats:
        raise TrainingError(f"no usable face in {total} images: {'; '.join(report.lines()) or 'all dropped'}")
    label_arr = np.asarray(labels, dtype=np.int64)
    kept_people = np.unique(label_arr)
    counts = np.bincount(label_arr, minlength=len(files.names))
    report.single_image = [files.names[i] for i in np.flatnonzero(counts == 1)]
    if kept_people.size < min_people:
        raise TrainingError(
            f"only {kept_people.size} person(s) kept a usable face; training needs at least {min_people}. "
            + "; ".join(report.lines())
        )
    for line in report.lines():
        log.info("dataset: %s", line)
    return FeatureSet(
        np.stack(feats), label_arr, files.names, paths, report, np.stack(crops) if keep_crops and crops else None
    )
