"""The one interface every sink implements, and the payload it sends.

A sink takes one event at a time and returns only once the receiver has taken it
(the MQTT broker's PUBACK, a webhook's 2xx). It raises instead:

- :class:`~faec_rec.errors.SinkUnavailable` when the whole sink is away (the broker is
  disconnected): the runner waits for it without spending the event's attempts;
- :class:`~faec_rec.errors.DeliveryRefused` when the event can never be delivered as
  configured: parked at once;
- any other exception: one failed attempt; after ``sinks.max_attempts`` the event is parked.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any


class Sink(ABC):
    """A destination for events. ``name`` names its consumer group and dead-letter stream."""

    name: str

    def start(self) -> None:
        """Connect or start background work (called once by the runner before any delivery)."""

    def wants(self, event: dict[str, Any]) -> bool:
        """False for events this sink filters out: they are acknowledged without delivery."""
        return True

    @abstractmethod
    def deliver(self, event_id: str, event: dict[str, Any]) -> None:
        """Send ``event`` (the stream's JSON object) with its stream id ``event_id``;
        return only after the receiver took it, raise otherwise."""

    def close(self) -> None:
        """Release connections and threads."""


def payload(event_id: str, event: dict[str, Any]) -> bytes:
    """The JSON body every sink sends: the event's fields plus ``event_id`` (the combined
    stream's entry id), which receivers use to drop at-least-once duplicates."""
    return json.dumps({**event, "event_id": event_id}, separators=(",", ":"), ensure_ascii=False).encode()
