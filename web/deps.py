"""Typed dependencies: who is asking (one resolver for keys and sessions), their role, and
the :class:`~faec_rec.client.Client` acting for them (so every change is audited as them)."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from faec_rec.client import Client
from faec_rec.config import Settings
from faec_rec.errors import AuthError, CsrfError
from faec_rec.web.auth import KeyStore, Principal

SESSION_COOKIE = "faec_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_keystore(request: Request) -> KeyStore:
    return request.app.state.keystore


def principal(request: Request) -> Principal:
    """The caller: a Bearer key, else a page session (whose changes need the CSRF token).

    Raises :class:`AuthError` (401), :class:`CsrfError` (403), :class:`RateLimited` (429).
    """
    store: KeyStore = request.app.state.keystore
    header = request.headers.get("authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthError("send the key as 'Authorization: Bearer <key>'")
        record = store.by_secret(secret.strip())
        who = Principal(record.id, record.name, record.role, "key")
    else:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            raise AuthError("no credentials: send 'Authorization: Bearer <key>' or log in at /login")
        who = store.session(token)
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not (sent and who.csrf and hmac.compare_digest(sent, who.csrf)):
                raise CsrfError("missing or wrong CSRF token (X-CSRF-Token header): reload the page")
    request.app.state.limiter.take(who.key_id)
    request.state.principal = who
    return who


def _role(role: str):  # noqa: ANN202 - a dependency factory
    def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        who.require(role)
        return who

    check.__name__ = f"require_{role}"
    return check


def acting_client(request: Request, who: Annotated[Principal, Depends(principal)]) -> Client:
    """The server's Client acting (and audited) as the caller."""
    return request.app.state.client.as_actor(who.actor)


Viewer = Annotated[Principal, Depends(_role("viewer"))]
Operator = Annotated[Principal, Depends(_role("operator"))]
Admin = Annotated[Principal, Depends(_role("admin"))]
ClientDep = Annotated[Client, Depends(acting_client)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
KeyStoreDep = Annotated[KeyStore, Depends(get_keystore)]
