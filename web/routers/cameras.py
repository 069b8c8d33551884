"""``/api/v1/cameras``: each camera's status, frames/s and drops; admins add and remove
camera sources (the source registry, run by `faec-rec camera --registry`)."""
from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request, Response

from faec_rec.web.deps import Admin, ClientDep, Viewer
from faec_rec.web.schemas import CameraIn, CamerasOut, CameraOut, CameraSource, ErrorResponse

router = APIRouter(prefix="/api/v1/cameras", tags=["cameras"], responses={401: {"model": ErrorResponse}})

_last: dict[str, tuple[float, int]] = {}
_lock = threading.Lock()


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def camera_rows(client: Any) -> list[CameraOut]:
    """Stats of every camera, with frames/s measured between this look and the previous one."""
    rows = []
    now = time.monotonic()
    for stats in client.cameras():
        cid = stats["camera"]
        processed = _int(stats.get("processed"))
        with _lock:
            before = _last.get(cid)
            _last[cid] = (now, processed)
        fps = None
        if before and now - before[0] > 0.5:
            fps = round(max(0, processed - before[1]) / (now - before[0]), 2)
        extra = {k: v for k, v in stats.items()
                 if k not in {"camera", "status", "pushed", "dropped", "processed", "faces", "errors", "fps"}}
        try:
            sample_fps = float(stats["fps"]) if stats.get("fps") else None
        except ValueError:
            sample_fps = None
        rows.append(CameraOut(camera=cid, status=stats.get("status"), pushed=_int(stats.get("pushed")),
                              dropped=_int(stats.get("dropped")), processed=processed, faces=_int(stats.get("faces")),
                              errors=_int(stats.get("errors")), fps=sample_fps,
                              processed_fps=fps, **extra))
    return rows


@router.get("", response_model=CamerasOut)
def list_cameras(request: Request, who: Viewer, client: ClientDep) -> CamerasOut:
    return CamerasOut(cameras=camera_rows(client))


@router.post("", response_model=CameraSource, status_code=201,
             responses={400: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def add_camera(body: CameraIn, who: Admin, client: ClientDep) -> CameraSource:
    """Register a camera source; a runner in registry mode starts it within a second.
    The source's credentials are stored but never returned (``user:pass@`` shows as ``***@``)."""
    return CameraSource.model_validate(client.cameras_add(body.camera, body.source, fps=body.fps, loop=body.loop))


@router.delete("/{camera}", status_code=204,
               responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
def remove_camera(camera: str, who: Admin, client: ClientDep) -> Response:
    """Unregister a camera: its registry runner stops it; its counters are kept."""
    client.cameras_remove(camera)
    return Response(status_code=204)
