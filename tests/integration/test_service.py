"""The service end to end: a real Redis, a REAL `celery -A faec_rec.workers.app worker`
subprocess, real photos and a real video.

One worker per module (loading TensorFlow and the model costs seconds); the
kill test starts its own workers under its own prefix.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from faec_rec.config import ProducerConfig, load_settings
from faec_rec.keys import Keys
from tests.integration.worker_proc import WorkerProcess
from tests import waiting

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEOPLE = {"Arnold": "Arnold_Schwarzenegger", "Andre": "Andre_Agassi", "Beckham": "David_Beckham"}
# Alex_Corretja was dropped: he scores 0.929 against Andre Agassi, above the calibrated
# 0.921 (a real false accept at FAR 0.1%, reported in the README), not a bug here.
STRANGERS = ("AJ_Lamas", "Andrew_Sabey", "Ashraf_Ghani")
VIDEO = "face_recognition__short_hamilton_clip.mp4"
WAIT_S = 240.0


def _cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


def wait_for(predicate: Any, timeout: float = WAIT_S, what: str = "condition", every: float = 0.2) -> Any:
    return waiting.wait_for(predicate, timeout, what, every)


@pytest.fixture(scope="module")
def service(redis_url: str, tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[dict[str, Any]]:
    """A worker subprocess on frames+enrol under a prefix of its own, and a client."""
    from faec_rec.client import Client

    prefix = "t" + uuid.uuid4().hex[:10]
    data_dir = tmp_path_factory.mktemp("service")
    worker = WorkerProcess(redis_url, prefix, data_dir, queues=("frames", "enrol"), concurrency=1).start()
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=data_dir)
    client = Client(settings=settings)
    try:
        worker.wait_ready()
        yield {"worker": worker, "client": client, "settings": settings, "keys": Keys(prefix),
               "redis": client.redis, "data_dir": data_dir}
    finally:
        client.close()
        worker.stop()
        _cleanup(redis_url, prefix)


@pytest.fixture(scope="module")
def enrolled(service: dict[str, Any], faces_dir: Path) -> dict[str, Any]:
    """Three people enrolled through the queue, three photos each."""
    client = service["client"]
    reports = {}
    for name, folder in PEOPLE.items():
        photos = sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[:3]
        reports[name] = client.enrol(name, photos, timeout=WAIT_S)
    return reports


def test_enrol_three_people_through_the_queue(enrolled: dict[str, Any], service: dict[str, Any]) -> None:
    for name, report in enrolled.items():
        assert report.status == "done", report
        assert report.name == name and report.person_id
        assert len(report.accepted) >= 2, [(i.name, i.reason, i.detail) for i in report.images]
        assert all(i.template_id for i in report.accepted)
    people = {p.name: p for p in service["client"].people()}
    assert set(people) == set(PEOPLE)
    assert len(people["Arnold"].template_ids) == len(enrolled["Arnold"].accepted)


def test_identify_known_people_and_strangers(enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    client = service["client"]
    for name, folder in PEOPLE.items():
        held_out = sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[4]
        faces = client.identify(held_out, timeout=WAIT_S)
        assert any(f.person == name and f.decision == "known" for f in faces), (name, faces)
    for folder in STRANGERS:
        photo = sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[0]
        faces = client.identify(photo, timeout=WAIT_S)
        assert faces, f"no face found in {photo}"
        assert all(f.decision == "unknown" and f.person is None for f in faces), (folder, faces)


def test_folder_job_lists_every_image_with_errors_for_bad_ones(enrolled: dict[str, Any], service: dict[str, Any],
                                                               faces_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "beckham.jpg").symlink_to(sorted((faces_dir / "lfw" / "David_Beckham").glob("*.jpg"))[5])
    (folder / "dog.jpg").symlink_to(faces_dir / "no_face" / "darknet__dog.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    records = service["client"].identify_folder(folder, wait=True, timeout=WAIT_S)
    by_name = {Path(r["path"]).name: r for r in records}
    assert set(by_name) == {"beckham.jpg", "dog.jpg", "corrupt.jpg"}
    assert by_name["corrupt.jpg"]["error"] and by_name["corrupt.jpg"]["faces"] == []
    assert by_name["dog.jpg"]["error"] is None and by_name["dog.jpg"]["faces"] == []
    assert [f["person"] for f in by_name["beckham.jpg"]["faces"]] == ["Beckham"]
    assert by_name["beckham.jpg"]["model_version"].endswith("/base")


def test_enrolment_refusals_say_why(service: dict[str, Any], faces_dir: Path) -> None:
    client = service["client"]
    report = client.enrol("Nobody", [
        faces_dir / "no_face" / "darknet__dog.jpg",
        faces_dir / "group_photos" / "faceapi__bbt1.jpg",
        b"\xff\xd8\xff\xe0 not a jpeg",
    ], timeout=WAIT_S)
    reasons = [i.reason for i in report.images]
    assert reasons == ["no_face", "several_faces", "bad_image"], [(i.name, i.reason, i.detail) for i in report.images]
    assert report.status == "refused" and report.error == "no_acceptable_image"
    assert "Nobody" not in {p.name for p in client.people()}

    unknown = client.enrol(None, [sorted((faces_dir / "lfw" / "Andre_Agassi").glob("*.jpg"))[6]],
                           person_id="no-such-person", timeout=WAIT_S)
    assert unknown.status == "refused" and unknown.error == "unknown_person"


def test_enrolment_is_idempotent_by_request_id(enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    client = service["client"]
    photo = sorted((faces_dir / "lfw" / "Andre_Agassi").glob("*.jpg"))[7]
    first = client.enrol("Andre", [photo], request_id="req-andre-7", timeout=WAIT_S)
    again = client.enrol("Andre", [photo], request_id="req-andre-7", timeout=WAIT_S)
    assert first.to_json() == again.to_json()
    other = client.enrol("Andre", [photo], timeout=WAIT_S)  # same photo, new request
    assert other.images[0].reason == "duplicate" and other.images[0].template_id == first.images[0].template_id
    templates = client.person("Andre").template_ids
    assert len(templates) == len(set(templates)) == len(enrolled["Andre"].accepted) + 1


def _push_frame(r: Any, keys: Keys, camera: str, n: int, data: bytes | None, ttl: int = 60) -> dict[str, Any]:
    """The producer's side of the frame protocol (data None: a key that expired)."""
    key = keys.frame(camera, n)
    if data is not None:
        r.set(key, data, ex=ttl)
    r.lpush(keys.in_flight(camera), key)
    return {"camera": camera, "frame": n, "key": key, "captured_at": time.time(), "width": 250, "height": 250}


