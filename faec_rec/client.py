"""The Python client an app uses: enrol, identify, follow events. No Celery in sight.

    from faec_rec.client import Client
    client = Client("redis://127.0.0.1:6379/0")
    report = client.enrol("Ada", ["ada1.jpg", "ada2.jpg"])       # waits for the worker
    for face in client.identify("door.jpg"):
        print(face.person or "stranger", face.score)
    for event in client.events(camera="door", follow=True):
        ...

Images travel as bytes: the client uploads them to ``keys.upload(id)`` with a
TTL and sends the task by name, so workers never need the client's files.
Waiting is done on Redis (the enrolment report key, the job's result stream),
not on Celery results.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, Sized

from faec_rec.config import Settings, load_settings
from faec_rec.errors import ConfigError, ImageError, TaskTimeout, UnknownJobError
from faec_rec.keys import Keys

if TYPE_CHECKING:
    from celery import Celery

    from faec_rec.workers.enrolment import EnrolReport, EnrolRequest

log = logging.getLogger(__name__)

ImageInput = str | Path | bytes

POLL_S = 0.05
UPLOAD_WINDOW = 32  # uploads of one batch or enrolment waiting for a worker at once (bounds the Redis memory they take)


@dataclass(frozen=True)
class FaceResult:
    """One face in an identified image.

    box: ``[x1, y1, x2, y2]`` pixels; person: name, or None for a stranger;
    score: cosine similarity of the best gallery match; decision: "known" or "unknown".
    """

    box: list[float]
    person: str | None
    person_id: str | None
    score: float | None
    decision: str
    runner_up: str | None = None
    visitor: str | None = None  # the visitor an unknown face was grouped into (faec_rec.visitors)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaceResult:
        return cls(box=list(data["box"]), person=data.get("person"), person_id=data.get("person_id"),
                   score=data.get("score"), decision=data["decision"], runner_up=data.get("runner_up"),
                   visitor=data.get("visitor"))


def _new_id() -> str:
    return uuid.uuid4().hex


class Client:
    """Talk to a faec_rec deployment through its Redis.

    ``redis_url`` overrides ``settings.redis_url``; ``settings`` defaults to
    :func:`load_settings` (environment, ``FAEC_CONFIG``). A Redis URL is
    required (the embedded mode is ``faec_rec.embedded.open_backend``).
    """

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None, *,
                 actor: str | None = None) -> None:
        from faec_rec.audit import default_actor

        #: who the changes made through this client are audited as (see :meth:`as_actor`)
        self.actor = actor or default_actor()
        settings = settings or load_settings()
        if redis_url:
            settings = settings.model_copy(update={"redis_url": redis_url})
        if not settings.redis_url:
            raise ConfigError("Client needs a Redis: pass redis_url or set FAEC_REDIS_URL")
        import redis as redis_lib

        self.settings = settings
        self.keys = Keys(settings.prefix)
        from faec_rec.cluster.sentinel import redis_from_url  # redis:// and redis+sentinel://

        self.redis = redis_from_url(settings.redis_url)
        # built on first use and shared by every as_actor() copy (a dict, so a shallow copy
        # shares it): a copy that built its own Celery app would leak one per web request
        self._lazy: dict[str, Any] = {}
        self._lazy_lock = threading.Lock()

    # ---- plumbing -------------------------------------------------------------
    @property
    def app(self) -> "Celery":
        with self._lazy_lock:
            if "app" not in self._lazy:
                from faec_rec.workers.app import make_app

                self._lazy["app"] = make_app(self.settings)
            return self._lazy["app"]

    def _send(self, task: str, payload: dict[str, Any]) -> None:
        from faec_rec.workers.app import ROUTES

        self.app.send_task(task, args=[payload], queue=ROUTES[task]["queue"])

    def upload(self, image: ImageInput) -> tuple[str, str]:
        """Store an image's bytes for a worker: returns ``(upload id, display name)``.

        Raises :class:`ImageError` for an unreadable or empty file, or one over the
        engine's caps (``faces.max_image_bytes``, ``faces.max_image_pixels`` read
        from the header): refused here, before it takes room in Redis.
        """
        data, name = _read_image(image, self.settings.faces.max_image_bytes, self.settings.faces.max_image_pixels)
        upload_id = _new_id()
        self.redis.set(self.keys.upload(upload_id), data, ex=self.settings.workers.upload_ttl_s)
        return upload_id, name

    def as_actor(self, actor: str) -> "Client":
        """This client (same connections) acting for ``actor`` in the audit stream."""
        import copy

        other = copy.copy(self)
        other.actor = actor
        return other

    def _audit(self, action: str, **details: Any) -> None:
        from faec_rec import audit

        audit.record(self.redis, self.keys, self.actor, action, **details)

    def audit_log(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` audit entries (who, what, when), newest first."""
        from faec_rec import audit

        return audit.read(self.redis, self.keys, count)

    def close(self) -> None:
        self.redis.close()
        if "app" in self._lazy:
            self._lazy["app"].close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- enrolment ---------------------------------------------------------------
    def enrol(
        self,
        name: str | None,
        images: Sequence[ImageInput],
        person_id: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
        wait: bool = True,
        timeout: float = 120.0,
        request_id: str | None = None,
        image_names: Sequence[str] | None = None,
        window: int = UPLOAD_WINDOW,
    ) -> "EnrolReport | str":
        """Enrol ``images`` of a person (by ``name``, or an existing ``person_id``).

        With ``wait`` (default) returns the :class:`EnrolReport` (per image:
        accepted, or refused with a reason); else the request id to pass to
        :meth:`enrol_report` later. ``request_id`` makes a retried call
        idempotent; ``image_names`` name the images in the report (default:
        their paths). Raises :class:`TaskTimeout` when no report comes in
        ``timeout`` seconds, :class:`ImageError` for an unreadable local file.

        The photos go through the same upload window as :meth:`submit_images`:
        more than ``window`` of them are sent as consecutive requests of
        ``window`` photos (``<request_id>.1``, ``.2``, ...), each uploaded once
        the one before is done, so Redis never holds more than ``window``
        uploads of this call; the report merges them (later parts are checked
        against the templates the earlier ones made). Then ``wait=False``
        returns once the last part is queued, and ``timeout`` bounds each wait.
        """
        from faec_rec.workers.app import TASK_ENROL
        from faec_rec.workers.enrolment import stored_report

        if not images:
            raise ValueError("enrol needs at least one image")
        if window < 1:
            raise ValueError(f"enrol upload window must be at least 1, not {window}")
        name = _enrol_name(name)
        request_id = request_id or _new_id()
        parts = [list(range(at, min(at + window, len(images)))) for at in range(0, len(images), window)]
        part_ids = [request_id] if len(parts) == 1 else [_part_id(request_id, k) for k in range(1, len(parts) + 1)]
        if len(parts) > 1:
            for image in images:  # an unreadable photo is refused before any part is enrolled
                _read_image(image, self.settings.faces.max_image_bytes, self.settings.faces.max_image_pixels)
        queued: list[str] = []  # part ids sent (or found done by a retried call), in order
        finished: list[EnrolReport] = []

        def done() -> int:  # uploads of this call the workers are finished with
            while len(finished) < len(queued):
                report = stored_report(self.redis, self.keys, queued[len(finished)])
                if report is None:
                    break
                finished.append(report)
            return sum(len(parts[k]) for k in range(len(finished)))

        names: list[str] = []
        sent = 0

        def wait_for_room() -> None:  # before each upload: at most ``window`` of this call in Redis
            nonlocal sent
            self._wait_for_window(done, sent, window, timeout, f"enrolment {request_id}", "enrol")
            sent += 1

        for part, part_id in zip(parts, part_ids):
            if stored_report(self.redis, self.keys, part_id) is None:  # a retried call skips parts done
                request = self._enrol_request(name, [images[i] for i in part], person_id, metadata, part_id,
                                              [image_names[i] for i in part] if image_names else None,
                                              before_upload=wait_for_room)
                self._send(TASK_ENROL, request.to_json())
                names += [r.name for r in request.images]
            else:
                sent += len(part)
            queued.append(part_id)
            if len(parts) > 1:  # what enrol_report merges: the parts sent so far (all, unless interrupted)
                key = self.keys.enrolment(request_id)
                self.redis.hset(key, mapping={"parts": len(queued), "started_at": repr(time.time())})
                self.redis.expire(key, self.settings.workers.result_ttl_s)
        self._audit("enrol", request_id=request_id, name=name, person_id=person_id, images=names)
        if not wait:
            return request_id
        return self.enrol_report(request_id, timeout=timeout)

    def finished_enrolment(self, request_id: str) -> "EnrolReport | None":
        """The report of enrolment ``request_id`` once it is done, else None (no wait).

        A request :meth:`enrol` sent in parts is done when every part sent is:
        their reports merged into one (:meth:`EnrolReport.merged`).
        """
        from faec_rec.workers.enrolment import EnrolReport, stored_report

        report = stored_report(self.redis, self.keys, request_id)
        if report is not None:
            return report
        parts = self.redis.hget(self.keys.enrolment(request_id), "parts")
        if not parts:
            return None
        reports = [stored_report(self.redis, self.keys, _part_id(request_id, k)) for k in range(1, int(parts) + 1)]
        if any(r is None for r in reports):
            return None
        return EnrolReport.merged(request_id, [r for r in reports if r is not None])

    def enrol_batch(self, people: Sequence[tuple[str, Sequence[ImageInput]]], *,
                    request_ids: Sequence[str] | None = None) -> list[str]:
        """Queue the enrolment of several people (``(name, images)`` each) as one task: the
        worker embeds the faces of all of them in one model call (a folder of people at the
        speed of a folder identify); each still gets its own report, the same as
        :meth:`enrol` gives. Returns the request ids (``request_ids`` if given), for
        :meth:`enrol_report`. With ``workers.folder_batch`` = 1, one task per person.
        Raises as :meth:`enrol` for a bad name or an unreadable local file, before sending.
        """
        from faec_rec.workers.app import TASK_ENROL, TASK_ENROL_BATCH

        requests = [self._enrol_request(name, images, None, None, request_ids[i] if request_ids else None, None)
                    for i, (name, images) in enumerate(people)]
        if self.settings.workers.folder_batch == 1:
            for request in requests:
                self._send(TASK_ENROL, request.to_json())
        elif requests:
            self._send(TASK_ENROL_BATCH, {"requests": [r.to_json() for r in requests]})
        for request in requests:
            self._audit_enrol(request)
        return [r.request_id for r in requests]

    def _enrol_request(self, name: str | None, images: Sequence[ImageInput], person_id: str | None,
                       metadata: dict[str, Any] | None, request_id: str | None,
                       image_names: Sequence[str] | None,
                       before_upload: Callable[[], None] | None = None) -> "EnrolRequest":
        """Check the name, upload the images (``before_upload()`` before each: the upload
        window) and build a checked :class:`EnrolRequest`."""
        from faec_rec.workers.enrolment import EnrolRequest, ImageRef

        if not images:
            raise ValueError("enrol needs at least one image")
        name = _enrol_name(name)
        refs = []
        for i, image in enumerate(images):
            if before_upload is not None:
                before_upload()
            upload_id, display = self.upload(image)
            refs.append(ImageRef(name=image_names[i] if image_names else display, key=upload_id))
        request = EnrolRequest(request_id=request_id or _new_id(), images=tuple(refs), name=name,
                               person_id=person_id, metadata=metadata)
        EnrolRequest.from_json(request.to_json())  # refuse a bad request here, not on the worker
        return request

    def _audit_enrol(self, request: "EnrolRequest") -> None:
        self._audit("enrol", request_id=request.request_id, name=request.name, person_id=request.person_id,
                    images=[r.name for r in request.images])

    def enrol_report(self, request_id: str, timeout: float = 120.0) -> "EnrolReport":
        """Wait for (at most ``timeout`` s) and return the report of an enrolment request."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.finished_enrolment(request_id)
            if report is not None:
                return report
            if time.monotonic() >= deadline:
                raise TaskTimeout(
                    f"enrolment {request_id} gave no report within {timeout:.0f}s: is a worker "
                    f"consuming queue 'enrol' on this Redis with prefix {self.settings.prefix!r}?"
                )
            time.sleep(POLL_S * 2)

    # ---- identification ------------------------------------------------------------
    def identify(self, image: ImageInput, timeout: float = 60.0) -> list[FaceResult]:
        """Every face in one image with its person (or None) and score.

        Raises :class:`ImageError` if the worker could not read the image,
        :class:`TaskTimeout` if no worker answered in ``timeout`` seconds.
        """
        from faec_rec.workers.app import TASK_IDENTIFY

        # One image: a job of one, sent as a single-image task (not a batch of one), in as
        # few round trips as the protocol allows: the upload, the job with the task, the wait.
        upload_id, name = self.upload(image)  # a refused image raises here, as its record would
        job = _new_id()
        job_key = self.keys.job(job)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(job_key, mapping={"total": 1, "created_at": repr(time.time())})
        pipe.expire(job_key, self.settings.workers.result_ttl_s)
        pipe.execute()
        self._send(TASK_IDENTIFY, {"job": job, "path": None, "key": upload_id, "name": name})
        record = self._first_result(job, timeout)
        if record.get("error"):
            raise ImageError(record.get("path") or "image", record["error"])
        return [FaceResult.from_json(f) for f in record.get("faces", [])]

    def _first_result(self, job: str, timeout: float) -> dict[str, Any]:
        """The first result record of ``job``, waited for on its stream (no polling)."""
        stream = self.keys.job_results(job)
        deadline = time.monotonic() + timeout
        while True:
            block = max(1, int(min(1.0, deadline - time.monotonic()) * 1000))
            for _stream, entries in self.redis.xread({stream: "0-0"}, count=1, block=block) or []:
                for _entry_id, values in entries:
                    return json.loads(values[b"result"])
            if time.monotonic() >= deadline:
                raise TaskTimeout(
                    f"job {job}: no result after {timeout:.0f}s: is a worker consuming queue 'frames' on this "
                    f"Redis with prefix {self.settings.prefix!r}?")

    def submit_images(self, images: Iterable[ImageInput], job: str | None = None, *,
                      image_names: Sequence[str] | None = None,
                      window: int = UPLOAD_WINDOW, window_timeout: float = 600.0) -> str:
        """Upload images and queue identify tasks; returns the job id.

        Images go out ``workers.folder_batch`` at a time in one task each (their faces are
        embedded together on the worker; 1 = one task per image): :meth:`send_identify`.

        ``images`` may be any iterable, a generator too (a folder walk): it is consumed one
        image at a time, never listed. A sized collection's ``total`` is written at once;
        otherwise ``total`` counts the images as they are queued and the job is marked
        ``open`` until the iterable is exhausted (:meth:`job_results` waits for that).
        ``image_names`` name the images in the results (default: their paths).
        Each image is queued as soon as it is uploaded, and at most ``window``
        uploads wait for a worker at once: past that, this waits for the job to
        progress (at most ``window_timeout`` s without progress, then
        :class:`TaskTimeout`), so a large batch never fills Redis. An image this
        client refuses (unreadable, over the caps) gets its error record in the
        job's results like one a worker refused, and the others go on.
        """
        job = job or _new_id()
        job_key = self.keys.job(job)
        sized = isinstance(images, Sized)
        fields: dict[str, Any] = {"created_at": repr(time.time())}
        fields.update({"total": len(images)} if sized else {"total": 0, "open": 1})  # type: ignore[arg-type]
        self.redis.hset(job_key, mapping=fields)
        # (a job of no image is complete at once: job_results returns [] without waiting)
        self.redis.expire(job_key, self.settings.workers.result_ttl_s)
        size = max(1, min(self.settings.workers.folder_batch, window))  # a batch never waits on itself
        sent = 0
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if pending and not sized:  # counted before sending: done never passes total
                self.redis.hincrby(job_key, "total", len(pending))
            self.send_identify(job, pending)
            pending.clear()

        for i, image in enumerate(images):
            self._wait_for_room(job, sent, window, window_timeout)  # pending uploads count too
            try:
                upload_id, display = self.upload(image)
            except ImageError as exc:
                if not sized:
                    self.redis.hincrby(job_key, "total", 1)
                self._record_refused(job, exc)
                continue
            if image_names:
                display = image_names[i]
            pending.append({"path": None, "key": upload_id, "name": display})
            sent += 1
            if len(pending) >= size:
                flush()
        flush()
        if not sized:
            self.redis.hdel(job_key, "open")
        return job

    def send_identify(self, job: str, images: Sequence[dict[str, Any]]) -> None:
        """Queue identify work for ``images`` of ``job`` (each ``{"path"|"key", "name"}``, the
        folder protocol): one batch task for several (``faec_rec.identify_images``, their faces
        embedded in one call on the worker), the one-image task when ``workers.folder_batch`` is 1."""
        from faec_rec.workers.app import TASK_IDENTIFY, TASK_IDENTIFY_BATCH

        if not images:
            return
        if len(images) == 1 and self.settings.workers.folder_batch == 1:
            self._send(TASK_IDENTIFY, {"job": job, **images[0]})
        else:
            self._send(TASK_IDENTIFY_BATCH, {"job": job, "images": list(images)})

    def _wait_for_room(self, job: str, sent: int, window: int, timeout: float) -> None:
        """Block until fewer than ``window`` of the ``sent`` tasks of ``job`` wait for a worker."""
        def done_by_workers() -> int:
            progress = self.job_progress(job)
            return progress["done"] - int(self.redis.hget(self.keys.job(job), "refused") or 0)

        self._wait_for_window(done_by_workers, sent, window, timeout, f"job {job}", "frames")

    def _wait_for_window(self, done: Callable[[], int], sent: int, window: int, timeout: float,
                         what: str, queue: str) -> None:
        """The upload window of identify jobs and enrolments: block until fewer than
        ``window`` of the ``sent`` uploads wait for a worker (``done()``: how many the
        workers finished), at most ``timeout`` s without progress, then :class:`TaskTimeout`."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            finished = done()
            if sent - finished < window:
                return
            if finished != last:
                last, deadline = finished, time.monotonic() + timeout
            if time.monotonic() >= deadline:
                raise TaskTimeout(
                    f"{what}: {window} uploads waited {timeout:.0f}s for a worker ({finished} of "
                    f"{sent} sent done): is a worker consuming queue {queue!r} on this Redis with prefix "
                    f"{self.settings.prefix!r}?")
            time.sleep(POLL_S * 2)

    def _record_refused(self, job: str, exc: ImageError) -> None:
        """One result record for an image refused here, in the workers' shape."""
        from faec_rec.files import display_name

        record = {"path": display_name(str(exc.source)), "faces": [], "error": exc.reason, "model_version": None}
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.job_results(job), {"result": json.dumps(record, separators=(",", ":"))})
        pipe.hincrby(self.keys.job(job), "done", 1)
        pipe.hincrby(self.keys.job(job), "errors", 1)
        pipe.hincrby(self.keys.job(job), "refused", 1)
        pipe.expire(self.keys.job_results(job), self.settings.workers.result_ttl_s)
        pipe.execute()

    def identify_folder(self, path: str | Path, *, wait: bool = False, timeout: float = 600.0) -> str | list[dict[str, Any]]:
        """Identify every image under a folder (recursively; other files skipped).

        The folder is walked lazily (:class:`~faec_rec.producers.folder.FolderWalk`) and its
        images uploaded as they come, so a folder of 100,000 photos is never listed in
        memory and the workers need not see it. Returns the job id, or with ``wait`` the
        list of per-image records (see :meth:`job_results`).
        """
        from faec_rec.producers.folder import FolderWalk

        walk = FolderWalk(path)  # the folder producer's own walk: same images, same skips
        job = self.submit_images(iter(walk))
        if walk.skipped:
            self.redis.hset(self.keys.job(job), "skipped", len(walk.skipped))
        return self.job_results(job, wait=True, timeout=timeout) if wait else job

    def job_progress(self, job: str) -> dict[str, int]:
        """``{"total", "done", "errors"}`` of a job."""
        raw = self.redis.hmget(self.keys.job(job), ["total", "done", "errors"])
        return {k: int(v or 0) for k, v in zip(("total", "done", "errors"), raw)}

    def job_results(self, job: str, *, wait: bool = False, timeout: float = 600.0) -> list[dict[str, Any]]:
        """The result records of a job so far (with ``wait``: all of them).

        Each record: ``{"path", "faces": [{"box", "person_id", "person", "score",
        "decision", "runner_up"}], "error", "model_version"}``.
        """
        stream = self.keys.job_results(job)
        if not self.redis.exists(self.keys.job(job), stream):
            raise UnknownJobError(f"no job {job!r} on this Redis (prefix {self.settings.prefix!r}): never "
                                  f"submitted, or its results expired (workers.result_ttl_s)")
        records: list[dict[str, Any]] = []
        last = "0-0"
        deadline = time.monotonic() + timeout
        while True:
            block = None
            if wait:
                block = max(1, int(min(1.0, deadline - time.monotonic()) * 1000))
            reply = self.redis.xread({stream: last}, count=1000, block=block)
            for _stream, entries in reply or []:
                for entry_id, values in entries:
                    last = entry_id
                    records.append(json.loads(values[b"result"]))
            if not wait:
                return records
            total_raw, still_open = self.redis.hmget(self.keys.job(job), ["total", "open"])
            total = int(total_raw or 0)
            if len(records) >= total and not still_open:  # an empty job (empty folder) is complete at once
                return records
            if time.monotonic() >= deadline:
                raise TaskTimeout(
                    f"job {job}: {len(records)} of {total} images done after {timeout:.0f}s: is a worker "
                    f"consuming queue 'frames' on this Redis with prefix {self.settings.prefix!r}?"
                )

    # ---- events ----------------------------------------------------------------------
    def events(
        self,
        camera: str | None = None,
        follow: bool = False,
        last_id: str = "0-0",
        block_ms: int = 1000,
    ) -> Iterator[dict[str, Any]]:
        """Recognition events (one camera's, or all), oldest first, from after ``last_id``.

        Each is the event's JSON dict (README: event schema) plus ``"id"``, its
        stream id (pass it back as ``last_id`` to resume). With ``follow`` the
        iterator waits for new events forever; use ``last_id="$"`` for only new ones.
        """
        from faec_rec.workers.events import read_events

        after = last_id
        if after == "$":
            newest = self.redis.xrevrange(self.keys.events(camera), count=1)
            after = newest[0][0].decode() if newest else "0-0"
        named: dict[str, tuple[str | None, str | None]] = {}  # visitor -> (person id, name), once per call
        while True:
            batch = read_events(self.redis, self.keys, camera, after=after, count=500,
                                block_ms=block_ms if follow else None)
            for stream_id, event in batch:
                after = stream_id
                data = {"id": stream_id, **event.to_json()}
                if data.get("visitor"):  # a stranger named since resolves to the person
                    data["visitor_person"] = self._visitor_owner(data["visitor"], named)[1]
                yield data
            if not follow and len(batch) < 500:
                return

    def _same_visitor(self, wanted: str, event: dict[str, Any], resolved: dict[str, str]) -> bool:
        """Whether ``event`` names visitor ``wanted``, counting visitors merged since as one."""
        named = {v for v in (event.get("visitor"), event.get("visitor_id")) if v}
        if wanted in named:
            return True
        if not named:
            return False

        def now(v: str) -> str:
            if v not in resolved:
                try:
                    resolved[v] = self.visitors_store.resolve(v)
                except Exception:  # noqa: BLE001 - an id that is not a visitor id matches nothing
                    resolved[v] = v
            return resolved[v]

        return now(wanted) in {now(v) for v in named}

    def _visitor_owner(self, visitor_id: str, cache: dict[str, tuple[str | None, str | None]]) -> tuple[str | None, str | None]:
        """(person id, name) a visitor (or the visitor it was merged into since) was named as;
        (None, None) for a stranger still unnamed or a forgotten visitor."""
        if visitor_id not in cache:
            try:
                store = self.visitors_store
                row = store.list_one(store.resolve(visitor_id))
                cache[visitor_id] = (row.get("person_id"), row.get("person"))
            except Exception:  # noqa: BLE001 - a forgotten visitor resolves to nobody
                cache[visitor_id] = (None, None)
        return cache[visitor_id]

    def event_snapshot(self, event: dict[str, Any] | str, part: str = "face") -> bytes | None:
        """JPEG of an "arrived" event's face crop (``part="face"``) or downscaled frame
        (``"frame"``); ``event`` is the event dict or its ``snapshot`` key. None when the
        event has none or it expired (``events.snapshot_ttl_s``); ValueError for a key
        that is not a snapshot of this deployment."""
        from faec_rec.workers.snapshots import read_snapshot

        key = event.get("snapshot") if isinstance(event, dict) else event
        return None if not key else read_snapshot(self.redis, self.keys, key, part)

    def search_events(
        self,
        *,
        camera: str | None = None,
        person: str | None = None,
        visitor: str | None = None,
        types: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        before: str | None = None,
        limit: int = 50,
        scan_limit: int = 20_000,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Events newest first, filtered; returns ``(events, cursor)`` where ``cursor``
        (a stream id) is passed back as ``before`` for the next page (None: no more).

        ``person`` matches a person id or (case-insensitively) a name; ``visitor`` a
        visitor id; ``since``/``until`` are Unix times (the stream ids' clock);
        at most ``scan_limit`` events are examined per call.
        """
        from faec_rec.workers.events import EVENT_FIELD

        stream = self.keys.events(camera)
        high = "+" if before is None else f"({before}"
        if until is not None and before is None:
            high = str(int(until * 1000))
        low = "-" if since is None else str(int(since * 1000))
        wanted = person.casefold() if person else None
        resolved: dict[str, str] = {}  # visitor id -> the visitor it is part of now, once per call
        owners: dict[str, tuple[str | None, str | None]] = {}  # visitor id -> (person id, name)
        found: list[dict[str, Any]] = []
        scanned = 0
        cursor: str | None = None
        while len(found) < limit and scanned < scan_limit:
            batch = self.redis.xrevrange(stream, max=high, min=low, count=500)
            if not batch:
                cursor = None
                break
            for raw_id, values in batch:
                stream_id = raw_id.decode()
                scanned += 1
                cursor = stream_id
                try:
                    event = json.loads(values[EVENT_FIELD.encode()])
                except (KeyError, ValueError):
                    continue
                if wanted and wanted not in {str(event.get("person_id") or "").casefold(),
                                             str(event.get("person") or "").casefold()}:
                    # a stranger's event counts once its visitor (or the one it joined) is named
                    owner = self._visitor_owner(event["visitor"], owners) if event.get("visitor") else ()
                    if wanted not in {str(x or "").casefold() for x in owner}:
                        continue
                if visitor and not self._same_visitor(visitor, event, resolved):
                    continue
                if types and event.get("type") not in types:
                    continue
                found.append({"id": stream_id, **event})
                if len(found) >= limit:
                    break
            high = f"({cursor}"
            if len(batch) < 500 and len(found) < limit:
                cursor = None
                break
        return found, cursor

    def event(self, event_id: str, camera: str | None = None) -> dict[str, Any] | None:
        """One event by its stream id (of the combined stream, or ``camera``'s); None if gone."""
        from faec_rec.workers.events import EVENT_FIELD

        for raw_id, values in self.redis.xrange(self.keys.events(camera), min=event_id, max=event_id, count=1):
            return {"id": raw_id.decode(), **json.loads(values[EVENT_FIELD.encode()])}
        return None

    # ---- people ------------------------------------------------------------------------
    @property
    def gallery(self) -> Any:
        """The gallery (Redis source of truth) for listing and editing people."""
        with self._lazy_lock:
            if "gallery" not in self._lazy:
                from faec_rec.index.gallery import Gallery

                self._lazy["gallery"] = Gallery(self.redis, self.keys, self.settings.gallery, self.settings.data_dir)
            return self._lazy["gallery"]

    def people(self) -> list[Any]:
        """Every enrolled person (id, name, templates...)."""
        return list(self.gallery.people())

    def person(self, id_or_name: str) -> Any:
        """One person by id or name; raises :class:`UnknownPersonError`."""
        return self.gallery.person(id_or_name)

    def forget(self, id_or_name: str) -> int:
        """Delete a person with every template, crop and vector; returns templates deleted.

        Raises :class:`UnknownPersonError`. Crops are deleted from this
        machine's ``data_dir``; every worker drops the vectors when it syncs.
        Everything else stored naming the person is deleted too
        (:mod:`faec_rec.index.erasure`): recognition events in every stream with
        their face features, enrolment reports, Celery task results, identify
        job records, and feedback entries (with the face features they hold).
        """
        from faec_rec.index.erasure import erase_person_traces
        from faec_rec.training.feedback import forget_feedback

        person_id = self.gallery.store.resolve(id_or_name)
        name = self.gallery.person(f"id:{person_id}").name
        count = int(self.gallery.forget(f"id:{person_id}"))
        forget_feedback(self.redis, self.keys, person_id)
        erase_person_traces(self.redis, self.keys, person_id, [name])
        from faec_rec.training.negatives import forget_negative_pairs
        from faec_rec.visitors.corrections import forget_person_collisions

        forget_negative_pairs(self.redis, self.keys, person_id)  # faces corrected as not them
        forget_person_collisions(self.redis, self.keys, person_id)
        # who forgot someone, and when, is kept; whom is not (that is the point of forgetting)
        self._audit("forget", person="(erased)", templates=count)
        return count

    def rename(self, id_or_name: str, new_name: str) -> None:
        """Give a person a new display name; raises :class:`UnknownPersonError`."""
        self.gallery.rename(id_or_name, new_name)
        self._audit("rename", person=id_or_name, new_name=new_name)

    # ---- cameras -------------------------------------------------------------------------
    def cameras(self) -> list[dict[str, Any]]:
        """Every camera registered (``cameras_add``) or streaming, by id: ``{"camera": id,
        "registered": bool, "source" (credentials masked), "fps", "loop", **stats}``, stats
        being the producer's hash (status, pushed, dropped, processed, faces, errors...)."""
        from faec_rec.producers import registry
        from faec_rec.producers.camera import camera_stats
        from faec_rec.producers.sources import mask_source

        sources = registry.records(self.redis, self.keys)
        ids = sorted({c.decode() for c in self.redis.smembers(self.keys.cameras())} | set(sources))
        out = []
        for cid in ids:
            stats = camera_stats(self.redis, self.keys, cid)
            row: dict[str, Any] = {"camera": cid, **stats, "registered": cid in sources}
            if cid in sources:
                record = sources[cid].public()
                row.update(source=record["source"], loop=record["loop"])
                row.setdefault("fps", record["fps"] if record["fps"] is not None else self.settings.producers.fps)
                row.setdefault("status", "waiting")  # registered; no registry runner has started it yet
            if row.get("source"):
                row["source"] = mask_source(row["source"])  # stats written by an older producer
            out.append(row)
        return out

    def cameras_add(self, camera: str, source: str, *, fps: float | None = None, loop: bool = False) -> dict[str, Any]:
        """Register a camera source; a runner in registry mode (``faec-rec camera --registry``)
        starts streaming it within a second. ``source``: USB index, rtsp/http URL (credentials
        are kept, and masked wherever shown) or a video file on the runner's machine. Returns the
        record with the source masked. Raises :class:`DuplicateCameraError` (id taken),
        :class:`SourceError`/``ValueError`` (bad id, source or fps)."""
        from faec_rec.producers import registry

        record = registry.add(self.redis, self.keys, camera, source, fps=fps, loop=loop, actor=self.actor)
        self._audit("camera.add", camera=camera, source=record.public()["source"], fps=fps, loop=loop)
        return record.public()

    def cameras_remove(self, camera: str) -> dict[str, Any]:
        """Unregister a camera: its registry runner stops it and it leaves :meth:`cameras`
        (its counters are kept). Returns the removed record (source masked); raises
        :class:`UnknownCameraError`."""
        from faec_rec.producers import registry

        record = registry.remove(self.redis, self.keys, camera)
        self._audit("camera.remove", camera=camera)
        return record.public()

    def frame_crop(self, camera: str, frame: int, box: Sequence[float], margin: float = 0.25) -> bytes | None:
        """A JPEG of ``box`` (grown by ``margin``) cut from a camera frame still in Redis
        (frames live ``workers.frame_ttl_s``); None once the frame has expired."""
        import cv2
        import numpy as np

        data = self.redis.get(self.keys.frame(camera, frame))
        if not data:
            return None
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return None
        h, w = image.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        xa, ya = max(0, int(x1 - mx)), max(0, int(y1 - my))
        xb, yb = min(w, int(x2 + mx)), min(h, int(y2 + my))
        if xb <= xa or yb <= ya:
            return None
        ok, buf = cv2.imencode(".jpg", image[ya:yb, xa:xb], [cv2.IMWRITE_JPEG_QUALITY, 85])
        return buf.tobytes() if ok else None

    # ---- models ---------------------------------------------------------------------------
    @property
    def registry(self) -> Any:
        from faec_rec.training.registry import ModelRegistry

        return ModelRegistry(self.redis, self.keys, Path(self.settings.data_dir) / "models")

    def models(self) -> dict[str, Any]:
        """``{"current": version in service, "models": [record dicts, oldest first]}``."""
        registry = self.registry
        return {"current": registry.current(), "models": [json.loads(r.to_json()) for r in registry.records()]}

    def promote_model(self, version: str, reason: str = "manual") -> dict[str, Any]:
        """Put ``version`` in service (file verified first); the gallery re-projects and
        workers swap live. Returns the model event (``version``, ``previous``...)."""
        from faec_rec.training.retrain import switch_gallery

        event = self.registry.promote(version, reason=reason)
        switch_gallery(self.redis, self.keys, Path(self.settings.data_dir), version)
        self._audit("promote", version=version, previous=event.get("previous"), reason=reason)
        return event

    def rollback_model(self, reason: str = "manual") -> dict[str, Any]:
        """Return to the version in service before the current one; returns the model event."""
        from faec_rec.training.retrain import switch_gallery

        event = self.registry.rollback(reason=reason)
        switch_gallery(self.redis, self.keys, Path(self.settings.data_dir), event["version"])
        self._audit("rollback", version=event["version"], previous=event.get("previous"), reason=reason)
        return event

    # ---- backbones (training/backbones.py, index/backbone_swap.py) -------------------------
    @property
    def backbone_registry(self) -> Any:
        from faec_rec.training.backbones import BackboneRegistry

        return BackboneRegistry(self.redis, self.keys, Path(self.settings.data_dir), flip_average=self.settings.faces.flip_average)

    def backbones(self) -> dict[str, Any]:
        """``{"current": {"name", "generation", "threshold", "licence"}, "backbones": [rows]}``:
        the built-in backbone and every supplied one, each with the licence of its weights."""
        from faec_rec.training.backbones import builtin_record

        registry = self.backbone_registry
        rows = [builtin_record()]
        for rec in registry.records():
            rows.append({"name": rec.name, "licence": rec.licence, "format": rec.card.get("format"),
                         "input_size": rec.card.get("input_size"), "alignment": rec.card.get("alignment"),
                         "embedding_size": rec.card.get("embedding_size"), "threshold": rec.threshold,
                         "calibration": rec.calibration, "sha256": rec.sha256, "created": rec.created})
        return {"current": registry.current(), "backbones": rows}

    def add_backbone(self, model_path: str | Path, card_path: str | Path) -> dict[str, Any]:
        """Validate a model file against its card, calibrate it on the gallery's crops and
        store it (not yet in service: see :meth:`use_backbone`). Returns its listing row."""
        from faec_rec.training.backbones import VISITOR_THRESHOLDS, gallery_crops

        from faec_rec.faces.embed import Embedder

        chips, labels = gallery_crops(self.redis, self.keys, Path(self.settings.data_dir))
        builtin = Embedder(self.settings.faces, Path(self.settings.data_dir) / "models")
        v = self.settings.visitors
        rec = self.backbone_registry.add(Path(model_path), Path(card_path), chips, labels, builtin=builtin.features,
                                         centroid_weight=self.settings.gallery.centroid_weight,
                                         visitors={**{k: getattr(v, k) for k in VISITOR_THRESHOLDS}, "ambiguity_margin": v.ambiguity_margin})
        self._audit("add_backbone", backbone=rec.name, sha256=rec.sha256, licence=rec.licence)
        return next(r for r in self.backbones()["backbones"] if r["name"] == rec.name)

    def use_backbone(self, name: str, progress: Any = None) -> dict[str, Any]:
        """Re-embed the gallery from its stored crops with backbone ``name`` and switch to it
        atomically, the stored unknown faces (visitors) with it (the old backbone serves until
        then; workers follow before their next batch). Returns ``{"backbone", "previous",
        "generation", "templates", "unknown_faces"}``."""
        from faec_rec.index.backbone_swap import current_backbone, swap_backbone
        from faec_rec.training.backbones import BUILTIN

        if current_backbone(self.redis, self.keys)["name"] == name:
            return {"backbone": name, "previous": name, "generation": current_backbone(self.redis, self.keys)["generation"],
                    "templates": 0, "unchanged": True}
        if name == BUILTIN:
            from faec_rec.faces.embed import Embedder

            embedder: Any = Embedder(self.settings.faces, Path(self.settings.data_dir) / "models")
            calibration: dict[str, Any] = {"threshold": None}
        else:
            embedder = self.backbone_registry.embedder(name)
            rec = self.backbone_registry.record(name)
            calibration = {"threshold": rec.threshold, "raise_scale": rec.calibration.get("raise_scale", 1.0),
                           "search": rec.calibration.get("search")}
        result = swap_backbone(self.redis, self.keys, Path(self.settings.data_dir), name, embedder.features,
                               calibration=calibration, progress=progress)
        self._audit("use_backbone", backbone=name, previous=result["previous"], templates=result["templates"])
        return result

    def train_head(self) -> str:
        """Queue a head-training run for a worker on queue ``train``; returns the task id.
        Its outcome appears in :meth:`models` (a new version, promoted or rejected)."""
        from faec_rec.training.schedule import QUEUE_TRAIN, TASK_TRAIN

        from faec_rec.training.progress import mark_queued

        result = self.app.send_task(TASK_TRAIN, args=[{}], queue=QUEUE_TRAIN)
        mark_queued(self.redis, self.keys, str(result.id))
        self._audit("train", task_id=result.id)
        return str(result.id)

    def training_progress(self) -> dict[str, Any]:
        """The newest training run: ``state`` (idle, queued, running, done, skipped, failed),
        ``stage``, ``percent`` (0-100), ``epoch``/``epochs``/``loss`` while training,
        ``result`` (status, reason, version) when done, ``error`` when failed, times (unix s)."""
        from faec_rec.training.progress import read_progress

        return read_progress(self.redis, self.keys)

    # ---- visitors (faec_rec.visitors) -----------------------------------------------------
    @property
    def visitors_store(self) -> Any:
        """The :class:`~faec_rec.visitors.service.Visitors` of this deployment."""
        if getattr(self, "_visitors", None) is None:
            from faec_rec.visitors.service import Visitors

            self._visitors = Visitors(self.redis, self.keys, self.settings.visitors, self.settings.data_dir)
        return self._visitors

    def visitors(self, *, limit: int = 50, offset: int = 0, sort: str = "faces") -> list[dict[str, Any]]:
        """Visitors, most faces first (``sort``: "faces", "last_seen", "first_seen", "id").

        Each: ``{"id", "faces", "first_seen", "last_seen", "cameras", "cover_face",
        "crop", "person_id", "person", "manual"}`` (times unix s; ``crop`` the
        representative crop's path on this machine; person/person_id once named).
        """
        return self.visitors_store.list(limit=limit, offset=offset, sort=sort)

    def visitor(self, visitor_id: str) -> dict[str, Any]:
        """One visitor: the summary of :meth:`visitors` plus ``face_list`` (each face:
        ``{"id", "visitor", "at", "source", "camera", "frame", "job", "track", "event",
        "box", "good", "quality", "crop"}``, oldest first). Raises :class:`UnknownVisitorError`."""
        return self.visitors_store.get(visitor_id)

    def name_visitor(self, visitor_id: str, name: str, *, into_existing: bool = False,
                     wait: bool = True, timeout: float = 120.0) -> "EnrolReport | str":
        """Enrol a visitor's good faces as the person ``name`` through the enrolment queue.

        A person of that name already enrolled needs ``into_existing=True``
        (the faces are added to them), else :class:`VisitorNameTaken` (a
        :class:`VisitorError`; the command line exits 2). Returns the
        :class:`EnrolReport` (``images``: one entry per face), or the request
        id without ``wait``.
        """
        from faec_rec.errors import UnknownPersonError, VisitorError, VisitorNameTaken
        from faec_rec.index.store import clean_name
        from faec_rec.workers.app import TASK_ENROL
        from faec_rec.workers.enrolment import EnrolRequest

        summary = self.visitors_store.get(visitor_id)
        if summary["person_id"]:
            raise VisitorError(f"visitor {visitor_id} is already named {summary['person']!r}")
        display = clean_name(name)
        person_id = None
        try:
            existing = self.gallery.person(display)
        except UnknownPersonError:
            existing = None
        if existing is not None:
            if not into_existing:
                raise VisitorNameTaken(f"a person named {existing.name!r} is already enrolled: pass into_existing "
                                   "(--into-existing) to add this visitor's faces to them, or choose another name")
            person_id = existing.id
        request = EnrolRequest(request_id=_new_id(), images=(), name=display, person_id=person_id, visitor=visitor_id)
        payload = request.to_json()
        EnrolRequest.from_json(payload)
        self._send(TASK_ENROL, payload)
        self._audit("visitor.name", visitor=visitor_id, name=display, person_id=person_id,
                    request_id=request.request_id)
        if not wait:
            return request.request_id
        return self.enrol_report(request.request_id, timeout=timeout)

    def merge_visitors(self, visitor_ids: list[str]) -> str:
        """Merge visitors into the first one; returns its id. Raises :class:`VisitorError`
        for fewer than two, a repeated id, or visitors named as different people."""
        kept = self.visitors_store.merge(visitor_ids)
        self._audit("visitor.merge", visitors=list(visitor_ids), into=kept)
        return kept

    def split_visitor(self, visitor_id: str, face_ids: list[str]) -> str:
        """Move some faces of a visitor into a new visitor; returns the new id."""
        new = self.visitors_store.split(visitor_id, face_ids)
        self._audit("visitor.split", visitor=visitor_id, faces=list(face_ids), new_visitor=new)
        return new

    def forget_visitor(self, visitor_id: str) -> int:
        """Delete a visitor with every face (features, crops, records); returns faces deleted."""
        count = self.visitors_store.forget(visitor_id)
        self._audit("visitor.forget", visitor=visitor_id, faces=count)
        return count

    def unknown_face_crop(self, face_id: str) -> bytes:
        """The JPEG crop (150x150 aligned chip) of a stored unknown face."""
        return self.visitors_store.crop(face_id)

    def regroup_visitors(self) -> dict[str, int]:
        """Group every stored unknown face again from scratch (keeps names and manual merges/splits)."""
        return self.visitors_store.regroup()

    def expire_visitors(self) -> int:
        """Apply the retention settings now; returns unknown faces deleted."""
        return self.visitors_store.expire()

    def feedback(self, event_id: str, *, is_: str | None = None, not_: str | None = None) -> dict[str, Any]:
        """Confirm (``is_``) or correct (``not_``) a recognition event; exactly one of them.

        ``is_`` adds the event's face to the person as a template; ``not_``
        moves the face into a visitor, records a hard negative pair for head
        training (``keys.negative_pairs()``) and raises the person's threshold
        around that face. Returns ``{"feedback_id", "event_id", "person_id",
        "person", "is_person", "usable", "reason", "template_id", "visitor",
        "negative_id"}``.
        """
        from faec_rec.visitors.corrections import apply_feedback

        result = apply_feedback(self, event_id, is_=is_, not_=not_)
        self._audit("feedback", event_id=event_id, is_=is_, not_=not_, person_id=result.get("person_id"),
                    visitor=result.get("visitor"))
        return result


    def person_faces(self, id_or_name: str) -> list[dict[str, Any]]:
        """One person's templates, oldest first: ``id`` (also as ``template_id``), ``source``,
        ``quality``, ``version``, ``created`` (unix s) and ``crop``, the JPEG crop's path on
        this machine (None when none is stored here). Raises :class:`UnknownPersonError`."""
        out = []
        for template in self.gallery.store.templates(id_or_name):
            path = Path(self.settings.data_dir) / template["crop"] if template["crop"] else None
            out.append({**template, "template_id": template["id"],
                        "crop": path if path is not None and path.is_file() else None})
        return out

    def remove_face(self, template_id: str) -> str:
        """Delete one template (its vector, crop and hash entry) and return its person's id;
        raises :class:`UnknownTemplateError`. The person stays, even with no template left."""
        return self.gallery.remove_template(template_id)

    # ---- parked (dead-letter) tasks ---------------------------------------------------
    def dead_letters(self) -> list[Any]:
        """Tasks parked after killing their worker ``workers.max_deliveries`` times, oldest first."""
        from faec_rec.workers import deadletter

        return deadletter.list_parked(self.redis, self.keys)

    def replay_dead_letter(self, entry: str) -> str:
        """Queue a parked task again (fresh task id); returns the new id. Raises ``KeyError``."""
        from faec_rec.workers import deadletter

        return deadletter.replay(self.redis, self.keys, self.app, entry)

    def drop_dead_letter(self, entry: str) -> Any:
        """Delete a parked task for good; returns it. Raises ``KeyError``."""
        from faec_rec.workers import deadletter

        return deadletter.drop(self.redis, self.keys, entry)

    # ---- backup, restore, retention (faec_rec.cluster) ---------------------------------
    def export_gallery(self, out: str | Path | Any) -> dict[str, Any]:
        """Write the gallery (people, templates' features, crops, model registry and
        heads) to an archive file, or a binary stream; returns what was written.

        Consistent at one gallery-event id while workers keep writing; crops and
        heads are read from this machine's ``data_dir``.
        """
        from faec_rec.cluster.archive import export_gallery

        if hasattr(out, "write"):
            return export_gallery(self.redis, self.keys, self.settings.data_dir, out, self.settings).to_json()
        path = Path(out)
        tmp = path.with_name(f".{path.name}.{_new_id()[:8]}.tmp")
        try:
            with open(tmp, "xb") as fh:
                summary = export_gallery(self.redis, self.keys, self.settings.data_dir, fh, self.settings)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return summary.to_json()

    def import_gallery(self, src: str | Path | Any, *, merge: bool = False) -> dict[str, Any]:
        """Restore an archive written by :meth:`export_gallery` (file or binary stream).

        Into an empty gallery, or with ``merge`` into a live one. Raises
        :class:`~faec_rec.errors.ArchiveError` (nothing written) for a damaged or
        foreign-version archive, or a non-empty target without ``merge``.
        """
        from faec_rec.cluster.archive import import_gallery

        def promote(version: str) -> None:
            from faec_rec.training.registry import ModelRegistry

            ModelRegistry.from_settings(self.settings, self.redis).promote(version, reason="restored from archive")

        if hasattr(src, "read"):
            return import_gallery(self.gallery.store, src, self.settings, merge=merge, promote=promote).to_json()
        with open(src, "rb") as fh:
            return import_gallery(self.gallery.store, fh, self.settings, merge=merge, promote=promote).to_json()

    def retention_sweep(self, *, now: float | None = None) -> dict[str, int]:
        """Delete what is older than the ``retention`` settings allow; returns items removed per step."""
        from faec_rec.cluster.retention import sweep

        return sweep(self.redis, self.keys, self.settings, now=now)


def _enrol_name(name: str | None) -> str | None:
    """A person's name checked by the CLI's rules (refused here, not on the worker)."""
    if name is None:
        return None
    from faec_rec.index.store import clean_name

    return clean_name(name)


def _part_id(request_id: str, part: int) -> str:
    """The request id of part ``part`` (from 1) of an enrolment sent in parts."""
    from faec_rec.keys import safe_id

    try:
        return safe_id(f"{request_id}.{part}", "request id")
    except ValueError as exc:
        raise ValueError(f"request id {request_id!r} is too long for an enrolment in parts (at most 120 characters)") from exc


def _read_image(image: ImageInput, max_bytes: int, max_pixels: int) -> tuple[bytes, str]:
    """The bytes and display name of an image, refused (:class:`ImageError`) over
    the engine's caps: a file is never read past ``max_bytes`` (+1, to tell), and
    the pixel count is read from the header. A header this cannot parse is left to
    the worker, which reports the format error per image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        name = f"bytes:{len(data)}"
    else:
        path = Path(image)
        name = str(path)
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(name, f"cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise ImageError(name, "empty file")
    if len(data) > max_bytes:
        raise ImageError(name, f"too_large: more than the limit of {max_bytes} bytes (faces.max_image_bytes)")
    from faec_rec.faces.image import image_size

    try:
        width, height = image_size(data, name)
    except ImageError:
        return data, name
    if width * height > max_pixels:
        raise ImageError(name, f"too_large: {width}x{height} pixels, more than the limit of {max_pixels} "
                               "(faces.max_image_pixels)")
    return data, name
