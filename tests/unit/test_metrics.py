"""faec_rec.metrics: counters move when recorded; /metrics, /healthz and /readyz answer on a
real local port with the right status codes, in one process and in multiprocess (prefork) mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from faec_rec import metrics
from faec_rec.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here starts in single-process mode with no readiness reported."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(metrics, "_ready", {})


def sample(name: str, **labels: str) -> float:
    value = metrics.get_metrics().registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


# ---- recording -------------------------------------------------------------


def test_frame_counters_and_histograms_move_per_camera() -> None:
    cam, other = "unit-cam-a", "unit-cam-b"
    before = {n: sample(n, camera=cam) for n in (
        "faec_frames_received_total", "faec_frames_dropped_total", "faec_frames_processed_total",
        "faec_capture_to_event_seconds_count", "faec_capture_to_event_seconds_sum", "faec_faces_per_frame_sum")}
    other_before = sample("faec_frames_processed_total", camera=other)

    metrics.frames_received(cam, 5)
    metrics.frames_dropped(cam, 2)
    metrics.frames_dropped(cam, 0)  # nothing dropped: no change, no error
    metrics.frame_processed(cam, captured_at=100.0, faces=3, now=100.25)
    metrics.frame_processed(cam, captured_at=200.0, faces=0, now=199.0)  # clock skew: counted as 0 s

    assert sample("faec_frames_received_total", camera=cam) - before["faec_frames_received_total"] == 5
    assert sample("faec_frames_dropped_total", camera=cam) - before["faec_frames_dropped_total"] == 2
    assert sample("faec_frames_processed_total", camera=cam) - before["faec_frames_processed_total"] == 2
    assert sample("faec_frames_processed_total", camera=other) == other_before
    assert sample("faec_capture_to_event_seconds_count", camera=cam) - before["faec_capture_to_event_seconds_count"] == 2
    assert sample("faec_capture_to_event_seconds_sum", camera=cam) - before["faec_capture_to_event_seconds_sum"] == pytest.approx(0.25)
    assert sample("faec_faces_per_frame_sum", camera=cam) - before["faec_faces_per_frame_sum"] == 3
    # 0.25 s lands in the 0.3 s bucket, not in the 0.2 s one
    le02 = sample("faec_capture_to_event_seconds_bucket", camera=cam, le="0.2")
    le03 = sample("faec_capture_to_event_seconds_bucket", camera=cam, le="0.3")
    assert le03 - le02 == 1


def test_errors_stages_enrolment_and_training_outcomes() -> None:
    before_err = sample("faec_frame_errors_total", camera="c1", error="frame_expired")
    metrics.frame_error("c1", "frame_expired")
    assert sample("faec_frame_errors_total", camera="c1", error="frame_expired") == before_err + 1

    before_stage = sample("faec_stage_seconds_count", stage="unit-detect")
    with pytest.raises(RuntimeError):
        with metrics.stage("unit-detect"):
            raise RuntimeError("a failing stage is still timed")
    assert sample("faec_stage_seconds_count", stage="unit-detect") == before_stage + 1

    before_run = sample("faec_training_runs_total", outcome="promoted")
    metrics.training_run("promoted")
    metrics.training_run(metrics.TrainingOutcome.PROMOTED)
    assert sample("faec_training_runs_total", outcome="promoted") == before_run + 2
    with pytest.raises(ValueError, match="promoted, rejected, skipped, failed"):
        metrics.training_run("great")

    before_enrol = sample("faec_enrol_images_total", outcome="refused")
    metrics.enrol_image("refused")
    assert sample("faec_enrol_images_total", outcome="refused") == before_enrol + 1


def test_gallery_size_and_model_version_gauges() -> None:
    metrics.set_gallery_size(people=12, templates=40)
    assert sample("faec_gallery_replica_size", kind="people") == 12
    assert sample("faec_gallery_replica_size", kind="templates") == 40
    metrics.set_model_version("unit-v1")
    metrics.set_model_version("unit-v2")
    registry = metrics.get_metrics().registry
    # an info metric: 1 for the version served, and no series at all for the earlier one
    assert registry.get_sample_value("faec_model_version_info", {"version": "unit-v1"}) is None
    assert sample("faec_model_version_info", version="unit-v2") == 1


def test_readiness_needs_every_check_and_redis() -> None:
    ok, report = metrics.readiness(["model", "gallery"])
    assert not ok and report["model"]["detail"] == "not reported yet"
    metrics.mark_ready("model", True, "base")
    metrics.mark_ready("gallery", False, "snapshot missing")
    ok, report = metrics.readiness(["model", "gallery"])
    assert not ok and report["model"]["ok"] and report["gallery"]["detail"] == "snapshot missing"
    metrics.mark_ready("gallery", True)
    assert metrics.readiness(["model", "gallery"])[0]

    def down() -> None:
        raise ConnectionError("refused")

    ok, report = metrics.readiness(["model", "gallery"], redis_ping=down)
    assert not ok and "refused" in report["redis"]["detail"]


# ---- the HTTP endpoints ----------------------------------------------------


def test_endpoints_answer_with_the_right_status(redis_client) -> None:
    metrics.frame_processed("http-cam", captured_at=0, faces=1)
    with metrics.HealthServer(0, host="127.0.0.1", checks=("model", "gallery"), redis_client=redis_client) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        status, ctype, body = get(base + "/healthz")
        assert status == 200 and ctype == "application/json" and json.loads(body)["alive"] is True

        status, _, body = get(base + "/readyz")
        assert status == 503
        report = json.loads(body)
        assert report["ready"] is False and report["checks"]["redis"]["ok"] is True
        assert report["checks"]["model"]["ok"] is False

        metrics.mark_ready("model", True, "base")
        metrics.mark_ready("gallery", True, "0 people")
        status, _, body = get(base + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True

        status, ctype, body = get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'faec_frames_processed_total{camera="http-cam"}' in body

        assert get(base + "/nope")[0] == 404


def test_readyz_is_503_when_redis_is_down() -> None:
    metrics.mark_ready("model", True)
    dead = metrics.probe_client(f"redis://127.0.0.1:{free_port()}/0")
    with metrics.HealthServer(0, host="127.0.0.1", checks=("model",), redis_client=dead) as srv:
        status, _, body = get(f"http://127.0.0.1:{srv.port}/readyz")
    assert status == 503
    checks = json.loads(body)["checks"]
    assert checks["redis"]["ok"] is False and checks["model"]["ok"] is True


def test_redis_collector_reads_queue_depth_cameras_and_people(redis_client, keys, prefix) -> None:
    from prometheus_client import CollectorRegistry

    queue_key = lambda q: f"{prefix}:queue:{q}"  # noqa: E731 (keeps the test's keys under its prefix)
    redis_client.rpush(queue_key("frames"), *[b"t"] * 4)
    redis_client.rpush(queue_key("frames") + "\x06\x163", b"t")  # a priority-3 list counts too
    redis_client.rpush(queue_key("enrol"), b"t")
    redis_client.sadd(keys.cameras(), "door", "yard")
    redis_client.rpush(keys.in_flight("door"), "k1", "k2", "k3")
    redis_client.sadd(keys.people(), "p1", "p2")
    # the frame protocol's counters, as producers and workers HINCRBY them
    redis_client.hset(keys.camera_stats("door"), mapping={
        "pushed": 10, "dropped": 2, "processed": 7, "errors": 1, "faces": 9, "status": "streaming",
        "latency_ms_le_100": 4, "latency_ms_le_50": 3, "latency_ms_sum": 420.5, "frame": 41})

    registry = CollectorRegistry()
    collector = metrics.RedisCollector(redis_client, keys, queue_key=queue_key)
    with metrics.HealthServer(0, host="127.0.0.1", registry=registry, collectors=[collector]) as srv:
        status, _, body = get(f"http://127.0.0.1:{srv.port}/metrics")
    assert status == 200
    assert registry.get_sample_value("faec_redis_up") is None  # unregistered on stop
    lines = set(body.splitlines())
    assert 'faec_queue_depth{queue="frames"} 5.0' in lines
    assert 'faec_queue_depth{queue="enrol"} 1.0' in lines
    assert 'faec_queue_depth{queue="train"} 0.0' in lines
    assert 'faec_camera_in_flight{camera="door"} 3.0' in lines
    assert 'faec_camera_in_flight{camera="yard"} 0.0' in lines
    assert "faec_gallery_people 2.0" in lines
    assert "faec_redis_up 1.0" in lines
    assert 'faec_camera_frames_total{camera="door",state="pushed"} 10.0' in lines
    assert 'faec_camera_frames_total{camera="door",state="dropped"} 2.0' in lines
    assert 'faec_camera_frames_total{camera="door",state="processed"} 7.0' in lines
    assert 'faec_camera_frames_total{camera="yard",state="processed"} 0.0' in lines
    assert 'faec_camera_faces_total{camera="door"} 9.0' in lines
    assert 'faec_camera_status{camera="door",status="streaming"} 1.0' in lines
    # per-bucket counts in the hash become cumulative buckets, in seconds
    assert 'faec_camera_capture_to_event_seconds_bucket{camera="door",le="0.05"} 3.0' in lines
    assert 'faec_camera_capture_to_event_seconds_bucket{camera="door",le="0.1"} 7.0' in lines
    assert 'faec_camera_capture_to_event_seconds_bucket{camera="door",le="+Inf"} 7.0' in lines
    # a histogram carries _count and _sum (the workers add each frame's latency to latency_ms_sum)
    assert 'faec_camera_capture_to_event_seconds_count{camera="door"} 7.0' in lines
    assert 'faec_camera_capture_to_event_seconds_sum{camera="door"} 0.4205' in lines


def test_redis_collector_reports_down_instead_of_failing_the_scrape(keys) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    dead = metrics.probe_client(f"redis://127.0.0.1:{free_port()}/0")
    registry.register(metrics.RedisCollector(dead, keys))
    assert registry.get_sample_value("faec_redis_up") == 0.0
    assert registry.get_sample_value("faec_queue_depth", {"queue": "frames"}) is None


def test_serve_is_off_on_port_zero_and_reports_a_busy_port() -> None:
    from faec_rec.config import Settings

    assert metrics.serve(Settings(redis_url=None)) is None
    with metrics.HealthServer(0, host="127.0.0.1") as srv:
        with pytest.raises(metrics.ConfigError, match="health_port"):
            metrics.HealthServer(srv.port, host="127.0.0.1")


# ---- multiprocess (Celery prefork) mode ------------------------------------

_PREFORK_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, time, urllib.error, urllib.request
    from faec_rec import metrics

    def get(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    metrics.enable_multiprocess(sys.argv[1])
    out = {}

    def child(frames, ready, stay):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            for _ in range(frames):
                metrics.frame_processed("cam", captured_at=0, faces=2)
            metrics.set_model_version("v7")
            if ready:
                metrics.mark_ready("model", True, "v7")
                metrics.mark_ready("gallery", True, "3 people")
            os.write(w, b"x")
            if stay:
                time.sleep(60)
            os._exit(0)
        os.read(r, 1)
        return pid

    srv = metrics.HealthServer(0, host="127.0.0.1", checks=metrics.WORKER_CHECKS).start()
    base = f"http://127.0.0.1:{srv.port}"
    out["readyz_before"] = get(base + "/readyz")[0]
    a = child(2, ready=False, stay=False)
    os.waitpid(a, 0)
    metrics.process_exited(a)          # a clean child exit (worker_process_shutdown)
    b = child(3, ready=True, stay=True)
    out["readyz_live"] = get(base + "/readyz")[0]
    status, body = get(base + "/metrics")
    out["metrics"] = [l for l in body.splitlines() if l.startswith(("faec_frames_processed_total", "faec_model_version_info"))]
    os.kill(b, signal.SIGKILL)         # killed without a goodbye
    os.waitpid(b, 0)
    status, body = get(base + "/metrics")   # a scrape alone forgets the dead child's gauges
    out["metrics_after_kill"] = [l for l in body.splitlines() if l.startswith(("faec_frames_processed_total", "faec_model_version_info"))]
    status, body = get(base + "/readyz")
    out["readyz_killed"] = status
    out["killed_detail"] = json.loads(body)["checks"]["model"]
    out["files_left"] = sorted(p for p in os.listdir(sys.argv[1]) if str(b) in p)
    srv.stop()
    print(json.dumps(out))
""")


