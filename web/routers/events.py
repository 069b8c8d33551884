"""``/api/v1/events``: recognition events, paged and filtered, and a live Server-Sent Events
stream (resumable with ``Last-Event-ID``), plus the face crop of a recent event."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from faec_rec.client import Client
from faec_rec.errors import NotFound, UnknownPersonError, UnknownVisitorError
from faec_rec.keys import safe_id
from faec_rec.web.deps import ClientDep, Viewer
from faec_rec.web.schemas import ErrorResponse, EventOut, EventsPage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/events", tags=["events"], responses={401: {"model": ErrorResponse}})

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
BACKLOG_MAX = 1000
QUEUE_MAX = 1000
KEEPALIVE_S = 15.0


def _sid(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _checked_id(value: str | None, what: str) -> str | None:
    if value is not None and not STREAM_ID.fullmatch(value):
        raise ValueError(f"{what} {value[:40]!r} is not a stream id like 1700000000000-0")
    return value


def _checked_camera(camera: str | None) -> str | None:
    return safe_id(camera, "camera id") if camera else None


class Broadcaster:
    """One reader of the combined event stream (a thread following :meth:`Client.events`)
    fanning each event out to every connected SSE client's queue."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="faec-web-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.client.events(follow=True, last_id="$", block_ms=1000):
                    if self._stop.is_set():
                        return
                    assert self.loop is not None
                    self.loop.call_soon_threadsafe(self._dispatch, event)
            except Exception as exc:  # Redis gone for a moment: say so and try again
                log.warning("event stream reader: %s; retrying in 1 s", exc)
                self._stop.wait(1.0)

    def _dispatch(self, event: dict[str, Any]) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a client that stopped reading: drop it
                self.subscribers.discard(queue)
                queue.put_nowait  # noqa: B018 - the generator notices by its own timeout

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.subscribers.discard(queue)


def _matches(event: dict[str, Any], camera: str | None, person: str | None, types: list[str] | None) -> bool:
    if camera and event.get("camera") != camera:
        return False
    if person and person.casefold() not in {str(event.get("person_id") or "").casefold(),
                                            str(event.get("person") or "").casefold()}:
        return False
    return not types or event.get("type") in types


@router.get("", response_model=EventsPage)
def list_events(
    who: Viewer,
    client: ClientDep,
    camera: Annotated[str | None, Query(max_length=128, description="only this camera")] = None,
    person: Annotated[str | None, Query(max_length=128, description="person id or name")] = None,
    visitor: Annotated[str | None, Query(max_length=128, description="visitor id")] = None,
    type: Annotated[list[str] | None, Query(description="event types: arrived, updated, left, error")] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="Unix time, inclusive")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="Unix time, inclusive")] = None,
    before: Annotated[str | None, Query(max_length=48, description="cursor: the `next` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> EventsPage:
    """Events newest first; follow `next` for older ones."""
    events, cursor = client.search_events(camera=_checked_camera(camera), person=person, visitor=visitor,
                                          types=type, since=since, until=until,
                                          before=_checked_id(before, "before"), limit=limit)
    return EventsPage(events=[EventOut.model_validate(e) for e in events], next=cursor)


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "one `data:` JSON event per message, `id:` its stream id"}})
async def stream(
    request: Request,
    who: Viewer,
    client: ClientDep,
    camera: Annotated[str | None, Query(max_length=128)] = None,
    person: Annotated[str | None, Query(max_length=128)] = None,
    type: Annotated[list[str] | None, Query()] = None,
    last_event_id: Annotated[str | None, Header(max_length=48, description="resume after this event id")] = None,
) -> StreamingResponse:
    """Live events as Server-Sent Events; reconnecting with `Last-Event-ID` replays what was missed (up to 1000)."""
    camera = _checked_camera(camera)
    last = _checked_id(last_event_id, "Last-Event-ID")
    broadcaster: Broadcaster = request.app.state.broadcaster
    queue = broadcaster.subscribe()
    backlog: list[dict[str, Any]] = []
    if last:
        def replay() -> list[dict[str, Any]]:
            out = []
            for event in client.events(last_id=last):
                out.append(event)
                if len(out) >= BACKLOG_MAX:
                    break
            return out

        backlog = await run_in_threadpool(replay)

    def frame(event: dict[str, Any]) -> str:
        return f"id: {event['id']}\nevent: {event.get('type', 'event')}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"

    async def body():  # noqa: ANN202
        sent = _sid(last) if last else (0, 0)
        try:
            yield "retry: 2000\n: connected\n\n"
            for event in backlog:
                sent = _sid(event["id"])
                if _matches(event, camera, person, type):
                    yield frame(event)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if await request.is_disconnected() or queue not in broadcaster.subscribers:
                        return
                    yield ": keep-alive\n\n"
                    continue
                if _sid(event["id"]) <= sent:
                    continue
                sent = _sid(event["id"])
                if _matches(event, camera, person, type):
                    yield frame(event)
        finally:
            broadcaster.unsubscribe(queue)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{event_id}", response_model=EventOut, responses={404: {"model": ErrorResponse}})
def get_event(event_id: str, who: Viewer, client: ClientDep) -> EventOut:
    event = client.event(_checked_id(event_id, "event id") or "")
    if event is None:
        raise NotFound(f"no event {event_id!r} (it may have been trimmed)")
    return EventOut.model_validate(event)


@router.get("/{event_id}/crop", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}})
def event_crop(event_id: str, who: Viewer, client: ClientDep) -> Response:
    """A face picture for an event: the face snapshot an "arrived" event keeps
    (``events.snapshot_ttl_s``), else cut from its frame while the frame is still in Redis
    (workers delete a frame once its events are out, so mostly not), else the enrolled
    face of the person it names, or the best face of the visitor it names; else 404."""
    event = client.event(_checked_id(event_id, "event id") or "")
    if event is None:
        raise NotFound(f"no event {event_id!r}")
    data = None
    if event.get("snapshot"):
        try:
            data = client.event_snapshot(event, "face")
        except ValueError:  # a snapshot key of another deployment: not ours to read
            data = None
    if data is None and event.get("frame") is not None and event.get("box"):
        data = client.frame_crop(event["camera"], int(event["frame"]), event["box"])
    if data is None and event.get("person_id"):
        try:
            faces = [f for f in client.person_faces(event["person_id"]) if f["crop"] is not None]
        except UnknownPersonError:
            faces = []
        if faces:
            data = faces[0]["crop"].read_bytes()
    if data is None and event.get("visitor"):
        try:
            cover = client.visitor(event["visitor"]).get("cover_face")
            data = client.unknown_face_crop(cover) if cover else None
        except UnknownVisitorError:
            data = None
    if data is None:
        raise NotFound(f"no face picture is kept for event {event_id!r}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=600"})
