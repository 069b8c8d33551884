"""``/api/v1/cameras``: each camera's status, frames/s and drops (cameras are run by `faec-rec cameras`)."""
from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request

from faec_rec.web.deps import ClientDep, Viewer
from faec_rec.web.schemas import CamerasOut, CameraOut, ErrorResponse

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