def test_prefork_children_are_merged_and_dead_children_are_not_ready(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.run([sys.executable, "-c", _PREFORK_SCRIPT, str(tmp_path / "mp")], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["readyz_before"] == 503
    assert out["readyz_live"] == 200
    # counters of both children are summed, the exited one's included
    assert 'faec_frames_processed_total{camera="cam"} 5.0' in out["metrics"]
    assert 'faec_model_version_info{version="v7"} 1.0' in out["metrics"]
    # a SIGKILLed child no longer makes the worker ready, and its live gauge is gone
    assert out["readyz_killed"] == 503
    assert out["killed_detail"]["ok"] is False
    assert 'faec_frames_processed_total{camera="cam"} 5.0' in out["metrics_after_kill"]
    assert not any(line.startswith("faec_model_version_info") for line in out["metrics_after_kill"])
    # its counters stay (they keep counting), its live gauges and readiness file are gone
    assert any(name.startswith("counter_") for name in out["files_left"])
    assert not any(name.startswith(("gauge_live", "ready_")) for name in out["files_left"]), out["files_left"]


_HOOKS_SCRIPT = textwrap.dedent("""
    import json, sys, urllib.request
    from celery import signals
    from faec_rec import metrics
    from faec_rec.config import Settings
    from faec_rec.workers.app import make_app

    port = int(sys.argv[1])
    app = make_app(Settings(redis_url=sys.argv[2], prefix="hookt", workers={"health_port": port, "cluster_metrics": sys.argv[3] == "1"}))
    metrics.install_worker_hooks()     # settings come from the worker's app
    class FakeWorker:                  # what Celery passes: the WorkController, with .app
        pass
    worker = FakeWorker()
    worker.app = app
    signals.worker_init.send(sender=worker)
    metrics.consumer_heartbeat()       # what the consumer's bootstep does once it consumes
    mp_dir = metrics.multiprocess_dir()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        alive = r.status
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    signals.worker_shutdown.send(sender=None)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
        after = "answered"
    except OSError:
        after = "closed"
    print(json.dumps({"alive": alive, "redis_up": "faec_redis_up 1.0" in body,
                      "dir_removed": not mp_dir.exists(), "after": after}))
""")


def test_celery_signal_hooks_start_and_stop_the_server(redis_url: str) -> None:
    env = {**os.environ}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    proc = subprocess.run([sys.executable, "-c", _HOOKS_SCRIPT, str(port), redis_url, "1"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"alive": 200, "redis_up": True, "dir_removed": True, "after": "closed"}
    # By default a worker serves only its own metrics: cluster metrics come from one place.
    proc = subprocess.run([sys.executable, "-c", _HOOKS_SCRIPT, str(free_port()), redis_url, "0"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["redis_up"] is False
