"""Page login and logout (key, or key name + password) and ``GET /api/v1/me``."""
from __future__ import annotations

import hmac
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from faec_rec.errors import AuthError, CsrfError, RateLimited
from faec_rec.web.deps import SESSION_COOKIE, KeyStoreDep, SettingsDep, Viewer
from faec_rec.web.schemas import WhoAmI
from faec_rec.web.templating import templates

log = logging.getLogger(__name__)

router = APIRouter()

LOGIN_CSRF_COOKIE = "faec_login"


def _safe_next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/live"
    return target


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, settings: SettingsDep, next: str = "/live") -> Response:
    return _login_form(request, settings, next)


def _login_form(request: Request, settings: SettingsDep, next: str, error: str = "", status: int = 401,
                headers: dict[str, str] | None = None) -> Response:
    """The form; ``error`` is only ever one of this module's own messages (never from the URL)."""
    token = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(request, "login.html", {
        "next": _safe_next(next), "error": error, "login_csrf": token, "principal": None})
    response.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=settings.web.secure_cookies, path="/login")
    response.status_code = status if error else 200
    response.headers.update(headers or {})
    return response


@router.post("/login", include_in_schema=False)
def login(
    request: Request,
    store: KeyStoreDep,
    settings: SettingsDep,
    secret: Annotated[str, Form(max_length=500)] = "",
    name: Annotated[str, Form(max_length=100)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=500)] = "/live",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (expected and csrf and hmac.compare_digest(expected, csrf)):
        raise CsrfError("the login form expired: reload the page and try again")
    account = name.strip() or None
    address = request.client.host if request.client else None
    guard = request.app.state.login_guard
    try:
        guard.check(account, address)  # before the password: a locked account cannot be guessed at
    except RateLimited as exc:
        return _login_form(request, settings, next, f"{str(exc)[:1].upper()}{str(exc)[1:]}.", status=429,
                           headers={"Retry-After": str(max(1, round(exc.retry_after)))})
    try:
        record = store.by_password(account, secret) if account else store.by_secret(secret.strip())
    except AuthError:
        locked = guard.failed(account, address)
        if locked:
            log.warning("login: locked out for %.0f s after repeated failures (name %r, address %s)",
                        locked, account, address)
        return _login_form(request, settings, next, "That key, or that name and password, is not valid.")
    guard.succeeded(account)
    token, _csrf = store.start_session(record, settings.web.session_ttl_s)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, max_age=settings.web.session_ttl_s, httponly=True,
                        samesite="strict", secure=settings.web.secure_cookies, path="/")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, store: KeyStoreDep, who: Viewer) -> Response:
    """Needs the CSRF header like every change (the page's logout button sends it)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        store.end_session(token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/api/v1/me", response_model=WhoAmI, tags=["auth"])
def me(who: Viewer) -> WhoAmI:
    """Who this key (or session) is, and its role."""
    return WhoAmI(key_id=who.key_id, name=who.name, role=who.role, via=who.via)
