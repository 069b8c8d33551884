"""Request and response models: these ARE the OpenAPI document at /api/v1/openapi.json."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. 'unauthorized', 'unknown_person', 'no_worker'")
    message: str = Field(description="what went wrong, for a person")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    detail: str = ""


class PersonOut(BaseModel):
    id: str
    name: str
    templates: int = Field(description="enrolled face templates")
    created: float = Field(description="Unix time of enrolment")
    metadata: dict[str, Any] = {}
    faces: list[str] = Field([], description="URLs of the person's face crops")


class PeopleOut(BaseModel):
    people: list[PersonOut]


class RenameIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="the new display name")


class ForgetOut(BaseModel):
    id: str
    templates_deleted: int


class ImageVerdict(BaseModel):
    name: str = Field(description="the uploaded file's name")
    accepted: bool
    reason: str = Field(description="'ok' or the quality gate's refusal code")
    detail: str = ""
    template_id: str | None = None
    box: list[float] | None = None


class EnrolReportOut(BaseModel):
    request_id: str
    status: str = Field(description="'done' (some images accepted), 'refused' or 'failed'")
    person_id: str | None = None
    name: str | None = None
    images: list[ImageVerdict]
    error: str | None = None
    detail: str | None = None


class FaceOut(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] pixels")
    person: str | None = Field(description="the person's name; null for a stranger")
    person_id: str | None = None
    score: float | None = Field(description="cosine similarity of the best gallery match")
    decision: str = Field(description="'known' or 'unknown'")
    visitor: str | None = Field(None, description="the recurring-stranger id, when the visitors feature names one")


class IdentifyOut(BaseModel):
    faces: list[FaceOut]


class JobCreated(BaseModel):
    job: str
    total: int


class JobOut(BaseModel):
    job: str
    total: int
    done: int
    errors: int
    finished: bool
    results: list[dict[str, Any]] = Field(description="per image: path, faces, error, model_version")


class EventOut(BaseModel):
    model_config = {"extra": "allow"}

    id: str = Field(description="stream id; pass as `before` to page, or as Last-Event-ID to resume the stream")
    type: str
    camera: str
    frame: int | None = None
    captured_at: float | None = None
    processed_at: float | None = None
    box: list[float] | None = None
    person_id: str | None = None
    person: str | None = None
    score: float | None = None
    decision: str | None = None
    track_id: int | None = None
    visitor: str | None = Field(None, description="the visitor an unknown face was grouped into")


class EventsPage(BaseModel):
    events: list[EventOut]
    next: str | None = Field(description="cursor for the next (older) page; null at the end")


class ModelOut(BaseModel):
    model_config = {"extra": "allow"}

    version: str
    status: str
    created: float
    metrics: dict[str, Any] = {}
    note: str = Field("", description="the promotion gate's reason")
    parent: str | None = None


class ModelsOut(BaseModel):
    current: str
    models: list[ModelOut]


class BackboneOut(BaseModel):
    model_config = {"extra": "allow"}

    name: str
    licence: str
    threshold: float | None = None


class BackbonesOut(BaseModel):
    current: BackboneOut
    backbones: list[BackboneOut]


class ModelEvent(BaseModel):
    model_config = {"extra": "allow"}

    version: str
    previous: str | None = None


class PromoteIn(BaseModel):
    reason: str = Field("manual", max_length=200)


class TrainingProgress(BaseModel):
    """The newest head-training run, as the training worker reports it."""

    state: str = Field(..., description="idle, queued, running, done, skipped or failed")
    stage: str | None = Field(None, description="gallery, reference features, train, evaluate, done")
    percent: float | None = Field(None, description="of the whole run, 0-100")
    done: int | None = None
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    loss: float | None = Field(None, description="training loss after the last epoch")
    task_id: str | None = None
    queued_at: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = Field(None, description="status (promoted, rejected, skipped), reason, version")
    error: str | None = None


class TaskQueued(BaseModel):
    task_id: str


class CameraOut(BaseModel):
    model_config = {"extra": "allow"}

    camera: str
    status: str | None = None
    pushed: int = 0
    dropped: int = 0
    processed: int = 0
    faces: int = 0
    errors: int = 0
    fps: float | None = Field(None, description="frames/s the producer samples from the source")
    processed_fps: float | None = Field(None, description="frames/s processed, measured by the server between two looks")
    source: str | None = Field(None, description="the source, with any user:password@ masked as ***@")
    last_error: str | None = None
    registered: bool = Field(False, description="in the source registry (a registry runner keeps it running)")
    loop: bool | None = None


class CamerasOut(BaseModel):
    cameras: list[CameraOut]


class CameraIn(BaseModel):
    """A camera to register: a runner in registry mode (`faec-rec camera --registry`) starts it."""

    model_config = {"extra": "forbid"}

    camera: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$",
                        description="camera id: letters, digits and _ . : @ -")
    source: str = Field(..., min_length=1, max_length=2048,
                        description="USB index, rtsp:// or http(s):// URL (credentials allowed; never shown back), "
                                    "or a video file path on the runner's machine")
    fps: float | None = Field(None, gt=0, le=120, description="frames/s to sample (default: producers.fps)")
    loop: bool = Field(False, description="replay a video file from the start when it ends")


class CameraSource(BaseModel):
    """A registry entry as shown: the source masked."""

    camera: str
    source: str
    fps: float | None = None
    loop: bool = False
    added_at: float = 0.0
    added_by: str | None = None


class AuditEntry(BaseModel):
    id: str
    at: float
    actor: str
    action: str
    details: dict[str, Any]


class AuditOut(BaseModel):
    entries: list[AuditEntry]


class WhoAmI(BaseModel):
    key_id: str
    name: str
    role: str
    via: str


class VisitorOut(BaseModel):
    id: str = Field(description="e.g. 'v-12'")
    faces: int = Field(description="faces seen of this stranger")
    first_seen: float | None = None
    last_seen: float | None = None
    cameras: list[str] = []
    cover_face: str | None = Field(None, description="the id of the best face")
    cover_url: str | None = Field(None, description="URL of the best face's crop")
    person_id: str | None = Field(None, description="set once named (enrolled)")
    person: str | None = None
    manual: bool = Field(False, description="shaped by hand (merge/split)")


class VisitorsOut(BaseModel):
    visitors: list[VisitorOut]


class VisitorFace(BaseModel):
    id: str
    at: float | None = None
    camera: str | None = None
    source: str | None = None
    good: bool = Field(description="passes the enrolment quality gate (only good faces are enrolled when named)")
    url: str = Field(description="URL of the crop")


class VisitorDetail(VisitorOut):
    face_list: list[VisitorFace]


class NameVisitorIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    into_existing: bool = Field(False, description="add the faces to an already enrolled person of that name")


class MergeIn(BaseModel):
    visitors: list[str] = Field(min_length=2, max_length=500, description="the first one survives")


class SplitIn(BaseModel):
    faces: list[str] = Field(min_length=1, max_length=10_000, description="face ids to move into a new visitor")


class VisitorId(BaseModel):
    visitor: str


class VisitorForgotten(BaseModel):
    visitor: str
    faces_deleted: int


class FeedbackIn(BaseModel):
    model_config = {"populate_by_name": True}

    event_id: str = Field(max_length=48, pattern=r"^\d{1,20}-\d{1,20}$", description="the recognition event's stream id")
    is_: str | None = Field(None, alias="is", max_length=128, description="the face WAS this person (name or id)")
    not_: str | None = Field(None, alias="not", max_length=128, description="the face was NOT this person (name or id)")


class FeedbackOut(BaseModel):
    model_config = {"extra": "allow"}

    event_id: str
    person_id: str
    person: str
    is_person: bool
    usable: bool
    reason: str | None = None
    visitor: str | None = None
