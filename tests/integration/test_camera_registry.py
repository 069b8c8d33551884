"""The camera source registry and the registry-mode runner on a real Redis with a real
video file; a recording task sender stands in for Celery (no worker, on purpose: the
API test in tests/web runs the whole thing with a worker process)."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from faec_rec.client import Client
from faec_rec.config import ProducerConfig, load_settings
from faec_rec.errors import DuplicateCameraError, SourceError, UnknownCameraError
from faec_rec.producers.camera import camera_stats
from faec_rec.producers.sources import mask_source
from faec_rec.producers.supervisor import RegistryRunner
from tests.integration.test_producers import CLIP, RecordingSender
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SECRET_URL = "rtsp://admin:hunter2-Secret@127.0.0.1:1/stream?user=admin&password=hunter2-Secret"


@pytest.fixture
def client(redis_url: str, prefix: str, redis_client: Any, tmp_path: Path) -> Any:
    with Client(settings=load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path), actor="test") as c:
        yield c


def test_mask_source_hides_user_and_password() -> None:
    assert mask_source("rtsp://admin:pw@10.0.0.5:554/s") == "rtsp://***@10.0.0.5:554/s"
    assert mask_source("rtsp://u:p@ss@cam/x@y") == "rtsp://***@cam/x@y"  # an unescaped @ in the password
    assert mask_source("http://cam/mjpg?user=a&pwd=b&res=1") == "http://cam/mjpg?user=***&pwd=***&res=1"
    assert mask_source("http://cam.local/mjpg") == "http://cam.local/mjpg"
    assert mask_source("/videos/a@b.mp4") == "/videos/a@b.mp4"
    assert mask_source("0") == "0"


def test_add_list_remove_with_masked_credentials(client: Any, redis_client: Any, keys: Any) -> None:
    shown = client.cameras_add("door", SECRET_URL, fps=2)
    assert shown["source"] == "rtsp://***@127.0.0.1:1/stream?user=***&password=***"
    stored = json.loads(redis_client.hget(keys.camera_sources(), "door"))
    assert stored["source"] == SECRET_URL  # the runner needs the real one
    with pytest.raises(DuplicateCameraError):
        client.cameras_add("door", "0")
    with pytest.raises(ValueError):
        client.cameras_add("../x", "0")
    with pytest.raises(SourceError):
        client.cameras_add("cam", "0", fps=0)
    for bad in ("", "  ", "door\n.mp4", "a\u200bb.mp4", "x" * 2049):
        with pytest.raises(SourceError):
            client.cameras_add("cam", bad)
    rows = client.cameras()
    assert [(r["camera"], r["registered"], r["status"]) for r in rows] == [("door", True, "waiting")]
    assert "hunter2" not in json.dumps(rows) and "admin" not in json.dumps(rows)
    audit = json.dumps(client.audit_log())
    assert "camera.add" in audit and "hunter2" not in audit
    assert client.cameras_remove("door")["camera"] == "door"
    assert client.cameras() == []
    with pytest.raises(UnknownCameraError):
        client.cameras_remove("door")


def test_registry_runner_starts_and_stops_cameras_at_run_time(client: Any, redis_client: Any, keys: Any,
                                                              faces_dir: Path, caplog: Any) -> None:
    video = faces_dir / "videos" / CLIP
    sender = RecordingSender()
    runner = RegistryRunner(redis_client, keys, sender, ProducerConfig(max_in_flight=1000, fps=5.0), 60)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            runner.sync()
            stop.wait(0.2)

    caplog.set_level(logging.INFO, logger="faec_rec.producers")
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        client.cameras_add("hall", str(video), loop=True)
        client.cameras_add("door", SECRET_URL)  # unreachable: reconnects, never shows its password
        wait_for(lambda: len(sender.payloads("hall")) >= 5, 60, "hall frames")
        wait_for(lambda: camera_stats(redis_client, keys, "door").get("status") == "reconnecting", 60, "door retrying")
        door = camera_stats(redis_client, keys, "door")
        assert "hunter2" not in json.dumps(door) and door["source"].startswith("rtsp://***@"), door
        assert {r["camera"] for r in client.cameras()} == {"hall", "door"}

        client.cameras_remove("hall")
        wait_for(lambda: camera_stats(redis_client, keys, "hall").get("status") == "stopped", 30, "hall stopped")
        wait_for(lambda: "hall" not in runner.running and not runner.stopping, 30, "hall reaped")
        pushed = int(camera_stats(redis_client, keys, "hall")["pushed"])
        sent = len(sender.payloads("hall"))
        assert {r["camera"] for r in client.cameras()} == {"door"}
        stop.wait(1.0)  # a stopped camera pushes nothing more
        assert int(camera_stats(redis_client, keys, "hall")["pushed"]) == pushed
        assert len(sender.payloads("hall")) == sent

        client.cameras_add("hall", str(video))  # added again: streams again, frame numbers go on
        wait_for(lambda: len(sender.payloads("hall")) > sent, 60, "hall again")
        assert sender.payloads("hall")[-1]["frame"] > sent - 1
    finally:
        stop.set()
        thread.join(10)
        runner.stop_all()
    assert "hunter2" not in caplog.text and "admin:" not in caplog.text
    assert "***@127.0.0.1" in caplog.text  # the runner did log the source, masked
