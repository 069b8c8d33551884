"""Training progress in Redis: written by a real (short) head-training run on synthetic
features, read back by the Client and the API."""
from __future__ import annotations

from typing import Any

import numpy as np

from faec_rec.training.progress import ProgressReporter, mark_queued, percent, read_progress
from faec_rec.training.retrain import TrainingLock, run
from tests.unit.test_training_retrain import _domain_features, _enrol, _reference, _settings


def test_a_run_reports_each_epoch_while_it_trains_and_its_result_at_the_end(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 30, 6)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    mark_queued(redis_client, keys, "task-1")
    assert read_progress(redis_client, keys)["state"] == "queued"
    seen: list[dict[str, Any]] = []

    def look(stage: str, done: int, total: int) -> None:  # what a poller sees at each step
        if stage == "train" and done >= 1:
            seen.append(read_progress(redis_client, keys))

    summary = run(_settings(prefix, tmp_path, max_lfw_drop=0.5), redis=redis_client, reference=_reference(rng),
                  progress=look)
    assert summary["status"] == "promoted", summary
    assert [p["epoch"] for p in seen] == list(range(1, 9)) and {p["epochs"] for p in seen} == {8}
    assert all(p["state"] == "running" and p["stage"] == "train" and np.isfinite(p["loss"]) for p in seen)
    assert [p["percent"] for p in seen] == sorted(p["percent"] for p in seen) and 30 < seen[-1]["percent"] <= 90
    final = read_progress(redis_client, keys)
    assert final["state"] == "done" and final["percent"] == 100 and final["task_id"] == "task-1"
    assert final["result"]["status"] == "promoted" and final["result"]["version"] == summary["version"]
    assert final["epochs"] == 8 and final["finished_at"] >= final["started_at"]


def test_a_run_refused_by_the_lock_leaves_the_running_ones_progress(redis_client, keys, prefix, tmp_path, rng):
    feats, labels = _domain_features(rng, 6, 4)
    _enrol(redis_client, keys, tmp_path, feats, labels)
    with TrainingLock(redis_client, keys, ttl_s=30):
        ProgressReporter(redis_client, keys).start()
        ProgressReporter(redis_client, keys)("train", 3, 8, 0.5)
        mark_queued(redis_client, keys, "task-2")  # asked again meanwhile: the running one stays
        assert run(_settings(prefix, tmp_path), redis=redis_client, reference=_reference(rng))["status"] == "skipped"
        now = read_progress(redis_client, keys)
        assert now["state"] == "running" and now["epoch"] == 3 and now["loss"] == 0.5
    # the lock gone while "running": the run died without writing its end
    dead = read_progress(redis_client, keys)
    assert dead["state"] == "failed" and "without a result" in dead["error"]


def test_a_skipped_run_says_why(redis_client, keys, prefix, tmp_path, rng):
    assert read_progress(redis_client, keys) == {"state": "idle"}
    run(_settings(prefix, tmp_path), redis=redis_client, reference=_reference(rng))
    done = read_progress(redis_client, keys)
    assert done["state"] == "skipped" and "0 people" in done["result"]["reason"]


def test_percent_runs_through_the_stages_in_order():
    marks = [percent("gallery", 0, 1), percent("reference features", 5, 10), percent("train", 1, 8),
             percent("train", 8, 8), percent("evaluate", 1, 1)]
    assert marks == sorted(marks) and marks[0] == 0 and marks[-1] == 100
