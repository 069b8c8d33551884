"""The ``faec-rec`` command line.

A thin layer: it parses arguments, opens the backend (:mod:`faec_rec.embedded`:
a real deployment when ``FAEC_REDIS_URL`` or the config file names one, else a
private Redis plus an in-process worker), calls the client, and prints. Progress
bars go to stderr, results to stdout, errors as one line to stderr.

Exit codes (see :class:`ExitCode`): 0 everything done; 1 partial (some images
or people failed, the rest was done); 2 usage or configuration error (bad
option, bad name, nothing to do, unknown person); 3 backend unavailable (Redis
unreachable, no worker consuming, results not back in time).

Other packages add command groups with :func:`register` (``faec_rec.training``
exports ``commands``; they are picked up automatically when importable).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
import time
import unicodedata
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import click

from faec_rec.errors import (BackendUnavailable, ConfigError, FaecError, GalleryError, ImageError, TaskTimeout,
                              UnknownPersonError, UsageError)
from faec_rec.files import IMAGE_SUFFIXES, check_outputs, display_name, is_image_path, iter_files, walk_images

log = logging.getLogger(__name__)

MAX_NAME_LEN = 100


class ExitCode(IntEnum):
    """Exit statuses scripts can rely on."""

    OK = 0
    PARTIAL = 1  # some items failed; the others were done
    USAGE = 2  # bad option/argument/configuration, nothing to do, unknown person
    BACKEND = 3  # Redis unreachable, no worker consuming, results not back in time


class CommandFailed(click.ClickException):
    """A one-line error with an exit code from :class:`ExitCode`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = int(code)

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _exit_code_for(exc: FaecError) -> ExitCode:
    if isinstance(exc, (BackendUnavailable, TaskTimeout)):
        return ExitCode.BACKEND
    if isinstance(exc, (ConfigError, UnknownPersonError, UsageError)):
        return ExitCode.USAGE
    return ExitCode.PARTIAL


