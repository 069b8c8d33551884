"""Limits counted in Redis, so they hold across every server process: request rates per
key (a token bucket) and failed logins per account name and per client address (a lockout
that doubles with each further failure).

Both are one Lua script call each (atomic, one round trip), on Redis's own clock.
"""
from __future__ import annotations

import hashlib
from typing import Any

from faec_rec.config import WebConfig
from faec_rec.errors import RateLimited
from faec_rec.keys import Keys

# KEYS[1] bucket hash. ARGV: rate/s, burst. Returns {allowed 0/1, ms until a token}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(v[1]), tonumber(v[2])
if tokens == nil then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + 1) * 1000))
if allowed == 1 then return {1, 0} end
return {0, math.ceil((1 - tokens) / rate * 1000)}
"""

# KEYS: failure hashes (account, address; either may be absent). Returns the longest
# remaining lock in ms (0 = not locked).
_LOCKED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local wait = 0
for i, key in ipairs(KEYS) do
  local until_ = tonumber(redis.call('HGET', key, 'locked_until') or '0')
  if until_ > now then wait = math.max(wait, until_ - now) end
end
return math.ceil(wait * 1000)
"""

# KEYS: failure hashes; ARGV: for each key its threshold, then base s, max s, window s.
# Counts one failure on each; a key at or past its threshold is locked for
# base * 2^(count - threshold), capped. Returns the longest lock in ms.
_FAIL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = #KEYS
local base, cap, window = tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2]), tonumber(ARGV[n + 3])
local wait = 0
for i, key in ipairs(KEYS) do
  local count = redis.call('HINCRBY', key, 'count', 1)
  local threshold = tonumber(ARGV[i])
  if count >= threshold then
    local lock = math.min(cap, base * 2 ^ (count - threshold))
    redis.call('HSET', key, 'locked_until', tostring(now + lock))
    wait = math.max(wait, lock)
  end
  redis.call('EXPIRE', key, math.ceil(math.max(window, wait + 1)))
end
return math.ceil(wait * 1000)
"""


def _subject(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    """A token bucket per key (``rate`` per second, ``burst`` at once) in Redis."""

    def __init__(self, redis: Any, keys: Keys, rate: float, burst: int) -> None:
        self.redis, self.keys = redis, keys
        self.rate, self.burst = rate, burst
        self._take = redis.register_script(_TAKE)

    def take(self, who: str) -> None:
        """Spend one token of ``who`` (a key id); raises :class:`RateLimited` when none is left."""
        allowed, wait_ms = self._take(keys=[self.keys.web_rate(who)], args=[self.rate, self.burst])
        if not int(allowed):
            raise RateLimited(f"more than {self.rate:g} requests/s from this key: slow down",
                              retry_after=int(wait_ms) / 1000)


class LoginGuard:
    """Failed page logins, per account name and per client address, with a growing lockout."""

    def __init__(self, redis: Any, keys: Keys, config: WebConfig) -> None:
        self.redis, self.keys, self.config = redis, keys, config
        self._locked = redis.register_script(_LOCKED)
        self._fail = redis.register_script(_FAIL)

    def _keys(self, name: str | None, address: str | None) -> list[tuple[str, int]]:
        out = []
        if name:
            out.append((self.keys.login_failures("account", _subject(name)), self.config.login_failures_per_account))
        if address:
            out.append((self.keys.login_failures("address", _subject(address)), self.config.login_failures_per_address))
        return out

    def check(self, name: str | None, address: str | None) -> None:
        """Raise :class:`RateLimited` while the account or the address is locked out
        (checked before the password, so a locked account cannot be guessed at)."""
        pairs = self._keys(name, address)
        wait_ms = int(self._locked(keys=[k for k, _ in pairs], args=[])) if pairs else 0
        if wait_ms:
            raise RateLimited(f"too many failed logins: try again in {_duration(wait_ms / 1000)}",
                              retry_after=wait_ms / 1000)

    def failed(self, name: str | None, address: str | None) -> float:
        """Count one failure; returns the lockout it started (s, 0 if none)."""
        pairs = self._keys(name, address)
        if not pairs:
            return 0.0
        c = self.config
        args = [t for _, t in pairs] + [c.login_lockout_s, c.login_lockout_max_s, c.login_failure_window_s]
        return int(self._fail(keys=[k for k, _ in pairs], args=args)) / 1000

    def succeeded(self, name: str | None) -> None:
        """A good login clears its account's failures (the address's count runs out by itself)."""
        if name:
            self.redis.delete(self.keys.login_failures("account", _subject(name)))


def _duration(seconds: float) -> str:
    seconds = max(1, round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{round(seconds / 60)} min"
