"""Reads a task may ask for are bounded and confined; time limits and the dead-letter
plumbing are configured (real Redis; the poison-task run itself is in tests/faults)."""
from __future__ import annotations

import json
import os

import pytest

from faec_rec.config import load_settings
from faec_rec.errors import ImageError
from faec_rec.workers import pipeline
from faec_rec.workers.runtime import Runtime


@pytest.fixture
def runtime_for(redis_url, prefix, redis_client, tmp_path):
    made = []

    def make(**overrides):
        settings = load_settings(redis_url=redis_url, prefix=prefix, data_dir=tmp_path / "data", **overrides)
        runtime = Runtime(settings)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def test_a_path_outside_the_read_roots_is_refused(runtime_for, tmp_path) -> None:
    inside, outside = tmp_path / "photos", tmp_path / "secret"
    inside.mkdir(), outside.mkdir()
    (inside / "a.jpg").write_bytes(b"jpeg")
    (outside / "key.pem").write_bytes(b"private")
    (inside / "link.jpg").symlink_to(outside / "key.pem")
    runtime = runtime_for(workers={"read_roots": [str(inside)]})
    assert pipeline.read_image_bytes(runtime, None, str(inside / "a.jpg"), "a.jpg") == b"jpeg"
    for path in (outside / "key.pem", inside / ".." / "secret" / "key.pem", inside / "link.jpg", "/etc/passwd"):
        with pytest.raises(ImageError, match="not_allowed"):
            pipeline.read_image_bytes(runtime, None, str(path), "x")


def test_without_read_roots_a_deployment_worker_reads_no_paths(runtime_for, tmp_path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    with pytest.raises(ImageError, match="not_allowed"):
        pipeline.read_image_bytes(runtime_for(), None, str(tmp_path / "a.jpg"), "a.jpg")


def test_the_private_redis_worker_reads_this_users_files() -> None:
    settings = load_settings(redis_url=None)
    assert pipeline.allowed_roots(settings) is None


def test_file_reads_stop_at_the_byte_cap(runtime_for, tmp_path) -> None:
    (tmp_path / "big.jpg").write_bytes(b"x" * 1001)
    (tmp_path / "fits.jpg").write_bytes(b"x" * 1000)
    runtime = runtime_for(workers={"read_roots": [str(tmp_path)]}, faces={"max_image_bytes": 1000})
    assert len(pipeline.read_image_bytes(runtime, None, str(tmp_path / "fits.jpg"), "fits.jpg")) == 1000
    with pytest.raises(ImageError, match="too_large"):
        pipeline.read_image_bytes(runtime, None, str(tmp_path / "big.jpg"), "big.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        pipeline.read_image_bytes(runtime, None, str(tmp_path), "dir")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # would block an unbounded read_bytes() forever
    with pytest.raises(ImageError, match="not a regular file"):
        pipeline.read_image_bytes(runtime, None, str(fifo), "pipe.jpg")


def test_an_upload_over_the_cap_is_refused_before_it_is_read(runtime_for, redis_client, keys) -> None:
    runtime = runtime_for(faces={"max_image_bytes": 1000})
    redis_client.set(keys.upload("u1"), b"x" * 1001)
    with pytest.raises(ImageError, match="too_large"):
        pipeline.read_image_bytes(runtime, "u1", None, "u1")


def test_time_limits_and_early_ack_of_training_are_configured() -> None:
    from faec_rec.workers.app import TASK_ENROL, TASK_TRAIN, make_app

    app = make_app(load_settings(workers={"task_soft_time_limit_s": 50, "task_time_limit_s": 70},
                                 training={"soft_time_limit_s": 5000, "time_limit_s": 5100}))
    app.finalize()
    enrol, train = app.tasks[TASK_ENROL], app.tasks[TASK_TRAIN]
    assert (app.conf.task_soft_time_limit, app.conf.task_time_limit) == (50, 70)
    assert enrol.acks_late is True
    # Training outlives the broker's visibility timeout: acknowledged on receipt, own limits.
    assert (train.acks_late, train.soft_time_limit, train.time_limit) == (False, 5000, 5100)


def test_a_parked_image_is_recorded_as_an_error_of_its_job(runtime_for, redis_client, keys, redis_url, prefix) -> None:
    from faec_rec.workers import tasks
    from faec_rec.workers.app import make_app

    app = make_app(load_settings(redis_url=redis_url, prefix=prefix))
    payload = {"job": "j1", "path": None, "key": "u9", "name": "poison.jpg"}
    tasks._identify_parked(app)([payload], {}, "its worker process died in 3 runs in a row")
    (_, fields), = redis_client.xrange(keys.job_results("j1"))
    record = json.loads(fields[b"result"])
    assert record["path"] == "poison.jpg" and record["error"].startswith("dead_lettered:")
    assert redis_client.hget(keys.job("j1"), "errors") == b"1"


def test_cluster_metrics_count_parked_tasks(redis_client, keys) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from faec_rec import metrics
    from faec_rec.workers import deadletter

    deadletter.park(redis_client, keys, task="t", task_id="a", queue="frames", args=[], kwargs={}, deliveries=4, reason="r")
    registry = CollectorRegistry()
    registry.register(metrics.RedisCollector(redis_client, keys))
    assert "faec_dead_letter_tasks 1.0" in generate_latest(registry).decode()


def test_the_python_client_lists_and_drops_parked_tasks(redis_url, prefix, redis_client, keys) -> None:
    from faec_rec.client import Client
    from faec_rec.workers import deadletter

    entry = deadletter.park(redis_client, keys, task="faec_rec.enrol", task_id="t9", queue="enrol",
                            args=[{"request_id": "r9"}], kwargs={}, deliveries=4, reason="r")
    with Client(settings=load_settings(redis_url=redis_url, prefix=prefix)) as client:
        assert [p.task_id for p in client.dead_letters()] == ["t9"]
        assert client.drop_dead_letter(entry).task == "faec_rec.enrol"
        assert client.dead_letters() == []
        with pytest.raises(KeyError):
            client.replay_dead_letter(entry)


def test_forget_erases_parked_tasks_that_name_the_person(redis_client, keys) -> None:
    from faec_rec.index.erasure import erase_person_traces
    from faec_rec.workers import deadletter

    deadletter.park(redis_client, keys, task="faec_rec.enrol", task_id="t1", queue="enrol",
                    args=[{"request_id": "r1", "name": "Ada Lovelace", "images": []}], kwargs={}, deliveries=4, reason="r")
    deadletter.park(redis_client, keys, task="faec_rec.enrol", task_id="t2", queue="enrol",
                    args=[{"request_id": "r2", "name": "Ada Lovelace Byron", "images": []}], kwargs={}, deliveries=4, reason="r")
    erased = erase_person_traces(redis_client, keys, "p-ada", ["Ada Lovelace"])
    assert erased.parked_tasks == 1
    assert [p.task_id for p in deadletter.list_parked(redis_client, keys)] == ["t2"]  # a longer name is kept
