"""``faec-rec sinks`` (run the sink runner), ``sinks status`` and ``sinks dead-letter list|replay``.

Registered by faec_rec/cli.py; the work is done by :mod:`faec_rec.sinks.runner`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from typing import Any

import click

log = logging.getLogger(__name__)


def build_sinks(settings: Any, redis: Any, consumer: str | None = None, runner: bool = True) -> list[Any]:
    """Every sink the settings configure: MQTT when ``mqtt.url`` is set, one per webhook.
    ``runner=False`` (replay, status): the MQTT sink does not follow the gallery stream."""
    from faec_rec.keys import Keys
    from faec_rec.sinks.mqtt import MqttSink
    from faec_rec.sinks.webhook import WebhookSink

    sinks: list[Any] = []
    if settings.mqtt.url:
        sinks.append(MqttSink(settings.mqtt, redis, Keys(settings.prefix), consumer=consumer, watch_gallery=runner))
    for hook in settings.webhooks:
        sinks.append(WebhookSink(hook, settings.sinks.allow_networks))
    return sinks


@contextlib.contextmanager
def _redis() -> Iterator[tuple[Any, Any]]:
    """(settings, a redis-py client without a read timeout: reads block on the stream)."""
    import redis as redis_lib

    from faec_rec.config import load_settings
    from faec_rec.embedded import open_backend

    settings = load_settings()
    with open_backend(settings) as backend:
        # reads block up to sinks.block_ms; a dead connection still fails within 10 s after that
        client = redis_lib.Redis.from_url(backend.settings.redis_url, socket_connect_timeout=5,
                                          socket_timeout=settings.sinks.block_ms / 1000 + 10,
                                          socket_keepalive=True, health_check_interval=30)
        try:
            yield backend.settings, client
        finally:
            client.close()


def _sink_named(settings: Any, redis: Any, name: str) -> Any:
    for sink in build_sinks(settings, redis, runner=False):
        if sink.name == name:
            return sink
    raise click.UsageError(f"no sink named {name!r} is configured")


@click.group("sinks", invoke_without_command=True)
@click.option("--consumer", help="this runner's consumer name (default: the host name); "
                                 "runners sharing a host need distinct names.")
@click.pass_context
def sinks(ctx: click.Context, consumer: str | None) -> None:
    """Deliver events to MQTT and webhooks (`faec-rec sinks` = `faec-rec sinks run`), or manage them."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run, consumer=consumer)


@sinks.command("run")
@click.option("--consumer", help="this runner's consumer name (default: the host name); "
                                 "runners sharing a host need distinct names.")
def run(consumer: str | None) -> None:
    """Deliver every new event to every configured sink until stopped (SIGTERM, Ctrl-C)."""
    from faec_rec.keys import Keys
    from faec_rec.metrics import serve
    from faec_rec.sinks.runner import SinkRunner, default_consumer

    with _redis() as (settings, client):
        consumer = consumer or default_consumer()
        built = build_sinks(settings, client, consumer=consumer)
        if not built:
            raise click.UsageError("no sink configured: set mqtt.url and/or webhooks")
        runner = SinkRunner(client, Keys(settings.prefix), settings.sinks, built, consumer=consumer)
        server = serve(settings, port=settings.sinks.health_port, cluster=False) if settings.sinks.health_port else None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: runner.stop_event.set())
        click.echo(f"sinks: {', '.join(s.name for s in built)} (consumer {consumer}); Ctrl-C stops", err=True)
        try:
            runner.run()
        finally:
            if server is not None:
                server.stop()


@sinks.command("status")
def status() -> None:
    """Per sink: events pending, lag behind the stream, dead letters, counters (JSON)."""
    from faec_rec.keys import Keys
    from faec_rec.sinks.runner import stats

    with _redis() as (settings, client):
        keys = Keys(settings.prefix)
        counters = stats(client, keys)
        groups = {}
        with contextlib.suppress(Exception):
            groups = {g["name"].decode(): g for g in client.xinfo_groups(keys.events())}
        out = {}
        for sink in build_sinks(settings, client, runner=False):
            g = groups.get(keys.sink_group(sink.name), {})
            out[sink.name] = {"pending": int(g.get("pending", 0) or 0), "lag": g.get("lag"),
                              "dead_letters": int(client.xlen(keys.sink_dead_letter(sink.name))),
                              "counters": counters.get(sink.name, {})}
        click.echo(json.dumps(out, indent=2))


@sinks.group("dead-letter")
def dead_letter() -> None:
    """Events a sink gave up on: list them, or deliver them again."""


@dead_letter.command("list")
@click.argument("sink")
@click.option("--limit", default=100, show_default=True, help="at most this many, oldest first.")
def dl_list(sink: str, limit: int) -> None:
    """The parked events of SINK as JSON lines (id, event_id, error, attempts, event)."""
    from faec_rec.keys import Keys
    from faec_rec.sinks.runner import dead_letters

    with _redis() as (settings, client):
        for item in dead_letters(client, Keys(settings.prefix), sink, count_=limit):
            click.echo(json.dumps(item, ensure_ascii=False))


@dead_letter.command("replay")
@click.argument("sink")
@click.argument("ids", nargs=-1)
@click.option("--limit", default=1000, show_default=True, help="without IDS: the oldest this many.")
def dl_replay(sink: str, ids: tuple[str, ...], limit: int) -> None:
    """Deliver parked events of SINK again (all, or the dead-letter IDS given); each one
    delivered leaves the dead-letter stream. Exit 1 when some stay parked."""
    from faec_rec.keys import Keys
    from faec_rec.sinks.runner import replay

    with _redis() as (settings, client):
        target = _sink_named(settings, client, sink)
        target.start()
        try:
            delivered, failed = replay(client, Keys(settings.prefix), target, ids=ids, limit=limit)
        finally:
            target.close()
        click.echo(f"{delivered} delivered, {len(failed)} still parked")
        for line in failed:
            click.echo(f"  {line}", err=True)
        if failed:
            raise SystemExit(1)


commands = [sinks]
