"""The web server end to end: real Redis, a REAL worker process, real photos, a real video,
the real server on a port; the API from httpx, the pages from headless Chromium, and a
bounded schemathesis fuzz from the server's own OpenAPI document.

One worker and one server for the module (TensorFlow loads once).
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from faec_rec.keys import Keys
from tests.integration.worker_proc import WorkerProcess
from tests.web.conftest import ARTIFACTS, bearer, make_settings
from tests.web.server import ServerThread
from tests import waiting

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 180.0
VIDEO = "face_recognition__short_hamilton_clip.mp4"
CHROMIUM = "/usr/bin/chromium"
# seven sharp frontal photos each (the visitors engineer's choice); nobody enrols them
STRANGERS = ("Hillary_Clinton", "Bill_Gates")


def _area(face: dict[str, Any]) -> float:
    x1, y1, x2, y2 = face["box"]
    return (x2 - x1) * (y2 - y1)


def _camera_frames(client: Any, camera: str, data: bytes, n: int) -> None:
    """Frames of a still photo pushed as a camera would, through the real worker."""
    from faec_rec.workers.app import TASK_RECOGNISE

    r, keys = client.redis, client.keys
    start = int(r.hget(keys.camera_stats(camera), "processed") or 0)
    for i in range(1, n + 1):
        key = keys.frame(camera, i)
        r.set(key, data, ex=120)
        r.lpush(keys.in_flight(camera), key)
        client.app.send_task(TASK_RECOGNISE, args=[{"camera": camera, "frame": i, "key": key, "captured_at": time.time(),
                                                     "width": 250, "height": 250}], queue="frames")
    wait_for(lambda: int(r.hget(keys.camera_stats(camera), "processed") or 0) >= start + n, what=f"{camera} frames")


def wait_for(predicate: Any, timeout: float = WAIT_S, what: str = "condition", every: float = 0.2) -> Any:
    return waiting.wait_for(predicate, timeout, what, every)


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[dict[str, Any]]:
    import httpx
    import redis

    prefix = "t" + uuid.uuid4().hex[:10]
    data_dir = tmp_path_factory.mktemp("web")
    worker = WorkerProcess(redis_url, prefix, data_dir, queues=("frames", "enrol"), concurrency=1).start()
    settings = make_settings(redis_url, prefix, data_dir, task_timeout_s=WAIT_S)
    try:
        with ServerThread(settings) as server:
            store = server.app.state.keystore
            secrets = {role: store.create(role, f"{role}-key", password=f"{role}-password-123", actor="test")[1]
                       for role in ("viewer", "operator", "admin")}
            worker.wait_ready()
            with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
                yield {"server": server, "http": http, "keys": secrets, "settings": settings, "prefix": prefix,
                       "worker": worker, "client": server.app.state.client}
    finally:
        worker.stop()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            r.delete(key)
        r.close()


def _photos(faces_dir: Path, who: str, n: int) -> list[Path]:
    return sorted((faces_dir / "lfw" / who).glob("*.jpg"))[:n]


def _files(field: str, paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def test_api_enrol_identify_jobs_and_events(service: dict[str, Any], faces_dir: Path) -> None:
    http, keys = service["http"], service["keys"]
    photos = _photos(faces_dir, "Arnold_Schwarzenegger", 4)
    r = http.post("/api/v1/people", data={"name": "Arnold"}, files=_files("images", photos[:3]),
                  headers=bearer(keys["operator"]))
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "done" and report["name"] == "Arnold"
    assert [i["name"] for i in report["images"]] == [p.name for p in photos[:3]]
    assert all(i["accepted"] for i in report["images"]), report
    person_id = report["person_id"]

    people = http.get("/api/v1/people", headers=bearer(keys["viewer"])).json()["people"]
    assert [(p["id"], p["name"], p["templates"]) for p in people] == [(person_id, "Arnold", 3)]
    person = http.get(f"/api/v1/people/{person_id}", headers=bearer(keys["viewer"])).json()
    assert len(person["faces"]) == 3
    crop = http.get(person["faces"][0], headers=bearer(keys["viewer"]))
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg" and crop.content[:2] == b"\xff\xd8"

    r = http.post("/api/v1/identify", files=_files("image", photos[3:4]), headers=bearer(keys["viewer"]))
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert len(faces) == 1 and faces[0]["person"] == "Arnold" and faces[0]["decision"] == "known"
    stranger = _photos(faces_dir, "Andre_Agassi", 1)
    faces = http.post("/api/v1/identify", files=_files("image", stranger), headers=bearer(keys["viewer"])).json()["faces"]
    assert len(faces) == 1 and faces[0]["person"] is None and faces[0]["decision"] == "unknown"

    r = http.post("/api/v1/jobs", files=_files("images", photos[3:4] + stranger), headers=bearer(keys["operator"]))
    assert r.status_code == 202
    job = r.json()["job"]
    done = wait_for(lambda: (j := http.get(f"/api/v1/jobs/{job}", headers=bearer(keys["viewer"])).json())["finished"] and j,
                    what="the job")
    assert sorted((res["path"], res["faces"][0]["person"]) for res in done["results"]) == sorted(
        [(photos[3].name, "Arnold"), (stranger[0].name, None)])

    # the audit stream names who enrolled, through the API
    audit = http.get("/api/v1/audit", headers=bearer(keys["admin"])).json()["entries"]
    enrol = [e for e in audit if e["action"] == "enrol"]
    assert enrol and "operator-key" in enrol[0]["actor"] and enrol[0]["details"]["name"] == "Arnold"


def test_sse_stream_delivers_live_events_and_resumes_with_last_event_id(service: dict[str, Any]) -> None:
    import httpx

    from faec_rec.workers.events import Event, publish

    client, keys = service["client"], service["keys"]
    k = Keys(service["prefix"])
    got: list[dict[str, Any]] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{service['server'].url}/api/v1/events/stream?camera=sse-cam",
                          headers=bearer(keys["viewer"]), timeout=30) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith(": connected"):
                    ready.set()
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    if len(got) >= 2:
                        return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.3)  # the subscription is made before ": connected" is sent; margin for the reader thread
    publish(client.redis, k, Event(type="arrived", camera="other-cam", person="Nobody"), 1000)
    publish(client.redis, k, Event(type="arrived", camera="sse-cam", person="First", track_id=1), 1000)
    publish(client.redis, k, Event(type="left", camera="sse-cam", person="First", track_id=1), 1000)
    thread.join(20)
    assert [(e["type"], e["person"]) for e in got] == [("arrived", "First"), ("left", "First")]

    # resume: everything after the first event, replayed, then live
    first_id = got[0]["id"]
    with httpx.stream("GET", f"{service['server'].url}/api/v1/events/stream?camera=sse-cam",
                      headers={**bearer(keys["viewer"]), "Last-Event-ID": first_id}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("id: "):
                assert line[4:] == got[1]["id"]
                break
    page = service["http"].get("/api/v1/events?camera=sse-cam", headers=bearer(keys["viewer"])).json()
    assert [e["type"] for e in page["events"]] == ["left", "arrived"]


def test_fuzz_from_the_openapi_document_gives_no_5xx(service: dict[str, Any]) -> None:
    """Schemathesis against the live server as admin, a few examples per operation."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    url = service["server"].url
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
    headers = bearer(service["keys"]["admin"])
    failures: list[str] = []
    statuses: dict[int, int] = {}
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in {"/api/v1/events/stream", "/api/v1/models/train"}:
            continue  # an endless stream; a real training run
        strategy = operation.as_strategy()

        @settings(max_examples=6, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=url, headers=headers, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")
                return
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except Exception as exc:  # a schema violation: collected, reported together
                failures.append(f"{case.method} {case.formatted_path}: {str(exc)[:300]}")

        check()
    assert calls >= 40
    # authenticated and reaching real logic: successes and refusals of bad input both seen
    assert any(200 <= c < 300 for c in statuses) and any(400 <= c < 500 and c not in (401, 403) for c in statuses), statuses
    assert not failures, "\n".join(failures[:20])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (no browser download)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium; `make test` does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def test_a_person_uses_the_pages(service: dict[str, Any], browser: Any, faces_dir: Path) -> None:
    """Log in, enrol by uploading photos, identify a photo, watch an arrival appear live
    while a camera plays a video, look at sightings and models, forget the person."""

    url = service["server"].url
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # resource errors are expected: 401 for the wrong login tried on purpose, 404 for an
    # arrival without a kept face picture (shown as a placeholder)
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    page.set_default_timeout(60_000)
    try:
        _use_the_pages(service, browser, context, page, faces_dir, url)
    except Exception:
        _shot(page, "FAILED")
        raise
    context.close()
    assert not errors, errors


def _use_the_pages(service: dict[str, Any], browser: Any, context: Any, page: Any, faces_dir: Path, url: str) -> None:
    from faec_rec.config import ProducerConfig
    from faec_rec.producers.camera import CameraSpec, run_cameras


    page.goto(f"{url}/people")
    assert page.url.startswith(f"{url}/login")
    _shot(page, "login")
    page.fill("#secret", "wrong")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text(".error")
    page.click("#with-password summary")
    page.fill("#name", "admin-key")
    page.fill("#secret", "admin-password-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/people")
    cookie = next(c for c in context.cookies() if c["name"] == "faec_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # enrol by uploading photos: a verdict per photo
    photos = _photos(faces_dir, "David_Beckham", 3)
    page.fill("#enrol-name", "David <b>Beckham")
    page.set_input_files("#enrol-files", [str(p) for p in photos] + [str(sorted((faces_dir / "no_face").iterdir())[0])])
    page.click("#enrol-form button[type=submit]")
    page.wait_for_selector("#verdicts li .ok")
    verdicts = page.inner_text("#verdicts")
    assert verdicts.count("accepted") == 3 and "no face" in verdicts.replace("_", " "), verdicts
    _shot(page, "people-enrolled")
    page.wait_for_selector("#people-grid a.person")
    names = page.locator("#people-grid a.person strong").all_inner_texts()
    assert "David <b>Beckham" in names  # shown as text, not markup

    # identify a photo
    page.set_input_files("#identify-file", str(_photos(faces_dir, "David_Beckham", 4)[3]))
    page.click("#identify-form button[type=submit]")
    page.wait_for_selector("#identify-result li")
    assert "David <b>Beckham" in page.inner_text("#identify-result")
    _shot(page, "people-identify")

    # the Live page: an arrival appears while a camera plays a video
    page.goto(f"{url}/live")
    page.wait_for_selector("#live-state.on")
    before = page.locator("#arrivals li.arrival").count()
    client = service["client"]
    video = faces_dir / "videos" / VIDEO
    stop = threading.Event()
    camera = threading.Thread(target=run_cameras, daemon=True, kwargs=dict(
        cameras=[CameraSpec("hall", str(video), fps=5.0)], redis=client.redis, keys=client.keys, sender=client.app,
        config=ProducerConfig(max_in_flight=1000, fps=5.0), frame_ttl_s=600, max_frames=40, realtime=True, stop=stop))
    camera.start()
    try:
        page.locator("#arrivals li.arrival").nth(before).wait_for(timeout=WAIT_S * 1000)
        page.wait_for_selector(".tile[data-camera=hall]")
        page.wait_for_timeout(3500)  # let the tile refresh twice (frames/s needs two looks)
        _shot(page, "live")
        first = page.locator("#arrivals li.arrival").first
        assert first.locator("strong").inner_text().startswith(("Stranger", "Visitor ", "David <b>Beckham"))
        assert "hall" in first.inner_text()
        assert page.locator(".tile[data-camera=hall] [data-field=last]").inner_text().startswith("last: ")
    finally:
        stop.set()
        camera.join(60)

    # Review: strangers seen again and again are visitors; name one; correct a recognition
    http, keys = service["http"], service["keys"]
    visitor_of = {}
    for who in STRANGERS:
        for path in _photos(faces_dir, who, 4):
            faces = http.post("/api/v1/identify", files=_files("image", [path]), headers=bearer(keys["viewer"])).json()["faces"]
            visitor_of.setdefault(who, set()).add(max(faces, key=_area)["visitor"])
    assert all(len(v) == 1 and None not in v for v in visitor_of.values()), visitor_of
    hillary = next(iter(visitor_of[STRANGERS[0]]))
    beckham_frame = _photos(faces_dir, "David_Beckham", 5)[4].read_bytes()
    _camera_frames(client, "door", beckham_frame, 2)
    page.goto(f"{url}/review")
    card = page.locator(f".visitor[data-visitor='{hillary}']")
    assert card.locator(".faces img").count() == 4
    page.locator("li.arrival.known button[data-kind=not]").first.wait_for()
    _shot(page, "review")
    card.locator("input[name=name]").fill("Hillary")
    card.locator("form.name-visitor button").click()
    card.get_by_text("is now").wait_for(timeout=WAIT_S * 1000)
    assert "Hillary" in card.inner_text() and "4 faces enrolled" in card.inner_text()
    page.locator("li.arrival.known button[data-kind=not]").first.click()
    page.locator("li.arrival.known.done").first.wait_for()
    _shot(page, "review-after")
    people = http.get("/api/v1/people", headers=bearer(keys["viewer"])).json()["people"]
    assert "Hillary" in {p["name"] for p in people}

    # sightings and models
    page.goto(f"{url}/sightings")
    assert page.locator("table.list tbody tr").count() >= 1
    _shot(page, "sightings")
    page.goto(f"{url}/models")
    assert "base" in page.inner_text("#current")
    assert page.inner_text("#backbone") == "dlib-resnet-v1" and "CC0-1.0" in page.inner_text("#backbone-licence")
    listing = http.get("/api/v1/models/backbones", headers=bearer(keys["viewer"])).json()
    assert listing["current"]["name"] == "dlib-resnet-v1" and [b["name"] for b in listing["backbones"]] == ["dlib-resnet-v1"]
    _shot(page, "models")
    page.goto(f"{url}/audit")
    assert "enrol" in page.inner_text("table.list")
    _shot(page, "audit")

    # a person's page: rename, then forget with confirmation
    page.goto(f"{url}/people")
    page.click("#people-grid a.person")
    page.wait_for_selector("#person-name")
    page.fill("#rename-name", "David Beckham")
    page.click("#rename-form button[type=submit]")
    page.locator("#person-name", has_text="David Beckham").wait_for()
    assert page.inner_text("#person-name") == "David Beckham"
    _shot(page, "person")
    page.click("#forget")
    page.wait_for_selector("#forget-dialog[open]")
    _shot(page, "person-forget-dialog")
    page.click("#forget-confirm")
    page.wait_for_url(f"{url}/people")
    assert page.locator("#people-grid a.person strong").all_inner_texts().count("David Beckham") == 0

    # the phone layout
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone.add_cookies(context.cookies())
    mobile = phone.new_page()
    for name in ("live", "people", "sightings", "models"):
        mobile.goto(f"{url}/{name}")
        _shot(mobile, f"phone-{name}")
        width = mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"/{name} scrolls sideways on a phone ({width}px)"
    phone.close()


def test_visitors_api(service: dict[str, Any], faces_dir: Path) -> None:
    """List, show, crops, split, merge, forget, roles and errors of /api/v1/visitors."""
    http, keys = service["http"], service["keys"]
    viewer, operator, admin = (bearer(keys[r]) for r in ("viewer", "operator", "admin"))
    ids = set()
    for path in _photos(faces_dir, STRANGERS[1], 4):
        faces = http.post("/api/v1/identify", files=_files("image", [path]), headers=viewer).json()["faces"]
        ids.add(max(faces, key=_area)["visitor"])
    (gates,) = ids
    listed = {v["id"]: v for v in http.get("/api/v1/visitors", headers=viewer).json()["visitors"]}
    assert listed[gates]["faces"] >= 4 and listed[gates]["person"] is None
    detail = http.get(f"/api/v1/visitors/{gates}", headers=viewer).json()
    faces = [f["id"] for f in detail["face_list"]]
    crop = http.get(detail["face_list"][0]["url"], headers=viewer)
    assert crop.status_code == 200 and crop.content[:2] == b"\xff\xd8"

    assert http.post(f"/api/v1/visitors/{gates}/split", json={"faces": faces[:2]}, headers=viewer).status_code == 403
    new = http.post(f"/api/v1/visitors/{gates}/split", json={"faces": faces[:2]}, headers=operator).json()["visitor"]
    assert new != gates
    assert len(http.get(f"/api/v1/visitors/{new}", headers=viewer).json()["face_list"]) == 2
    r = http.post("/api/v1/visitors/merge", json={"visitors": [gates, gates]}, headers=operator)
    assert r.status_code == 409 and r.json()["error"]["code"] == "visitor_conflict"
    assert http.post("/api/v1/visitors/merge", json={"visitors": [gates, new]}, headers=operator).json() == {"visitor": gates}
    assert len(http.get(f"/api/v1/visitors/{gates}", headers=viewer).json()["face_list"]) == len(faces)
    assert http.get(f"/api/v1/visitors/{new}", headers=viewer).status_code == 404

    assert http.delete(f"/api/v1/visitors/{gates}", headers=operator).status_code == 403
    r = http.delete(f"/api/v1/visitors/{gates}", headers=admin)
    assert r.status_code == 200 and r.json()["faces_deleted"] == len(faces)
    r = http.get(f"/api/v1/visitors/{gates}", headers=viewer)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_visitor"
    actions = {e["action"] for e in http.get("/api/v1/audit", headers=admin).json()["entries"]}
    assert {"visitor.split", "visitor.merge", "visitor.forget"} <= actions


SECRET_SOURCE = "rtsp://admin:hunter2-Secret@127.0.0.1:1/stream"


@pytest.fixture(scope="module")
def registry_runner(service: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `faec-rec camera --registry` process on the service's Redis and prefix."""
    import os
    import signal
    import subprocess

    from tests.integration.test_cli import _cli

    home = tmp_path_factory.mktemp("runner")
    settings = service["settings"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAEC_")}
    env.update(HOME=str(home), FAEC_REDIS_URL=settings.redis_url, FAEC_PREFIX=service["prefix"],
               FAEC_DATA_DIR=str(settings.data_dir))
    log_path = home / "runner.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*_cli(), "-v", "camera", "--registry"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=home)
    try:
        wait_for(lambda: proc.poll() is not None or b"source registry" in log_path.read_bytes(), 120, "the runner")
        assert proc.poll() is None, log_path.read_text()
        yield {"proc": proc, "log": log_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _camera(http: Any, headers: dict[str, str], camera: str) -> dict[str, Any] | None:
    return next((c for c in http.get("/api/v1/cameras", headers=headers).json()["cameras"] if c["camera"] == camera), None)


def test_cameras_added_and_removed_through_the_api_run_in_a_registry_runner(
        service: dict[str, Any], registry_runner: dict[str, Any], faces_dir: Path) -> None:
    """POST a video file as a camera: the runner process streams it and the worker processes
    its frames; DELETE it: the runner stops it. A source's password never comes back."""
    http, keys, client = service["http"], service["keys"], service["client"]
    viewer, admin = bearer(keys["viewer"]), bearer(keys["admin"])
    video = str(faces_dir / "videos" / VIDEO)
    body = {"camera": "api-hall", "source": video, "fps": 4, "loop": True}
    r = http.post("/api/v1/cameras", json=body, headers=viewer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = http.post("/api/v1/cameras", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["source"] == video and r.json()["fps"] == 4
    r = http.post("/api/v1/cameras", json=body, headers=admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "camera_exists"
    for bad in ({"camera": "a/b", "source": "0"}, {"camera": "x", "source": ""}, {"camera": "x", "source": "0", "fps": -1}):
        assert http.post("/api/v1/cameras", json=bad, headers=admin).status_code in (400, 422), bad

    wait_for(lambda: (_camera(http, viewer, "api-hall") or {}).get("processed", 0) >= 3, WAIT_S, "frames processed")
    row = _camera(http, viewer, "api-hall")
    assert row["registered"] and row["status"] == "streaming" and row["pushed"] >= 3

    r = http.post("/api/v1/cameras", json={"camera": "api-door", "source": SECRET_SOURCE}, headers=admin)
    assert r.status_code == 201 and r.json()["source"] == "rtsp://***@127.0.0.1:1/stream"
    wait_for(lambda: (_camera(http, viewer, "api-door") or {}).get("status") == "reconnecting", 60, "door retrying")
    listing = http.get("/api/v1/cameras", headers=viewer).text
    page = http.get("/live", headers={**admin, "Accept": "text/html"}).text
    audit = http.get("/api/v1/audit", headers=admin).text
    for shown in (listing, page, audit):
        assert "hunter2" not in shown and "admin:" not in shown
    assert "rtsp://***@127.0.0.1:1/stream" in listing and "rtsp://***@127.0.0.1:1/stream" in page

    assert http.delete("/api/v1/cameras/api-hall", headers=viewer).status_code == 403
    assert http.delete("/api/v1/cameras/api-hall", headers=admin).status_code == 204
    stats = client.keys.camera_stats("api-hall")
    wait_for(lambda: client.redis.hget(stats, "status") == b"stopped", 60, "api-hall stopped")
    assert _camera(http, viewer, "api-hall") is None
    pushed = int(client.redis.hget(stats, "pushed"))
    time.sleep(1.5)  # a stopped camera pushes nothing more (at 4 frames/s it would have)
    assert int(client.redis.hget(stats, "pushed")) == pushed
    r = http.delete("/api/v1/cameras/api-hall", headers=admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_camera"
    assert http.delete("/api/v1/cameras/api-door", headers=admin).status_code == 204
    wait_for(lambda: client.redis.hget(client.keys.camera_stats("api-door"), "status") == b"stopped", 60, "door stopped")
    assert registry_runner["proc"].poll() is None
    log = registry_runner["log"].read_text()
    assert "api-hall" in log and "hunter2" not in log and "admin:" not in log, log[-2000:]


def _login(context: Any, url: str, role: str) -> Any:
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/login")
    page.click("#with-password summary")
    page.fill("#name", f"{role}-key")
    page.fill("#secret", f"{role}-password-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/live")
    return page


def test_an_admin_adds_and_removes_cameras_on_the_live_page(service: dict[str, Any], registry_runner: dict[str, Any],
                                                             browser: Any, faces_dir: Path) -> None:
    url = service["server"].url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page = _login(context, url, "admin")
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        if not page.locator("#add-camera[open]").count():
            page.click("#add-camera summary")
        page.fill("#camera-id", "page-hall")
        page.fill("#camera-source", str(faces_dir / "videos" / VIDEO))
        page.fill("#camera-fps", "4")
        page.check("#camera-loop")
        page.click("#add-camera-form button[type=submit]")
        page.wait_for_selector(".tile[data-camera=page-hall]")
        page.fill("#camera-id", "page-door")
        page.fill("#camera-source", SECRET_SOURCE)
        page.click("#add-camera-form button[type=submit]")
        page.wait_for_selector(".tile[data-camera=page-door]")
        hall = page.locator(".tile[data-camera=page-hall]")
        hall.locator("[data-field=status]", has_text="streaming").wait_for(timeout=WAIT_S * 1000)
        page.locator(".tile[data-camera=page-door] [data-field=status]", has_text="reconnecting").wait_for(timeout=60_000)
        page.wait_for_function("Number(document.querySelector('.tile[data-camera=page-hall] [data-field=processed]')"
                               ".textContent) > 0", timeout=WAIT_S * 1000)
        page.wait_for_timeout(3500)  # two refreshes: frames/s shows
        _shot(page, "live-cameras")
        assert "hunter2" not in page.content()
        assert page.inner_text(".tile[data-camera=page-door] [data-field=source]") == "rtsp://***@127.0.0.1:1/stream"
        for camera in ("page-hall", "page-door"):
            button = page.locator(f".tile[data-camera={camera}] .remove-camera")
            button.click()
            assert button.inner_text() == f"Remove {camera}?"
            button.click()
            page.locator(f".tile[data-camera={camera}]").wait_for(state="detached")
        _shot(page, "live-cameras-removed")
        client = service["client"]
        wait_for(lambda: client.redis.hget(client.keys.camera_stats("page-hall"), "status") == b"stopped", 60,
                 "page-hall stopped")
    except Exception:
        _shot(page, "FAILED-cameras")
        raise
    finally:
        context.close()
    assert not errors, errors
    viewer_page = service["http"].get("/live", headers={**bearer(service["keys"]["viewer"]), "Accept": "text/html"}).text
    assert "add-camera-form" not in viewer_page and "remove-camera" not in viewer_page  # admins only


def test_a_recurring_stranger_arrives_on_the_live_page_as_its_visitor(service: dict[str, Any], browser: Any,
                                                                      faces_dir: Path) -> None:
    """A stranger walks past a camera: the Live page names the visitor the face was grouped
    into (not just "Stranger") and links to the Review page showing that visitor."""
    http, keys, client = service["http"], service["keys"], service["client"]
    photo = _photos(faces_dir, "Tony_Blair", 1)[0]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page = _login(context, service["server"].url, "viewer")
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.wait_for_selector("#live-state.on")
        _camera_frames(client, "porch", photo.read_bytes(), 2)
        arrived = http.get("/api/v1/events", params={"camera": "porch", "type": "arrived"},
                           headers=bearer(keys["viewer"])).json()["events"]
        blair = arrived[0]["visitor"]
        assert blair and arrived[0]["decision"] == "unknown", arrived
        link = page.locator(f"#arrivals li.arrival a.visitor-link[href='/review?visitor={blair}']").first
        link.wait_for(timeout=WAIT_S * 1000)
        assert link.inner_text() == f"Visitor {blair}"
        arrival = link.locator("xpath=ancestor::li[1]")
        assert "porch" in arrival.inner_text() and "Stranger" not in arrival.inner_text()
        _shot(page, "live-visitor")
        page.reload()  # the server-rendered list links the same way
        page.locator(f"#arrivals a.visitor-link[href='/review?visitor={blair}']").first.wait_for()
        page.locator(f"#arrivals a.visitor-link[href='/review?visitor={blair}']").first.click()
        page.wait_for_url(f"**/review?visitor={blair}")
        assert page.locator("article.visitor").count() == 1
        card = page.locator(f"article.visitor[data-visitor='{blair}']")
        assert card.locator(".faces img").count() >= 1  # the camera's face
        assert f"Showing visitor {blair} alone" in page.inner_text(".focus")
        _shot(page, "review-one-visitor")
        # Sightings names the visitor too, in the table and on the timeline
        page.goto(f"{service['server'].url}/sightings?camera=porch")
        row_link = page.locator(f"table a.visitor-link[href='/review?visitor={blair}']").first
        row_link.wait_for()
        assert row_link.inner_text() == f"Visitor {blair}"
        assert f"Visitor {blair}" in page.inner_text("main")
        # ... and searches by visitor: another visitor's id finds nothing
        page.goto(f"{service['server'].url}/sightings?visitor=v-999999")
        assert "No sightings match." in page.inner_text("table")
        page.goto(f"{service['server'].url}/sightings?visitor={blair}")
        page.locator(f"table a.visitor-link[href='/review?visitor={blair}']").first.wait_for()
        _shot(page, "sightings-visitor")
    except Exception:
        _shot(page, "FAILED-live-visitor")
        raise
    finally:
        context.close()
    assert not errors, errors
