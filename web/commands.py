"""``faec-rec serve`` and ``faec-rec keys create|list|revoke``."""
from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from typing import Any

import click

from faec_rec.web.auth import ROLES


def _settings() -> Any:
    ctx = click.get_current_context()
    state = ctx.find_root().obj
    if state is not None and hasattr(state, "settings"):
        return state.settings()
    from faec_rec.config import load_settings

    return load_settings()


@contextlib.contextmanager
def _keystore() -> Iterator[Any]:
    from faec_rec.embedded import open_backend
    from faec_rec.keys import Keys
    from faec_rec.web.auth import KeyStore

    with open_backend(_settings()) as backend:
        yield KeyStore(backend.redis, Keys(backend.settings.prefix))


@click.command("serve")
@click.option("--host", default=None, help="address to listen on (web.host; default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port (web.port; default 8080).")
def serve(host: str | None, port: int | None) -> None:
    """The REST API (/api/v1, OpenAPI at /api/v1/openapi.json) and the pages.

    Without FAEC_REDIS_URL it runs on the private Redis with a worker inside this
    process (frames, enrol, train); with it, the deployment's workers do the work.
    """
    import uvicorn

    from faec_rec.client import Client
    from faec_rec.embedded import open_backend
    from faec_rec.web.app import create_app
    from faec_rec.web.auth import KeyStore

    settings = _settings()
    host = host or settings.web.host
    port = port or settings.web.port
    # uvicorn shuts down on SIGTERM, then raises the signal again: with this handler that
    # ends the `with` below normally, so the private Redis is released (and stopped when
    # this was its last user) instead of being left running
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with open_backend(settings, worker_queues=("frames", "enrol", "train")) as backend:
        mode = ("embedded: private Redis" + (", in-process worker" if backend.worker_here else ", worker of `faec-rec worker`")
                if backend.embedded else f"Redis {backend.url}")
        client = Client(settings=backend.settings, actor="web")
        if not KeyStore(client.redis, client.keys).any_active():
            click.echo("no API key exists yet: nothing but /healthz and /readyz will answer. Create one with\n"
                       "  faec-rec keys create --role admin --name you --password\n"
                       "(same FAEC_REDIS_URL / data folder), then log in at the address below.", err=True)
        click.echo(f"faec_rec serving on http://{host}:{port}/ ({mode}); Ctrl-C stops", err=True)
        app = create_app(backend.settings, client)
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=settings.web.trusted_proxy,
                    forwarded_allow_ips="*" if settings.web.trusted_proxy else None)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@click.group("keys")
def keys() -> None:
    """API keys and page logins of `faec-rec serve` (stored hashed in Redis)."""


@keys.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="viewer reads; operator also enrols, names, gives feedback; admin also forgets, manages models and keys.")
@click.option("--name", help="who or what holds the key (letters, digits, space, _ . - @).")
@click.option("--password", is_flag=True, help="also set a password (asked twice) for the login page.")
def keys_create(role: str, name: str | None, password: bool) -> None:
    """Create a key; its secret is printed once (only a hash is stored)."""
    secret_password = None
    if password:
        secret_password = click.prompt("password (10 characters or more)", hide_input=True, confirmation_prompt=True)
    with _keystore() as store:
        record, secret = store.create(role, name, secret_password)
    click.echo(f"created key {record.name!r} ({record.id}), role {record.role}. The key (shown only now):", err=True)
    click.echo(secret)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON.")
def keys_list(as_json: bool) -> None:
    """Every key (never its secret)."""
    import time

    with _keystore() as store:
        records = store.list()
    if as_json:
        click.echo(json.dumps([r.public() for r in records], indent=2))
        return
    if not records:
        click.echo("no keys: create one with `faec-rec keys create --role admin --name you --password`")
    for r in records:
        state = "revoked " + time.strftime("%Y-%m-%d", time.gmtime(r.revoked)) if r.revoked else "active"
        click.echo(f"{r.id}  {r.name:20} {r.role:8} {'password' if r.password else '-':8} {state}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke KEY (id or name): its requests and page sessions stop at once."""
    with _keystore() as store:
        record = store.revoke(key)
    click.echo(f"revoked {record.name!r} ({record.id})")


commands: list[click.Command] = [serve, keys]
