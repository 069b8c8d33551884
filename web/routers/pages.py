"""The pages: server-rendered (Jinja2, autoescaped), with a little JavaScript
(``static/app.js``) that calls the same REST API for every change."""
from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from faec_rec.web.auth import Principal, role_rank
from faec_rec.web.deps import ClientDep, Viewer
from faec_rec.web.routers.cameras import camera_rows
from faec_rec.web.templating import templates

router = APIRouter(include_in_schema=False)


def render(request: Request, name: str, who: Principal | None, **context: Any) -> Response:
    can = {role: bool(who and role_rank(who.role) >= role_rank(role)) for role in ("viewer", "operator", "admin")}
    return templates.TemplateResponse(request, name, {"principal": who, "csrf": who.csrf if who else "",
                                                      "can": can, **context})


def error_page(request: Request, status: int, message: str) -> Response:
    who = getattr(request.state, "principal", None)
    response = render(request, "error.html", who, status=status, message=message, active="")
    response.status_code = status
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse("/live", status_code=303)


@router.get("/live", response_class=HTMLResponse)
def live(request: Request, who: Viewer, client: ClientDep) -> Response:
    arrivals, _ = client.search_events(types=["arrived"], limit=12)
    last: dict[str, list[str]] = {}
    for event in arrivals:  # newest first
        names = last.setdefault(event.get("camera") or "", [])
        if len(names) < 4:
            names.append(event.get("person") or event.get("visitor") or "stranger")
    return render(request, "live.html", who, active="live", cameras=camera_rows(client), arrivals=arrivals, last=last)


@router.get("/people", response_class=HTMLResponse)
def people(request: Request, who: Viewer, client: ClientDep) -> Response:
    cards = []
    for person in client.people():
        faces = [f for f in client.person_faces(person.id) if f["crop"] is not None]
        cards.append({"person": person, "face": faces[0]["template_id"] if faces else None})
    return render(request, "people.html", who, active="people", cards=cards)


@router.get("/people/{person}", response_class=HTMLResponse)
def person_page(request: Request, person: str, who: Viewer, client: ClientDep) -> Response:
    record = client.person(person)
    faces = [f for f in client.person_faces(record.id) if f["crop"] is not None]
    sightings, _ = client.search_events(person=record.id, types=["arrived"], limit=50)
    return render(request, "person.html", who, active="people", person=record, faces=faces, sightings=sightings)


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise ValueError(f"{value[:30]!r} is not a date and time like 2026-11-29T13:00") from exc


@router.get("/sightings", response_class=HTMLResponse)
def sightings(
    request: Request,
    who: Viewer,
    client: ClientDep,
    person: Annotated[str, Query(max_length=128)] = "",
    camera: Annotated[str, Query(max_length=128)] = "",
    visitor: Annotated[str, Query(max_length=128)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    before: Annotated[str, Query(max_length=48)] = "",
) -> Response:
    from faec_rec.web.routers.events import _checked_camera, _checked_id

    events, cursor = client.search_events(
        person=person or None, camera=_checked_camera(camera or None), visitor=visitor or None, types=["arrived"],
        since=_parse_time(since), until=_parse_time(until), before=_checked_id(before or None, "before"), limit=100)
    timeline: list[dict[str, Any]] = []
    if events:
        times = [float(e.get("captured_at") or e.get("processed_at") or 0) for e in events]
        lo, hi = min(times), max(times)
        span = max(hi - lo, 1.0)
        rows: dict[str, list[dict[str, Any]]] = {}
        for event, t in zip(events, times):
            label = event.get("person") or (f"Visitor {event['visitor']}" if event.get("visitor") else "stranger")
            rows.setdefault(label, []).append({"left": round(100 * (t - lo) / span, 2), "at": t, "camera": event.get("camera")})
        timeline = [{"label": k, "dots": v} for k, v in sorted(rows.items())]
        timeline_range = (lo, hi)
    else:
        timeline_range = (time.time(), time.time())
    return render(request, "sightings.html", who, active="sightings", events=events, next=cursor,
                  query={"person": person, "camera": camera, "visitor": visitor, "since": since, "until": until},
                  timeline=timeline, timeline_range=timeline_range,
                  people=[p.name for p in client.people()], cameras=[c["camera"] for c in client.cameras()])


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, who: Viewer, client: ClientDep) -> Response:
    listing = client.models()
    return render(request, "models.html", who, active="models", current=listing["current"],
                  models=list(reversed(listing["models"])), progress=client.training_progress(),
                  backbone=client.backbones()["current"])


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, who: Viewer, client: ClientDep) -> Response:
    who.require("admin")
    return render(request, "audit.html", who, active="audit", entries=client.audit_log(200))


@router.get("/review", response_class=HTMLResponse)
def review(request: Request, who: Viewer, client: ClientDep,
           sort: Annotated[str, Query(pattern="^(faces|last_seen|first_seen|id)$")] = "faces",
           visitor: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")] = "") -> Response:
    """Visitors to review, most seen first; ``visitor`` shows that one alone (the Live page links here)."""
    from faec_rec.web.routers.visitors import visitor_faces, visitor_out

    rows = []
    named: dict[str, Any] | None = None
    if visitor:
        detail = client.visitor(visitor)  # 404 page for a visitor that was forgotten
        if detail.get("person_id"):
            named = detail  # named since: a person now
        else:
            rows.append({**visitor_out(detail), "face_list": visitor_faces(detail)[-12:]})
    for summary in ([] if visitor else client.visitors(limit=40, sort=sort)):
        if summary.get("person_id"):
            continue  # named already: a person now
        detail = client.visitor(summary["id"])
        rows.append({**visitor_out(summary), "face_list": visitor_faces(detail)[-12:]})
    known, _ = client.search_events(types=["arrived"], limit=200)
    known = [e for e in known if e.get("decision") == "known"][:20]
    return render(request, "review.html", who, active="review", visitors=rows, known=known, sort=sort,
                  people=[p.name for p in client.people()], focus=visitor, named=named)
