"""A processed frame's writes in one request: tracker state, events, camera counters.

The frame path used to write them in turn (WATCH, read, MULTI/EXEC of the tracker
state, the events' pipeline, the counters' transaction): a round trip each, which a
Redis link with 50 ms each way turned into seconds per frame (README, Operations).
:data:`COMMIT_SCRIPT` does it at once, atomically, on the server:

1. the tracker state must still be at the revision the plan was made from
   (:meth:`~faec_rec.workers.tracker.TrackStore.plan`), else nothing is written and
   the caller reads again and plans again (optimistic concurrency, as WATCH gave);
2. every person the state named before the frame must still be enrolled, else nothing
   is written and the caller plans again with them forgotten;
3. then: the state and its revision, each event on the camera's stream, the combined
   stream and the channel (capped as :func:`~faec_rec.workers.events.publish_many`
   caps them), the counters and the latency histogram, and the frame key deleted.

Capture-to-event latency is measured with the server's clock when the events are
written (``TIME``), not the worker's when its reply comes back.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from faec_rec.keys import Keys
from faec_rec.workers.events import XADD_BOTH_LUA

log = logging.getLogger(__name__)

COMMITTED, CONFLICT, FORGOTTEN = 1, 0, 2

COMMIT_SCRIPT = XADD_BOTH_LUA + """
redis.replicate_commands()  -- TIME before writes (Redis < 7 replicates scripts verbatim otherwise)
local rev = redis.call('HGET', KEYS[1], 'rev') or ''
if rev ~= ARGV[1] then return {0} end
local i = 8
local n_edges = tonumber(ARGV[i]); local edges_at = i + 1; i = i + n_edges + 1
local n_held = tonumber(ARGV[i]); local held_at = i + 1; i = i + n_held + 1
if n_held > 0 then
  local flags = redis.call('SMISMEMBER', KEYS[2], unpack(ARGV, held_at, held_at + n_held - 1))
  local missing = {}
  for j = 1, n_held do
    if flags[j] == 0 then missing[#missing + 1] = ARGV[held_at + j - 1] end
  end
  if #missing > 0 then return {2, unpack(missing)} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
local n_events = tonumber(ARGV[i])
for j = i + 1, i + n_events do
  xadd_both(KEYS[6], KEYS[5], ARGV[4], ARGV[j])
  redis.call('PUBLISH', ARGV[5], ARGV[j])
end
local t = redis.call('TIME')
local ms = (tonumber(t[1]) + tonumber(t[2]) / 1000000 - tonumber(ARGV[6])) * 1000
if ms < 0 then ms = 0 end
local field = 'latency_ms_le_inf'
for j = edges_at, edges_at + n_edges - 1 do
  if ms <= tonumber(ARGV[j]) then field = 'latency_ms_le_' .. ARGV[j]; break end
end
redis.call('HINCRBY', KEYS[3], 'processed', 1)
redis.call('HINCRBY', KEYS[3], 'faces', tonumber(ARGV[7]))
redis.call('HINCRBY', KEYS[3], field, 1)
redis.call('HINCRBYFLOAT', KEYS[3], 'latency_ms_sum', string.format('%.3f', ms))
redis.call('DEL', KEYS[4])
return {1, string.format('%.3f', ms)}
"""


@dataclass(frozen=True)
class CommitResult:
    """``status``: COMMITTED, CONFLICT (the state moved on) or FORGOTTEN (``forgotten`` holds
    the person ids no longer enrolled); ``latency_ms``: capture to write, when committed."""

    status: int
    latency_ms: float | None = None
    forgotten: tuple[str, ...] = ()


def queue_commit(pipe: Any, keys: Keys, *, camera: str, frame_key: str, plan: Any, events: Sequence[Any],
                 captured_at: float, faces: int, maxlen: int, updated_at: float,
                 latency_edges_ms: Sequence[int]) -> None:
    """Queue the commit of ``plan`` (a :class:`~faec_rec.workers.tracker.TrackPlan`) with
    ``events`` (the plan's, with snapshots and visitors filled in) as the last command on
    ``pipe``; read its reply with :func:`parse_commit`."""
    args: list[Any] = [plan.rev, plan.state, repr(updated_at), int(maxlen), keys.events_channel(),
                       repr(float(captured_at)), int(faces)]
    args += [len(latency_edges_ms), *(str(e) for e in latency_edges_ms)]
    args += [len(plan.held), *plan.held]
    args += [len(events), *(e.dumps() for e in events)]
    pipe.eval(COMMIT_SCRIPT, 6, keys.tracks(camera), keys.people(), keys.camera_stats(camera), frame_key,
              keys.events(camera), keys.events(), *args)


def parse_commit(reply: Any) -> CommitResult:
    """The :class:`CommitResult` of :func:`queue_commit`'s reply (an error reply is raised)."""
    if isinstance(reply, Exception):
        raise reply
    status = int(reply[0])
    if status == COMMITTED:
        ms = reply[1]
        return CommitResult(COMMITTED, float(ms.decode() if isinstance(ms, bytes) else ms))
    if status == FORGOTTEN:
        return CommitResult(FORGOTTEN, forgotten=tuple(v.decode() if isinstance(v, bytes) else str(v)
                                                       for v in reply[1:]))
    return CommitResult(CONFLICT)
