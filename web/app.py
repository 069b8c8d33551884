"""The ASGI app: settings and the Client on ``app.state``, error mapping, limits, routers.

``create_app(settings)`` only wires things; the routes live in :mod:`.routers`.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faec_rec.client import Client
from faec_rec.config import Settings
from faec_rec.errors import (AuthError, BackendUnavailable, ConfigError, CsrfError, FaecError, GalleryError,
                             ImageError, NotFound, PermissionDenied, RateLimited, RequestTooLarge, TaskTimeout,
                             UnknownPersonError, UnknownVisitorError, UnsupportedImage, VisitorError)
from faec_rec.web.auth import KeyStore
from faec_rec.web.deps import RateLimiter
from faec_rec.web.routers import (audit, cameras, events, feedback, health, identify, jobs, models, pages, people,
                                  session, visitors)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
API = "/api/v1"

# (exception class, HTTP status, stable code): first match wins, so subclasses come first.
ERRORS: list[tuple[type[BaseException], int, str]] = [
    (CsrfError, 403, "csrf"),
    (PermissionDenied, 403, "forbidden"),
    (AuthError, 401, "unauthorized"),
    (RateLimited, 429, "rate_limited"),
    (RequestTooLarge, 413, "too_large"),
    (UnsupportedImage, 415, "unsupported_media"),
    (ImageError, 422, "bad_image"),
    (UnknownPersonError, 404, "unknown_person"),
    (NotFound, 404, "not_found"),
    (UnknownVisitorError, 404, "unknown_visitor"),
    (VisitorError, 409, "visitor_conflict"),
    (TaskTimeout, 504, "no_worker"),
    (BackendUnavailable, 503, "backend_unavailable"),
    (ConfigError, 400, "invalid"),
    (GalleryError, 409, "conflict"),
    (FaecError, 400, "invalid"),
    (ValueError, 400, "invalid"),
]


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _is_page(request: Request) -> bool:
    return not request.url.path.startswith(API) and "text/html" in request.headers.get("accept", "")


class BodyLimit:
    """413 for a body over ``limit`` bytes: by Content-Length at once, else while it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RequestTooLarge(f"request body over {self.limit} bytes (web.max_upload_bytes)")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large", f"request body over {self.limit} bytes (web.max_upload_bytes)")
        await response(scope, receive, send)


SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
                                "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def create_app(settings: Settings, client: Client | None = None) -> FastAPI:
    """The server for ``settings`` (``redis_url`` must be set: the embedded Redis is
    opened by ``faec-rec serve``). ``client`` is reused when given."""
    client = client or Client(settings=settings, actor="web")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        app.state.broadcaster.start()
        try:
            yield
        finally:
            app.state.broadcaster.stop()

    app = FastAPI(
        title="faec_rec",
        version="1",
        summary="Face recognition: enrol people, identify photos, follow recognition events.",
        description=("Authenticate with `Authorization: Bearer <key>` (create keys with `faec-rec keys create`). "
                     "Roles: viewer reads; operator also enrols, renames, gives feedback and names visitors; "
                     "admin also forgets, manages models and reads the audit log. Errors are "
                     "`{\"error\": {\"code\", \"message\"}}`."),
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.client = client
    app.state.keystore = KeyStore(client.redis, client.keys)
    app.state.limiter = RateLimiter(settings.web.rate_limit_per_s, settings.web.rate_burst)
    app.state.broadcaster = events.Broadcaster(client)

    @app.exception_handler(FaecError)
    @app.exception_handler(ValueError)
    async def _faec_error(request: Request, exc: Exception) -> Response:
        for cls, status, code in ERRORS:
            if isinstance(exc, cls):
                break
        else:  # pragma: no cover - ValueError is last
            status, code = 500, "internal"
        if status == 401 and _is_page(request):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, RateLimited) else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        message = str(exc)
        if isinstance(exc, (TaskTimeout,)):
            message = f"no worker answered in time: {exc}"
        if _is_page(request):
            return pages.error_page(request, status, message)
        return error_response(status, code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large",
                 415: "unsupported_media"}
        if exc.status_code == 404 and _is_page(request):
            return pages.error_page(request, 404, "There is no page here.")
        return error_response(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail))

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.path.startswith(API) or request.url.path.startswith("/login"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    for module in (health, session, people, identify, jobs, events, models, cameras, visitors, feedback, audit):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(BodyLimit, limit=settings.web.max_upload_bytes)
    return app
