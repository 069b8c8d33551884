"""load_image / encode_jpeg: formats, colour handling and every bad-input rule."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from faec_rec.errors import ImageError
from faec_rec.faces.image import encode_jpeg, image_size, load_image


def _rgb(rng: np.random.Generator, h: int = 24, w: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _encode(image: np.ndarray, ext: str) -> bytes:
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".bmp", ".ppm", ".webp"])
def test_lossless_formats_round_trip_in_rgb_order(rng: np.random.Generator, ext: str) -> None:
    image = _rgb(rng)
    if ext == ".webp":
        ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, 101])
        data = buf.tobytes()
    else:
        data = _encode(image, ext)
    assert image_size(data) == (32, 24)
    out = load_image(data)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


def test_path_and_bytes_give_the_same_pixels(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _encode(_rgb(rng), ".jpg")
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image(path), load_image(data))
    np.testing.assert_array_equal(load_image(str(path)), load_image(data))


def test_grey_png_becomes_three_equal_channels(rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, size=(10, 12), dtype=np.uint8)
    out = load_image(_encode(grey, ".png"))
    assert out.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_rgba_png_keeps_colour_and_drops_alpha(rng: np.random.Generator) -> None:
    rgb = _rgb(rng, 8, 9)
    alpha = rng.integers(0, 256, size=(8, 9, 1), dtype=np.uint8)
    bgra = np.concatenate([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), alpha], axis=2)
    out = load_image(_encode(bgra, ".png"))
    np.testing.assert_array_equal(out, rgb)


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    grey16 = np.array([[0, 256 * 100, 65535]], dtype=np.uint16)
    out = load_image(_encode(grey16, ".png"))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])


def test_one_pixel_image_loads() -> None:
    out = load_image(_encode(np.full((1, 1, 3), 7, np.uint8), ".png"))
    assert out.shape == (1, 1, 3) and int(out[0, 0, 0]) == 7


def test_exif_orientation_is_applied(rng: np.random.Generator) -> None:
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = 255  # left half white
    jpeg = _encode(image, ".jpg")
    # APP1 Exif, big-endian TIFF, one IFD entry: Orientation (0x0112) = 6 (rotate 90 clockwise)
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, 6, 0) + b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    out = load_image(jpeg[:2] + app1 + jpeg[2:])
    assert out.shape == (20, 10, 3)
    # after a clockwise quarter turn the white (left) half is on top
    assert out[:8].mean() > 200 and out[12:].mean() < 50


def test_zero_byte_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert err.value.source == str(path) and "zero-byte" in err.value.reason


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found") as err:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(err.value)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_are_refused(tmp_path: Path, rng: np.random.Generator, ext: str) -> None:
    data = _encode(_rgb(rng, 64, 64), ext)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|corrupt") as err:
        load_image(path)
    assert err.value.source == str(path)


def test_header_only_jpeg_is_refused(rng: np.random.Generator) -> None:
    data = _encode(_rgb(rng), ".jpg")
    sos = data.index(b"\xff\xda")
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[:sos], name="frames:cam1:42")


def test_garbage_bytes_are_refused_with_the_given_name() -> None:
    with pytest.raises(ImageError, match="not a recognised image format") as err:
        load_image(b"hello, this is not an image", name="upload.bin")
    assert err.value.source == "upload.bin"


def test_decompression_bomb_refused_from_the_jpeg_header(rng: np.random.Generator) -> None:
    data = bytearray(_encode(_rgb(rng, 16, 16), ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)  # claim 20000x20000
    assert image_size(bytes(data)) == (20000, 20000)
    with pytest.raises(ImageError, match="400000000 pixels"):
        load_image(bytes(data), max_pixels=60_000_000)


def test_decompression_bomb_refused_from_the_png_header() -> None:
    # A valid, tiny PNG whose IHDR claims 20000x20000 grey pixels.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 20001)) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="more than the limit"):
        load_image(png)


def test_too_many_bytes_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    data = _encode(_rgb(rng), ".png")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="bytes"):
        load_image(path, max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match="bytes"):
        load_image(data, max_bytes=len(data) - 1)


def test_encode_jpeg_round_trips_closely(rng: np.random.Generator) -> None:
    image = cv2.GaussianBlur(_rgb(rng, 40, 60), (7, 7), 2)
    out = load_image(encode_jpeg(image, quality=95))
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 3


def test_encode_jpeg_refuses_bad_arrays() -> None:
    with pytest.raises(ImageError, match="uint8"):
        encode_jpeg(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="quality"):
        encode_jpeg(np.zeros((4, 4, 3), np.uint8), quality=0)
