"""Logging set-up: plain or JSON lines, with context fields (camera, task).

Every line passes :func:`redact` last, so a password inside a URL
(``redis://:secret@host``) never reaches a log, whoever logged it.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

# Attributes every LogRecord has; anything else passed via ``extra=`` is context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


# scheme://user:password@ or scheme://:password@  ->  scheme://user:***@
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter and redacts URL passwords from what it writes."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if "task_id" not in out:
            task = _current_task()
            if task is not None:
                out["task_id"], out["task"] = task.request.id, task.name
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _current_task() -> object | None:
    """The Celery task this thread is running, if Celery is loaded and a task runs."""
    state = sys.modules.get("celery._state")
    if state is None:
        return None
    task = state.get_current_task()
    return task if task is not None and getattr(task.request, "id", None) else None


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the root logger once (idempotent)."""
    handler = logging.StreamHandler()
    inner = JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("tensorflow", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
