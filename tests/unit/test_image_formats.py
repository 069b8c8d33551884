"""One image-format list for the folder walk and the loader (issue 17 item 20):
every suffix the walk collects is decoded by the loader, and files the loader reads
(GIF, PNM) are collected while TIFF, which it refuses, is not."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faec_rec.errors import ImageError
from faec_rec.faces.image import load_image
from faec_rec.files import IMAGE_FORMATS, IMAGE_SUFFIXES, walk_images

PIL_FORMAT = {".gif": "GIF", ".pbm": "PPM", ".pnm": "PPM", ".tif": "TIFF", ".tiff": "TIFF"}


def _write(path: Path, rgb: np.ndarray) -> None:
    fmt = PIL_FORMAT.get(path.suffix)
    if path.suffix == ".pgm":  # grey only
        assert cv2.imwrite(str(path), rgb[:, :, 0].copy()), path
    elif fmt is not None:
        Image.fromarray(rgb).save(path, format=fmt)
    else:
        assert cv2.imwrite(str(path), rgb[:, :, ::-1].copy()), path


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_every_suffix_the_walk_collects_is_read_by_the_loader(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"photo{suffix.upper()}"
    _write(path.with_suffix(suffix), rgb)
    path.with_suffix(suffix).rename(path)
    images, others = walk_images(tmp_path)
    assert images == [path] and others == []
    assert load_image(path).shape == (24, 32, 3)


def test_formats_the_loader_refuses_are_skipped_and_the_list_names_them(tmp_path: Path, rgb: np.ndarray) -> None:
    for name in ("scan.tif", "scan.tiff"):
        _write(tmp_path / name, rgb)
        with pytest.raises(ImageError, match="not a recognised image format"):
            load_image(tmp_path / name)
    images, others = walk_images(tmp_path)
    assert images == [] and {p.name for p in others} == {"scan.tif", "scan.tiff"}
    assert {".gif", ".ppm", ".pgm"} <= IMAGE_SUFFIXES and not {".tif", ".tiff"} & IMAGE_SUFFIXES
    assert set(IMAGE_FORMATS) == {"JPEG", "PNG", "BMP", "WebP", "GIF", "PNM"}
