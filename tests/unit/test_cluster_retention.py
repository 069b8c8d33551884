"""The retention sweep on the real Redis: after a sweep nothing older than each
limit remains, everything newer does, and what was removed is recorded."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from faec_rec.cluster.retention import STEPS, register_step, stats, sweep
from faec_rec.config import load_settings

DAY = 86_400


def _ids(redis, key) -> list[int]:
    return [int(eid.split(b"-")[0]) for eid, _ in redis.xrange(key)]


def test_sweep_leaves_nothing_older_than_the_limits(redis_client, keys, tmp_path: Path) -> None:
    r = redis_client
    now = time.time()
    settings = load_settings(prefix=keys.prefix, data_dir=tmp_path, retention={
        "events_days": 2, "event_features_days": 1, "job_results_days": 1, "enrolment_reports_days": 1,
        "feedback_days": 3, "crops_days": 1, "snapshots_days": 1})
    ms = lambda days_ago: int((now - days_ago * DAY) * 1000)  # noqa: E731
    # events: combined and per camera, 5 old (3-7 days) and 3 recent (< 1 day)
    r.sadd(keys.cameras(), "door")
    for key in (keys.events(), keys.events("door"), keys.events("yard")):  # "yard" is not in the cameras set
        for i, age in enumerate([7, 6, 5, 4, 3, 0.9, 0.5, 0.1]):
            r.xadd(key, {"event": "{}"}, id=f"{ms(age)}-{i}")
    # event features: written with a 7-day TTL; ages 2 days (goes) and 1 hour (stays)
    ttl = settings.events.features_ttl_s
    r.set(keys.event_features("door", 1, 0), b"x" * 512, ex=ttl - 2 * DAY)
    r.set(keys.event_features("door", 2, 0), b"x" * 512, ex=ttl - 3600)
    # jobs: one of 2 days, one of 1 hour, each with a result stream
    for job, age in (("old", 2), ("new", 1 / 24)):
        r.hset(keys.job(job), mapping={"total": 1, "created_at": repr(now - age * DAY)})
        r.xadd(keys.job_results(job), {"result": "{}"}, id=f"{ms(age)}-0")
    # enrolment reports
    for rid, age in (("old", 2), ("new", 0.1)):
        r.hset(keys.enrolment(rid), mapping={"status": "done", "started_at": repr(now - age * DAY),
                                             "report": json.dumps({"finished_at": now - age * DAY})})
    # feedback: 4 and 2 days old
    for i, age in enumerate([4, 2]):
        r.xadd(keys.feedback(), {"feedback": "{}"}, id=f"{ms(age)}-{i}")
    # crops: an old orphan, a recent orphan, an old crop whose template lives
    crops = tmp_path / "crops" / "p1"
    crops.mkdir(parents=True)
    for name, age in (("orphan-old", 2), ("orphan-new", 0.1), ("kept", 2)):
        path = crops / f"{name}.jpg"
        path.write_bytes(b"jpeg")
        os.utime(path, (now - age * DAY, now - age * DAY))
    r.hset(keys.template("kept"), "person", "p1")
    # snapshots: the newest stays whatever its age
    snaps = tmp_path / "snapshots" / keys.prefix
    snaps.mkdir(parents=True)
    for i, age in enumerate([3, 2, 1.5]):
        path = snaps / f"snapshot-{ms(age):013d}-{i:06d}.npz"
        np.savez(path, a=np.zeros(1))
        os.utime(path, (now - age * DAY, now - age * DAY))

    removed = sweep(r, keys, settings, now=now)

    assert removed == {"events": 15, "event_features": 1, "job_results": 2, "enrolment_reports": 1,
                       "feedback": 1, "crops": 1, "snapshots": 2}
    for key in (keys.events(), keys.events("door"), keys.events("yard")):
        assert all(t >= ms(2) for t in _ids(r, key)) and len(_ids(r, key)) == 3
    assert not r.exists(keys.event_features("door", 1, 0)) and r.exists(keys.event_features("door", 2, 0))
    assert not r.exists(keys.job("old")) and not r.exists(keys.job_results("old"))
    assert r.exists(keys.job("new")) and r.exists(keys.job_results("new"))
    assert not r.exists(keys.enrolment("old")) and r.exists(keys.enrolment("new"))
    assert _ids(r, keys.feedback()) == [ms(2)]
    assert sorted(p.stem for p in crops.glob("*.jpg")) == ["kept", "orphan-new"]
    assert len(list(snaps.glob("*.npz"))) == 1
    recorded = stats(r, keys)
    assert recorded["events:total"] == "15" and recorded["events:last"] == "15"

    # a second sweep removes nothing more
    again = sweep(r, keys, settings, now=now)
    assert set(again.values()) == {0}
    assert stats(r, keys)["events:total"] == "15" and stats(r, keys)["events:last"] == "0"


def test_other_parts_add_steps_and_a_failing_step_does_not_stop_the_sweep(redis_client, keys, tmp_path) -> None:
    settings = load_settings(prefix=keys.prefix, data_dir=tmp_path)
    calls = []

    def broken(ctx) -> int:
        raise RuntimeError("boom")

    register_step("test_unknown_faces", lambda ctx: calls.append(ctx.now) or 4)
    register_step("test_broken", broken)
    try:
        removed = sweep(redis_client, keys, settings, now=1000.0)
    finally:
        STEPS.pop("test_unknown_faces")
        STEPS.pop("test_broken")
    assert calls == [1000.0] and removed["test_unknown_faces"] == 4 and removed["test_broken"] == -1
    assert removed["events"] == 0


def test_the_beat_schedule_sends_the_sweep(redis_client, keys, tmp_path) -> None:
    from faec_rec.workers.app import ROUTES, TASK_RETENTION, celery_config

    conf = celery_config(load_settings(prefix=keys.prefix, data_dir=tmp_path))
    entry = conf["beat_schedule"]["faec-rec-retention-sweep"]
    assert entry["task"] == TASK_RETENTION and entry["options"]["queue"] == ROUTES[TASK_RETENTION]["queue"]
    off = celery_config(load_settings(prefix=keys.prefix, data_dir=tmp_path, retention={"sweep_schedule": ""}))
    assert "faec-rec-retention-sweep" not in off["beat_schedule"]


def test_the_command_sweeps_and_reports(redis_url, redis_client, keys, tmp_path, monkeypatch) -> None:
    import json as json_lib

    from click.testing import CliRunner

    from faec_rec.cli import _register_plugins, cli

    _register_plugins()
    old = int((time.time() - 40 * DAY) * 1000)
    redis_client.xadd(keys.events(), {"event": "{}"}, id=f"{old}-0")
    redis_client.xadd(keys.events(), {"event": "{}"})
    for name, value in (("FAEC_REDIS_URL", redis_url), ("FAEC_PREFIX", keys.prefix), ("FAEC_DATA_DIR", str(tmp_path))):
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    done = runner.invoke(cli, ["retention", "sweep", "--step", "events"])
    assert done.exit_code == 0, done.output
    assert json_lib.loads(done.stdout)["events"] == 1 and redis_client.xlen(keys.events()) == 1
    bad = runner.invoke(cli, ["retention", "sweep", "--step", "nope"])
    assert bad.exit_code == 2 and "no retention step 'nope'" in bad.output
    shown = runner.invoke(cli, ["retention", "stats"])
    assert json_lib.loads(shown.stdout)["events:total"] == "1"
