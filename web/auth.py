"""API keys, roles, passwords and page sessions, stored in Redis.

A key is ``faec_<43 url-safe characters>`` (256 random bits); Redis holds only
its SHA-256 (a fast hash is enough for a secret that high in entropy) and the
key's record. A key may also get a password (for the login page), stored as
scrypt (n=2**14, r=8, p=1, 16-byte salt). A page login is a session: the
cookie holds 256 random bits, Redis holds the SHA-256 of it with the key id and
the session's CSRF token, for ``web.session_ttl_s``. Revoking a key ends its
sessions at their next request (each request re-reads the key's record).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from faec_rec import audit
from faec_rec.errors import AuthError, ConfigError, PermissionDenied
from faec_rec.keys import Keys

ROLES = ("viewer", "operator", "admin")
KEY_PREFIX = "faec_"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
MIN_PASSWORD = 10


def role_rank(role: str) -> int:
    return ROLES.index(role)


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    role: str
    created: float
    revoked: float | None = None
    password: str | None = None  # "scrypt$salt_hex$hash_hex"

    def public(self) -> dict[str, Any]:
        """The record without its password hash."""
        out = asdict(self)
        out["has_password"] = out.pop("password") is not None
        return out


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a key (directly, or through a page session)."""

    key_id: str
    name: str
    role: str
    via: str  # "key" or "session"
    csrf: str | None = None

    @property
    def actor(self) -> str:
        return f"web:{self.name} ({self.key_id})"

    def require(self, role: str) -> None:
        if role_rank(self.role) < role_rank(role):
            raise PermissionDenied(f"this needs the {role} role; key {self.name!r} is {self.role}")


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32, **_SCRYPT)
    return hmac.compare_digest(got.hex(), digest)


class KeyStore:
    """API keys and page sessions of one deployment."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # ---- keys ----------------------------------------------------------------
    def create(self, role: str, name: str | None = None, password: str | None = None,
               actor: str | None = None) -> tuple[KeyRecord, str]:
        """A new key: returns ``(record, secret)``; the secret is shown once, never stored."""
        if role not in ROLES:
            raise ConfigError(f"role {role!r} must be one of {', '.join(ROLES)}")
        if password is not None and len(password) < MIN_PASSWORD:
            raise ConfigError(f"a password needs at least {MIN_PASSWORD} characters")
        key_id = uuid.uuid4().hex[:12]
        name = (name or f"{role}-{key_id[:4]}").strip()[:64]
        if not name or any(not (c.isalnum() or c in "_.-@ ") for c in name):
            raise ConfigError("a key name may hold letters, digits, space and _ . - @ only")
        if any(r.name == name and r.revoked is None for r in self.list()):
            raise ConfigError(f"a key named {name!r} exists already")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(key_id, name, role, time.time(),
                           password=hash_password(password) if password is not None else None)
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.api_keys(), key_id, json.dumps(asdict(record)))
        pipe.hset(self.keys.api_key_hashes(), _sha(secret), key_id)
        pipe.execute()
        audit.record(self.redis, self.keys, actor or audit.default_actor(), "key.create",
                     key_id=key_id, name=name, role=role, password=password is not None)
        return record, secret

    def list(self) -> list[KeyRecord]:
        out = [KeyRecord(**json.loads(v)) for v in self.redis.hvals(self.keys.api_keys())]
        return sorted(out, key=lambda r: r.created)

    def get(self, key_id: str) -> KeyRecord | None:
        raw = self.redis.hget(self.keys.api_keys(), key_id)
        return KeyRecord(**json.loads(raw)) if raw else None

    def find(self, id_or_name: str) -> KeyRecord:
        for record in self.list():
            if id_or_name in (record.id, record.name) and record.revoked is None:
                return record
        raise ConfigError(f"no active key with id or name {id_or_name!r} (see `faec-rec keys list`)")

    def revoke(self, id_or_name: str, actor: str | None = None) -> KeyRecord:
        record = self.find(id_or_name)
        revoked = KeyRecord(**{**asdict(record), "revoked": time.time()})
        self.redis.hset(self.keys.api_keys(), record.id, json.dumps(asdict(revoked)))
        audit.record(self.redis, self.keys, actor or audit.default_actor(), "key.revoke",
                     key_id=record.id, name=record.name)
        return revoked

    def any_active(self) -> bool:
        return any(r.revoked is None for r in self.list())

    def _active(self, key_id: str | None) -> KeyRecord:
        record = self.get(key_id.decode() if isinstance(key_id, bytes) else key_id) if key_id else None
        if record is None:
            raise AuthError("unknown API key")
        if record.revoked is not None:
            raise AuthError("this API key was revoked")
        return record

    def by_secret(self, secret: str) -> KeyRecord:
        """The active key with this secret; raises :class:`AuthError`."""
        return self._active(self.redis.hget(self.keys.api_key_hashes(), _sha(secret)))

    def by_password(self, name: str, password: str) -> KeyRecord:
        for record in self.list():
            if record.name == name and record.revoked is None and record.password:
                if check_password(password, record.password):
                    return record
                break
        raise AuthError("wrong name or password")

    # ---- sessions --------------------------------------------------------------
    def start_session(self, record: KeyRecord, ttl_s: int) -> tuple[str, str]:
        """``(cookie value, csrf token)`` of a new page session."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        self.redis.set(self.keys.web_session(_sha(token)), json.dumps({"key_id": record.id, "csrf": csrf}), ex=ttl_s)
        audit.record(self.redis, self.keys, f"web:{record.name} ({record.id})", "login")
        return token, csrf

    def session(self, token: str) -> Principal:
        raw = self.redis.get(self.keys.web_session(_sha(token)))
        if not raw:
            raise AuthError("the session expired or was ended: log in again")
        data = json.loads(raw)
        record = self._active(data["key_id"])
        return Principal(record.id, record.name, record.role, "session", data["csrf"])

    def end_session(self, token: str) -> None:
        self.redis.delete(self.keys.web_session(_sha(token)))