class FaecGroup(click.Group):
    """Turns the project's own errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FaecError as exc:
            raise CommandFailed(str(exc), _exit_code_for(exc)) from exc
        except Exception as exc:
            import redis

            if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
                raise CommandFailed(f"lost the connection to Redis ({exc}): is it still running?",
                                    ExitCode.BACKEND) from exc
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(130) from None


# ---- names and files --------------------------------------------------------

def check_person_name(raw: str) -> str:
    """A display name safe to store, or :class:`CommandFailed` saying why not
    (the gallery's one validator, :func:`faec_rec.index.store.clean_name`)."""
    from faec_rec.index.store import clean_name

    try:
        return clean_name(raw)
    except GalleryError as exc:
        raise CommandFailed(str(exc)) from exc


def list_images(root: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) under ``root`` (recursively, sorted, hidden files skipped).

    ``root`` may also be a single image file.
    """
    if root.is_file():
        return ([root], []) if is_image_path(root) else ([], [root])
    return walk_images(root)


# ---- shared state -------------------------------------------------------------

@dataclass
class State:
    """What the global options decided; settings load once, on first use."""

    verbose: int = 0
    _settings: Any = field(default=None, repr=False)

    def settings(self) -> Any:
        if self._settings is None:
            from faec_rec.config import load_settings

            self._settings = load_settings()
        return self._settings


pass_state = click.make_pass_decorator(State, ensure=True)


def _setup_logging(verbose: int, state: State) -> None:
    """-v / -vv win; else ``log_level`` when the configuration sets it, else
    WARNING (a command prints its own results); ``log_json`` as configured."""
    from faec_rec.logs import setup_logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from faec_rec import quiet

    quiet.install(quiet=not verbose)  # TensorFlow's start-up lines only with -v
    try:
        settings = state.settings()
    except ConfigError:
        settings = None  # reported by the command that needs the settings (help still works)
    level = "WARNING"
    if verbose:
        level = "DEBUG" if verbose > 1 else "INFO"
    elif settings is not None and "log_level" in settings.model_fields_set:
        level = settings.log_level
    setup_logging(level, bool(settings and settings.log_json))
    if not verbose and level == "WARNING":
        # The in-process worker's per-image warnings repeat what the command prints itself.
        logging.getLogger("faec_rec.workers").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")


def _progress(total: int | None, desc: str, unit: str = "image") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None)  # None: off when stderr is not a terminal


@contextlib.contextmanager
def _backend(state: State, *, worker_queues: Sequence[str] = ()) -> Iterator[Any]:
    """Open the configured backend and say which one on stderr."""
    from faec_rec.embedded import open_backend

    settings = state.settings()
    with open_backend(settings, worker_queues=worker_queues) as backend:
        if backend.embedded:
            click.echo(f"embedded mode: private Redis with data in {Path(settings.data_dir) / 'redis'}"
                       + (", in-process worker" if backend.worker_here else
                          ", worker of `faec-rec worker`" if worker_queues else ""), err=True)
        yield backend


def _client(backend: Any) -> Any:
    from faec_rec.client import Client

    return Client(settings=backend.settings)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


# ---- the group ------------------------------------------------------------------

EPILOG = """\b
Exit codes: 0 ok, 1 partial (some images/people failed, the rest done),
2 usage or configuration error, 3 backend unavailable.
\b
Without FAEC_REDIS_URL every command runs on a private Redis under the data
folder (gallery kept between runs) with a worker inside the command.
"""


@click.group(cls=FaecGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FAEC_CONFIG",
              help="TOML or JSON settings file (also FAEC_CONFIG).")
@click.option("--redis-url", help="talk to this Redis deployment (also FAEC_REDIS_URL); unset = embedded.")
@click.option("--prefix", help="key namespace of the deployment (also FAEC_PREFIX).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="data folder (also FAEC_DATA_DIR).")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug).")
@click.version_option(package_name="faec-rec")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, redis_url: str | None, prefix: str | None,
        data_dir: str | None, verbose: int) -> None:
    """faec-rec: face recognition on Redis and Celery workers."""
    # Options become environment so that worker processes forked or spawned
    # from here read the very same settings.
    for name, value in (("FAEC_CONFIG", config_path), ("FAEC_REDIS_URL", redis_url),
                        ("FAEC_PREFIX", prefix), ("FAEC_DATA_DIR", data_dir)):
        if value:
            os.environ[name] = str(value)
    ctx.obj = State(verbose=verbose)
    _setup_logging(verbose, ctx.obj)


def register(command: click.Command) -> None:
    """Add a command or group (e.g. ``models``, ``train``) to ``faec-rec``."""
    cli.add_command(command)


def _register_plugins() -> None:
    from faec_rec.index.commands import add_people_commands

    add_people_commands(people_group)  # people faces | remove-face
    # One module per room that owns commands; each exposes ``commands`` (a list).
    for module in (
        "faec_rec.workers.commands",   # tasks dead-letter ...
        "faec_rec.cluster.commands",   # gallery export/import, retention sweep
        "faec_rec.training.commands",  # models, train, feedback
        "faec_rec.sinks.commands",     # sinks run|status|dead-letter
        "faec_rec.visitors.commands",  # visitors list|show|name|merge|split|forget|regroup|expire
        "faec_rec.web.commands",       # serve, keys create|list|revoke
    ):
        _register_from(module)


def _register_from(module: str) -> None:
    """Register ``module.commands`` (a list of click commands) when importable."""
    import importlib

    try:
        found = importlib.import_module(module).commands
    except ImportError as exc:
        log.debug("%s not available: %s", module, exc)
        return
    for command in found:
        if command.name not in cli.commands:
            register(command)


# ---- config -------------------------------------------------------------------------

@cli.command("config")
@click.option("--describe", is_flag=True, help="one line per setting with its description.")
@pass_state
def config_cmd(state: State, describe: bool) -> None:
    """Print the effective configuration (defaults < file < environment) as JSON."""
    from faec_rec.embedded import redact_url

    settings = state.settings()
    if settings.redis_url:  # never print a password
        settings = settings.model_copy(update={"redis_url": redact_url(settings.redis_url)})
    if settings.mqtt.url:  # nor the broker's
        settings = settings.model_copy(update={"mqtt": settings.mqtt.model_copy(update={"url": redact_url(settings.mqtt.url)})})
    if any(w.secret for w in settings.webhooks):  # nor a webhook secret
        settings = settings.model_copy(update={"webhooks": [w.model_copy(update={"secret": "***" if w.secret else None}) for w in settings.webhooks]})
    if not describe:
        _echo_json(settings.model_dump(mode="json"))
        return
    for name, value, text in _describe(settings):
        click.echo(f"{name} = {json.dumps(value, default=str)}    # {text}")


def _describe(model: Any, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    from pydantic import BaseModel

    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _describe(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value if not isinstance(value, Path) else str(value), info.description or ""


# ---- worker and beat -------------------------------------------------------------------

def in_deployment_image() -> bool:
    """True in the faec-rec image (deploy/Dockerfile's /opt/faec-rec) or a Kubernetes pod."""
    return sys.prefix == "/opt/faec-rec" or bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def in_container(root: Path = Path("/")) -> bool:
    """True inside a Docker/Podman container or a Kubernetes pod."""
    return ((root / ".dockerenv").exists() or (root / "run" / ".containerenv").exists()
            or bool(os.environ.get("KUBERNETES_SERVICE_HOST")))


@cli.command("worker")
@click.option("-Q", "--queues", default="frames,enrol,train", show_default=True,
              help="comma-separated queues to consume.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256),
              help="worker processes (default: workers.concurrency from the configuration).")
@click.option("-P", "--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork", show_default=True,
              help="Celery pool; prefork gives each process its own model and gallery replica.")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Celery log level.")
@click.option("--embedded", "embedded_ok", is_flag=True,
              help="inside a container without FAEC_REDIS_URL, start a private Redis anyway.")
@pass_state
def worker_cmd(state: State, queues: str, concurrency: int | None, pool: str, loglevel: str,
               embedded_ok: bool = False) -> None:
    """Run a Celery worker with this project's defaults (until stopped with Ctrl-C).

    Embedded mode (no FAEC_REDIS_URL): starts the private Redis and keeps it up
    while the worker runs, so other faec-rec commands on this machine share it.
    In the deployment image or a pod that is almost always a forgotten FAEC_REDIS_URL
    (a worker alone with its own queue), so it is refused there unless --embedded is
    given; in another container it starts with a warning.
    """
    from faec_rec.embedded import PrivateRedisLease, redact_url

    settings = state.settings()
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        raise CommandFailed("--queues names no queue")
    if not settings.redis_url and in_container() and not embedded_ok and not in_deployment_image():
        click.echo("WARNING: FAEC_REDIS_URL is not set and this looks like a container: starting a private Redis "
                   f"under {Path(settings.data_dir) / 'redis'} that only processes of this container can reach",
                   err=True)
    elif not settings.redis_url and in_deployment_image() and not embedded_ok:
        raise CommandFailed("FAEC_REDIS_URL is not set and this runs inside a container: the worker would start "
                            "a private Redis of its own that no producer or other worker can reach. Set "
                            "FAEC_REDIS_URL (or FAEC_REDIS_URL_FILE), or pass --embedded to do it anyway")
    lease = None
    if not settings.redis_url:
        lease = PrivateRedisLease(Path(settings.data_dir) / "redis").acquire()
        # Environment, so that forked pool processes and the module-level app agree.
        os.environ["FAEC_REDIS_URL"] = lease.url
        if not settings.workers.read_roots:  # only this user's commands reach the private Redis
            os.environ["FAEC_WORKERS__READ_ROOTS"] = '["/"]'
        state._settings = None
        settings = state.settings()
        click.echo(f"embedded mode: private Redis at {redact_url(lease.url)} (data in {lease.directory})", err=True)
        if lease.owner:
            from faec_rec.embedded import purge_stale_tasks
            from faec_rec.workers.app import make_app

            purge_stale_tasks(make_app(settings))
    else:
        from faec_rec.embedded import connect, redact_url
        from faec_rec.redis_checks import check_redis_once

        client = connect(settings.redis_url)
        try:
            found = check_redis_once(client, require_noeviction=settings.redis_require_noeviction,
                                     where=redact_url(settings.redis_url))
            for text in found.warnings if found is not None else ():
                click.echo(f"warning: {text}", err=True)
        finally:
            client.close()
    try:
        from faec_rec.workers.app import make_app

        app = make_app(settings)
        argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency or settings.workers.concurrency),
                "-P", pool, "-l", loglevel, "-n", f"faec-{settings.prefix}-{os.getpid()}@%h"]
        app.worker_main(argv=argv)
    finally:
        if lease is not None:
            lease.release()


@cli.command("beat")
@click.option("-l", "--loglevel", default="INFO", show_default=True, help="Celery log level.")
@pass_state
def beat_cmd(state: State, loglevel: str) -> None:
    """Run the Celery beat scheduler (scheduled head retraining, training.schedule)."""
    settings = state.settings()
    if not settings.redis_url:
        raise CommandFailed("beat schedules work for a deployment: set FAEC_REDIS_URL (and run `faec-rec worker` there)")
    from faec_rec.embedded import connect
    from faec_rec.workers.app import make_app

    connect(settings.redis_url).close()
    app = make_app(settings)
    if not app.conf.beat_schedule:
        raise CommandFailed("no beat schedule is configured (faec_rec.training.schedule is not installed)")
    schedule = Path(settings.data_dir) / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    app.Beat(loglevel=loglevel, schedule=str(schedule)).run()


# ---- people ------------------------------------------------------------------------------

@cli.group("people", cls=FaecGroup)
def people_group() -> None:
    """List, show, rename and forget enrolled people."""


