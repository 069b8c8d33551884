"""Redis requests per camera frame through the real pipeline (real model, real photos, real Redis).

Every request is a round trip: on a link with 50 ms each way (issue 16) the frame path's
latency is its number of requests times 100 ms, so that number is held here. Counted with
a connection that logs each request it sends (tests/roundtrips.py): a pipeline or a script
is one request, whatever it carries.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from faec_rec.config import load_settings
from faec_rec.workers import pipeline
from faec_rec.workers.enrolment import EnrolRequest, ImageRef, enrol
from faec_rec.workers.runtime import Runtime
from tests.roundtrips import RoundTrips, counting_redis

pytestmark = pytest.mark.integration

# claim + refresh reads + tracker state; the corrections check of a known face; the commit
MAX_REQUESTS_KNOWN = 3
MAX_REQUESTS_NO_KNOWN = 2  # no known face: no corrections check


def _frame(runtime: Runtime, n: int, photo: Path, log: RoundTrips, limit: int = 3) -> tuple[pipeline.FrameOutcome, list[list[str]]]:
    from faec_rec.workers.deadletter import RunGuard

    r, keys = runtime.redis, runtime.keys
    key = keys.frame("door", n)
    r.set(key, photo.read_bytes(), ex=60)
    r.lpush(keys.in_flight("door"), key)
    # as the task runs it: the poison-task counter of the delivery rides on the claim's request
    guard = RunGuard(r, keys, limit, 60, f"task-{n}")
    mark = log.mark()
    outcome = pipeline.recognise_frame(runtime, pipeline.FramePayload("door", n, key, time.time()), guard=guard)
    return outcome, log.since(mark)


def test_a_frame_costs_at_most_three_redis_requests(redis_url: str, prefix: str, tmp_path: Path, faces_dir: Path,
                                                    redis_client: Any) -> None:
    lfw = faces_dir / "lfw"
    log = RoundTrips()
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path,
                             workers={"read_roots": [str(lfw)]}, visitors={"enabled": False})
    runtime = Runtime(settings)
    runtime.redis = counting_redis(redis_url, log)
    try:
        runtime.warm()
        arnold = sorted((lfw / "Arnold_Schwarzenegger").glob("*.jpg"))
        report = enrol(runtime, EnrolRequest("r1", tuple(ImageRef(p.name, path=str(p)) for p in arnold[:3]),
                                             name="Arnold"))
        assert report.status == "done", report

        # Known face: the first frame starts a track, the second makes it arrive (event
        # features and a snapshot written with it), the third continues it silently.
        seen = [_frame(runtime, n, arnold[5], log) for n in (1, 2, 3)]
        assert [(o.status, o.faces, o.events) for o, _ in seen] == [("processed", 1, 0), ("processed", 1, 1),
                                                                   ("processed", 1, 0)]
        for outcome, requests in seen:
            assert len(requests) <= MAX_REQUESTS_KNOWN, requests
        assert all(requests[0][:3] == ["INCRBY", "EXPIRE", "LREM"] or requests[0][:3] == ["INCR", "EXPIRE", "LREM"]
                   for _, requests in seen), seen[0][1][0]  # counted with the claim
        arrived = seen[1][1][-1]
        assert arrived[-1] == "EVAL" and {"SET", "HSET"} <= set(arrived), arrived  # features, snapshot, commit

        # The events, counters and frame keys are all there, as before the requests were folded.
        events = _events(redis_client, runtime)
        assert [(e.type, e.person) for e in events] == [("arrived", "Arnold")]
        assert events[0].snapshot and redis_client.exists(events[0].snapshot)
        assert events[0].features_key and redis_client.exists(events[0].features_key)
        stats = redis_client.hgetall(runtime.keys.camera_stats("door"))
        assert int(stats[b"processed"]) == 3 and int(stats[b"faces"]) == 3
        assert sum(int(v) for k, v in stats.items() if k.startswith(b"latency_ms_le_")) == 3
        assert not any(redis_client.exists(runtime.keys.frame("door", n)) for n in (1, 2, 3))

        # A photo without a face: the claim and the commit only.
        no_face = sorted((faces_dir / "no_face").rglob("*.jpg"))[0]
        outcome, requests = _frame(runtime, 4, no_face, log)
        assert outcome.status == "processed" and outcome.faces == 0
        assert len(requests) <= MAX_REQUESTS_NO_KNOWN, requests

        # A delivery whose earlier runs killed their workers: not processed, its frame dropped.
        redis_client.set(runtime.keys.deliveries("task-5"), 3)
        outcome, requests = _frame(runtime, 5, arnold[5], log)
        assert outcome.status == "parked" and len(requests) == 2, requests
        stats = redis_client.hgetall(runtime.keys.camera_stats("door"))
        assert int(stats[b"dropped"]) == 1 and int(stats[b"processed"]) == 4
        assert not redis_client.exists(runtime.keys.frame("door", 5))

        # A redelivered frame (already processed) is skipped after one request.
        outcome = pipeline.recognise_frame(runtime, pipeline.FramePayload("door", 3, runtime.keys.frame("door", 3),
                                                                          time.time()))
        assert outcome.status == "skipped"
    finally:
        runtime.close()


def _events(redis_client: Any, runtime: Runtime) -> list[Any]:
    from faec_rec.workers.events import parse_entries

    return [e for _, e in parse_entries(redis_client.xrange(runtime.keys.events("door")))]


def test_an_uploaded_image_is_identified_in_at_most_three_redis_requests(
        redis_url: str, prefix: str, tmp_path: Path, faces_dir: Path, redis_client: Any) -> None:
    """POST /api/v1/identify and Client.identify: the worker reads the "seen" mark, the
    refresh's reads and the upload at once, checks corrections of a known face, records."""
    import json

    lfw = faces_dir / "lfw"
    log = RoundTrips()
    settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path, faces={"max_image_bytes": 200_000},
                             workers={"read_roots": [str(lfw)]}, visitors={"enabled": False})
    runtime = Runtime(settings)
    runtime.redis = counting_redis(redis_url, log)
    try:
        runtime.warm()
        arnold = sorted((lfw / "Arnold_Schwarzenegger").glob("*.jpg"))
        assert enrol(runtime, EnrolRequest("r1", tuple(ImageRef(p.name, path=str(p)) for p in arnold[:3]),
                                           name="Arnold")).status == "done"
        keys = runtime.keys
        redis_client.set(keys.upload("u1"), arnold[5].read_bytes(), ex=60)
        mark = log.mark()
        record = pipeline.identify_image(runtime, pipeline.ImagePayload("j1", "photo.jpg", key="u1"))
        requests = log.since(mark)
        assert [f["person"] for f in record["faces"]] == ["Arnold"]
        assert len(requests) <= 3, requests
        [(_, fields)] = redis_client.xrange(keys.job_results("j1"))
        assert json.loads(fields[b"result"])["faces"][0]["person"] == "Arnold"
        assert not redis_client.exists(keys.upload("u1"))
        # redelivered: skipped after one request; an expired upload: an error record, not a crash
        mark = log.mark()
        assert pipeline.identify_image(runtime, pipeline.ImagePayload("j1", "photo.jpg", key="u1"))["skipped"]
        assert len(log.since(mark)) == 1
        gone = pipeline.identify_image(runtime, pipeline.ImagePayload("j1", "gone.jpg", key="u2"))
        assert gone["error"].startswith("upload_expired")
        redis_client.set(keys.upload("u3"), b"x" * (settings.faces.max_image_bytes + 10), ex=60)
        big = pipeline.identify_image(runtime, pipeline.ImagePayload("j1", "big.jpg", key="u3"))
        assert big["error"].startswith("too_large")
    finally:
        runtime.close()
