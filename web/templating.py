"""The Jinja2 environment of the pages (autoescaping on: every value is HTML-escaped)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi.templating import Jinja2Templates

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


def _pct(value: object) -> str:
    return f"{float(value) * 100:.2f} %" if isinstance(value, (int, float)) else "-"


templates.env.filters["when"] = _when
templates.env.filters["pct"] = _pct
