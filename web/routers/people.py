"""``/api/v1/people``: enrol (multipart, through the enrolment queue), list, show, rename, forget, face crops."""
from __future__ import annotations

from typing import Annotated, Any

import click
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from faec_rec.errors import FaecError, UnknownPersonError
from faec_rec.web.deps import Admin, ClientDep, Operator, SettingsDep, Viewer
from faec_rec.web.schemas import EnrolReportOut, ErrorResponse, ForgetOut, PeopleOut, PersonOut, RenameIn
from faec_rec.web.uploads import read_images

router = APIRouter(prefix="/api/v1/people", tags=["people"],
                   responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})


class InvalidName(FaecError, ValueError):
    pass


def checked_name(raw: str) -> str:
    """The CLI's own name rule (no path separators, control characters, only dots...)."""
    from faec_rec.cli import check_person_name

    try:
        return check_person_name(raw)
    except click.ClickException as exc:
        raise InvalidName(exc.format_message()) from exc


def person_out(person: Any, faces: list[dict[str, Any]] | None = None) -> PersonOut:
    urls = [f"/api/v1/people/{person.id}/faces/{f['template_id']}" for f in faces or [] if f["crop"]]
    return PersonOut(id=person.id, name=person.name, templates=len(person.template_ids), created=person.created,
                     metadata=person.metadata, faces=urls)


@router.post("", response_model=EnrolReportOut, status_code=200,
             responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse},
                        422: {"model": ErrorResponse}, 504: {"model": ErrorResponse}})
async def enrol(
    who: Operator,
    client: ClientDep,
    settings: SettingsDep,
    name: Annotated[str, Form(min_length=1, max_length=100, description="the person's name (a new person, or more photos of an existing one)")],
    images: Annotated[list[UploadFile], File(description="one or more photos of the person")],
) -> EnrolReportOut:
    """Enrol photos of a person through the enrolment queue; returns each photo's quality-gate verdict."""
    person_name = checked_name(name)
    datas, names = await read_images(images, settings)
    report = await run_in_threadpool(client.enrol, person_name, datas, timeout=settings.web.task_timeout_s,
                                     image_names=names)
    return EnrolReportOut.model_validate(report.to_json())


@router.get("", response_model=PeopleOut)
def list_people(who: Viewer, client: ClientDep) -> PeopleOut:
    """Every enrolled person, sorted by name."""
    return PeopleOut(people=[person_out(p) for p in client.people()])


@router.get("/{person}", response_model=PersonOut, responses={404: {"model": ErrorResponse}})
def get_person(person: str, who: Viewer, client: ClientDep) -> PersonOut:
    """One person by id or name, with the URLs of their face crops."""
    record = client.person(person)
    return person_out(record, client.person_faces(record.id))


@router.patch("/{person}", response_model=PersonOut, responses={404: {"model": ErrorResponse}})
def rename(person: str, body: RenameIn, who: Operator, client: ClientDep) -> PersonOut:
    """Give a person a new display name."""
    new_name = checked_name(body.name)
    record = client.person(person)
    client.rename(record.id, new_name)
    return person_out(client.person(record.id), client.person_faces(record.id))


@router.delete("/{person}", response_model=ForgetOut, responses={404: {"model": ErrorResponse}})
def forget(person: str, who: Admin, client: ClientDep) -> ForgetOut:
    """Delete a person with every template, crop and vector (and feedback naming them)."""
    record = client.person(person)
    return ForgetOut(id=record.id, templates_deleted=client.forget(record.id))


@router.get("/{person}/faces", response_model=list[str], responses={404: {"model": ErrorResponse}})
def faces(person: str, who: Viewer, client: ClientDep) -> list[str]:
    """URLs of the person's face crops (JPEG)."""
    record = client.person(person)
    return person_out(record, client.person_faces(record.id)).faces


@router.get("/{person}/faces/{template_id}", response_class=FileResponse,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}})
def face_crop(person: str, template_id: str, who: Viewer, client: ClientDep) -> FileResponse:
    """One face crop. Only crops listed for the person are served (never a path from the request)."""
    for face in client.person_faces(person):
        if face["template_id"] == template_id and face["crop"] is not None:
            return FileResponse(face["crop"], media_type="image/jpeg",
                                headers={"Cache-Control": "private, max-age=3600"})
    raise UnknownPersonError(f"person {person!r} has no face {template_id!r}")
