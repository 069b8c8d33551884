"""Pure parts of the worker pipeline: payload parsing, latency histogram, retry backoff,
and the Celery configuration (no worker, no model)."""
from __future__ import annotations

import pytest

from faec_rec.config import load_settings
from faec_rec.errors import PayloadError
from faec_rec.workers import pipeline
from faec_rec.workers.enrolment import EnrolRequest
from faec_rec.workers.tasks import backoff_s


def test_frame_payload_round_trip_and_bad_fields() -> None:
    p = pipeline.FramePayload.from_json({"camera": "c1", "frame": 7, "key": "k", "captured_at": 12.5, "width": 640, "height": 480})
    assert (p.camera, p.frame, p.captured_at, p.width) == ("c1", 7, 12.5, 640)
    with pytest.raises(PayloadError, match="frame"):
        pipeline.FramePayload.from_json({"camera": "c1", "frame": "7", "key": "k", "captured_at": 1.0})
    with pytest.raises(PayloadError, match="frame"):
        pipeline.FramePayload.from_json({"camera": "c1", "frame": True, "key": "k", "captured_at": 1.0})
    with pytest.raises(PayloadError, match="JSON object"):
        pipeline.FramePayload.from_json(["c1"])  # type: ignore[arg-type]


def test_image_payload_needs_a_source() -> None:
    p = pipeline.ImagePayload.from_json({"job": "j", "path": "/x/a.jpg", "key": None, "name": "a.jpg"})
    assert p.name == "a.jpg" and p.path == "/x/a.jpg"
    assert pipeline.ImagePayload.from_json({"job": "j", "key": "u1"}).name == "u1"
    with pytest.raises(PayloadError, match="path"):
        pipeline.ImagePayload.from_json({"job": "j", "name": "a"})


def test_enrol_request_validation() -> None:
    ok = EnrolRequest.from_json({"request_id": "r1", "name": "Ada", "images": [{"key": "u1", "name": "a.jpg"}]})
    assert ok.images[0].key == "u1" and EnrolRequest.from_json(ok.to_json()) == ok
    for bad, match in [
        ({"request_id": "r1", "images": [{"key": "u"}]}, "name"),
        ({"request_id": "../x", "name": "A", "images": [{"key": "u"}]}, "request id"),
        ({"request_id": "r1", "name": "A", "images": []}, "images"),
        ({"request_id": "r1", "name": "A", "images": [{"name": "x"}]}, "image 0"),
        ({"request_id": "r1", "name": " ", "images": [{"key": "u"}]}, "name"),
    ]:
        with pytest.raises(PayloadError, match=match):
            EnrolRequest.from_json(bad)


def test_latency_percentiles_from_histogram() -> None:
    stats: dict[bytes | str, bytes | str] = {}
    assert pipeline.latency_percentiles(stats) == {0.5: None, 0.95: None}
    # 100 frames: 50 in (25, 50], 45 in (50, 75], 5 in (150, 200]
    stats = {b"latency_ms_le_50": b"50", b"latency_ms_le_75": b"45", "latency_ms_le_200": "5", b"processed": b"100"}
    q = pipeline.latency_percentiles(stats)
    assert q[0.5] == pytest.approx(50.0)
    assert q[0.95] == pytest.approx(75.0)
    q = pipeline.latency_percentiles(stats, (0.96,))
    assert 150.0 < q[0.96] <= 200.0
    assert pipeline._latency_field(10) == "latency_ms_le_25"
    assert pipeline._latency_field(25.0) == "latency_ms_le_25"
    assert pipeline._latency_field(99_999) == "latency_ms_le_inf"
    assert pipeline.latency_percentiles({"latency_ms_le_inf": 3})[0.5] == pytest.approx(10_000.0)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(i) for i in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(20) == 30.0


def test_celery_config_is_json_only_acks_late_and_prefixed() -> None:
    from faec_rec.workers.app import QUEUE_ENROL, TASK_ENROL, TASK_IDENTIFY, TASK_RECOGNISE, TASK_TRAIN, make_app

    settings = load_settings(redis_url="redis://127.0.0.1:6379/13", prefix="tcfg")
    app = make_app(settings)
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.broker_url == "redis://127.0.0.1:6379/13"
    assert conf.broker_transport_options["global_keyprefix"] == "tcfg:celery:"
    assert conf.task_routes[TASK_ENROL]["queue"] == QUEUE_ENROL
    assert conf.task_routes[TASK_IDENTIFY]["queue"] == conf.task_routes[TASK_RECOGNISE]["queue"] == "frames"
    assert conf.task_routes[TASK_TRAIN]["queue"] == "train"
    assert {TASK_ENROL, TASK_IDENTIFY, TASK_RECOGNISE, TASK_TRAIN} <= set(app.tasks)


def test_enrol_report_round_trip_and_views() -> None:
    from faec_rec.workers.enrolment import EnrolReport, ImageReport

    report = EnrolReport("r1", "done", person_id="p1", name="Ada", images=[
        ImageReport("a.jpg", True, "ok", template_id="t1", sharpness=40.0, yaw=0.1),
        ImageReport("b.jpg", False, "blurry", "sharpness 5 < 15"),
        ImageReport("c.jpg", True, "duplicate", "already enrolled for this person; kept once", template_id="t1"),
    ])
    assert [i.name for i in report.accepted] == ["a.jpg", "c.jpg"]
    assert [i.reason for i in report.refused] == ["blurry"]
    assert EnrolReport.from_json(report.to_json()) == report
