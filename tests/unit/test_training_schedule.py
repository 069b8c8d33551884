"""The beat entry for scheduled retraining."""
from __future__ import annotations

import pytest

from faec_rec.config import load_settings
from faec_rec.errors import ConfigError
from faec_rec.training.schedule import ENTRY_NAME, beat_schedule


def test_beat_entry_follows_the_configured_cron():
    settings = load_settings(training={"schedule": "30 2 * * 1-5"})
    entry = beat_schedule(settings)[ENTRY_NAME]
    assert entry["task"] == "faec_rec.train_head"
    assert entry["options"]["queue"] == "train"
    sched = entry["schedule"]
    assert sched.minute == {30} and sched.hour == {2} and sched.day_of_week == {1, 2, 3, 4, 5}


def test_the_task_name_matches_the_worker_app():
    from faec_rec.workers import app

    assert beat_schedule(load_settings())[ENTRY_NAME]["task"] == app.TASK_TRAIN


@pytest.mark.parametrize("expr", ["0 3 * *", "61 3 * * *", "0 3 * * funday"])
def test_bad_cron_fails_naming_the_setting(expr):
    with pytest.raises(ConfigError, match="training.schedule"):
        beat_schedule(load_settings(training={"schedule": expr}))
