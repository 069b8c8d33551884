"""``/healthz`` (the process answers) and ``/readyz`` (Redis answers and a worker consumes 'frames')."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from faec_rec.web.schemas import Health

router = APIRouter(tags=["health"])

_READY_CACHE_S = 5.0


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    cached = getattr(state, "ready_cache", None)
    if cached and time.monotonic() - cached[0] < _READY_CACHE_S:
        status, body = cached[1], cached[2]
    else:
        status, body = _check(request)
        state.ready_cache = (time.monotonic(), status, body)
    return JSONResponse(body, status_code=status)


def _check(request: Request) -> tuple[int, dict[str, str]]:
    from faec_rec.embedded import consumers

    client = request.app.state.client
    try:
        client.redis.ping()
    except Exception as exc:  # any Redis failure means not ready
        return 503, {"status": "unavailable", "detail": f"Redis: {exc}"}
    if not consumers(client.app, "frames", 1.0):
        return 503, {"status": "unavailable", "detail": "no worker consumes queue 'frames'"}
    return 200, {"status": "ready", "detail": ""}
