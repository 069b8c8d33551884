"""Naming a visitor: an enrolment through the enrolment queue, not a copy.

The enrol task (:func:`faec_rec.workers.enrolment.enrol`) hands a request that
names a ``visitor`` to :func:`enrol_visitor`: the visitor's faces that pass the
quality gate become templates of the person (new, or the existing one when the
request carries its ``person_id``) from their stored backbone features and
crops (no image is decoded again), and the visitor is marked as that person,
so its past and future faces resolve to them. The content hash of each
template is ``uface:<face id>``, so a redelivered request adds nothing twice.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faec_rec.errors import GalleryError, UnknownPersonError, VisitorError

if TYPE_CHECKING:
    from faec_rec.workers.enrolment import EnrolReport, EnrolRequest
    from faec_rec.workers.runtime import Runtime

log = logging.getLogger(__name__)


def visitors_of(runtime: Runtime) -> Any:
    """The process's :class:`~faec_rec.visitors.service.Visitors` for this runtime (created once)."""
    found = getattr(runtime, "_visitors", None)
    if found is None:
        from faec_rec.visitors.service import Visitors

        found = Visitors(runtime.redis, runtime.keys, runtime.settings.visitors, runtime.settings.data_dir)
        runtime._visitors = found  # type: ignore[attr-defined]
    return found


def enrol_visitor(runtime: Runtime, request: EnrolRequest, report: EnrolReport) -> tuple[str | None, str | None]:
    """Enrol a visitor's good faces; fills ``report`` and returns ``(error, detail)`` (None, None when done)."""
    from faec_rec.workers.enrolment import ImageReport

    visitors = visitors_of(runtime)
    try:
        faces = visitors.good_faces(request.visitor)
    except VisitorError as exc:
        return "unknown_visitor", str(exc)
    if not faces:
        return "no_acceptable_image", f"visitor {request.visitor} has no face that passes the quality gate"
    crops = []
    for f in faces:
        path = Path(runtime.settings.data_dir) / f["crop"] if f.get("crop") else None
        try:
            crops.append(path.read_bytes() if path else b"")
        except OSError:
            crops.append(b"")
    has_crops = all(crops)
    features = np.stack([f["features"] for f in faces]).astype(np.float32)
    try:
        result = runtime.gallery.enrol(
            request.name if request.name is not None else report.name,
            features,
            person_id=request.person_id,
            sources=[f.get("source") or f"visitor {request.visitor}" for f in faces],
            content_hashes=[f"uface:{f['id']}" for f in faces],
            qualities=[float(_quality(f)) for f in faces],
            crops=crops if has_crops else None,
            metadata=request.metadata,
        )
    except (GalleryError, UnknownPersonError) as exc:
        return "gallery_refused", str(exc)
    added = iter(result.added)
    dupes = set(result.duplicates)
    report.images = [
        ImageReport(f.get("source") or f["id"], True, "duplicate" if f"uface:{f['id']}" in dupes else "ok",
                    template_id=None if f"uface:{f['id']}" in dupes else next(added, None))
        for f in faces
    ]
    report.person_id, report.name = result.person_id, result.name
    visitors.mark_named(request.visitor, result.person_id)
    report.status = "done"
    log.info("visitor %s enrolled as %s (%s): %d face(s)", request.visitor, result.name, result.person_id, len(faces))
    return None, None


def _quality(face: dict[str, Any]) -> float:
    import json

    q = face.get("quality")
    if isinstance(q, str):
        q = json.loads(q or "{}")
    return float((q or {}).get("score", 1.0))
