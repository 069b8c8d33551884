"""The gallery event stream: every change, in order, as JSON, for replicas to follow.

Events carry ids and names, never feature vectors: a replica fetches the
features of added templates from their Redis hashes, so forgetting a person
deletes their features everywhere (and their earlier events are deleted from
the stream too, see :meth:`EventLog.purge_person`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import redis

from faec_rec.keys import Keys

START = "0-0"


class EventOp(str, Enum):
    ADD = "add"          # templates added to a person (created if new): person, name, templates
    REMOVE = "remove"    # templates removed: person, templates
    RENAME = "rename"    # person, name
    FORGET = "forget"    # person and everything of theirs
    VERSION = "version"  # the gallery now serves projection `version`
    BACKBONE = "backbone"  # every template's features were replaced by backbone `version`'s


@dataclass(frozen=True)
class GalleryEvent:
    """One change to the gallery."""

    op: EventOp
    person: str | None = None
    name: str | None = None
    templates: tuple[str, ...] = field(default_factory=tuple)
    version: str | None = None

    def to_fields(self) -> dict[str, str]:
        """Stream entry fields: one ``e`` field holding a JSON object (one field parses fastest)."""
        data: dict[str, Any] = {"op": self.op.value}
        if self.person is not None:
            data["person"] = self.person
        if self.name is not None:
            data["name"] = self.name
        if self.templates:
            data["templates"] = list(self.templates)
        if self.version is not None:
            data["version"] = self.version
        return {"e": json.dumps(data, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, fields: dict[bytes | str, bytes | str]) -> GalleryEvent:
        """Inverse of :meth:`to_fields` (accepts the bytes redis-py returns)."""
        raw = fields.get(b"e", fields.get("e"))
        if raw is None:
            raise ValueError(f"gallery event without an 'e' field: {fields!r}")
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return cls(
            op=EventOp(data["op"]),
            person=data.get("person"),
            name=data.get("name"),
            templates=tuple(data.get("templates", ())),
            version=data.get("version"),
        )


def parse_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)`` for ordering."""
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def id_before(a: str, b: str) -> bool:
    """True when stream id ``a`` sorts strictly before ``b``."""
    return parse_id(a) < parse_id(b)


class EventLog:
    """Append to and read the gallery stream ``keys.gallery_events()``."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.gallery_events()

    def append(self, pipe: redis.client.Pipeline, event: GalleryEvent) -> None:
        """Queue the event on ``pipe`` (a MULTI pipeline) so it lands with the change it records."""
        pipe.xadd(self.key, event.to_fields())

    def read(self, after: str, count: int = 1000,
             pipe: redis.client.Pipeline | None = None) -> list[tuple[str, GalleryEvent]] | Any:
        """Up to ``count`` events with ids strictly after ``after``, oldest first.

        With ``pipe`` the read is only queued there; decode its reply with :meth:`parse`.
        """
        reply = (pipe or self.client).xrange(self.key, min=f"({after}" if after != START else "-", count=count)
        return reply if pipe is not None else self.parse(reply)

    @staticmethod
    def parse(entries: list) -> list[tuple[str, GalleryEvent]]:
        """Decode an XRANGE reply of the gallery stream."""
        return [(eid.decode() if isinstance(eid, bytes) else eid, GalleryEvent.from_fields(f)) for eid, f in entries]

    def last_id(self, pipe: redis.Redis | redis.client.Pipeline | None = None) -> Any:
        """Id of the newest event (``START`` when empty); queued on ``pipe`` when given."""
        return (pipe or self.client).xrevrange(self.key, count=1)

    @staticmethod
    def last_id_from(reply: list) -> str:
        """Decode :meth:`last_id`'s reply."""
        if not reply:
            return START
        eid = reply[0][0]
        return eid.decode() if isinstance(eid, bytes) else eid

    def purge_person(self, person_id: str, before: str | None = None, chunk: int = 5000) -> int:
        """Delete earlier events that name ``person_id`` (not the forget event itself).

        Replicas stay consistent: one that had not read those events yet simply
        never adds the person, and the forget event that follows removes
        nothing. Returns the number of events deleted.
        """
        deleted = 0
        cursor = "-"
        while True:
            entries = self.client.xrange(self.key, min=cursor, max=before or "+", count=chunk)
            if not entries:
                return deleted
            doomed = []
            for eid, fields in entries:
                event = GalleryEvent.from_fields(fields)
                if event.person == person_id and event.op is not EventOp.FORGET:
                    doomed.append(eid)
            if doomed:
                deleted += int(self.client.xdel(self.key, *doomed))
            last = entries[-1][0]
            cursor = "(" + (last.decode() if isinstance(last, bytes) else last)
            if len(entries) < chunk:
                return deleted
