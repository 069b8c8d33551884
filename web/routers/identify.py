"""``POST /api/v1/identify``: every face in one photo with its person (or none)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool

from faec_rec.web.deps import ClientDep, SettingsDep, Viewer
from faec_rec.web.schemas import ErrorResponse, FaceOut, IdentifyOut
from faec_rec.web.uploads import read_images

router = APIRouter(prefix="/api/v1", tags=["identify"])


@router.post("/identify", response_model=IdentifyOut,
             responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                        422: {"model": ErrorResponse}, 504: {"model": ErrorResponse}})
async def identify(
    who: Viewer,
    client: ClientDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, BMP, WebP, GIF or PNM)")],
) -> IdentifyOut:
    """Detect and identify every face (a worker does the work; 504 when none answers in `web.task_timeout_s`)."""
    datas, _names = await read_images([image], settings)
    faces = await run_in_threadpool(client.identify, datas[0], timeout=settings.web.task_timeout_s)
    return IdentifyOut(faces=[FaceOut(box=f.box, person=f.person, person_id=f.person_id, score=f.score,
                                      decision=f.decision, visitor=getattr(f, "visitor", None)) for f in faces])
