"""Decode image files and bytes into RGB arrays, refusing bad input early.

Every image the project reads goes through :func:`load_image`: the size of the
encoded data and the pixel count in the file header are checked *before* the
pixels are decoded, so a decompression bomb (a small file that claims
20000x20000 pixels) is refused without allocating it. Grey, RGBA and 16-bit
images come back as 8-bit RGB; JPEG EXIF orientation is applied.
"""
from __future__ import annotations

import logging
import struct
from pathlib import Path

import cv2
import numpy as np

from faec_rec.errors import ImageError
from faec_rec.files import IMAGE_FORMATS

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_MAX_BYTES = 50_000_000

_SUPPORTED = ", ".join(list(IMAGE_FORMATS)[:-1]) + " or " + list(IMAGE_FORMATS)[-1]
# JPEG start-of-frame markers carry the frame size (not DHT/JPG/DAC: C4, C8, CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def load_image(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Read an image file or encoded bytes as RGB.

    source: a path, or the encoded bytes of a JPEG/PNG/BMP/WebP/GIF/PNM image.
    name: how errors name a bytes source (a file name or Redis key); paths name themselves.
    max_pixels: refuse images whose header claims more pixels (width * height).
    max_bytes: refuse encoded data larger than this.

    Returns (h, w, 3) uint8 RGB, C-contiguous. Raises :class:`ImageError`
    (``source``, ``reason``) for a missing, empty, truncated, unreadable,
    unsupported or too large image.
    """
    label, data = _read(source, name, max_bytes)
    width, height = image_size(data, label)
    if width < 1 or height < 1:
        raise ImageError(label, f"header gives an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            label,
            f"image is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{max_pixels}; downscale it or raise faces.max_image_pixels",
        )
    _check_complete(data, label)
    # IMREAD_COLOR_RGB: grey -> 3 channels, alpha dropped, 16-bit -> 8-bit, EXIF applied.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(label, "the decoder could not read the pixels (corrupt or truncated file)")
    if image.dtype != np.uint8:  # not expected from IMREAD_COLOR, kept as a guard
        image = (image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)).astype(np.uint8)
    return np.ascontiguousarray(image)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode (h, w, 3) uint8 RGB as JPEG bytes at ``quality`` (1-100)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError("<array>", f"expected an (h, w, 3) uint8 RGB array, got {_describe(image)}")
    if not 1 <= int(quality) <= 100:
        raise ImageError("<array>", f"JPEG quality must be 1-100, got {quality}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("<array>", "JPEG encoding failed")
    return buf.tobytes()


def image_size(data: bytes, label: str = "<bytes>") -> tuple[int, int]:
    """(width, height) read from the header of encoded image bytes, without decoding.

    Raises :class:`ImageError` when the format is not recognised or the header is cut short.
    """
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data, label)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError(label, "PNG header is truncated")
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ImageError(label, "GIF header is truncated")
        return struct.unpack("<HH", data[6:10])
    if data.startswith(b"BM"):
        if len(data) < 26:
            raise ImageError(label, "BMP header is truncated")
        if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
            w, h = struct.unpack("<HH", data[18:22])
        else:
            w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data, label)
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456":
        return _pnm_size(data, label)
    raise ImageError(label, f"not a recognised image format (expected {_SUPPORTED})")


def _read(source: str | Path | bytes, name: str | None, max_bytes: int) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(label, "file not found") from None
        except OSError as exc:
            raise ImageError(label, f"cannot read the file: {exc.strerror}") from exc
        if size > max_bytes:
            raise ImageError(label, f"file is {size} bytes, more than the limit of {max_bytes}")
        try:
            data = path.read_bytes()
        except OSError as exc:  # a directory, no permission...
            raise ImageError(label, f"cannot read the file: {exc.strerror}") from exc
    else:
        raise ImageError(str(name or "<input>"), f"expected a path or bytes, got {type(source).__name__}")
    if not data:
        raise ImageError(label, "empty (zero-byte) image")
    if len(data) > max_bytes:
        raise ImageError(label, f"encoded image is {len(data)} bytes, more than the limit of {max_bytes}")
    return label, data


def _jpeg_size(data: bytes, label: str) -> tuple[int, int]:
    size, _ = _jpeg_walk(data, label)
    return size


def _jpeg_walk(data: bytes, label: str) -> tuple[tuple[int, int], int]:
    """((width, height), offset of the first scan) from the JPEG marker segments."""
    pos, n = 2, len(data)
    size: tuple[int, int] | None = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ImageError(label, f"JPEG header is corrupt (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in _JPEG_SOF and size is None:
            if pos + 9 > n:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker in (0xDA, 0xD9):  # start of scan (or a premature end)
            if size is None:
                break
            return size, pos
        pos += 2 + length
    if size is not None:
        raise ImageError(label, "JPEG is truncated (no image data after the header)")
    raise ImageError(label, "JPEG is truncated or has no frame header")


def _webp_size(data: bytes, label: str) -> tuple[int, int]:
    if len(data) < 30:
        raise ImageError(label, "WebP header is truncated")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = data[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(data[24:27], "little")
        h = 1 + int.from_bytes(data[27:30], "little")
        return w, h
    raise ImageError(label, "WebP header is not understood")


def _pnm_size(data: bytes, label: str) -> tuple[int, int]:
    fields: list[bytes] = []
    for line in data[2:512].splitlines():
        fields.extend(line.split(b"#", 1)[0].split())
        if len(fields) >= 2:
            try:
                return int(fields[0]), int(fields[1])
            except ValueError:
                break
    raise ImageError(label, "PNM header is truncated or corrupt")


def _check_complete(data: bytes, label: str) -> None:
    """Refuse files cut short: decoders would otherwise return a half-grey image."""
    if data.startswith(b"\xff\xd8"):
        # The end-of-image marker must follow the scan data (an EXIF thumbnail
        # has its own, earlier one); padding or appended data may follow it.
        _, scan = _jpeg_walk(data, label)
        if data.find(b"\xff\xd9", scan) < 0:
            raise ImageError(label, "JPEG is truncated (no end-of-image marker)")
    elif data.startswith(b"\x89PNG"):
        if data.rfind(b"IEND") < 0:
            raise ImageError(label, "PNG is truncated (no IEND chunk)")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__
