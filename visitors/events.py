"""The visitor event stream: every change to unknown faces and visitors, in order, as JSON.

Like the gallery's stream (:mod:`faec_rec.index.events`), events carry ids,
never features: a replica fetches an added face's features from its Redis
hash, so a forgotten or expired face leaves every replica when it syncs.

Ops (field ``e``, one JSON object):

* ``add``    ``face``, ``visitor`` (or null: a face that joined nothing and may
  not start a visitor), ``good`` (passes the quality gate)
* ``assign`` ``faces``, ``visitor`` (merge, split, regroup: faces move)
* ``remove`` ``faces`` (forget, expiry, naming)
* ``name``   ``visitor``, ``person`` (the visitor was named: enrolled as that person)
* ``reset``  everything before is void (regroup from scratch): replicas rebuild from Redis
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import redis

from faec_rec.keys import Keys

START = "0-0"
# Replicas behind a trim rebuild from the Redis records (VisitorService.sync).
STREAM_MAXLEN = 2_000_000


class VisitorOp(str, Enum):
    ADD = "add"
    ASSIGN = "assign"
    REMOVE = "remove"
    NAME = "name"
    RESET = "reset"


@dataclass(frozen=True)
class VisitorEvent:
    """One change to the visitors."""

    op: VisitorOp
    face: str | None = None
    faces: tuple[str, ...] = field(default_factory=tuple)
    visitor: str | None = None
    good: bool = True
    person: str | None = None
    manual: bool = False  # assign: the visitor was shaped by hand (merge/split)

    def to_fields(self) -> dict[str, str]:
        data: dict[str, Any] = {"op": self.op.value}
        if self.face is not None:
            data["face"] = self.face
            data["good"] = self.good
        if self.faces:
            data["faces"] = list(self.faces)
        if self.visitor is not None:
            data["visitor"] = self.visitor
        if self.person is not None:
            data["person"] = self.person
        if self.manual:
            data["manual"] = True
        return {"e": json.dumps(data, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[bytes | str, bytes | str]) -> VisitorEvent:
        raw = fields.get(b"e", fields.get("e"))
        if raw is None:
            raise ValueError(f"visitor event without an 'e' field: {fields!r}")
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return cls(op=VisitorOp(data["op"]), face=data.get("face"), faces=tuple(data.get("faces", ())),
                   visitor=data.get("visitor"), good=bool(data.get("good", True)), person=data.get("person"),
                   manual=bool(data.get("manual", False)))


def parse_order(stream_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)`` for ordering stream ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class VisitorLog:
    """Append to and read ``keys.visitor_events()``."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.visitor_events()

    def append(self, pipe: redis.client.Pipeline, event: VisitorEvent) -> None:
        """Queue ``event`` on a MULTI pipeline so it lands with the change it records."""
        pipe.xadd(self.key, event.to_fields(), maxlen=STREAM_MAXLEN, approximate=True)

    def read(self, after: str, count: int = 5000) -> list[tuple[str, VisitorEvent]]:
        """Up to ``count`` events strictly after ``after``, oldest first."""
        entries = self.client.xrange(self.key, min=f"({after}" if after != START else "-", count=count)
        return [(_text(eid), VisitorEvent.from_fields(f)) for eid, f in entries]

    def first_id(self) -> str | None:
        reply = self.client.xrange(self.key, count=1)
        return _text(reply[0][0]) if reply else None

    def last_id(self, client: Any = None) -> str:
        """Id of the newest event (``START`` when empty); ``client`` may be a watching pipeline."""
        reply = (client or self.client).xrevrange(self.key, count=1)
        return _text(reply[0][0]) if reply else START
