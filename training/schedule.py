"""The retraining schedule as a Celery beat entry (light: no TensorFlow import).

``faec_rec.workers.app`` merges :func:`beat_schedule` into the app's
``beat_schedule``; ``faec-rec beat`` then sends the train task on its own
"train" queue at the times of ``training.schedule`` (a five-field cron
expression, UTC). The task takes the training lock, so a run that is still
going when the next one is due makes that one a quick "skipped".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faec_rec.errors import ConfigError

if TYPE_CHECKING:
    from celery.schedules import crontab as Crontab

    from faec_rec.config import Settings

ENTRY_NAME = "faec-rec-retrain-head"
TASK_TRAIN = "faec_rec.train_head"  # = faec_rec.workers.app.TASK_TRAIN
QUEUE_TRAIN = "train"


def parse_cron(expression: str) -> "Crontab":
    """``"m h dom mon dow"`` -> celery ``crontab``; ConfigError naming the bad field."""
    from celery.schedules import crontab

    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(
            f"training.schedule {expression!r}: expected 5 cron fields (minute hour day-of-month month day-of-week)"
        )
    minute, hour, dom, month, dow = fields
    try:
        schedule = crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
        # crontab parses lazily in places; touching the sets validates every field now.
        _ = (schedule.minute, schedule.hour, schedule.day_of_month, schedule.month_of_year, schedule.day_of_week)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training.schedule {expression!r} is not a valid cron expression: {exc}") from exc
    return schedule


def beat_schedule(settings: "Settings") -> dict[str, dict[str, Any]]:
    """``{ENTRY_NAME: {"task", "schedule", "args", "options"}}`` for Celery's ``beat_schedule``."""
    return {
        ENTRY_NAME: {
            "task": TASK_TRAIN,
            "schedule": parse_cron(settings.training.schedule),
            "args": [{}],
            "options": {"queue": QUEUE_TRAIN, "expires": 3600},
        }
    }