def _events(r: Any, keys: Keys, camera: str) -> list[dict[str, Any]]:
    return [json.loads(v[b"event"]) for _, v in r.xrange(keys.events(camera))]


def test_corrupt_and_expired_frames_give_error_events_and_the_rest_goes_on(
        enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    from faec_rec.workers.app import TASK_RECOGNISE

    r, keys, client = service["redis"], service["keys"], service["client"]
    camera = "door"
    good = sorted((faces_dir / "lfw" / "Arnold_Schwarzenegger").glob("*.jpg"))[5].read_bytes()
    payloads = [
        _push_frame(r, keys, camera, 1, b"\xff\xd8\xff\xe0 broken"),
        _push_frame(r, keys, camera, 2, None),
        _push_frame(r, keys, camera, 3, good),
        _push_frame(r, keys, camera, 4, good),  # the tracker announces a track seen twice
    ]
    for p in payloads:
        client.app.send_task(TASK_RECOGNISE, args=[p], queue="frames")
    stats_key = keys.camera_stats(camera)
    wait_for(lambda: int(r.hget(stats_key, "processed") or 0) >= 2 and int(r.hget(stats_key, "errors") or 0) >= 2,
             what="frames processed")
    events = _events(r, keys, camera)
    errors = {e["frame"]: e["error"] for e in events if e["type"] == "error"}
    assert errors == {1: "bad_image", 2: "frame_expired"}
    arrived = [e for e in events if e["type"] == "arrived"]
    assert [(e["person"], e["decision"]) for e in arrived] == [("Arnold", "known")]
    assert arrived[0]["frame"] in (3, 4) and arrived[0]["track_id"] is not None
    assert arrived[0]["model_version"].endswith("/base")
    assert r.exists(keys.frame(camera, 3)) == r.exists(keys.frame(camera, 4)) == 0
    assert r.llen(keys.in_flight(camera)) == 0
    combined = [json.loads(v[b"event"]) for _, v in r.xrange(keys.events())]
    assert {1, 2, arrived[0]["frame"]} == {e["frame"] for e in combined if e["camera"] == camera}
    # The client reads the same events, each with its stream id to resume from.
    seen = list(client.events(camera=camera))
    assert [e["type"] for e in seen] == [e["type"] for e in events]
    assert list(client.events(camera=camera, last_id=seen[0]["id"])) == seen[1:]

    # A frame the producer dropped (key deleted, not in flight) is skipped quietly.
    dropped = {"camera": camera, "frame": 5, "key": keys.frame(camera, 5), "captured_at": time.time()}
    client.app.send_task(TASK_RECOGNISE, args=[dropped], queue="frames")
    marker = _push_frame(r, keys, camera, 6, good)
    client.app.send_task(TASK_RECOGNISE, args=[marker], queue="frames")
    wait_for(lambda: int(r.hget(stats_key, "processed") or 0) >= 3, what="frame 6")
    assert all(e["frame"] != 5 for e in _events(r, keys, camera))
    assert int(r.hget(stats_key, "errors")) == 2


def test_an_arrived_event_keeps_its_faces_features_and_feedback_on_it_trains_the_head(
        enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    import numpy as np

    from faec_rec.faces.engine import FaceEngine
    from faec_rec.faces.image import load_image
    from faec_rec.training.feedback import EXPIRED, read_feedback, record_feedback
    from faec_rec.training.retrain import _feedback_rows
    from faec_rec.workers.app import TASK_RECOGNISE

    r, keys, client = service["redis"], service["keys"], service["client"]
    camera = "lobby"
    photo = sorted((faces_dir / "lfw" / "David_Beckham").glob("*.jpg"))[6].read_bytes()
    for n in (1, 2):
        client.app.send_task(TASK_RECOGNISE, args=[_push_frame(r, keys, camera, n, photo)], queue="frames")
    wait_for(lambda: int(r.hget(keys.camera_stats(camera), "processed") or 0) >= 2, what="lobby frames")
    [(event_id, fields)] = [(i, f) for i, f in r.xrange(keys.events()) if json.loads(f[b"event"])["camera"] == camera]
    event = json.loads(fields[b"event"])
    assert event["type"] == "arrived" and event["person"] == "Beckham"
    assert event["features_key"] == keys.event_features(camera, event["frame"], 0)
    assert event["snapshot"] == keys.event_snapshot(camera, event["frame"], 0)  # face crop + frame, JPEG
    assert r.hget(event["snapshot"], "face")[:2] == b"\xff\xd8" and r.hget(event["snapshot"], "frame")[:2] == b"\xff\xd8"
    stored = np.frombuffer(r.get(event["features_key"]), dtype=np.float32)
    assert 0 < r.ttl(event["features_key"]) <= service["settings"].events.features_ttl_s
    # the bytes are the backbone features of the face in the frame
    [face] = FaceEngine(service["settings"].faces, cache_dir=service["data_dir"] / "models").analyse(load_image(photo))
    np.testing.assert_allclose(stored, face.features, rtol=0, atol=1e-4)

    event_id = event_id.decode()
    beckham = client.person("Beckham")
    _, entry = record_feedback(r, keys, event_id, beckham.id, beckham.name, True)
    assert entry.usable
    np.testing.assert_array_equal(entry.vector(), stored)
    person_ids = sorted(p.id for p in client.people())
    rows, _ = _feedback_rows(r, keys, person_ids)
    assert [(label, vec.tobytes()) for label, vec in rows] == [(person_ids.index(beckham.id), stored.tobytes())]

    r.delete(event["features_key"])  # as if events.features_ttl_s had passed
    _, late = record_feedback(r, keys, event_id, beckham.id, beckham.name, True)
    assert not late.usable and late.reason == EXPIRED
    assert len(read_feedback(r, keys)) == 2


def test_video_through_the_camera_producer_gives_tracked_events(
        enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    from faec_rec.producers.camera import CameraSpec, run_cameras

    r, keys, client = service["redis"], service["keys"], service["client"]
    video = faces_dir / "videos" / VIDEO
    camera = "stage"
    counters = run_cameras(
        [CameraSpec(camera, str(video), fps=5.0)], r, keys, client.app,
        ProducerConfig(max_in_flight=1000, fps=5.0), frame_ttl_s=600, max_frames=40, realtime=False,
    )[camera]
    assert counters.pushed >= 20 and counters.dropped == 0
    stats_key = keys.camera_stats(camera)
    wait_for(lambda: int(r.hget(stats_key, "processed") or 0) + int(r.hget(stats_key, "errors") or 0) >= counters.pushed,
             what="every video frame processed")
    faces = int(r.hget(stats_key, "faces") or 0)
    events = _events(r, keys, camera)
    arrived = [e for e in events if e["type"] == "arrived"]
    assert faces >= counters.pushed // 2, f"faces found in too few frames: {faces} in {counters.pushed}"
    # One arrival per person-track, not one per frame: tracks last many frames.
    assert arrived, "no track was announced"
    assert 3 * len(arrived) <= faces, (faces, [(e["frame"], e["track_id"], e["box"]) for e in arrived])
    assert len({e["track_id"] for e in arrived}) == len(arrived)
    updates = [e for e in events if e["type"] == "updated"]
    assert {e["track_id"] for e in updates} <= {e["track_id"] for e in arrived}
    assert not [e for e in events if e["type"] == "error"]


def test_killed_worker_loses_no_enrolment_and_duplicates_none(redis_url: str, tmp_path: Path, faces_dir: Path) -> None:
    from faec_rec.client import Client

    prefix = "t" + uuid.uuid4().hex[:10]
    env = {"FAEC_WORKERS__VISIBILITY_TIMEOUT_S": "3"}
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path)
    keys = Keys(prefix)
    photos = sorted((faces_dir / "lfw" / "Arnold_Schwarzenegger").glob("*.jpg"))[:8]
    first = WorkerProcess(redis_url, prefix, tmp_path, queues=("enrol",), env=env).start()
    second: WorkerProcess | None = None
    client = Client(settings=settings)
    try:
        first.wait_ready()
        request_id = client.enrol("Arnold", photos, wait=False)
        # Kill it once it has started on the request, mid-enrolment.
        wait_for(lambda: client.redis.hget(keys.enrolment(request_id), "status") == b"running",
                 what="the first worker to start the enrolment", every=0.02)
        first.kill()
        assert client.redis.hget(keys.enrolment(request_id), "report") is None, "finished before the kill"
        second = WorkerProcess(redis_url, prefix, tmp_path, queues=("enrol",), env=env).start()
        second.wait_ready()
        report = client.enrol_report(request_id, timeout=WAIT_S)
        assert report.status == "done", report
        accepted = [i for i in report.images if i.accepted]
        assert len(accepted) >= 5, [(i.name, i.reason) for i in report.images]
        templates = client.person("Arnold").template_ids
        assert len(templates) == len(set(templates)) == len({i.template_id for i in accepted})
        hashes = client.redis.hkeys(keys.template_hashes())
        assert len(hashes) == len(templates)
    finally:
        client.close()
        first.stop()
        if second is not None:
            second.stop()
        _cleanup(redis_url, prefix)


def test_a_track_with_one_blurred_frame_arrives_once_with_the_right_name(
        enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    """Issue 15: the track decides from all its frames, quality-weighted. The first frame
    is the same photo blurred (sharpness ~5, scored below the threshold: "unknown");
    before the vote it made the track arrive "unknown" and then update to Arnold."""
    import cv2

    from faec_rec.faces.image import encode_jpeg, load_image
    from faec_rec.workers.app import TASK_RECOGNISE

    r, keys, client = service["redis"], service["keys"], service["client"]
    camera = "hall"
    path = sorted((faces_dir / "lfw" / "Arnold_Schwarzenegger").glob("*.jpg"))[5]
    sharp = path.read_bytes()
    blurred = encode_jpeg(cv2.GaussianBlur(load_image(path), (0, 0), 3.5))
    for n, data in enumerate([blurred, sharp, sharp], start=1):
        client.app.send_task(TASK_RECOGNISE, args=[_push_frame(r, keys, camera, n, data)], queue="frames")
        wait_for(lambda n=n: int(r.hget(keys.camera_stats(camera), "processed") or 0) >= n, what=f"hall frame {n}")
    events = [e for e in _events(r, keys, camera) if e["type"] in ("arrived", "updated")]
    assert [(e["type"], e["person"], e["decision"]) for e in events] == [("arrived", "Arnold", "known")], events


def test_photos_of_someone_else_are_refused_not_enrolled_silently(
        enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    """Issue 17 item 21: Beckham's photo added to Arnold, and one request mixing three people."""
    client = service["client"]
    before = len(client.person("Arnold").template_ids)
    other = sorted((faces_dir / "lfw" / "David_Beckham").glob("*.jpg"))[7]
    report = client.enrol("Arnold", [other], timeout=WAIT_S)
    assert report.status == "refused"
    assert [(i.accepted, i.reason) for i in report.images] == [(False, "not_this_person")], report.images
    assert len(client.person("Arnold").template_ids) == before
    own = sorted((faces_dir / "lfw" / "Arnold_Schwarzenegger").glob("*.jpg"))[10]
    assert client.enrol("Arnold", [own], timeout=WAIT_S).status == "done"
    mixed = [p for folder in PEOPLE.values() for p in sorted((faces_dir / "lfw" / folder).glob("*.jpg"))[9:11]]
    many = client.enrol("Many", mixed, timeout=WAIT_S)
    assert many.status == "refused" and {i.reason for i in many.images} <= {"photos_disagree", "several_faces", "not_frontal", "blurry"}
    assert "Many" not in {p.name for p in client.people()}


def test_a_moderately_turned_face_is_an_extra_template_but_never_the_first(
        enrolled: dict[str, Any], service: dict[str, Any], faces_dir: Path) -> None:
    """Issue 15: David_Beckham_0024 (yaw 0.66 > the gate's 0.35, sharp) joins a person who
    has frontal templates, and is refused as someone's first photo. (Arnold_0037, yaw 0.40,
    stays refused: sharpness 13.5 is under the limit for extra templates too.)"""
    client = service["client"]
    turned = sorted((faces_dir / "lfw" / "David_Beckham").glob("*.jpg"))[8]
    assert turned.name == "David_Beckham_0024.jpg"
    alone = client.enrol("Turned Beckham", [turned], timeout=WAIT_S)
    assert alone.status == "refused" and alone.images[0].reason == "not_frontal"
    before = len(client.person("Beckham").template_ids)
    extra = client.enrol("Beckham", [turned], timeout=WAIT_S)
    assert extra.status == "done" and extra.images[0].accepted, extra.images
    assert "extra template" in extra.images[0].detail and extra.images[0].yaw > 0.35
    assert len(client.person("Beckham").template_ids) == before + 1
    blurry_turned = sorted((faces_dir / "lfw" / "Arnold_Schwarzenegger").glob("*.jpg"))[9]
    assert client.enrol("Arnold", [blurry_turned], timeout=WAIT_S).images[0].reason == "not_frontal"


def test_folder_results_are_the_same_with_and_without_batching(enrolled: dict[str, Any], service: dict[str, Any],
                                                                 faces_dir: Path, tmp_path: Path) -> None:
    """A batch task (decode in threads, every face of the batch embedded in one call) records
    the same faces, names and scores (within 1e-3) as one task per image."""
    from faec_rec.client import Client

    folder = tmp_path / "photos"
    folder.mkdir()
    picks = [p for who in (*PEOPLE.values(), *STRANGERS) for p in sorted((faces_dir / "lfw" / who).glob("*.jpg"))[3:5]]
    picks += sorted((faces_dir / "group_photos").glob("*.jpg"))[:2]
    for i, path in enumerate(picks):
        (folder / f"{i:02d}_{path.name}").symlink_to(path)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    settings = service["settings"]
    assert settings.workers.folder_batch > 1
    unbatched = settings.model_copy(update={"workers": settings.workers.model_copy(update={"folder_batch": 1})})
    batched_records = service["client"].identify_folder(folder, wait=True, timeout=WAIT_S)
    with Client(settings=unbatched) as single:
        single_records = single.identify_folder(folder, wait=True, timeout=WAIT_S)
    batched = {r["path"]: r for r in batched_records}
    single = {r["path"]: r for r in single_records}
    assert set(batched) == set(single) and len(batched) == len(picks) + 1
    (corrupt,) = [p for p in batched if p.endswith("corrupt.jpg")]
    assert batched[corrupt]["error"] and single[corrupt]["error"] and batched[corrupt]["faces"] == []
    known = 0
    for path, record in single.items():
        other = batched[path]
        assert len(other["faces"]) == len(record["faces"]), path
        for a, b in zip(sorted(record["faces"], key=lambda f: f["box"]), sorted(other["faces"], key=lambda f: f["box"])):
            assert a["person"] == b["person"] and a["decision"] == b["decision"], (path, a, b)
            assert abs(a["score"] - b["score"]) <= 1e-3, (path, a, b)
            assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 0.5
            known += a["decision"] == "known"
    assert known >= 6  # the enrolled people's photos were named in both runs
