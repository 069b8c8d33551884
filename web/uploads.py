"""Uploaded images: checked against the engine's own caps before anything is queued."""
from __future__ import annotations

import os
from collections.abc import Sequence

from fastapi import UploadFile

from faec_rec.config import Settings
from faec_rec.errors import ImageError, RequestTooLarge, UnsupportedImage
from faec_rec.faces.image import image_size


def safe_filename(raw: str | None, index: int) -> str:
    """The upload's base name (no directories, no control characters, at most 100 characters)."""
    name = os.path.basename((raw or "").replace("\\", "/"))
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or f"image-{index + 1}"


async def read_images(files: Sequence[UploadFile], settings: Settings) -> tuple[list[bytes], list[str]]:
    """``(bytes, names)`` of uploaded images; raises :class:`RequestTooLarge` (413) over
    ``faces.max_image_bytes``/``faces.max_image_pixels`` or ``web.max_images_per_request``,
    :class:`UnsupportedImage` (415) for something not an image."""
    if not files:
        raise ImageError("images", "send at least one image")
    if len(files) > settings.web.max_images_per_request:
        raise RequestTooLarge(f"{len(files)} images in one request; at most {settings.web.max_images_per_request}")
    datas, names = [], []
    for i, upload in enumerate(files):
        name = safe_filename(upload.filename, i)
        data = await upload.read(settings.faces.max_image_bytes + 1)
        if len(data) > settings.faces.max_image_bytes:
            raise RequestTooLarge(f"{name}: larger than {settings.faces.max_image_bytes} bytes")
        if not data:
            raise UnsupportedImage(name, "empty file")
        try:
            width, height = image_size(data, name)
        except ImageError as exc:
            raise UnsupportedImage(name, exc.reason) from exc
        if width * height > settings.faces.max_image_pixels:
            raise RequestTooLarge(f"{name}: {width}x{height} pixels is more than {settings.faces.max_image_pixels}")
        if width < 1 or height < 1:
            raise UnsupportedImage(name, f"header gives an empty image ({width}x{height})")
        datas.append(data)
        names.append(name)
    return datas, names
