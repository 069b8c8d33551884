"""``/api/v1/jobs``: identify a batch of photos; poll progress and results."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool

from faec_rec.errors import NotFound
from faec_rec.keys import safe_id
from faec_rec.web.deps import ClientDep, Operator, SettingsDep, Viewer
from faec_rec.web.schemas import ErrorResponse, JobCreated, JobOut
from faec_rec.web.uploads import read_images

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses={401: {"model": ErrorResponse}})


UnknownJob = NotFound


@router.post("", response_model=JobCreated, status_code=202,
             responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}})
async def create_job(
    who: Operator,
    client: ClientDep,
    settings: SettingsDep,
    images: Annotated[list[UploadFile], File(description="the photos to identify")],
) -> JobCreated:
    """Queue one identify task per photo; poll `GET /api/v1/jobs/{job}`."""
    datas, names = await read_images(images, settings)
    job = await run_in_threadpool(client.submit_images, datas, image_names=names)
    return JobCreated(job=job, total=len(datas))


@router.get("/{job}", response_model=JobOut, responses={404: {"model": ErrorResponse}})
def get_job(job: str, who: Viewer, client: ClientDep) -> JobOut:
    """Progress and the results so far (per image: path, faces, error)."""
    try:
        safe_id(job, "job id")
    except ValueError as exc:
        raise UnknownJob(f"no job {job!r}") from exc
    progress = client.job_progress(job)
    if not progress["total"]:
        raise UnknownJob(f"no job {job!r} (or its results expired)")
    results = client.job_results(job)
    return JobOut(job=job, **progress, finished=len(results) >= progress["total"], results=results)
