"""``faec-rec models ...``, ``faec-rec train head`` and ``faec-rec feedback``.

The CLI (faec_rec/cli.py) registers every command of :data:`commands`. The
commands print; the work is done by the registry, retrain and feedback modules.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from faec_rec.errors import FaecError, UnknownPersonError, UsageError


def _under_faec_root(ctx: click.Context) -> bool:
    """True when run under faec-rec's own root group, which maps errors to exit codes."""
    cli = sys.modules.get("faec_rec.cli")
    group = getattr(cli, "FaecGroup", None)
    return group is not None and isinstance(ctx.find_root().command, group)


def _fail(ctx: click.Context, exc: FaecError) -> None:
    if isinstance(exc, (UnknownPersonError, UsageError)):
        raise click.UsageError(str(exc)) from exc
    if _under_faec_root(ctx):
        raise exc
    raise click.ClickException(str(exc)) from exc


class _Group(click.Group):
    """Shows the project's own errors as one line (also when used outside faec-rec's root group)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FaecError as exc:
            _fail(ctx, exc)


class _Command(click.Command):
    """Like :class:`_Group`, for a single command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FaecError as exc:
            _fail(ctx, exc)


def _settings() -> Any:
    ctx = click.get_current_context(silent=True)
    state = ctx.find_root().obj if ctx is not None else None
    if state is not None and hasattr(state, "settings"):
        return state.settings()
    from faec_rec.config import load_settings

    return load_settings()


@contextlib.contextmanager
def _backend() -> Iterator[Any]:
    from faec_rec.embedded import open_backend

    with open_backend(_settings()) as backend:
        yield backend


def _registry(backend: Any) -> Any:
    from faec_rec.training.registry import ModelRegistry

    return ModelRegistry.from_settings(backend.settings, backend.redis)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


# ---- models -----------------------------------------------------------------

@click.group("models", cls=_Group)
def models() -> None:
    """Comparison-head versions: list, show, promote, roll back."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON records instead of a table")
def models_list(as_json: bool) -> None:
    """Every version with its status and key metrics; * marks the one in service."""
    from faec_rec.client import Client
    from faec_rec.training.registry import ModelRecord

    with _backend() as backend:
        client = Client(settings=backend.settings)
        listing = client.models()
        backbone = client.backbones()["current"]
    current = listing["current"]
    records = [ModelRecord.from_json(json.dumps(m)) for m in listing["models"]]
    if as_json:
        click.echo(json.dumps({"current": current, "models": [json.loads(r.to_json()) for r in records],
                               "backbone": backbone}, indent=2))
        return
    click.echo(f"backbone in service: {backbone['name']} (weights: {backbone['licence']})")
    click.echo(f"{'':2}{'version':10} {'status':10} {'created (UTC)':19} {'gallery TAR@1%FAR':>18} {'LFW acc':>8}  note")
    click.echo(f"{'* ' if current == 'base' else '  '}{'base':10} {'built-in':10} {'-':19} {'-':>18} {'-':>8}  L2-normalised backbone features")
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        tar = r.metrics.get("candidate_gallery_tar_at_far")
        lfw = r.metrics.get("candidate_lfw_accuracy")
        mark = "* " if r.version == current else "  "
        click.echo(f"{mark}{r.version:10} {r.status:10} {created:19} {_fmt(tar):>18} {_fmt(lfw):>8}  {r.note[:60]}")


@models.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def models_backbones(as_json: bool) -> None:
    """Backbones: the built-in one and every one added; * marks the one in service."""
    from faec_rec.client import Client

    with _backend() as backend:
        listing = Client(settings=backend.settings).backbones()
    if as_json:
        click.echo(json.dumps(listing, indent=2, default=str))
        return
    current = listing["current"]["name"]
    click.echo(f"{'':2}{'name':24} {'input':9} {'alignment':12} {'threshold':>9}  licence of the weights")
    for row in listing["backbones"]:
        size = "x".join(str(v) for v in row.get("input_size") or []) or "-"
        align = row.get("alignment") if isinstance(row.get("alignment"), str) else "custom"
        mark = "* " if row["name"] == current else "  "
        click.echo(f"{mark}{row['name']:24} {size:9} {align:12} {_fmt(row.get('threshold')):>9}  {row['licence']}")


@models.command("add-backbone")
@click.argument("model_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--card", "card_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="the model card (JSON: input size, colour order, normalisation, alignment, embedding size, licence)")
def models_add_backbone(model_file: str, card_file: str) -> None:
    """Check a TFLite/ONNX face model against its card, calibrate it on the gallery's crops and store it."""
    from faec_rec.client import Client

    with _backend() as backend:
        row = Client(settings=backend.settings).add_backbone(model_file, card_file)
    cal = row.get("calibration") or {}
    click.echo(f"added backbone {row['name']} ({row['format']}, {'x'.join(map(str, row['input_size']))}, licence: {row['licence']})")
    click.echo(f"threshold {_fmt(row.get('threshold'))} from {cal.get('calibrated_on')} "
               f"({cal.get('genuine_pairs', 0)} genuine / {cal.get('impostor_pairs', 0)} impostor pairs)")
    mapped = cal.get("visitors") or {}
    if mapped.get("thresholds"):
        click.echo("visitor thresholds mapped to it: " + ", ".join(f"{k} {v:.4f}" for k, v in mapped["thresholds"].items()))
    elif mapped.get("paused"):
        click.echo(f"visitors: {mapped['paused']}")
    click.echo(f"put it in service with: faec-rec models use-backbone {row['name']}")


