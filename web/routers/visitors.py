"""``/api/v1/visitors``: recurring strangers grouped by the visitors feature; list, show,
name (enrol through the queue), merge, split, forget, and their face crops."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from faec_rec.web.deps import Admin, ClientDep, Operator, SettingsDep, Viewer
from faec_rec.web.routers.people import checked_name
from faec_rec.web.schemas import (EnrolReportOut, ErrorResponse, MergeIn, NameVisitorIn, SplitIn, VisitorDetail,
                                  VisitorFace, VisitorForgotten, VisitorId, VisitorOut, VisitorsOut)

router = APIRouter(prefix="/api/v1/visitors", tags=["visitors"],
                   responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})

SORTS = ("faces", "last_seen", "first_seen", "id")


def face_url(face_id: str) -> str:
    return f"/api/v1/visitors/faces/{face_id}/crop"


def visitor_out(summary: dict[str, Any]) -> dict[str, Any]:
    cover = summary.get("cover_face")
    return {**{k: summary.get(k) for k in VisitorOut.model_fields if k in summary},
            "cameras": list(summary.get("cameras") or []), "manual": bool(summary.get("manual")),
            "cover_url": face_url(cover) if cover and summary.get("crop") else None}


def visitor_faces(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": f["id"], "at": f.get("at"), "camera": f.get("camera"), "source": f.get("source"),
             "good": bool(f.get("good")), "url": face_url(f["id"])} for f in detail.get("face_list", [])]


@router.get("", response_model=VisitorsOut)
def list_visitors(
    who: Viewer,
    client: ClientDep,
    sort: Annotated[str, Query(pattern="^(faces|last_seen|first_seen|id)$")] = "faces",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> VisitorsOut:
    """Visitors, most often seen first (or by `sort`)."""
    return VisitorsOut(visitors=[VisitorOut.model_validate(visitor_out(v))
                                 for v in client.visitors(limit=limit, offset=offset, sort=sort)])


@router.get("/faces/{face_id}/crop", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def face_crop(face_id: str, who: Viewer, client: ClientDep) -> Response:
    """The crop of one stored unknown face (150x150 aligned)."""
    return Response(client.unknown_face_crop(face_id), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{visitor}", response_model=VisitorDetail)
def get_visitor(visitor: str, who: Viewer, client: ClientDep) -> VisitorDetail:
    """One visitor with every face, oldest first."""
    detail = client.visitor(visitor)
    return VisitorDetail.model_validate({**visitor_out(detail),
                                         "face_list": [VisitorFace.model_validate(f) for f in visitor_faces(detail)]})


@router.post("/{visitor}/name", response_model=EnrolReportOut)
async def name_visitor(visitor: str, body: NameVisitorIn, who: Operator, client: ClientDep,
                       settings: SettingsDep) -> EnrolReportOut:
    """Enrol the visitor's good faces as a person (a new one, or `into_existing`), through the queue."""
    name = checked_name(body.name)
    report = await run_in_threadpool(client.name_visitor, visitor, name, into_existing=body.into_existing,
                                     timeout=settings.web.task_timeout_s)
    return EnrolReportOut.model_validate(report.to_json())


@router.post("/merge", response_model=VisitorId)
def merge(body: MergeIn, who: Operator, client: ClientDep) -> VisitorId:
    """Merge visitors into the first one."""
    return VisitorId(visitor=client.merge_visitors(body.visitors))


@router.post("/{visitor}/split", response_model=VisitorId)
def split(visitor: str, body: SplitIn, who: Operator, client: ClientDep) -> VisitorId:
    """Move some faces into a new visitor; returns its id."""
    return VisitorId(visitor=client.split_visitor(visitor, body.faces))


@router.delete("/{visitor}", response_model=VisitorForgotten)
def forget(visitor: str, who: Admin, client: ClientDep) -> VisitorForgotten:
    """Delete a visitor with every face (features, crops, records)."""
    return VisitorForgotten(visitor=visitor, faces_deleted=client.forget_visitor(visitor))
