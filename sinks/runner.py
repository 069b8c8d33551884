"""The sink runner: follow the combined events stream and deliver every event to every sink.

Progress is kept **per sink**: each sink has its own consumer group
(``keys.sink_group(name)``) on ``keys.events()``. That gives each sink its own
acknowledgements and its own pending list for free, so a webhook that is down (events
pending in its group, retried with backoff) never holds up MQTT, and a runner that
restarts resumes every sink exactly where that sink stopped. One thread per sink.

Per sink, per event:

1. read: first this consumer's own pending entries (a restart resumes them at once),
   then entries idle for ``sinks.claim_idle_ms`` in *other* consumers (``XAUTOCLAIM``:
   a runner that died), then new entries (``XREADGROUP >``, blocking);
2. parse: an entry that is not a JSON object is logged, counted (``malformed``) and
   parked in the sink's dead-letter stream;
3. deliver: :meth:`Sink.deliver`; on failure retry with exponential backoff and jitter;
   :class:`SinkUnavailable` (the broker is away) waits without spending attempts;
4. acknowledge (``XACK``) after delivery, or park after ``sinks.max_attempts`` failed
   attempts (``XADD`` to the dead-letter stream and ``XACK`` in one transaction).

Delivery is at least once: a runner killed between a delivery and its ``XACK`` delivers
that event again after the restart. Every delivery carries the event id for receivers
to drop duplicates. Several runners (distinct ``--consumer`` names) share the work.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from faec_rec.config import SinksConfig
from faec_rec.errors import DeliveryRefused, SinkUnavailable
from faec_rec.keys import Keys
from faec_rec.sinks.base import Sink

log = logging.getLogger(__name__)

EVENT_FIELD = b"event"  # workers.events.EVENT_FIELD, as the bytes redis-py returns


# ---- counters ---------------------------------------------------------------------

class Outcome:
    """Counter names: ``<prefix>:sinks:stats`` holds ``<sink>:<outcome>``."""

    DELIVERED = "delivered"
    FAILED = "failed_attempts"
    UNAVAILABLE = "unavailable_waits"
    DEAD_LETTERED = "dead_lettered"
    MALFORMED = "malformed"
    REFUSED = "refused"
    FILTERED = "filtered"
    RECLAIMED = "reclaimed"
    DELETED = "deleted"  # gone from the stream before delivery: trimmed, or erased by a forget
    REPLAYED = "replayed"


_prom: dict[str, Any] = {}
_prom_lock = threading.Lock()


def _prometheus() -> dict[str, Any]:
    """Counters and a histogram in the process's metrics registry, built on first use."""
    if not _prom:
        with _prom_lock:
            if not _prom:
                from prometheus_client import Counter, Histogram

                from faec_rec.metrics import get_metrics

                r = get_metrics().registry
                _prom["events"] = Counter("faec_sink_events", "Events handled by a sink, by outcome",
                                          ["sink", "outcome"], registry=r)
                _prom["latency"] = Histogram(
                    "faec_sink_delivery_seconds", "Seconds from an event's arrival in the stream to its delivery",
                    ["sink"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                    registry=r)
    return _prom


def count(redis: Any, keys: Keys, sink: str, outcome: str, n: int = 1) -> None:
    """Count ``n`` events of ``sink`` with ``outcome`` in Redis (shared by every runner) and
    in this process's Prometheus metrics. A Redis error here is logged, never raised."""
    _prometheus()["events"].labels(sink=sink, outcome=outcome).inc(n)
    try:
        redis.hincrby(keys.sink_stats(), f"{sink}:{outcome}", n)
    except Exception as exc:  # noqa: BLE001 (a counter must not stop delivery)
        log.warning("could not count %s:%s in Redis: %s", sink, outcome, exc)


def stats(redis: Any, keys: Keys) -> dict[str, dict[str, int]]:
    """``{sink: {outcome: n}}`` from Redis."""
    out: dict[str, dict[str, int]] = {}
    for field, value in redis.hgetall(keys.sink_stats()).items():
        sink, _, outcome = (field.decode() if isinstance(field, bytes) else field).rpartition(":")
        out.setdefault(sink, {})[outcome] = int(value)
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_age_s(entry_id: str, now: float) -> float:
    return max(0.0, now - int(entry_id.partition("-")[0]) / 1000.0)


def ensure_group(redis: Any, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` at its end (a new sink gets events from now on)."""
    import redis as redis_lib

    try:
        redis.xgroup_create(stream, group, id="$", mkstream=True)
        log.info("created consumer group %s on %s", group, stream)
    except redis_lib.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def default_consumer() -> str:
    """This runner's consumer name: the host name, so a restarted runner finds its own pending
    events at once. Runners sharing a host need distinct ``--consumer`` names."""
    return socket.gethostname()[:64] or "sinks"


# ---- one sink ---------------------------------------------------------------------

@dataclass
class _Entry:
    entry_id: str
    raw: bytes | None
    deleted: bool = False  # the stream entry itself is gone (pending entries only)


class SinkWorker(threading.Thread):
    """Delivers the combined stream to one sink; see the module docstring for the steps."""

    def __init__(self, sink: Sink, redis: Any, keys: Keys, settings: SinksConfig, consumer: str,
                 stop: threading.Event) -> None:
        super().__init__(name=f"sink-{sink.name}", daemon=True)
        self.sink = sink
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.consumer = consumer
        self.stop_event = stop
        self.stream = keys.events()
        self.group = keys.sink_group(sink.name)
        self.dead_letter = keys.sink_dead_letter(sink.name)
        self._own_pending = True  # start with what this consumer held when it stopped
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self.crashed: BaseException | None = None

    # named steps ------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.sink.start()
            while not self.stop_event.is_set():
                try:
                    for entry in self._read():
                        if self.stop_event.is_set():
                            break
                        self.handle(entry)
                except Exception as exc:  # noqa: BLE001 (Redis away: wait, then go on)
                    if self.stop_event.is_set():
                        break
                    log.error("sink %s: reading the events stream failed: %s; retrying", self.sink.name, exc)
                    self._own_pending = True  # an entry delivered but not acknowledged goes again
                    self.stop_event.wait(self.settings.backoff_base_s)
        except BaseException as exc:  # pragma: no cover (reported by the runner)
            self.crashed = exc
            log.exception("sink %s stopped", self.sink.name)
        finally:
            try:
                self.sink.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("sink %s: close failed: %s", self.sink.name, exc)

    def _read(self) -> list[_Entry]:
        ensure = self._own_pending or time.monotonic() >= self._next_claim
        if ensure:
            ensure_group(self.redis, self.stream, self.group)
        if self._own_pending:
            entries = self._parse(self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"},
                                                        count=self.settings.batch))
            if entries:
                log.info("sink %s: resuming %d pending events", self.sink.name, len(entries))
                return entries
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            claimed = self._claim()
            if claimed:
                return claimed
        return self._parse(self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                                 count=self.settings.batch, block=self.settings.block_ms))

    def _claim(self) -> list[_Entry]:
        """Take over entries another (dead) consumer left pending for ``claim_idle_ms``."""
        reply = self.redis.xautoclaim(self.stream, self.group, self.consumer, self.settings.claim_idle_ms,
                                      start_id=self._claim_cursor, count=self.settings.batch)
        cursor, raw_entries = _text(reply[0]), reply[1]
        self._claim_cursor = cursor
        if cursor == "0-0":
            self._next_claim = time.monotonic() + self.settings.claim_idle_ms / 2000.0
        # A claimed entry whose data was trimmed away is dropped from the pending list by
        # Redis itself (reply[2]): nothing left to deliver.
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            log.warning("sink %s: %d pending events left the stream before delivery (trimmed: raise "
                        "events.stream_maxlen; or erased when their person was forgotten)", self.sink.name, len(deleted))
            count(self.redis, self.keys, self.sink.name, Outcome.DELETED, len(deleted))
        entries = [_Entry(_text(eid), (fields or {}).get(EVENT_FIELD), deleted=not fields) for eid, fields in raw_entries]
        if entries:
            log.warning("sink %s: reclaimed %d events left pending by another runner", self.sink.name, len(entries))
            count(self.redis, self.keys, self.sink.name, Outcome.RECLAIMED, len(entries))
        return entries

    @staticmethod
    def _parse(reply: Any) -> list[_Entry]:
        if not reply:
            return []
        _stream, entries = reply[0]
        return [_Entry(_text(eid), (fields or {}).get(EVENT_FIELD), deleted=not fields) for eid, fields in entries]

    def handle(self, entry: _Entry) -> None:
        """Deliver one entry (with retries), then acknowledge or park it."""
        if entry.raw is None and entry.deleted:
            # A pending entry whose data is gone (XDEL by a forget, or trimmed): nothing to send.
            log.warning("sink %s: event %s left the stream before delivery (erased or trimmed)",
                        self.sink.name, entry.entry_id)
            self.redis.xack(self.stream, self.group, entry.entry_id)
            count(self.redis, self.keys, self.sink.name, Outcome.DELETED)
            return
        event = _decode(entry.raw)
        if event is None:
            log.error("sink %s: stream entry %s is not a JSON event object (%r); parked in %s",
                      self.sink.name, entry.entry_id, (entry.raw or b"")[:80], self.dead_letter)
            count(self.redis, self.keys, self.sink.name, Outcome.MALFORMED)
            self.park(entry, "malformed: not a JSON object", 0)
            return
        if not self.sink.wants(event):
            self.redis.xack(self.stream, self.group, entry.entry_id)
            count(self.redis, self.keys, self.sink.name, Outcome.FILTERED)
            return
        attempts = 0
        waits = 0
        while not self.stop_event.is_set():
            try:
                self.sink.deliver(entry.entry_id, event)
            except SinkUnavailable as exc:
                waits += 1
                if waits == 1 or waits % 10 == 0:
                    log.warning("sink %s unavailable (%s); event %s waits", self.sink.name, exc, entry.entry_id)
                count(self.redis, self.keys, self.sink.name, Outcome.UNAVAILABLE)
                # deliver() itself waited for the sink to come back: retry soon, so a broker
                # that returns is used within a second, not after a grown backoff
                self.stop_event.wait(self._delay(1))
                continue
            except DeliveryRefused as exc:
                log.error("sink %s refused event %s: %s; parked", self.sink.name, entry.entry_id, exc)
                count(self.redis, self.keys, self.sink.name, Outcome.REFUSED)
                self.park(entry, f"refused: {exc}", attempts + 1)
                return
            except Exception as exc:  # noqa: BLE001 (any failure is one attempt)
                attempts += 1
                count(self.redis, self.keys, self.sink.name, Outcome.FAILED)
                if attempts >= self.settings.max_attempts:
                    log.error("sink %s: event %s failed %d times (last: %s); parked in %s",
                              self.sink.name, entry.entry_id, attempts, exc, self.dead_letter)
                    self.park(entry, f"{type(exc).__name__}: {exc}", attempts)
                    return
                log.warning("sink %s: event %s attempt %d failed: %s", self.sink.name, entry.entry_id, attempts, exc)
                self.stop_event.wait(self._delay(attempts))
                continue
            self.redis.xack(self.stream, self.group, entry.entry_id)
            count(self.redis, self.keys, self.sink.name, Outcome.DELIVERED)
            _prometheus()["latency"].labels(sink=self.sink.name).observe(_stream_age_s(entry.entry_id, time.time()))
            return
        # stopping: the entry stays pending and is resumed by the next start

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random (never a thundering herd)."""
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** min(attempt - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def park(self, entry: _Entry, error: str, attempts: int) -> None:
        """Move the entry to the dead-letter stream and acknowledge it, in one transaction."""
        park(self.redis, self.keys, self.sink.name, entry.entry_id, entry.raw, error, attempts,
             self.settings.dead_letter_maxlen)
        count(self.redis, self.keys, self.sink.name, Outcome.DEAD_LETTERED)


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


# ---- dead letters -----------------------------------------------------------------

def park(redis: Any, keys: Keys, sink: str, entry_id: str, raw: bytes | None, error: str, attempts: int,
         maxlen: int) -> None:
    """``XADD`` the event to ``sink``'s dead-letter stream and ``XACK`` it in its group."""
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(keys.sink_dead_letter(sink), {
        "event_id": entry_id, "event": raw if raw is not None else b"", "error": error[:500],
        "attempts": attempts, "parked_at": f"{time.time():.3f}",
    }, maxlen=maxlen, approximate=True)
    pipe.xack(keys.events(), keys.sink_group(sink), entry_id)
    pipe.execute()


def dead_letters(redis: Any, keys: Keys, sink: str, count_: int = 100, after: str = "-") -> list[dict[str, Any]]:
    """Parked events of ``sink``, oldest first: ``{id, event_id, event, error, attempts, parked_at}``."""
    out = []
    for dl_id, fields in redis.xrange(keys.sink_dead_letter(sink), min=after, count=count_):
        f = {_text(k): v for k, v in fields.items()}
        raw = f.get("event", b"")
        out.append({
            "id": _text(dl_id), "event_id": _text(f.get("event_id", b"")),
            "event": _decode(raw) if _decode(raw) is not None else _text(raw),
            "error": _text(f.get("error", b"")), "attempts": int(f.get("attempts", 0)),
            "parked_at": float(f.get("parked_at", 0)),
        })
    return out


def replay(redis: Any, keys: Keys, sink: Sink, ids: Sequence[str] = (), limit: int = 1000) -> tuple[int, list[str]]:
    """Deliver parked events of ``sink`` again (one attempt each), removing each one that
    was delivered from the dead-letter stream. ``ids`` (dead-letter ids) picks some; empty =
    the oldest ``limit``. Returns (delivered, ["<id>: <reason>" for those still parked])."""
    wanted = set(ids)
    delivered, failed = 0, []
    for item in dead_letters(redis, keys, sink.name, count_=limit if not wanted else 1_000_000):
        if wanted and item["id"] not in wanted:
            continue
        event = item["event"]
        if not isinstance(event, dict):
            failed.append(f"{item['id']}: not a JSON event, cannot be replayed")
            continue
        try:
            if sink.wants(event):
                sink.deliver(item["event_id"], event)
        except Exception as exc:  # noqa: BLE001 (reported per event)
            failed.append(f"{item['id']}: {exc}")
            continue
        redis.xdel(keys.sink_dead_letter(sink.name), item["id"])
        delivered += 1
        count(redis, keys, sink.name, Outcome.REPLAYED)
    return delivered, failed


# ---- the runner -------------------------------------------------------------------

class SinkRunner:
    """One :class:`SinkWorker` thread per sink; :meth:`run` until :meth:`stop`."""

    def __init__(self, redis: Any, keys: Keys, settings: SinksConfig, sinks: Iterable[Sink],
                 consumer: str | None = None) -> None:
        self.sinks = list(sinks)
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.stop_event = threading.Event()
        self.consumer = consumer or default_consumer()
        self.workers = [SinkWorker(s, redis, keys, settings, self.consumer, self.stop_event) for s in self.sinks]

    def start(self) -> "SinkRunner":
        # Groups exist before start() returns: an event published after it is never missed.
        for worker in self.workers:
            ensure_group(worker.redis, worker.stream, worker.group)
        for worker in self.workers:
            worker.start()
        log.info("sink runner %s delivering to %s", self.consumer, ", ".join(s.name for s in self.sinks))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        for worker in self.workers:
            worker.join(timeout)

    def run(self) -> None:
        """Start and block until :meth:`stop` (another thread or a signal handler) is called."""
        self.start()
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()

    def __enter__(self) -> "SinkRunner":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
