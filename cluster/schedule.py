"""The retention sweep as a Celery beat entry (light: imported by every app's config)."""
from __future__ import annotations

from typing import Any

ENTRY_NAME = "faec-rec-retention-sweep"
TASK_RETENTION = "faec_rec.retention_sweep"  # = faec_rec.workers.app.TASK_RETENTION


def retention_beat(settings: Any) -> dict[str, dict[str, Any]]:
    """``{ENTRY_NAME: entry}`` at ``retention.sweep_schedule`` (cron, UTC); empty when unset."""
    expression = settings.retention.sweep_schedule.strip()
    if not expression:
        return {}
    from faec_rec.errors import ConfigError
    from faec_rec.training.schedule import parse_cron

    try:
        schedule = parse_cron(expression)
    except ConfigError as exc:
        raise ConfigError(f"retention.sweep_schedule: {exc}") from exc
    return {ENTRY_NAME: {"task": TASK_RETENTION, "schedule": schedule, "args": [{}],
                         "options": {"queue": "enrol", "expires": 3600}}}
