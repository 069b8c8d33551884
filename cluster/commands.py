"""``faec-rec gallery export|import`` and ``faec-rec retention sweep|stats``: thin
wrappers over :class:`faec_rec.client.Client` (registered by ``faec_rec.cli``)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from faec_rec.cli import CommandFailed, ExitCode, FaecGroup, State, _backend, _client, _echo_json, pass_state
from faec_rec.errors import ArchiveError


@click.group("gallery", cls=FaecGroup)
def gallery_group() -> None:
    """Back up and restore the whole gallery (people, features, crops, models)."""


@gallery_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@pass_state
def export_cmd(state: State, file: str) -> None:
    """Write the gallery to FILE ('-' = stdout): one versioned tar.gz with sha256 checksums,
    consistent at one gallery event while workers keep running."""
    with _backend(state) as backend:
        client = _client(backend)
        try:
            summary = client.export_gallery(sys.stdout.buffer if file == "-" else Path(file))
        finally:
            client.close()
    click.echo(f"exported {summary['people']} people, {summary['templates']} templates, {summary['crops']} crops, "
               f"{summary['heads']} model heads at gallery event {summary['stream_id']}, "
               f"{summary['visitors']} visitors with {summary['unknown_faces']} unknown faces"
               + (f"; {summary['crops_missing']} crops not on this machine" if summary["crops_missing"] else ""),
               err=True)
    if file != "-":
        _echo_json(summary)


@gallery_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, exists=False))
@click.option("--merge", is_flag=True, help="merge into a gallery that already holds people (by id, then name).")
@pass_state
def import_cmd(state: State, file: str, merge: bool) -> None:
    """Restore an archive written by `gallery export` (into an empty gallery, or --merge)."""
    if file != "-" and not Path(file).is_file():
        raise CommandFailed(f"no archive file {file!r}")
    with _backend(state) as backend:
        client = _client(backend)
        try:
            summary = client.import_gallery(sys.stdin.buffer if file == "-" else Path(file), merge=merge)
        except ArchiveError as exc:
            raise CommandFailed(str(exc), ExitCode.USAGE) from exc
        finally:
            client.close()
    if not summary["settings_match"]:
        click.echo("warning: the archive was written under other faces/gallery settings; "
                   "identify may answer differently", err=True)
    _echo_json(summary)


@click.group("retention", cls=FaecGroup)
def retention_group() -> None:
    """Delete what is older than the retention settings allow."""


@retention_group.command("sweep")
@click.option("--step", "steps", multiple=True, help="run only this step (repeatable).")
@pass_state
def sweep_cmd(state: State, steps: tuple[str, ...]) -> None:
    """Run the retention sweep now; prints items removed per step (-1: the step failed)."""
    from faec_rec.cluster.retention import STEPS, sweep

    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise CommandFailed(f"no retention step {unknown[0]!r}; steps: {', '.join(STEPS)}")
    with _backend(state) as backend:
        client = _client(backend)
        try:
            removed = sweep(client.redis, client.keys, client.settings, only=list(steps) or None)
        finally:
            client.close()
    _echo_json(removed)
    if any(n < 0 for n in removed.values()):
        raise CommandFailed("a retention step failed; see the log", ExitCode.PARTIAL)


@retention_group.command("stats")
@pass_state
def stats_cmd(state: State) -> None:
    """What the sweeps removed so far (totals and the last run, per step)."""
    from faec_rec.cluster.retention import stats

    with _backend(state) as backend:
        client = _client(backend)
        try:
            _echo_json(stats(client.redis, client.keys))
        finally:
            client.close()


commands = [gallery_group, retention_group]
