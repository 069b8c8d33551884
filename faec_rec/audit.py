"""The audit stream: who changed what, when (enrol, rename, forget, promote, keys...).

Written by :class:`faec_rec.client.Client` (every change the CLI, the API and
the pages make goes through it) and by the key commands; read by
``faec-rec audit`` and ``GET /api/v1/audit``.
"""
from __future__ import annotations

import getpass
import json
import logging
import socket
import time
from typing import Any

from faec_rec.keys import Keys

log = logging.getLogger(__name__)

AUDIT_MAXLEN = 100_000


def default_actor() -> str:
    """``cli:<user>@<host>``: who a Client acts for when nobody says."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a container: still say where
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def record(redis: Any, keys: Keys, actor: str, action: str, **details: Any) -> str:
    """Append one entry; returns its stream id. ``details`` must be JSON-able."""
    entry = {"at": repr(time.time()), "actor": actor, "action": action,
             "details": json.dumps(_text(details), ensure_ascii=False, default=str, sort_keys=True)}
    stream_id = redis.xadd(keys.audit(), entry, maxlen=AUDIT_MAXLEN, approximate=True)
    log.info("audit %s %s %s", actor, action, entry["details"])
    return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)


def _text(value: Any) -> Any:
    """``value`` with every string valid UTF-8: a file name that is not (surrogate-escaped
    bytes) is written as ``caf\\xe9``, as reports show it (:func:`faec_rec.files.display_name`)."""
    from faec_rec.files import display_name

    if isinstance(value, str):
        return display_name(value)
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    return value


def read(redis: Any, keys: Keys, count: int = 100) -> list[dict[str, Any]]:
    """The newest ``count`` entries, newest first."""
    out = []
    for stream_id, values in redis.xrevrange(keys.audit(), count=count):
        v = {k.decode(): x.decode() for k, x in values.items()}
        out.append({"id": stream_id.decode(), "at": float(v["at"]), "actor": v["actor"], "action": v["action"],
                    "details": json.loads(v.get("details") or "{}")})
    return out
