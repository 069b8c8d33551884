"""The ASGI app: settings and the Client on ``app.state``, then error handlers, middleware, routers.

``create_app(settings)`` only wires things; the routes live in :mod:`.routers`.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from faec_rec.client import Client
from faec_rec.config import Settings
from faec_rec.web.auth import KeyStore
from faec_rec.web.http_errors import API, install_error_handlers
from faec_rec.web.limits import LoginGuard, RateLimiter
from faec_rec.web.middleware import install_middleware
from faec_rec.web.routers import (audit, cameras, events, feedback, health, identify, jobs, models, pages, people,
                                  session, visitors)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


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
    app.state.limiter = RateLimiter(client.redis, client.keys, settings.web.rate_limit_per_s, settings.web.rate_burst)
    app.state.login_guard = LoginGuard(client.redis, client.keys, settings.web)
    app.state.broadcaster = events.Broadcaster(client)

    install_error_handlers(app)
    install_middleware(app, settings)
    for module in (health, session, people, identify, jobs, events, models, cameras, visitors, feedback, audit):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
