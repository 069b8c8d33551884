"""Camera and folder producers on a real Redis, real video files and real photos,
with a recording task sender in place of Celery (no worker consumes, on purpose)."""
from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis

from faec_rec.config import ProducerConfig
from faec_rec.errors import BackendUnavailable, SourceError
from faec_rec.keys import Keys
from faec_rec.producers.camera import CameraSpec, camera_stats, run_cameras
from faec_rec.producers.folder import job_progress, scan_folder, submit_folder
from faec_rec.producers.sources import FrameSampler, VideoSource, parse_source, SourceKind
from faec_rec.redis_server import PrivateRedis
from faec_rec.workers.app import TASK_IDENTIFY, TASK_RECOGNISE

pytestmark = pytest.mark.integration

CLIP = "face_recognition__short_hamilton_clip.mp4"  # 640x360, 275 frames at 29.97 fps
CLIP_FRAMES, CLIP_FPS = 275, 29.97
TTL_S = 60


class RecordingSender:
    """Stands in for the Celery app: records ``send_task`` calls; can be told to fail."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, list[Any], str | None]] = []
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def send_task(self, name: str, args: list[Any] | None = None, queue: str | None = None, **_: Any) -> None:
        with self.lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise ConnectionError("broker unreachable (test)")
            self.calls.append((name, list(args or []), queue))

    def payloads(self, camera: str | None = None) -> list[dict[str, Any]]:
        return [a[0] for _, a, _ in self.calls if camera is None or a[0].get("camera") == camera]


@pytest.fixture
def clip(faces_dir: Path) -> str:
    path = faces_dir / "videos" / CLIP
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return str(path)


def expected_sampled(fps: float) -> int:
    """Frames a sampler at ``fps`` keeps from the clip's timeline."""
    return math.ceil(CLIP_FRAMES / CLIP_FPS * fps - 1e-9)


def test_parse_source_kinds() -> None:
    assert parse_source("0").kind is SourceKind.USB and parse_source(2).target == 2
    assert parse_source("rtsp://10.0.0.5/stream").kind is SourceKind.URL
    assert parse_source("http://cam.local/mjpg").kind is SourceKind.URL
    assert parse_source("/videos/x.mp4").kind is SourceKind.FILE
    with pytest.raises(SourceError, match="USB index"):
        parse_source("  ")


def test_sampler_keeps_the_target_rate_on_any_timeline() -> None:
    sampler = FrameSampler(10.0)
    kept = sum(sampler.due(i / 29.97) for i in range(2997))  # 100 s of a 29.97 fps file
    assert kept == 1000
    sampler = FrameSampler(10.0)
    kept = sum(sampler.due(i / 5.0) for i in range(50))  # source slower than the target
    assert kept == 50