def _person_json(person: Any) -> dict[str, Any]:
    if isinstance(person, dict):
        return person
    for method in ("to_json", "as_dict"):
        if hasattr(person, method):
            return getattr(person, method)()
    from dataclasses import asdict, is_dataclass

    if is_dataclass(person):
        return asdict(person)
    return {"id": _person_id(person), "name": getattr(person, "name", None)}


def _person_id(record: Any) -> str | None:
    """A person's id from a gallery Person (``id``) or a JSON record (``id``/``person_id``)."""
    for name in ("id", "person_id"):
        value = _attr(record, name)
        if value:
            return str(value)
    return None


def _templates_of(record: dict[str, Any]) -> int:
    value = record.get("templates", record.get("template_count", 0))
    return len(value) if isinstance(value, (list, tuple, set)) else int(value or 0)


@people_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON.")
@pass_state
def people_list(state: State, as_json: bool) -> None:
    """Every enrolled person with their template count."""
    with _backend(state) as backend:
        people = [_person_json(p) for p in _client(backend).people()]
    if as_json:
        _echo_json(people)
        return
    if not people:
        click.echo("nobody is enrolled yet: try `faec-rec enrol NAME IMAGE...`")
        return
    for p in sorted(people, key=lambda r: str(r.get("name", "")).casefold()):
        click.echo(f"{_person_id(p) or '?':<34} {_templates_of(p):>4} templates  {p.get('name')}")


@people_group.command("show")
@click.argument("person")
@pass_state
def people_show(state: State, person: str) -> None:
    """Everything stored about PERSON (id or name), as JSON."""
    with _backend(state) as backend:
        _echo_json(_person_json(_client(backend).person(person)))


@people_group.command("rename")
@click.argument("person")
@click.argument("new_name")
@pass_state
def people_rename(state: State, person: str, new_name: str) -> None:
    """Give PERSON (id or name) the display name NEW_NAME."""
    name = check_person_name(new_name)
    with _backend(state) as backend:
        _client(backend).rename(person, name)
    click.echo(f"renamed {person} to {name}")


@people_group.command("forget")
@click.argument("person")
@click.option("--yes", is_flag=True, help="do not ask for confirmation.")
@pass_state
def people_forget(state: State, person: str, yes: bool) -> None:
    """Delete PERSON (id or name): templates, crops and index entries everywhere."""
    with _backend(state) as backend:
        client = _client(backend)
        record = _person_json(client.person(person))  # raises UnknownPersonError first
        if not yes:
            click.confirm(f"forget {record.get('name')} ({_templates_of(record)} templates)?", abort=True)
        client.forget(f"id:{_person_id(record)}" if _person_id(record) else person)
    click.echo(f"forgot {record.get('name')} ({_person_id(record)})")


# ---- events ------------------------------------------------------------------------------

def _event_line(event: dict[str, Any]) -> str:
    at = event.get("processed_at") or event.get("captured_at")
    when = time.strftime("%H:%M:%S", time.localtime(float(at))) if at else "--:--:--"
    kind = event.get("type", "?")
    if kind == "error":
        return f"{when} {event.get('camera')} frame {event.get('frame')} error {event.get('error')}: {event.get('detail') or ''}"
    who = event.get("person") if event.get("decision") == "known" else "unknown"
    score = event.get("score")
    score_text = "" if score is None else f" {float(score):.3f}"
    return f"{when} {event.get('camera')} track {event.get('track_id')} {kind:<8} {who}{score_text}"


def events_start(redis: Any, stream: str, count: int) -> str:
    """The stream id after which the last ``count`` entries of ``stream`` begin."""
    if count <= 0:
        newest = redis.xrevrange(stream, count=1)
        return newest[0][0].decode() if newest else "0-0"
    tail = redis.xrevrange(stream, count=count + 1)
    return tail[-1][0].decode() if len(tail) > count else "0-0"


@cli.command("events")
@click.option("--camera", help="only this camera's events.")
@click.option("--follow", "-f", is_flag=True, help="keep printing new events until Ctrl-C.")
@click.option("-n", "--count", type=click.IntRange(0, 100_000), default=20, show_default=True,
              help="how many past events to print first.")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line.")
@click.option("--visitor", help="only events of this visitor (e.g. v-12).")
@pass_state
def events_cmd(state: State, camera: str | None, follow: bool, count: int, as_json: bool, visitor: str | None) -> None:
    """Print recognition events (arrived / updated / left / error)."""
    from faec_rec.keys import safe_id

    if camera is not None:
        try:
            safe_id(camera, "camera id")
        except ValueError as exc:
            raise CommandFailed(str(exc)) from exc
    with _backend(state) as backend:
        after = events_start(backend.redis, backend.keys.events(camera), count)
        if visitor is not None and not follow:
            after = "0-0"  # a visitor's events may be anywhere in the stream: scan it all
        for event in _client(backend).events(camera=camera, follow=follow, last_id=after):
            if visitor is not None and event.get("visitor") != visitor:
                continue
            click.echo(json.dumps(event, ensure_ascii=False) if as_json else _event_line(event))


# ---- identify ------------------------------------------------------------------------------

IDENTIFY_WINDOW = 32  # images in flight at once: bounds the Redis memory uploads take


