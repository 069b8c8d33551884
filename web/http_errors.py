"""HTTP for the project's errors: each exception class maps to a status and a stable ``code``;
pages get a page (or the login page for a 401), the API gets ``{"error": {"code", "message"}}``."""
from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from faec_rec.errors import (AuthError, DuplicateCameraError, UnknownCameraError, BackendUnavailable, ConfigError, CsrfError, FaecError, GalleryError,
                             ImageError, NotFound, PermissionDenied, RateLimited, RequestTooLarge, TaskTimeout,
                             UnknownPersonError, UnknownVisitorError, UnsupportedImage, VisitorError)

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
    (UnknownCameraError, 404, "unknown_camera"),
    (NotFound, 404, "not_found"),
    (UnknownVisitorError, 404, "unknown_visitor"),
    (VisitorError, 409, "visitor_conflict"),
    (DuplicateCameraError, 409, "camera_exists"),
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



def install_error_handlers(app: FastAPI) -> None:
    """Map every error the routes raise to its response."""
    from faec_rec.web.routers import pages

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