def test_video_file_frames_reach_redis_with_ttl_and_protocol_payloads(clip, redis_client, keys) -> None:
    sender = RecordingSender()
    config = ProducerConfig(fps=5.0, max_in_flight=1000, jpeg_quality=80)
    out = run_cameras([CameraSpec("cam1", clip)], redis_client, keys, sender, config, TTL_S, realtime=False, duration_s=60)

    n = expected_sampled(5.0)
    assert n == 46
    assert out["cam1"].pushed == n and out["cam1"].status == "finished"
    payloads = sender.payloads()
    assert len(payloads) == n
    assert {name for name, _, _ in sender.calls} == {TASK_RECOGNISE}
    assert {queue for _, _, queue in sender.calls} == {"frames"}
    assert [p["frame"] for p in payloads] == list(range(n))
    now = time.time()
    for p in payloads:
        assert set(p) == {"camera", "frame", "key", "captured_at", "width", "height"}
        assert p["camera"] == "cam1" and p["key"] == keys.frame("cam1", p["frame"])
        assert now - 120 < p["captured_at"] <= now
        assert (p["width"], p["height"]) == (640, 360)
    captured = [p["captured_at"] for p in payloads]
    assert captured == sorted(captured)

    # frames are stored as JPEG under their keys, with the TTL
    for p in payloads[:: max(1, n // 5)]:
        ttl = redis_client.ttl(p["key"])
        assert 0 < ttl <= TTL_S
        image = cv2.imdecode(np.frombuffer(redis_client.get(p["key"]), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (360, 640, 3)
    # every key waits in the in-flight list, newest first
    in_flight = [k.decode() for k in redis_client.lrange(keys.in_flight("cam1"), 0, -1)]
    assert in_flight == [p["key"] for p in reversed(payloads)]
    stats = camera_stats(redis_client, keys, "cam1")
    assert stats["pushed"] == str(n) and stats["status"] == "finished" and stats["frame"] == str(n - 1)
    assert "dropped" not in stats
    assert redis_client.sismember(keys.cameras(), "cam1")


def test_a_second_run_continues_frame_numbers(clip, redis_client, keys) -> None:
    config = ProducerConfig(fps=2.0, max_in_flight=1000)
    first = RecordingSender()
    run_cameras([CameraSpec("c", clip)], redis_client, keys, first, config, TTL_S, realtime=False, max_frames=3)
    second = RecordingSender()
    run_cameras([CameraSpec("c", clip)], redis_client, keys, second, config, TTL_S, realtime=False, max_frames=3)
    assert [p["frame"] for p in first.payloads()] == [0, 1, 2]
    assert [p["frame"] for p in second.payloads()] == [3, 4, 5]
    assert camera_stats(redis_client, keys, "c")["status"] == "stopped"


def test_realtime_replay_never_runs_ahead_of_the_clock(clip, redis_client, keys) -> None:
    sender = RecordingSender()
    config = ProducerConfig(fps=10.0, max_in_flight=1000)
    run_cameras([CameraSpec("rt", clip)], redis_client, keys, sender, config, TTL_S, realtime=True, duration_s=1.0)
    payloads = sender.payloads()
    # paced to the file's own timeline: at most 10 frames per second (+1 for t=0)
    assert 1 <= len(payloads) <= 11
    # frame k is never taken before its moment on the file's timeline (k / 10 s,
    # within one source frame); a slow machine may only make it later
    captured = np.array([p["captured_at"] for p in payloads])
    ahead = (np.arange(len(captured)) / 10.0 - 1 / CLIP_FPS) - (captured - captured[0])
    assert (ahead <= 1 / CLIP_FPS).all(), ahead


def test_looping_file_keeps_the_rate_across_the_restart(clip, redis_client, keys) -> None:
    sender = RecordingSender()
    config = ProducerConfig(fps=5.0, max_in_flight=1000)
    n = expected_sampled(5.0) + 20
    out = run_cameras([CameraSpec("loop", clip, loop=True)], redis_client, keys, sender, config, TTL_S,
                      realtime=False, max_frames=n)
    assert out["loop"].pushed == n and out["loop"].status == "stopped"


def test_in_flight_is_bounded_and_drops_are_counted(clip, redis_client, keys) -> None:
    sender = RecordingSender()
    config = ProducerConfig(fps=5.0, max_in_flight=3)
    out = run_cameras([CameraSpec("busy", clip)], redis_client, keys, sender, config, TTL_S, realtime=False, duration_s=60)
    n = expected_sampled(5.0)
    assert out["busy"].pushed == n and out["busy"].dropped == n - 3
    # only the newest three frames wait; the dropped ones are gone from Redis
    in_flight = [k.decode() for k in redis_client.lrange(keys.in_flight("busy"), 0, -1)]
    assert in_flight == [keys.frame("busy", i) for i in (n - 1, n - 2, n - 3)]
    stored = sorted(k.decode() for k in redis_client.scan_iter(match=f"{keys.prefix}:frame:busy:*"))
    assert stored == sorted(in_flight)
    stats = camera_stats(redis_client, keys, "busy")
    assert int(stats["pushed"]) == n and int(stats["dropped"]) == n - 3
    # every frame still got its task: a worker finding its key gone skips it quietly
    assert len(sender.payloads()) == n


def test_dead_cameras_are_retried_and_reported_without_stopping_a_live_one(clip, redis_client, keys, tmp_path) -> None:
    sender = RecordingSender()
    config = ProducerConfig(fps=5.0, max_in_flight=1000, reconnect_max_s=1.0)
    cameras = [
        CameraSpec("dead-url", "rtsp://127.0.0.1:1/none"),
        CameraSpec("dead-file", str(tmp_path / "missing.mp4")),
        CameraSpec("live", clip),
    ]
    stop = threading.Event()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run_cameras(
        cameras, redis_client, keys, sender, config, TTL_S, realtime=False, stop=stop, initial_backoff_s=0.2)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        seen: dict[str, dict[str, str]] = {}
        while time.monotonic() < deadline:
            seen = {c.camera_id: camera_stats(redis_client, keys, c.camera_id) for c in cameras}
            live_done = seen["live"].get("status") == "finished"
            dead_retried = all(int(seen[c].get("reconnects", 0)) >= 2 for c in ("dead-url", "dead-file"))
            if live_done and dead_retried:
                break
            time.sleep(0.1)
        # while the run goes on, the dead cameras say what is wrong
        for cam in ("dead-url", "dead-file"):
            assert seen[cam]["status"] == "reconnecting"
            assert int(seen[cam]["errors"]) >= 2
            assert "cannot open" in seen[cam]["last_error"] or "no such video file" in seen[cam]["last_error"]
        assert "no such video file" in seen["dead-file"]["last_error"]
        assert seen["live"]["status"] == "finished" and int(seen["live"]["pushed"]) == expected_sampled(5.0)
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert result["live"].pushed == expected_sampled(5.0)
    assert result["dead-url"].pushed == 0 and result["dead-url"].status == "stopped"
    assert {p["camera"] for p in sender.payloads()} == {"live"}


def test_producer_sweep_closes_the_tracks_of_a_silent_camera(redis_client, keys, tmp_path) -> None:
    from faec_rec.config import EventsConfig
    from faec_rec.workers.events import parse_entries
    from faec_rec.workers.tracker import Observation, TrackStore

    events_config = EventsConfig(track_timeout_s=0.5, track_min_hits=1)
    store = TrackStore.from_settings(redis_client, keys, events_config)
    # the camera's last processed frame saw one person, a moment ago
    face = Observation(box=(10, 10, 90, 90), person_id=None, person=None, score=0.1, decision="unknown")
    store.update("gone", 7, time.time(), [face])
    # ... and now the camera does not answer any more
    out = run_cameras([CameraSpec("gone", str(tmp_path / "missing.mp4"))], redis_client, keys, RecordingSender(),
                      ProducerConfig(), TTL_S, duration_s=3.0, events=events_config, sweep_every_s=0.2,
                      initial_backoff_s=0.2)
    assert out["gone"].pushed == 0
    events = [e for _, e in parse_entries(redis_client.xrange(keys.events("gone")))]
    assert [(e.type, e.track_id, e.frame) for e in events] == [("left", 1, 7)]
    assert store.load("gone").tracks == []


def test_unsent_tasks_withdraw_their_frames(clip, redis_client, keys) -> None:
    sender = RecordingSender(fail_after=4)
    config = ProducerConfig(fps=5.0, max_in_flight=1000)
    out = run_cameras([CameraSpec("nob", clip)], redis_client, keys, sender, config, TTL_S, realtime=False, max_frames=10)
    assert out["nob"].sent == 4 and out["nob"].pushed == 10 and out["nob"].dropped == 6
    # only frames whose task went out stay in flight
    in_flight = sorted(k.decode() for k in redis_client.lrange(keys.in_flight("nob"), 0, -1))
    assert in_flight == sorted(p["key"] for p in sender.payloads())
    stats = camera_stats(redis_client, keys, "nob")
    assert stats["dropped"] == "6" and stats["errors"] == "6"


class InterruptingSender(RecordingSender):
    """Sends ``after`` tasks, then the run is interrupted inside the next send (as Ctrl-C or
    SystemExit would between pushing a frame and sending its task)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def send_task(self, name: str, args: list[Any] | None = None, queue: str | None = None, **kw: Any) -> None:
        if len(self.calls) >= self.after:
            raise SystemExit("interrupted between push and send (test)")
        super().send_task(name, args, queue, **kw)


def test_interrupt_between_push_and_send_leaves_no_frame_unsettled(clip, redis_client, keys) -> None:
    """The frame pushed when the run stopped has no task: it is withdrawn and counted as
    dropped, so every pushed frame is either waiting for its task or counted."""
    from faec_rec.producers.camera import CameraProducer

    sender = InterruptingSender(after=3)
    producer = CameraProducer(CameraSpec("intr", clip), redis_client, keys, sender,
                              ProducerConfig(fps=5.0, max_in_flight=1000), TTL_S, realtime=False)
    with pytest.raises(SystemExit):
        producer.run(threading.Event(), max_frames=10)
    stats = camera_stats(redis_client, keys, "intr")
    assert stats["pushed"] == "4" and stats["dropped"] == "1"
    in_flight = sorted(k.decode() for k in redis_client.lrange(keys.in_flight("intr"), 0, -1))
    assert in_flight == sorted(p["key"] for p in sender.payloads())
    assert redis_client.get(keys.frame("intr", 3)) is None  # the task-less frame's bytes are gone


def test_withdraw_counts_a_waiting_frame_once_and_never_a_claimed_one(redis_client, keys) -> None:
    from faec_rec.producers.camera import FramePusher

    pusher = FramePusher(redis_client, keys, "wd", TTL_S, 10)
    waiting, _ = pusher.push(0, b"jpeg0")
    claimed, _ = pusher.push(1, b"jpeg1")
    redis_client.lrem(keys.in_flight("wd"), 1, claimed)  # a worker's claim
    assert pusher.withdraw(waiting) is True
    assert pusher.withdraw(waiting) is False  # a retry does not count it again
    assert pusher.withdraw(claimed) is False  # the worker has it: left to the worker
    assert redis_client.get(claimed) == b"jpeg1"
    assert camera_stats(redis_client, keys, "wd")["dropped"] == "1"


def test_redis_outage_counts_lost_frames_and_pushing_resumes(clip, tmp_path) -> None:
    """Redis stops mid-run and comes back on the same port: frames read meanwhile
    are counted as dropped, and the camera streams again without a restart."""
    server = PrivateRedis(tmp_path / "redis", persistent=False).start()
    keys = Keys("outage")
    client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=1.0)
    sender = RecordingSender()
    config = ProducerConfig(fps=10.0, max_in_flight=1000, reconnect_max_s=0.5)
    stop = threading.Event()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run_cameras(
        [CameraSpec("cam", clip, loop=True)], client, keys, sender, config, TTL_S,
        realtime=True, stop=stop, initial_backoff_s=0.2)))
    runner.start()
    try:
        _wait(lambda: len(sender.calls) >= 5, "first frames")
        server.stop()
        sent_before = len(sender.calls)
        time.sleep(2.0)
        assert len(sender.calls) <= sent_before + 1  # nothing goes out while Redis is away
        server.start()
        _wait(lambda: len(sender.calls) >= sent_before + 5, "frames after the restart")
    finally:
        stop.set()
        runner.join(timeout=30)
        try:
            stats = {k.decode(): v.decode() for k, v in client.hgetall(keys.camera_stats("cam")).items()}
        finally:
            client.close()
            server.stop()
    counters = result["cam"]
    assert counters.dropped >= 5  # ~2 s at 10 fps were lost
    # the restarted Redis (no persistence) learnt of the drops when it came back
    assert int(stats["dropped"]) == counters.dropped
    assert stats["status"] == "stopped"


def _wait(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# ---- folder producer ---------------------------------------------------------------

@pytest.fixture
def photo_folder(faces_dir: Path, tmp_path: Path) -> Path:
    """A small folder tree of real photos plus things that are not images."""
    src = sorted((faces_dir / "samples" / "face_recognition_examples").rglob("*.jpg"))[:3]
    pngs = sorted((faces_dir / "classic" / "att_orl").rglob("*.png"))[:1]
    if len(src) < 3 or not pngs:
        pytest.skip("sample photos missing")
    root = tmp_path / "photos"
    (root / "trip" / "day1").mkdir(parents=True)
    shutil.copy(src[0], root / "a.jpg")
    shutil.copy(src[1], root / "trip" / "B.JPEG")
    shutil.copy(src[2], root / "trip" / "day1" / "c.jpg")
    shutil.copy(pngs[0], root / "trip" / "d.png")
    (root / "notes.txt").write_text("not a photo")
    (root / "trip" / "clip.mp4").write_bytes(b"\x00" * 16)
    (root / ".hidden").mkdir()
    shutil.copy(src[0], root / ".hidden" / "thumb.jpg")
    return root


def test_folder_scan_keeps_images_and_skips_the_rest_with_a_warning(photo_folder, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="faec_rec.producers.folder"):
        scan = scan_folder(photo_folder)
    rel = [str(p.relative_to(photo_folder)) for p in scan.images]
    assert rel == ["a.jpg", "trip/B.JPEG", "trip/d.png", "trip/day1/c.jpg"]
    assert sorted(p.name for p in scan.skipped) == ["clip.mp4", "notes.txt"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "notes.txt" in warned and "clip.mp4" in warned
    with pytest.raises(SourceError, match="not a folder"):
        scan_folder(photo_folder / "a.jpg")


def test_submit_folder_sends_one_task_per_image_and_sets_the_total(photo_folder, redis_client, keys) -> None:
    sender = RecordingSender()
    job = submit_folder(photo_folder, redis_client, keys, sender, job_id="job-1")
    assert job.job_id == "job-1" and job.total == 4 and len(job.skipped) == 2
    assert {(name, queue) for name, _, queue in sender.calls} == {(TASK_IDENTIFY, "frames")}
    payloads = sender.payloads()
    assert [p["name"] for p in payloads] == ["a.jpg", "trip/B.JPEG", "trip/d.png", "trip/day1/c.jpg"]
    for p in payloads:
        assert set(p) == {"job", "path", "key", "name"}
        assert p["job"] == "job-1" and p["key"] is None
        assert Path(p["path"]).is_absolute() and Path(p["path"]).is_file()
    assert job_progress(redis_client, keys, "job-1") == {"total": 4, "done": 0, "errors": 0, "skipped": 2}


def test_submit_folder_lowers_the_total_when_the_broker_fails(photo_folder, redis_client, keys) -> None:
    sender = RecordingSender(fail_after=2)
    with pytest.raises(BackendUnavailable, match="only 2 of 4"):
        submit_folder(photo_folder, redis_client, keys, sender, job_id="job-2")
    assert job_progress(redis_client, keys, "job-2")["total"] == 2


def test_submit_folder_walks_lazily_and_counts_an_image_added_mid_walk(photo_folder, redis_client, keys) -> None:
    """The folder is walked (not listed) while tasks go out: a photo that appears in a
    sub-folder the walk has not reached yet is sent too, and the job's total is raised
    before its task is sent, so done can never pass total."""
    totals_at_send: list[int] = []

    class WatchingSender(RecordingSender):
        def send_task(self, name: str, args: list[Any] | None = None, queue: str | None = None, **kw: Any) -> None:
            totals_at_send.append(job_progress(redis_client, keys, "job-3")["total"])
            if not self.calls:  # while a.jpg goes out, a new photo lands in trip/day1/
                shutil.copy(photo_folder / "a.jpg", photo_folder / "trip" / "day1" / "e.jpg")
            super().send_task(name, args, queue, **kw)

    sender = WatchingSender()
    job = submit_folder(photo_folder, redis_client, keys, sender, job_id="job-3")
    assert [p["name"] for p in sender.payloads()] == ["a.jpg", "trip/B.JPEG", "trip/d.png", "trip/day1/c.jpg", "trip/day1/e.jpg"]
    assert totals_at_send == [4, 4, 4, 4, 5]  # the fifth task was counted before it was sent
    assert job.total == 5 and len(job.skipped) == 2
    assert job_progress(redis_client, keys, "job-3") == {"total": 5, "done": 0, "errors": 0, "skipped": 2}


def test_video_source_reads_a_real_file(clip) -> None:
    source = VideoSource(clip, fps=1.0, realtime=False)
    source.open()
    frames = []
    while (got := source.read()) is not None:
        frames.append(got[0])
    source.close()
    assert source.finished and len(frames) == expected_sampled(1.0) == 10
    assert frames[0].shape == (360, 640, 3) and frames[0].dtype == np.uint8