def identify_images(backend: Any, client: Any, images: Iterable[Path], *, timeout_s: float,
                    on_result: Callable[[dict[str, Any]], None] = lambda r: None) -> int:
    """Identify ``images`` as one folder job (see the folder protocol), passing each
    record (the workers' shape) to ``on_result`` in completion order; returns how many.

    ``images`` may be a generator (a folder walk): it is consumed as room frees up and
    never listed, so memory holds at most :data:`IDENTIFY_WINDOW` images in flight
    whatever the folder's size. They go out ``workers.folder_batch`` at a time
    (:meth:`Client.send_identify`: one task, their faces embedded in one model call).
    Embedded, the worker reads the files itself; against a deployment the bytes
    are uploaded (``keys.upload``, with a TTL) since workers may run elsewhere.
    If no result arrives for ``timeout_s`` seconds, the images in flight and those
    not yet sent get an ``error`` "no_result" and :class:`BackendUnavailable` is raised
    after ``on_result`` saw every record (so a partial report can still be written).
    """
    r, keys = backend.redis, backend.keys
    job = uuid.uuid4().hex
    job_key, stream = keys.job(job), keys.job_results(job)
    r.hset(job_key, mapping={"total": 0, "done": 0, "errors": 0, "source": "cli", "open": 1})
    r.expire(job_key, backend.settings.workers.result_ttl_s)
    size = max(1, min(backend.settings.workers.folder_batch, IDENTIFY_WINDOW))
    source = iter(images)
    exhausted = False
    waiting: set[str] = set()  # names sent, no record yet (at most the window)
    batch: list[dict[str, Any]] = []
    count = 0
    last_id = "0"
    last_progress = time.monotonic()

    def record(rec: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        on_result(rec)

    def send() -> None:
        r.hincrby(job_key, "total", len(batch))  # before the task: done never passes total
        client.send_identify(job, batch)
        waiting.update(item["name"] for item in batch)
        batch.clear()

    try:
        while True:
            while not exhausted and len(waiting) + len(batch) < IDENTIFY_WINDOW:
                path = next(source, None)
                if path is None:
                    exhausted = True
                    break
                name = os.path.abspath(path)  # absolute, symlinks kept: the user's own names
                payload: dict[str, Any] = {"path": name, "key": None, "name": name}
                if not backend.embedded:
                    try:
                        upload, _ = client.upload(name)
                    except ImageError as exc:  # unreadable here: no worker could do better
                        record({"path": name, "faces": [], "error": exc.reason, "model_version": None})
                        continue
                    payload = {"path": None, "key": upload, "name": name}
                batch.append(payload)
                if len(batch) >= size:
                    send()
            if batch:  # the walk ended or the window is full: send what is gathered
                send()
            if exhausted and not waiting:
                break
            reply = r.xread({stream: last_id}, block=1000, count=IDENTIFY_WINDOW)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    rec = json.loads(fields.get(b"result") or fields.get("result"))
                    if rec.get("path") not in waiting or "skipped" in rec:  # a redelivered record
                        continue
                    waiting.discard(rec["path"])
                    last_progress = time.monotonic()
                    record(rec)
            if time.monotonic() - last_progress > timeout_s:
                done = count
                missing = sorted(waiting) + [os.path.abspath(p) for p in source]
                for name in missing:
                    record({"path": name, "faces": [], "error": "no_result: no worker answered in time",
                            "model_version": None})
                if getattr(backend, "worker_here", False):
                    raise BackendUnavailable(
                        f"no result for {timeout_s:.0f}s ({done} of {count} images done): "
                        "the worker inside this command is still busy (a loaded machine, very large photos); "
                        "raise --timeout, or run `faec-rec worker` in another terminal")
                raise BackendUnavailable(
                    f"no result for {timeout_s:.0f}s ({done} of {count} images done): "
                    "is a worker consuming queue 'frames'? start one with `faec-rec worker`, or raise --timeout"
                )
    finally:
        r.delete(job_key, stream)
    return count


def _summary_lines(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    lines = [f"{s['images']} images: {s['faces']} faces, {s['known']} known, {s['unknown']} unknown; "
             f"{s['by_status']['no-face']} without a face, {s['errors']} errors"]
    for name, count in s["people"].items():
        lines.append(f"  {name}: {count}")
    for image in report["images"]:
        if image["error"]:
            lines.append(f"  error {image['path']}: {image['error']}")
    return lines


def write_reports(records: Any, json_path: Path, html_path: Path | None, *, source: str,
                  skipped: Sequence[Path] = ()) -> dict[str, Any]:
    """Write the report of ``records`` (a :class:`~faec_rec.report.ReportSpool` of worker
    records) as JSON (and HTML), streamed record by record."""
    from faec_rec import report as rp

    report = records.report(source=source,
                            skipped=[{"path": str(p), "reason": "not an image (by file suffix)"} for p in skipped])
    rp.write_json(report, json_path)
    if html_path is not None:
        with _progress(len(report["images"]), "drawing report") as bar:
            rp.write_html(report, html_path, progress=bar.update)
    return report


@cli.command("identify")
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="write the JSON report here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also write a self-contained HTML page to check the results by eye.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=300, show_default=True,
              help="give up after this many seconds without any result.")
@pass_state
def identify_cmd(state: State, folder: Path, report_path: Path, html_path: Path | None, timeout_s: float) -> None:
    """Identify every face in FOLDER (recursively; or one image file).

    The JSON report lists every image (`path`) with its `faces`: `box`
    [x1, y1, x2, y2], `person` (null for a stranger), `score`, `decision`
    (known/unknown); unreadable files carry an `error`.
    """
    images, others = _image_stream(folder)
    first = next(images, None)
    if first is None:
        for other in others:
            click.echo(f"skipped (not an image): {display_name(str(other))}", err=True)
        raise CommandFailed(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    # before any work; an output inside FOLDER that the walk would read is an input too
    walked = [p for p in (report_path, html_path) if p is not None and p.exists() and is_image_path(p)
              and _inside(p, folder)]
    check_outputs({"--report": report_path, "--html": html_path}, [folder, *walked])
    code = _identify_and_report(state, itertools.chain([first], images), others, folder, report_path,
                                html_path, timeout_s)
    raise click.exceptions.Exit(int(code))


def _image_stream(root: Path) -> tuple[Iterator[Path], list[Path]]:
    """The images under ``root`` as a lazy, sorted walk (or ``root`` itself when it is an image
    file), and the list the walk fills with the other files it meets."""
    others: list[Path] = []
    if root.is_file():
        if not is_image_path(root):
            others.append(root)
        return iter([root] if is_image_path(root) else []), others

    def walk() -> Iterator[Path]:
        for path, is_image in iter_files(root):
            if is_image:
                yield path
            else:
                others.append(path)
    return walk(), others


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def _identify_and_report(state: State, images: Iterable[Path], others: Sequence[Path], source: Path,
                         report_path: Path, html_path: Path | None, timeout_s: float,
                         backend: Any = None) -> ExitCode:
    """Identify ``images`` (a list, or a lazy walk that fills ``others`` as it goes) and
    write the report; records are spooled to a temporary file beside the report (the
    report lists every image; memory holds a path and an offset per image), paths are not kept."""
    from faec_rec.report import ReportSpool

    failure: BackendUnavailable | None = None
    total = len(images) if isinstance(images, Sized) else None  # a walk: the bar counts without a total
    # beside the report: check_outputs made sure that folder is writable
    with ReportSpool(report_path.resolve().parent) as records:
        with contextlib.ExitStack() as stack:
            if backend is None:
                backend = stack.enter_context(_backend(state, worker_queues=("frames",)))
                if not backend.embedded:
                    backend.require_consumers("frames")
            bar = stack.enter_context(_progress(total, "identifying"))
            try:
                identify_images(backend, _client(backend), images, timeout_s=timeout_s,
                                on_result=lambda rec: (records.add(rec), bar.update()))
            except BackendUnavailable as exc:
                failure = exc
        for other in others:
            click.echo(f"skipped (not an image): {display_name(str(other))}", err=True)
        report = write_reports(records, report_path, html_path, source=str(source), skipped=others)
        for line in _summary_lines(report):
            click.echo(line)
    click.echo(f"report: {report_path}" + (f", {html_path}" if html_path else ""))
    if failure is not None:
        raise failure
    return ExitCode.PARTIAL if report["summary"]["errors"] else ExitCode.OK


# ---- enrol ----------------------------------------------------------------------------------

@dataclass
class EnrolOutcome:
    """What one person's enrolment did, for printing and the exit code."""

    name: str
    person_id: str | None = None
    accepted: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    error: str | None = None
    duplicates: list[str] = field(default_factory=list)  # already enrolled for this person: kept once

    @property
    def ok(self) -> bool:
        return not self.refused and not self.error


def _attr(record: Any, name: str, default: Any = None) -> Any:
    return record.get(name, default) if isinstance(record, dict) else getattr(record, name, default)


def enrol_person(client: Any, name: str, images: Sequence[Path], timeout_s: float,
                 request_id: str | None = None, worker_here: bool = False) -> EnrolOutcome:
    """Enrol ``images`` of ``name`` through the queue and wait for the verdicts.

    Files missing here are refused locally; the worker judges the rest (the
    quality gate: one clear, large enough, frontal face). ``request_id`` names
    the request (to look for its report after an interruption).
    """
    outcome, present = _local_check(client, name, images)
    if not present:
        return outcome
    try:
        report = client.enrol(name, [os.path.abspath(p) for p in present], wait=True, timeout=timeout_s,
                              request_id=request_id)
    except ImageError as exc:  # a file that became unreadable after the check above
        outcome.error = f"{exc.source}: {exc.reason}"
        return outcome
    except TaskTimeout as exc:
        raise _enrol_timeout(name, timeout_s, worker_here) from exc
    return _outcome_from_report(outcome, report)


def _local_check(client: Any, name: str, images: Sequence[Path]) -> tuple[EnrolOutcome, list[Path]]:
    """The outcome so far (files refused here: missing, empty, over the byte cap) and the
    images to send; ``outcome.error`` is set when none is left."""
    outcome = EnrolOutcome(name=name)
    present: list[Path] = []
    max_bytes = client.settings.faces.max_image_bytes
    for path in images:
        try:
            size = path.stat().st_size
            if size == 0:
                outcome.refused.append((str(path), "bad_image: empty file"))
                continue
            if size > max_bytes:  # refused here, per image, before it takes room in Redis
                outcome.refused.append((str(path), f"too_large: {size} bytes, more than faces.max_image_bytes "
                                                   f"({max_bytes})"))
                continue
            with path.open("rb"):
                present.append(path)
        except OSError as exc:
            outcome.refused.append((str(path), f"unreadable: {exc.strerror or exc}"))
    if not present:
        outcome.error = "no readable image"
    return outcome, present


def _enrol_timeout(name: str, timeout_s: float, worker_here: bool) -> BackendUnavailable:
    if worker_here:  # the worker is ours and running: it is slow, not missing
        return BackendUnavailable(
            f"enrolment of {name!r} not finished after {timeout_s:.0f}s: the worker inside this command is "
            "still busy with it (a loaded machine, large photos); raise --timeout, or run `faec-rec worker` "
            f"in another terminal; check later with `faec-rec people show {name!r}`"
        )
    return BackendUnavailable(
        f"enrolment of {name!r} not finished after {timeout_s:.0f}s: is a worker consuming queue 'enrol'? "
        "start one with `faec-rec worker`, or raise --timeout"
    )


@dataclass
class _Queued:
    """One person of a batched folder enrolment: sent (``request_id``) or refused here."""

    outcome: EnrolOutcome
    request_id: str | None
    present: list[Path]


def _check_people(client: Any, people: Sequence[tuple[str, Sequence[Path]]]) -> list[_Queued]:
    """Check ``people``'s files here; those with images get the request id :func:`_send_people`
    sends them under (known before sending, so a Ctrl-C while sending can still wait for them)."""
    queued: list[_Queued] = []
    for person, files in people:
        outcome, present = _local_check(client, person, files)
        queued.append(_Queued(outcome, uuid.uuid4().hex if present else None, present))
    return queued


def _send_people(client: Any, queued: list[_Queued]) -> list[_Queued]:
    """Queue the checked people with images as one batch (:meth:`Client.enrol_batch`); a person
    whose file became unreadable meanwhile is sent alone (so only that person fails)."""
    todo = [q for q in queued if q.request_id is not None]
    try:
        client.enrol_batch([(q.outcome.name, [os.path.abspath(p) for p in q.present]) for q in todo],
                           request_ids=[q.request_id for q in todo])
    except ImageError:
        for q in todo:
            try:
                client.enrol_batch([(q.outcome.name, [os.path.abspath(p) for p in q.present])],
                                   request_ids=[q.request_id])
            except ImageError as exc:
                q.outcome.error, q.request_id = f"{exc.source}: {exc.reason}", None
    return queued


def _outcome_from_report(outcome: EnrolOutcome, report: Any) -> EnrolOutcome:
    outcome.person_id = _attr(report, "person_id")
    for image in _attr(report, "images", []) or []:
        label = str(_attr(image, "name"))
        if _attr(image, "accepted") and _attr(image, "reason") == "duplicate":
            outcome.duplicates.append(label)
        elif _attr(image, "accepted"):
            outcome.accepted.append(label)
        else:
            detail = _attr(image, "detail") or ""
            outcome.refused.append((label, f"{_attr(image, 'reason')}" + (f": {detail}" if detail else "")))
    error = _attr(report, "error")
    if error and not outcome.accepted and not outcome.duplicates:
        detail = _attr(report, "detail")
        outcome.error = f"{error}" + (f": {detail}" if detail else "")
    return outcome


def _print_outcome(outcome: EnrolOutcome, root: Path | None = None) -> None:
    def short(p: str) -> str:
        try:
            rel = os.path.relpath(p, os.path.abspath(root or Path.cwd()))
        except ValueError:  # another drive
            return display_name(p)
        return display_name(p if rel.startswith("..") else rel)  # a name may not be valid UTF-8

    for image in outcome.accepted:
        click.echo(f"  accepted  {short(image)}")
    for image in outcome.duplicates:
        click.echo(f"  duplicate {short(image)}: already enrolled for this person; kept once")
    for image, reason in outcome.refused:
        click.echo(f"  refused   {short(image)}: {reason}")
    who = f"{outcome.name}" + (f" ({outcome.person_id})" if outcome.person_id else "")
    tail = f"; not enrolled: {outcome.error}" if outcome.error else ""
    dup = f", {len(outcome.duplicates)} duplicate" if outcome.duplicates else ""
    click.echo(f"{who}: {len(outcome.accepted)} accepted{dup}, {len(outcome.refused)} refused{tail}")


def folder_people(root: Path) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """(name, images) per sub-folder of ``root`` and the problems found (bad names,
    empty folders, loose files), without stopping at the first."""
    people: list[tuple[str, list[Path]]] = []
    problems: list[str] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(f"skipped {entry.name}: files directly in ROOT are ignored (one sub-folder per person)")
            continue
        try:
            name = check_person_name(entry.name)
        except CommandFailed as exc:
            problems.append(f"skipped folder {entry.name!r}: {exc.format_message()}")
            continue
        images, _ = list_images(entry)
        if not images:
            problems.append(f"skipped folder {entry.name!r}: no images in it")
            continue
        people.append((name, images))
    return people, problems


@cli.command("enrol")
@click.argument("name", required=False)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--folder", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="ROOT with one sub-folder per person; the folder name is the person's name.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=300, show_default=True,
              help="seconds to wait for each person's enrolment.")
@pass_state
def enrol_cmd(state: State, name: str | None, images: tuple[Path, ...], folder: Path | None, timeout_s: float) -> None:
    """Enrol NAME from IMAGE files, or everyone under --folder ROOT.

    Each image must show one clear face; each is accepted or refused with a reason.
    Enrolling an existing name adds photos to that person.
    """
    if folder is not None:
        if name or images:
            raise CommandFailed("give either NAME IMAGE... or --folder ROOT, not both")
        people, problems = folder_people(folder)
        for problem in problems:
            click.echo(problem, err=True)
        if not people:
            raise CommandFailed(f"no person folder with images under {folder} (expected ROOT/<name>/<images>)")
    else:
        if not name or not images:
            raise CommandFailed("usage: faec-rec enrol NAME IMAGE... (or --folder ROOT)")
        people, problems = [(check_person_name(name), list(images))], []
    outcomes = _enrol_all(state, people, timeout_s, root=folder)
    failed = bool(problems) or any(not o.ok for o in outcomes)
    raise click.exceptions.Exit(int(ExitCode.PARTIAL if failed else ExitCode.OK))


def _enrol_all(state: State, people: Sequence[tuple[str, Sequence[Path]]], timeout_s: float,
               root: Path | None = None, backend: Any = None) -> list[EnrolOutcome]:
    """Enrol ``people`` ``workers.folder_batch`` at a time per task (their faces embedded in one
    model call on the worker) and print each person's outcome in order as its report comes.
    One batch is queued at a time, so after Ctrl-C only that batch can still be stored: its
    reports are waited for (a grace period) and printed, and nobody is enrolled unreported."""
    outcomes: list[EnrolOutcome] = []
    with contextlib.ExitStack() as stack:
        if backend is None:
            backend = stack.enter_context(_backend(state, worker_queues=("enrol",)))
            if not backend.embedded:
                backend.require_consumers("enrol")
        client = _client(backend)
        worker_here = bool(getattr(backend, "worker_here", False))
        size = max(1, backend.settings.workers.folder_batch)
        bar = stack.enter_context(_progress(len(people), "enrolling", unit="person"))
        for start in range(0, len(people), size):
            try:
                queued = _check_people(client, people[start:start + size])
            except KeyboardInterrupt:  # nothing of this batch sent yet
                bar.clear()
                click.echo(f"interrupted: {len(outcomes)} of {len(people)} people done", err=True)
                raise click.exceptions.Exit(130) from None
            try:
                _send_people(client, queued)
            except KeyboardInterrupt:  # the batch may have gone out just before: wait for it as for one in hand
                bar.clear()
                _report_interrupted(client, [(q.outcome.name, q.request_id) for q in queued if q.request_id],
                                    len(outcomes), len(people), root)
                raise click.exceptions.Exit(130) from None
            for n, item in enumerate(queued):
                outcome = item.outcome
                if item.request_id is not None:
                    try:
                        report = client.enrol_report(item.request_id, timeout=timeout_s)
                    except TaskTimeout as exc:
                        raise _enrol_timeout(outcome.name, timeout_s, worker_here) from exc
                    except KeyboardInterrupt:
                        bar.clear()
                        _report_interrupted(client, [(q.outcome.name, q.request_id) for q in queued[n:]
                                                     if q.request_id is not None],
                                            len(outcomes), len(people), root)
                        raise click.exceptions.Exit(130) from None
                    outcome = _outcome_from_report(outcome, report)
                try:
                    bar.clear()
                    _print_outcome(outcome, root)
                    bar.update()
                    outcomes.append(outcome)
                except KeyboardInterrupt:  # between two people: nothing in hand
                    if outcome not in outcomes:
                        outcomes.append(outcome)
                    rest = [(q.outcome.name, q.request_id) for q in queued[n + 1:] if q.request_id is not None]
                    if rest:  # the batch's others may be stored meanwhile: say which
                        _report_interrupted(client, rest, len(outcomes), len(people), root)
                    else:
                        click.echo(f"interrupted: {len(outcomes)} of {len(people)} people done", err=True)
                    raise click.exceptions.Exit(130) from None
    return outcomes


INTERRUPT_GRACE_S = 30.0


def _report_interrupted(client: Any, pending: Sequence[tuple[str, str]], done: int, total: int,
                        root: Path | None) -> None:
    """After Ctrl-C with ``pending`` people (name, request id) of the batch in hand: the worker
    may already hold them; wait a little for their reports (a second Ctrl-C stops waiting) so a
    person enrolled meanwhile is never enrolled unreported, and say what was done."""
    names = ", ".join(name for name, _ in pending)
    click.echo(f"interrupted during the enrolment of {names}: waiting up to {INTERRUPT_GRACE_S:.0f}s for the "
               "photos in hand (Ctrl-C again to stop now)", err=True)
    reports: dict[str, Any] = {}
    deadline = time.monotonic() + INTERRUPT_GRACE_S
    try:
        while len(reports) < len(pending) and time.monotonic() < deadline:
            for _, request_id in pending:
                if request_id not in reports:
                    report = client.finished_enrolment(request_id)  # (parts merged, for many photos)
                    if report is not None:
                        reports[request_id] = report
            if len(reports) < len(pending):
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # Redis gone: say so, do not trace back
        log.debug("no report after interruption: %s", exc)
    finished, missing = [], []
    for person, request_id in pending:
        if request_id in reports:
            _print_outcome(_outcome_from_report(EnrolOutcome(name=person), reports[request_id]), root)
            finished.append(person)
        else:
            missing.append(person)
    done += len(finished)
    meanwhile = f" ({', '.join(finished)} finished meanwhile)" if finished else ""
    if missing:
        click.echo(f"interrupted: {done} of {total} people done{meanwhile}; {', '.join(missing)} not enrolled "
                   f"(a queued request is dropped; check with `faec-rec people show {missing[0]}`)", err=True)
    else:
        click.echo(f"interrupted: {done} of {total} people done{meanwhile}", err=True)


# ---- camera ----------------------------------------------------------------------------------

def camera_specs(sources: Sequence[str], fps: float | None, loop: bool) -> list[Any]:
    """``ID=SOURCE`` or a bare SOURCE (then named cam1, cam2, ...) -> camera specs."""
    from faec_rec.errors import SourceError
    from faec_rec.producers.camera import CameraSpec

    specs = []
    for number, text in enumerate(sources, start=1):
        try:
            spec = CameraSpec.parse(text, loop=loop)
        except (SourceError, ValueError):
            # a bare source (a URL may hold '=' in its query: then it is bare too)
            spec = CameraSpec(f"cam{number}", text, loop=loop)
        specs.append(CameraSpec(spec.camera_id, spec.source, fps=fps, loop=loop))
    ids = [s.camera_id for s in specs]
    if len(set(ids)) != len(ids):
        raise CommandFailed(f"camera ids must be unique, got {', '.join(ids)}: write ID=SOURCE with distinct ids")
    return specs


CAMERA_SOURCES_ENV = "FAEC_CAMERA_SOURCES"


def camera_sources(arguments: Sequence[str], sources_file: Path | None,
                   environ: Mapping[str, str] | None = None) -> list[str]:
    """The camera sources of a run: arguments, else ``--sources-file`` (one ``ID=SOURCE`` a
    line, ``#`` comments), else ``$FAEC_CAMERA_SOURCES`` (``ID=SOURCE`` separated by spaces,
    commas or new lines). A file or the environment keeps credentials in stream URLs
    (``rtsp://user:pass@...``) off the command line, where ``ps`` and ``/proc`` show them."""
    environ = os.environ if environ is None else environ
    given = [bool(arguments), sources_file is not None]
    if sum(given) > 1:
        raise click.UsageError("give camera sources as arguments or with --sources-file, not both")
    if arguments:
        return list(arguments)
    if sources_file is not None:
        try:
            text = Path(sources_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise click.UsageError(f"cannot read --sources-file {sources_file}: {getattr(exc, 'strerror', None) or exc}") from exc
        found = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        where = f"--sources-file {sources_file}"
    else:
        found = [part for part in re.split(r"[\s,]+", environ.get(CAMERA_SOURCES_ENV, "")) if part]
        where = CAMERA_SOURCES_ENV
    if not found:
        raise click.UsageError(f"no camera source: give ID=SOURCE arguments, --sources-file FILE or {CAMERA_SOURCES_ENV}"
                               + (f" ({where} holds none)" if sources_file is not None or CAMERA_SOURCES_ENV in environ else ""))
    return found


def _print_events_until(backend: Any, stop: Any, after: str) -> None:
    from faec_rec.workers.events import read_events

    while not stop.is_set():
        try:
            batch = read_events(backend.redis, backend.keys, None, after=after, count=100, block_ms=500)
        except Exception as exc:  # the private Redis stops at the end; a printer must not crash the run
            log.debug("event printer stopped: %s", exc)
            return
        for stream_id, event in batch:
            after = stream_id
            click.echo(_event_line(event.to_json()))


def _drain(backend: Any, cameras: Sequence[str], wait_s: float) -> None:
    """Wait (at most ``wait_s``) until no frame of ``cameras`` waits for a worker."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not any(backend.redis.llen(backend.keys.in_flight(c)) for c in cameras):
            return
        time.sleep(0.2)


@cli.command("camera")
@click.argument("sources", nargs=-1)
@click.option("--sources-file", type=click.Path(dir_okay=False, path_type=Path),
              help="read ID=SOURCE lines from this file (keeps stream passwords off the command line); "
                   "without arguments or this option, FAEC_CAMERA_SOURCES is read.")
@click.option("--fps", type=click.FloatRange(0.01, 120), help="frames per second per camera (default: producers.fps).")
@click.option("--loop", is_flag=True, help="replay video files from the start when they end.")
@click.option("--duration", "duration_s", type=click.FloatRange(0.1, None), help="stop after this many seconds.")
@click.option("--max-frames", type=click.IntRange(1, None), help="stop each camera after this many frames.")
@click.option("--registry", is_flag=True,
              help="run the cameras of the source registry instead (`faec-rec cameras add|remove`, the API, the "
                   "Live page), starting and stopping them as they are added and removed.")
@pass_state
def camera_cmd(state: State, sources: tuple[str, ...], fps: float | None, loop: bool,
               duration_s: float | None, max_frames: int | None, sources_file: Path | None = None,
               registry: bool = False) -> None:
    """Stream cameras into the recognition queue (until Ctrl-C, --duration or --max-frames).

    SOURCE is ID=SOURCE or a bare source: a USB index (0), an rtsp:// or http://
    URL, or a video file. Embedded (no FAEC_REDIS_URL), a worker runs inside
    this command and the events are printed as they come; against a
    deployment, watch them with `faec-rec events --follow`. With --registry,
    the cameras are those registered with `faec-rec cameras add`.
    """
    import threading

    from faec_rec.logs import redact
    from faec_rec.producers.camera import close_tracks, run_cameras
    from faec_rec.producers.sources import mask_source

    if registry:
        if sources or sources_file is not None or fps is not None or loop or max_frames is not None:
            raise click.UsageError("--registry takes its cameras (with their fps and loop) from the registry: "
                                   "give no SOURCE, --sources-file, --fps, --loop or --max-frames with it")
        _camera_registry_run(state, duration_s)
        return
    specs = camera_specs(camera_sources(sources, sources_file), fps, loop)
    with _backend(state, worker_queues=("frames",)) as backend:
        settings = backend.settings
        if not backend.embedded:
            backend.require_consumers("frames")
        stop = threading.Event()
        printer = None
        if backend.embedded:
            newest = backend.redis.xrevrange(backend.keys.events(), count=1)
            after = newest[0][0].decode() if newest else "0-0"
            printer = threading.Thread(target=_print_events_until, args=(backend, stop, after), daemon=True)
            printer.start()
        click.echo(redact(f"streaming {', '.join(f'{s.camera_id}={mask_source(s.source)}' for s in specs)} (Ctrl-C stops)"),
                   err=True)
        try:
            counters = run_cameras(specs, backend.redis, backend.keys, backend.app, settings.producers,
                                   settings.workers.frame_ttl_s, max_frames=max_frames, duration_s=duration_s,
                                   stop=stop, events=settings.events)
            # Tracks still open when the run ends get their "left" events once the
            # last frames were tracked (1 s: a frame a worker took but has not tracked yet).
            _drain(backend, [s.camera_id for s in specs], wait_s=60)
            time.sleep(1.0)
            close_tracks(backend.redis, backend.keys, settings.events, [s.camera_id for s in specs])
            if backend.embedded:
                time.sleep(1.0)  # let the printer catch the last events
        finally:
            stop.set()
            if printer is not None:
                printer.join(timeout=2)
    failed = False
    for camera_id, c in counters.items():
        failed |= c.pushed == 0
        click.echo(redact(f"{camera_id}: {c.pushed} frames pushed, {c.dropped} dropped, {c.errors} errors, "
                          f"status {c.status}" + (f" ({c.last_error})" if c.last_error else "")))
    raise click.exceptions.Exit(int(ExitCode.PARTIAL if failed else ExitCode.OK))


def _camera_registry_run(state: State, duration_s: float | None) -> None:
    """``faec-rec camera --registry``: run the registry's cameras until Ctrl-C or ``duration_s``."""
    import threading

    from faec_rec.producers.camera import close_tracks
    from faec_rec.producers.supervisor import run_registry

    with _backend(state, worker_queues=("frames",)) as backend:
        settings = backend.settings
        if not backend.embedded:
            backend.require_consumers("frames")
        stop = threading.Event()
        click.echo("running the cameras of the source registry (`faec-rec cameras add|remove`; Ctrl-C stops)",
                   err=True)
        try:
            ran = run_registry(backend.redis, backend.keys, backend.app, settings.producers,
                               settings.workers.frame_ttl_s, stop=stop, duration_s=duration_s,
                               events=settings.events)
        finally:
            stop.set()
        _drain(backend, ran, wait_s=60)
        close_tracks(backend.redis, backend.keys, settings.events, ran)
    click.echo(f"stopped; {len(ran)} camera(s) ran: {', '.join(ran) or 'none'}")


# ---- cameras (the source registry) ------------------------------------------------------------

@cli.group("cameras", cls=FaecGroup)
def cameras_group() -> None:
    """Register camera sources for `faec-rec camera --registry` (add, remove, list)."""


@cameras_group.command("add")
@click.argument("camera_id")
@click.argument("source")
@click.option("--fps", type=click.FloatRange(0.01, 120), help="frames per second (default: producers.fps).")
@click.option("--loop", is_flag=True, help="replay a video file from the start when it ends.")
@pass_state
def cameras_add_cmd(state: State, camera_id: str, source: str, fps: float | None, loop: bool) -> None:
    """Register CAMERA_ID streaming SOURCE (USB index, rtsp:// or http:// URL, video file).

    SOURCE '-' reads it from standard input, which keeps a stream password off the
    command line (where `ps` shows it). Credentials are stored, and masked wherever shown.
    """
    if source == "-":
        source = sys.stdin.readline().strip()
    with _backend(state) as backend:
        try:
            record = _client(backend).cameras_add(camera_id, source, fps=fps, loop=loop)
        except ValueError as exc:
            raise CommandFailed(str(exc), ExitCode.USAGE) from exc
    click.echo(f"camera {record['camera']} registered: {record['source']}"
               + (f" at {record['fps']:g} frames/s" if record["fps"] else "")
               + " (a `faec-rec camera --registry` runner streams it)")


@cameras_group.command("remove")
@click.argument("camera_id")
@pass_state
def cameras_remove_cmd(state: State, camera_id: str) -> None:
    """Unregister CAMERA_ID: the registry runner stops it (its counters are kept)."""
    with _backend(state) as backend:
        try:
            _client(backend).cameras_remove(camera_id)
        except ValueError as exc:
            raise CommandFailed(str(exc), ExitCode.USAGE) from exc
    click.echo(f"camera {camera_id} removed")


@cameras_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON.")
@pass_state
def cameras_list_cmd(state: State, as_json: bool) -> None:
    """Every camera (registered or streaming): status, frames pushed, processed, dropped, source (masked)."""
    with _backend(state) as backend:
        rows = _client(backend).cameras()
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no camera: register one with `faec-rec cameras add ID SOURCE`")
        return
    for row in rows:
        click.echo(f"{row['camera']:<16} {row.get('status') or '-':<12} pushed {row.get('pushed') or 0:>6}  "
                   f"processed {row.get('processed') or 0:>6}  dropped {row.get('dropped') or 0:>5}  "
                   f"{'registered' if row['registered'] else 'command line'}  {row.get('source') or ''}")


# ---- demo ------------------------------------------------------------------------------------

@cli.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="where to write report.json and report.html (default: DATA_DIR/demo).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 86_400), default=600, show_default=True,
              help="give up after this many seconds without progress.")
@pass_state
def demo_cmd(state: State, out_dir: Path | None, timeout_s: float) -> None:
    """Enrol a few people and identify a mixed set of photos, on the embedded default.

    Uses its own private Redis and gallery under DATA_DIR/demo (reset each run),
    so it never touches your gallery, even with FAEC_REDIS_URL set.
    """
    from faec_rec.embedded import open_backend

    base = state.settings()
    workdir = Path(base.data_dir) / "demo"
    if base.redis_url:
        click.echo("note: the demo ignores FAEC_REDIS_URL and runs on its own private Redis", err=True)
    settings = base.model_copy(update={"redis_url": None, "data_dir": workdir})
    state_demo = State(verbose=state.verbose, _settings=settings)
    out_dir = out_dir or workdir
    from faec_rec.demo import demo_plan

    check_outputs({"--out report.json": out_dir / "report.json", "--out report.html": out_dir / "report.html"})
    plan = demo_plan(workdir)
    click.echo(f"demo data: {plan.description}")
    click.echo(f"embedded mode: private Redis and gallery under {workdir} (starting; the first photo loads the model)")
    with open_backend(settings, worker_queues=("enrol", "frames")) as backend:
        client = _client(backend)
        for person in client.people():  # a fresh demo every run
            client.forget(f"id:{_person_id(person)}")
        click.echo(f"enrolling {len(plan.enrol)} {'person' if len(plan.enrol) == 1 else 'people'}:")
        _enrol_all(state_demo, plan.enrol, timeout_s, backend=backend)
        click.echo(f"identifying {len(plan.identify)} other photos (of them, of strangers, without a face):")
        code = _identify_and_report(state_demo, [p for p, _ in plan.identify], [], Path("demo"),
                                    out_dir / "report.json", out_dir / "report.html", timeout_s, backend=backend)
    _print_demo_check(plan, out_dir / "report.json")
    raise click.exceptions.Exit(int(code))


def _print_demo_check(plan: Any, report_path: Path) -> None:
    from faec_rec.demo import judge

    report = json.loads(report_path.read_text())
    by_path = {i["path"]: i for i in report["images"]}
    right = 0
    click.echo("check against what a person would say:")
    for path, expect in plan.identify:
        image = by_path.get(os.path.abspath(path), {"faces": [], "error": "missing"})
        ok = not image.get("error") and judge(expect, image["faces"])
        right += ok
        wanted = ", ".join(e or "a stranger" for e in expect) or "no face"
        got = ", ".join((f["person"] if f["decision"] == "known" else "unknown") for f in image["faces"]) \
            or (f"error {image['error']}" if image.get("error") else "no face")
        click.echo(f"  {'ok  ' if ok else 'MISS'} {path.name}: expected {wanted}; got {got}")
    click.echo(f"{right}/{len(plan.identify)} photos answered as a person would. "
               f"Open {report_path.with_suffix('.html')} to check by eye.")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``faec-rec`` script."""
    _register_plugins()
    cli.main(args=list(argv) if argv is not None else None, prog_name="faec-rec")


if __name__ == "__main__":
    main()
