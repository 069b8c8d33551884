"""``faec-rec visitors ...`` and ``faec-rec feedback``: thin commands over the Client.

Registered by :func:`faec_rec.cli._register_plugins`. They parse, call
:class:`faec_rec.client.Client` and print; errors of the project become one
line and an exit code through faec-rec's root group.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import click


@contextlib.contextmanager
def _client(worker_queues: tuple[str, ...] = ()) -> Iterator[Any]:
    from faec_rec import cli

    state = click.get_current_context().find_root().obj
    with cli._backend(state, worker_queues=worker_queues) as backend:
        client = cli._client(backend)
        try:
            yield client
        finally:
            client.close()


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@click.group("visitors")
def visitors() -> None:
    """Strangers grouped into visitors: list, show, name, merge, split, forget, regroup."""


@visitors.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON array.")
@click.option("--limit", type=click.IntRange(0, 1_000_000), default=50, show_default=True, help="0 = all.")
@click.option("--offset", type=click.IntRange(0, None), default=0)
@click.option("--sort", type=click.Choice(["faces", "last_seen", "first_seen", "id"]), default="faces", show_default=True)
def list_cmd(as_json: bool, limit: int, offset: int, sort: str) -> None:
    """Visitors: id, faces, first and last seen, cameras, a representative crop."""
    with _client() as client:
        rows = client.visitors(limit=limit, offset=offset, sort=sort)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no visitors yet")
        return
    for r in rows:
        who = f" = {r['person']}" if r.get("person") else ""
        click.echo(f"{r['id']:<8} {r['faces']:>5} faces  {_when(r['first_seen'])} .. {_when(r['last_seen'])}  "
                   f"{','.join(r['cameras']) or '-'}  {r['crop'] or '-'}{who}")


@visitors.command("show")
@click.argument("visitor_id")
@click.option("--json", "as_json", is_flag=True)
def show_cmd(visitor_id: str, as_json: bool) -> None:
    """One visitor and each of its faces (id, time, source, quality, crop)."""
    with _client() as client:
        v = client.visitor(visitor_id)
    if as_json:
        click.echo(json.dumps(v, indent=2, ensure_ascii=False))
        return
    who = f", named {v['person']} ({v['person_id']})" if v.get("person") else ""
    click.echo(f"visitor {v['id']}: {v['faces']} faces, {_when(v['first_seen'])} .. {_when(v['last_seen'])}{who}")
    for f in v["face_list"]:
        gate = "good" if f["good"] else "poor"
        click.echo(f"  {f['id']}  {_when(f['at'])}  {f['source'] or '-'}  {gate}  {f['crop'] or '-'}")


@visitors.command("name")
@click.argument("visitor_id")
@click.argument("name")
@click.option("--into-existing", is_flag=True, help="add the faces to the person of that name, who is already enrolled.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
def name_cmd(visitor_id: str, name: str, into_existing: bool, timeout: float) -> None:
    """Enrol a visitor's good faces as NAME (through the enrolment queue)."""
    from faec_rec.cli import CommandFailed, ExitCode, check_person_name

    name = check_person_name(name)
    with _client(("enrol",)) as client:
        report = client.name_visitor(visitor_id, name, into_existing=into_existing, timeout=timeout)
    if report.status != "done":
        raise CommandFailed(f"visitor {visitor_id} not named: {report.error}: {report.detail}", ExitCode.PARTIAL)
    click.echo(f"visitor {visitor_id} is now {report.name} ({report.person_id}): "
               f"{len(report.accepted)} face(s) enrolled")


@visitors.command("merge")
@click.argument("visitor_ids", nargs=-1, required=True)
def merge_cmd(visitor_ids: tuple[str, ...]) -> None:
    """Merge visitors into the first one named."""
    with _client() as client:
        target = client.merge_visitors(list(visitor_ids))
    click.echo(f"merged into {target}")


@visitors.command("split")
@click.argument("visitor_id")
@click.option("--faces", "faces", required=True, help="face ids to move out, comma-separated.")
def split_cmd(visitor_id: str, faces: str) -> None:
    """Move some faces of a visitor into a new visitor."""
    ids = [f.strip() for f in faces.split(",") if f.strip()]
    with _client() as client:
        new = client.split_visitor(visitor_id, ids)
    click.echo(f"{len(ids)} face(s) of {visitor_id} are now visitor {new}")


@visitors.command("forget")
@click.argument("visitor_id")
@click.option("--yes", is_flag=True, help="do not ask.")
def forget_cmd(visitor_id: str, yes: bool) -> None:
    """Delete a visitor with every face, crop and feature vector."""
    if not yes:
        click.confirm(f"forget visitor {visitor_id} and all its faces?", abort=True)
    with _client() as client:
        n = client.forget_visitor(visitor_id)
    click.echo(f"forgot visitor {visitor_id} ({n} faces)")


@visitors.command("regroup")
def regroup_cmd() -> None:
    """Group every stored unknown face again from scratch (names and manual merges/splits are kept)."""
    with _client() as client:
        out = client.regroup_visitors()
    click.echo(f"regrouped {out['faces']} faces: {out['visitors']} visitors, {out['alone']} faces in none")


@visitors.command("expire")
def expire_cmd() -> None:
    """Apply the retention settings (visitors.retention_days, visitors.max_faces) now."""
    with _client() as client:
        n = client.expire_visitors()
    click.echo(f"deleted {n} unknown face(s)")


commands: list[click.Command] = [visitors]