@models.command("use-backbone")
@click.argument("name")
def models_use_backbone(name: str) -> None:
    """Re-embed the gallery from its stored crops with backbone NAME and switch to it (no re-enrolment)."""
    from tqdm import tqdm

    from faec_rec.client import Client

    with _backend() as backend, tqdm(desc="re-embedding", unit="face", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = Client(settings=backend.settings).use_backbone(name, progress=progress)
    if result.get("unchanged"):
        click.echo(f"backbone {name} is already in service")
        return
    click.echo(f"backbone in service: {result['backbone']} (was {result['previous']}); "
               f"{result['templates']} templates and {result.get('unknown_faces', 0)} unknown faces re-embedded from their crops")


@models.command("show")
@click.argument("version")
def models_show(version: str) -> None:
    """One version's full record (metrics, checksum, parent) as JSON."""
    with _backend() as backend:
        registry = _registry(backend)
        if version == "base":
            click.echo(json.dumps({"version": "base", "in_service": registry.current() == "base"}, indent=2))
            return
        record = registry.record(version)
        data = json.loads(record.to_json())
        data["in_service"] = registry.current() == version
        data["path"] = str(registry.path(record))
        try:
            registry.verify(version)
            data["checksum_ok"] = True
        except FaecError as exc:
            data["checksum_ok"] = False
            data["checksum_error"] = str(exc)
    click.echo(json.dumps(data, indent=2, default=str))


@models.command("promote")
@click.argument("version")
@click.option("--reason", default="manual", show_default=True, help="recorded in the model event")
def models_promote(version: str, reason: str) -> None:
    """Put VERSION in service now (its file is verified first); workers swap live."""
    from faec_rec.client import Client

    with _backend() as backend:
        event = Client(settings=backend.settings).promote_model(version, reason=reason)
    click.echo(f"in service: {event['version']} (was {event['previous']})")


@models.command("rollback")
@click.option("--reason", default="manual", show_default=True, help="recorded in the model event")
def models_rollback(reason: str) -> None:
    """Return to the version in service before the current one."""
    from faec_rec.client import Client

    with _backend() as backend:
        event = Client(settings=backend.settings).rollback_model(reason=reason)
    click.echo(f"in service: {event['version']} (rolled back from {event['previous']})")


@models.command("export")
@click.argument("version", required=False)
@click.option("--format", "fmt", type=click.Choice(["tflite", "savedmodel"]), default="tflite", show_default=True,
              help="TensorFlow Lite file or a TensorFlow SavedModel folder")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="folder to write (created)")
def models_export(version: str | None, fmt: str, out_dir: str) -> None:
    """Write VERSION (default: the one in service) as one model: backbone + comparison head,
    chips in, normalised embeddings out, with model_card.json and example.py."""
    from pathlib import Path

    from faec_rec.faces.export import export_model
    from faec_rec.workers.runtime import load_projector

    with _backend() as backend:
        registry = _registry(backend)
        version = version or registry.current()
        projector = load_projector(version, backend.settings, backend.redis)
        settings = backend.settings
    card = export_model(version, fmt, Path(out_dir), projector, cache_dir=Path(settings.data_dir) / "models")
    click.echo(f"exported {card['name']} ({fmt}) to {out_dir}: model_card.json, example.py")


