"""A task that kills its worker process is parked after workers.max_deliveries runs,
not run forever (REAL worker process, real Redis); the dead-letter CLI handles it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from faec_rec.config import load_settings
from faec_rec.workers import deadletter
from faec_rec.workers.app import make_app
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.faults


def _runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_task_that_kills_its_worker_three_times_is_parked_not_looped(redis_url, prefix, keys, redis_client, tmp_path) -> None:
    runs = tmp_path / "runs.txt"
    worker = WorkerProcess(redis_url, prefix, tmp_path / "data", queues=("frames",), app="tests.faults.poison_app",
                           env={"FAEC_TEST_RUNS_FILE": str(runs), "FAEC_WORKERS__MAX_DELIVERIES": "3"})
    with worker:
        worker.wait_ready()
        app = make_app(load_settings(redis_url=redis_url, prefix=prefix))  # sends by task name
        app.send_task("faec_rec.test.crash", args=[{"image": "poison.jpg"}], queue="frames", task_id="poison-1")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not redis_client.xlen(keys.dead_letter()):
            assert worker.alive, worker.log_text()[-3000:]
            time.sleep(0.5)
        parked = deadletter.list_parked(redis_client, keys)
        assert len(parked) == 1, worker.log_text()[-3000:]
        # Then a healthy task still runs on the same worker, and is not counted as a death.
        app.send_task("faec_rec.test.ok", args=[{"n": 1}], queue="frames", task_id="healthy-1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ok healthy-1" not in _runs(runs):
            time.sleep(0.3)
        time.sleep(1.0)  # let its end-of-run bookkeeping land
    lines = _runs(runs)
    assert lines.count("crash poison-1") == 3, lines  # ran 3 times, then parked without a 4th run
    assert "ok healthy-1" in lines
    assert any(line.startswith("parked ") for line in lines)  # the waiter was told
    p = parked[0]
    assert (p.task, p.task_id, p.queue, p.args) == ("faec_rec.test.crash", "poison-1", "frames", [{"image": "poison.jpg"}])
    assert p.deliveries == 4 and "died in 3 runs" in p.reason
    assert not redis_client.exists(keys.deliveries("poison-1"))
    assert not redis_client.exists(keys.deliveries("healthy-1"))


def test_dead_letter_cli_lists_replays_and_drops(redis_url, prefix, keys, redis_client, monkeypatch) -> None:
    from faec_rec.cli import cli, _register_plugins

    _register_plugins()
    monkeypatch.setenv("FAEC_REDIS_URL", redis_url)
    monkeypatch.setenv("FAEC_PREFIX", prefix)
    first = deadletter.park(redis_client, keys, task="faec_rec.identify_image", task_id="t1", queue="frames",
                            args=[{"job": "j", "path": None, "key": "u1", "name": "a.jpg"}], kwargs={},
                            deliveries=4, reason="its worker process died in 3 runs in a row")
    second = deadletter.park(redis_client, keys, task="faec_rec.enrol", task_id="t2", queue="enrol",
                             args=[{"request_id": "r"}], kwargs={}, deliveries=4, reason="x")
    runner = CliRunner()
    out = runner.invoke(cli, ["tasks", "dead-letter", "list", "--json"])
    assert out.exit_code == 0, out.output
    assert [e["entry"] for e in json.loads(out.output)] == [first, second]
    out = runner.invoke(cli, ["tasks", "dead-letter", "replay", first])
    assert out.exit_code == 0, out.output
    queued = redis_client.lrange(keys.celery() + "frames", 0, -1)
    assert len(queued) == 1 and json.loads(queued[0])["headers"]["task"] == "faec_rec.identify_image"
    out = runner.invoke(cli, ["tasks", "dead-letter", "drop", second])
    assert out.exit_code == 0, out.output
    assert redis_client.xlen(keys.dead_letter()) == 0
    out = runner.invoke(cli, ["tasks", "dead-letter", "drop", second])
    assert out.exit_code == 2 and "no parked task" in out.output
