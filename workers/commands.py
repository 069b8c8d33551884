"""``faec-rec tasks dead-letter list|replay|drop``: tasks parked after killing their worker.

Registered by ``faec_rec/cli.py`` ``_register_plugins``; the work is done by
:mod:`faec_rec.workers.deadletter` (the same functions :class:`faec_rec.client.Client` calls).
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import click


@contextlib.contextmanager
def _backend() -> Iterator[Any]:
    from faec_rec.config import load_settings
    from faec_rec.embedded import open_backend

    ctx = click.get_current_context(silent=True)
    state = ctx.find_root().obj if ctx is not None else None
    settings = state.settings() if state is not None and hasattr(state, "settings") else load_settings()
    with open_backend(settings) as backend:
        yield backend


@click.group("tasks")
def tasks() -> None:
    """Tasks of the queues: those parked in the dead-letter stream."""


@tasks.group("dead-letter")
def dead_letter() -> None:
    """Tasks parked after their worker process died workers.max_deliveries times running them."""


@dead_letter.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON records (with the payloads)")
def dl_list(as_json: bool) -> None:
    """Every parked task, oldest first."""
    from faec_rec.workers import deadletter

    with _backend() as backend:
        parked = deadletter.list_parked(backend.redis, backend.keys)
    if as_json:
        click.echo(json.dumps([p.to_json() for p in parked], indent=2, ensure_ascii=False))
        return
    if not parked:
        click.echo("no parked tasks")
        return
    click.echo(f"{'entry':20} {'parked (UTC)':19} {'task':26} {'runs':>4}  payload")
    for p in parked:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.parked_at))
        payload = json.dumps(p.args[0] if len(p.args) == 1 else p.args, ensure_ascii=False)
        click.echo(f"{p.entry:20} {when:19} {p.task:26} {p.deliveries:>4}  {payload[:80]}")


def _entries(backend: Any, entries: tuple[str, ...], everything: bool) -> list[str]:
    from faec_rec.workers import deadletter

    if everything == bool(entries):
        raise click.UsageError("give entry ids (from `faec-rec tasks dead-letter list`) or --all, not both")
    if everything:
        return [p.entry for p in deadletter.list_parked(backend.redis, backend.keys)]
    return list(entries)


@dead_letter.command("replay")
@click.argument("entries", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="replay every parked task")
def dl_replay(entries: tuple[str, ...], everything: bool) -> None:
    """Queue parked tasks again (after fixing what killed the worker)."""
    from faec_rec.workers import deadletter

    with _backend() as backend:
        for entry in _entries(backend, entries, everything):
            try:
                task_id = deadletter.replay(backend.redis, backend.keys, backend.app, entry)
            except KeyError as exc:
                raise click.UsageError(str(exc.args[0])) from exc
            click.echo(f"{entry}: queued again as task {task_id}")


@dead_letter.command("drop")
@click.argument("entries", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="drop every parked task")
def dl_drop(entries: tuple[str, ...], everything: bool) -> None:
    """Delete parked tasks for good."""
    from faec_rec.workers import deadletter

    with _backend() as backend:
        for entry in _entries(backend, entries, everything):
            try:
                parked = deadletter.drop(backend.redis, backend.keys, entry)
            except KeyError as exc:
                raise click.UsageError(str(exc.args[0])) from exc
            click.echo(f"{entry}: dropped ({parked.task})")


commands = [tasks]