# ---- train ------------------------------------------------------------------

@click.group("train", cls=_Group)
def train() -> None:
    """Train the comparison head (on a schedule, or now)."""


@train.command("head")
@click.option("--now", is_flag=True, help="train in this process with a progress bar, instead of queueing the task")
@click.option("--dry-run", is_flag=True, help="with --now: register the candidate but never promote it")
def train_head(now: bool, dry_run: bool) -> None:
    """Retrain the head on the gallery, feedback and the reference set; promote it if the gate passes."""
    with _backend() as backend:
        if not now and not backend.embedded:
            from faec_rec.client import Client
            from faec_rec.training.schedule import QUEUE_TRAIN

            task_id = Client(settings=backend.settings).train_head()
            click.echo(f"queued training task {task_id} on queue {QUEUE_TRAIN!r}; "
                       "`faec-rec models list` shows the outcome")
            return
        if not now:
            click.echo("embedded mode: no training worker to queue for; training here", err=True)
        summary = _train_now(backend, dry_run)
    _print_summary(summary)
    if summary["status"] == "skipped":
        raise click.exceptions.Exit(1)


def _train_now(backend: Any, dry_run: bool) -> dict[str, Any]:
    from tqdm import tqdm

    from faec_rec.training.retrain import run

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            # disable=None: no bar when stderr is not a terminal (logs, CI)
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False, dynamic_ncols=True,
                                     disable=None)
        bar.n = done
        bar.refresh()

    try:
        return run(backend.settings, redis=backend.redis, progress=progress, promote=not dry_run)
    finally:
        for bar in bars.values():
            bar.close()


def _print_summary(summary: dict[str, Any]) -> None:
    status = summary["status"]
    if status == "skipped":
        click.echo(f"training skipped: {summary['reason']}")
        click.echo(f"in service: {summary.get('current', 'base')} (unchanged)")
        return
    cand, cur = summary["candidate"], summary["in_service_before"]
    click.echo(f"candidate {summary['version']}: {status.upper()} - {summary['reason']}")
    for name, label in (("gallery_tar_at_far", "gallery TAR@1%FAR (held-out)"), ("lfw_accuracy", "LFW accuracy")):
        click.echo(f"  {label:30} {_fmt(cur.get(name)):>8} -> {_fmt(cand.get(name)):>8}")
    t = summary["training"]
    click.echo(f"  trained on {t['gallery_templates']} gallery templates, {t['reference_images']} reference images, "
               f"{t['feedback']} feedback faces in {summary['train_seconds']:.1f} s")
    if summary.get("feedback_without_features"):
        click.echo(f"  {summary['feedback_without_features']} feedback entries had no stored face features (not used)")
    click.echo(f"in service: {summary['current']}")


# ---- feedback ---------------------------------------------------------------

@click.command("feedback", cls=_Command)
@click.argument("event_id")
@click.option("--is", "is_name", metavar="NAME", help="the face in the event was this person")
@click.option("--not", "not_name", metavar="NAME", help="the face in the event was NOT this person")
def feedback(event_id: str, is_name: str | None, not_name: str | None) -> None:
    """Confirm or correct a recognition event (EVENT is its stream id).

    --is adds the face to the person; --not moves it into a visitor, records a
    hard negative pair for retraining and raises the person's threshold around it
    (the work is :meth:`faec_rec.client.Client.feedback`).
    """
    from faec_rec.client import Client

    if (is_name is None) == (not_name is None):
        raise click.UsageError("give exactly one of --is NAME or --not NAME")
    with _backend() as backend:
        client = Client(settings=backend.settings)
        try:
            out = client.feedback(event_id, is_=is_name, not_=not_name)
        finally:
            client.close()
    verb = "was" if out["is_person"] else "was not"
    click.echo(f"recorded: event {event_id} {verb} {out['person']} (feedback {out['feedback_id']})")
    if not out["usable"]:
        click.echo(f"note: {out['reason']}; the feedback is kept for review but cannot train the head")
    elif out["is_person"]:
        click.echo(f"the face was added to {out['person']} (template {out['template_id']})" if out["template_id"]
                   else f"{out['person']} already had this face")
    else:
        click.echo(f"the face is now with visitor {out['visitor'] or '(none)'}; negative pair {out['negative_id']} "
                   f"recorded for retraining; {out['person']}'s threshold is raised around this face")


commands: list[click.Command] = [models, train, feedback]
