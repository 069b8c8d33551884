"""The enrolment use case: a person's name (or id) plus images -> templates in the gallery.

Steps: read each image (uploaded bytes or a path the worker can read) ->
decode -> detect -> quality gate (faec_rec.faces.quality) -> align -> backbone
features for every accepted chip in one batch -> ``gallery.enrol`` (which
writes the templates and the gallery event every replica follows). The report
says, per image, whether it was accepted and why not.

Idempotent by request id: the finished report is stored in
``keys.enrolment(request_id)``; a repeated request returns it unchanged. A
request interrupted by a dying worker is redone from the start; the gallery
skips images it already holds (content hash), and this module reports those as
accepted when they already belong to the same person.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from faec_rec.errors import GalleryError, ImageError, PayloadError, UnknownPersonError
from faec_rec.keys import safe_id
from faec_rec.workers.pipeline import decode, read_image_bytes

if TYPE_CHECKING:
    from faec_rec.workers.runtime import Runtime

log = logging.getLogger(__name__)


# ---- messages -------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    """One enrolment image: uploaded bytes (``key``: an upload id) or a worker-side ``path``."""

    name: str
    key: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class EnrolRequest:
    """What the enrol task carries (JSON): who, which images, and an idempotency id."""

    request_id: str
    images: tuple[ImageRef, ...]
    name: str | None = None
    person_id: str | None = None
    metadata: dict[str, Any] | None = None
    visitor: str | None = None  # enrol this visitor's good faces instead of images (faec_rec.visitors.naming)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["images"] = [asdict(i) for i in self.images]
        return out

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> EnrolRequest:
        """Parse the task payload; raises :class:`PayloadError` saying what is wrong."""
        if not isinstance(payload, dict):
            raise PayloadError("enrol payload must be a JSON object")
        rid = payload.get("request_id")
        try:
            safe_id(rid, "request id")
        except ValueError as exc:
            raise PayloadError(str(exc)) from exc
        name, person_id = payload.get("name"), payload.get("person_id")
        if name is None and person_id is None:
            raise PayloadError("enrol needs a person 'name' or an existing 'person_id'")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise PayloadError("enrol 'name' must be a non-empty string")
        if person_id is not None and not isinstance(person_id, str):
            raise PayloadError("enrol 'person_id' must be a string")
        visitor = payload.get("visitor")
        if visitor is not None:
            try:
                safe_id(visitor, "visitor id")
            except ValueError as exc:
                raise PayloadError(str(exc)) from exc
        raw_images = payload.get("images")
        if visitor is not None and raw_images in (None, []):
            raw_images = []
        elif not isinstance(raw_images, list) or not raw_images:
            raise PayloadError("enrol needs a non-empty list of 'images'")
        images = []
        for i, raw in enumerate(raw_images):
            if not isinstance(raw, dict) or not (raw.get("key") or raw.get("path")):
                raise PayloadError(f"enrol image {i} needs an upload 'key' or a 'path'")
            images.append(ImageRef(name=str(raw.get("name") or raw.get("path") or raw["key"]),
                                   key=raw.get("key"), path=raw.get("path")))
        metadata = payload.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise PayloadError("enrol 'metadata' must be a JSON object")
        return cls(request_id=rid, images=tuple(images), name=name, person_id=person_id, metadata=metadata,
                   visitor=visitor)


@dataclass
class ImageReport:
    """The verdict for one image: ``reason`` is "ok" or a refusal code (see quality.Reason)."""

    name: str
    accepted: bool
    reason: str
    detail: str = ""
    template_id: str | None = None
    box: list[float] | None = None
    sharpness: float | None = None
    yaw: float | None = None


@dataclass
class EnrolReport:
    """The outcome of one enrolment request.

    status: "done" (some images accepted), "refused" (none accepted, or an
    unknown person id: see ``error``), "failed" (malformed request).
    """

    request_id: str
    status: str
    person_id: str | None = None
    name: str | None = None
    images: list[ImageReport] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None
    model_version: str | None = None
    finished_at: float | None = None
    # what confirmed the gallery write before "done" was reported (faec_rec.cluster.durability)
    durability: dict[str, Any] | None = None

    @property
    def accepted(self) -> list[ImageReport]:
        return [i for i in self.images if i.accepted]

    @property
    def refused(self) -> list[ImageReport]:
        return [i for i in self.images if not i.accepted]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EnrolReport:
        images = [ImageReport(**i) for i in data.get("images", [])]
        return cls(**{**data, "images": images})

    @classmethod
    def merged(cls, request_id: str, parts: list[EnrolReport]) -> EnrolReport:
        """One report for a request the client sent in parts (its upload window):
        every part's images in order; "done" when any part accepted a photo, else the
        first part's error. The person is the one the parts enrolled."""
        if not parts:
            raise ValueError("no part to merge")
        done = [p for p in parts if p.status == "done"]
        first = (done or parts)[0]
        return cls(
            request_id=request_id,
            status="done" if done else "failed" if all(p.status == "failed" for p in parts) else "refused",
            person_id=next((p.person_id for p in reversed(parts) if p.person_id), None),
            name=next((p.name for p in reversed(parts) if p.name), None),
            images=[image for p in parts for image in p.images],
            error=None if done else first.error,
            detail=None if done else first.detail,
            model_version=parts[-1].model_version,
            finished_at=max((p.finished_at or 0.0 for p in parts), default=None) or None,
            durability=done[-1].durability if done else None,
        )


# ---- the use case ---------------------------------------------------------------
def stored_report(runtime_redis: Any, keys: Any, request_id: str) -> EnrolReport | None:
    """The finished report of ``request_id`` if one is stored."""
    raw = runtime_redis.hget(keys.enrolment(request_id), "report")
    return EnrolReport.from_json(json.loads(raw)) if raw else None


@dataclass
class _Candidate:
    index: int
    chip: Any
    content_hash: str
    quality: float
    features: Any = None  # (128,) float32 raw backbone features, once embedded


@dataclass
class _Gated:
    """One request after the quality gate, before embedding: its report so far and the
    chips that passed (``turned``: moderately turned faces, extra templates only), or its
    final report when it ended before embedding (already done, unknown person, no image)."""

    request: EnrolRequest
    report: EnrolReport
    candidates: list[_Candidate] = field(default_factory=list)
    turned: list[tuple[int, Any, _Candidate]] = field(default_factory=list)
    finished: EnrolReport | None = None


def enrol(runtime: Runtime, request: EnrolRequest) -> EnrolReport:
    """Run one enrolment request end to end; store and return its report.

    Never raises for bad images or an unknown person (they are in the report);
    a lost backend propagates so the task retries.
    """
    return enrol_many(runtime, [request])[0]


def enrol_many(runtime: Runtime, requests: list[EnrolRequest]) -> list[EnrolReport]:
    """Enrol several requests (a folder of people) with every accepted face embedded in
    one model call; one report per request, in order, each exactly what :func:`enrol`
    gives for it alone (the gallery steps still run request by request, in order).

    Steps: each request through the quality gate (decode, detect, align) -> the chips of
    all of them embedded together -> each request's consistency check, gallery write and
    report. Idempotent per request id, as :func:`enrol`.
    """
    import numpy as np

    if not requests:
        return []
    runtime.refresh()
    threads = max(1, min(runtime.settings.workers.decode_threads, len(requests)))
    if threads == 1:
        gated = [_gate(runtime, request, runtime.engine.detect) for request in requests]
    else:
        from concurrent.futures import ThreadPoolExecutor

        from faec_rec.workers.batch import lent_detector

        runtime.engine  # load once, before the threads race for it

        def gate(request: EnrolRequest) -> _Gated:
            with lent_detector(runtime) as detector:  # one each: two threads detect in parallel
                return _gate(runtime, request, detector.detect)

        with ThreadPoolExecutor(threads, thread_name_prefix="faec-enrol") as pool:
            gated = list(pool.map(gate, requests))
    waiting = [c for g in gated if g.finished is None for c in [*g.candidates, *(t[2] for t in g.turned)]]
    if waiting:
        features = runtime.engine.features(np.stack([c.chip for c in waiting]))
        for c, row in zip(waiting, features):
            c.features = row
    return [g.finished if g.finished is not None else _store(runtime, g) for g in gated]


def _gate(runtime: Runtime, request: EnrolRequest, detect: Any) -> _Gated:
    """Everything of one request before embedding: its stored report if it is done, the
    person it names, and each image's quality verdict with the chip of an accepted face
    (``detect``: image -> faces, the engine's detector or one lent to this thread)."""
    from faec_rec.faces.quality import QualityThresholds, Reason, assess, assess_extra

    r, keys = runtime.redis, runtime.keys
    done = stored_report(r, keys, request.request_id)
    if done is not None:
        log.info("enrolment %s already done; returning its report", request.request_id)
        return _Gated(request, done, finished=done)
    r.hset(keys.enrolment(request.request_id), mapping={"status": "running", "started_at": repr(time.time())})
    r.expire(keys.enrolment(request.request_id), runtime.settings.workers.result_ttl_s)

    gallery, engine = runtime.gallery, runtime.engine  # (refreshed by enrol_many)
    report = EnrolReport(request_id=request.request_id, status="refused", person_id=request.person_id,
                         name=request.name, model_version=runtime.model_version)
    gated = _Gated(request, report)

    if request.person_id is not None:
        try:
            person = gallery.person(request.person_id)
        except UnknownPersonError:
            if request.name is None:
                gated.finished = _finish(runtime, request, report, "unknown_person",
                                         f"no person with id {request.person_id!r}; give a name to create one")
                return gated
        else:
            report.name = person.name
            report.person_id = person.id

    if request.visitor is not None:
        from faec_rec.visitors.naming import enrol_visitor

        error, detail = enrol_visitor(runtime, request, report)
        gated.finished = _finish(runtime, request, report, error, detail)
        return gated

    thresholds = QualityThresholds()
    reports: list[ImageReport] = []
    for i, ref in enumerate(request.images):
        try:
            data = read_image_bytes(runtime, ref.key, ref.path, ref.name)
            image = _decode(data, ref.name, runtime.settings)
        except ImageError as exc:
            reports.append(ImageReport(ref.name, False, Reason.BAD_IMAGE.value, exc.reason))
            continue
        chips: dict[int, Any] = {}

        def chip_of(face: Any, image: Any = image, chips: dict[int, Any] = chips) -> Any:
            chips[0] = engine.align(image, [face])[0]
            return chips[0]

        verdict = assess(detect(image), chip_of, thresholds)
        reports.append(ImageReport(
            ref.name, verdict.accepted, verdict.reason.value, verdict.detail,
            box=None if verdict.face is None else [round(float(v), 1) for v in verdict.face.box],
            sharpness=None if verdict.sharpness is None else round(verdict.sharpness, 1),
            yaw=None if verdict.yaw is None else round(verdict.yaw, 3),
        ))
        if verdict.accepted:
            gated.candidates.append(_Candidate(i, chips[0], hashlib.sha256(data).hexdigest(),
                                               float(verdict.face.score) if verdict.face is not None else 0.0))
        elif verdict.reason is Reason.NOT_FRONTAL:
            extra = assess_extra(verdict, chip_of, thresholds)
            if extra.accepted:
                gated.turned.append((len(reports) - 1, extra, _Candidate(
                    i, chips[0], hashlib.sha256(data).hexdigest(),
                    float(extra.face.score) if extra.face is not None else 0.0)))
    report.images = reports
    if not gated.candidates and not gated.turned:
        gated.finished = _finish(runtime, request, report, "no_acceptable_image",
                                 "no image passed the quality gate; see each image's reason")
    return gated


def _store(runtime: Runtime, gated: _Gated) -> EnrolReport:
    """A gated request with its features: consistency, the gallery write, the report."""
    import numpy as np

    from faec_rec.faces.quality import QualityThresholds

    request, report, candidates = gated.request, gated.report, gated.candidates
    gallery = runtime.gallery
    # after the requests before it in the batch were stored: it sees the templates they added
    _add_turned(gallery, request, report, candidates, gated.turned, QualityThresholds())
    if not candidates:
        return _finish(runtime, request, report, "no_acceptable_image",
                       "no image passed the quality gate; see each image's reason")
    features = np.stack([c.features for c in candidates])
    candidates, features = _consistent(runtime, request, report, candidates, features)
    if not candidates:
        return _finish(runtime, request, report, "no_acceptable_image",
                       "no photo matches the person (see each image's reason)")
    try:
        result = _gallery_enrol(gallery, request, report, candidates, features)
    except GalleryError as exc:  # a name clash, an id that vanished meanwhile
        for c in candidates:
            report.images[c.index].accepted = False
            report.images[c.index].reason = "not_stored"
        return _finish(runtime, request, report, "gallery_refused", str(exc))
    report.person_id = result.person_id
    report.name = result.name
    _mark_templates(runtime, report, candidates, result)
    report.durability = _confirm_durable(runtime)
    report.status = "done" if report.accepted else "refused"
    return _finish(runtime, request, report, None if report.accepted else "no_acceptable_image", None)


def _who(request: EnrolRequest) -> str | None:
    """The request's person in the gallery's explicit lookup syntax (``id:`` / ``name:``)."""
    if request.person_id is not None:
        return f"id:{request.person_id}"
    return None if request.name is None else f"name:{request.name}"


def _add_turned(gallery: Any, request: EnrolRequest, report: EnrolReport, candidates: list[_Candidate],
                turned: list[tuple[int, Any, _Candidate]], thresholds: Any) -> None:
    """Accept moderately turned faces as extra templates once the person has enough
    (``min_frontal_for_extra``: templates already enrolled plus frontal photos of this request)."""
    if not turned:
        return
    from faec_rec.errors import UnknownPersonError

    have = len(candidates)
    who = _who(request)
    if who is not None:
        try:
            have += len(gallery.person(who).template_ids)
        except UnknownPersonError:
            pass
    if have < thresholds.min_frontal_for_extra:
        return
    for at, verdict, candidate in turned:
        image = report.images[at]
        image.accepted, image.reason, image.detail = True, verdict.reason.value, verdict.detail
        image.sharpness = None if verdict.sharpness is None else round(verdict.sharpness, 1)
        candidates.append(candidate)
    candidates.sort(key=lambda c: c.index)


def _consistent(runtime: Runtime, request: EnrolRequest, report: EnrolReport, candidates: list[_Candidate], features: Any) -> tuple[list[_Candidate], Any]:
    """Refuse photos that do not show the person (:mod:`faec_rec.index.consistency`):
    against the person's templates when they have some, else against each other."""
    import numpy as np

    from faec_rec.errors import UnknownPersonError
    from faec_rec.index.calibration import global_threshold
    from faec_rec.index.consistency import NOT_THIS_PERSON, TWO_DISAGREE, check_photos

    gallery = runtime.gallery
    projector = gallery.projector
    existing = np.zeros((0, features.shape[1]), np.float32)
    who = _who(request)
    if who is not None:
        try:
            person = gallery.person(who)
        except UnknownPersonError:
            person = None
        if person is not None and person.template_ids:
            stored = gallery.store.fetch_features(list(person.template_ids))
            if stored:
                existing = projector.project(np.stack([np.asarray(v, np.float32) for v in stored.values()]))
    pair = global_threshold(gallery.config.threshold, getattr(projector, "threshold", None), projector.version, 0, None)
    verdicts = check_photos(projector.project(features), existing, pair)
    keep = []
    for n, (c, (reason, score)) in enumerate(zip(candidates, verdicts)):
        if reason is None:
            keep.append(n)
            if not len(existing) and len(candidates) >= 2 and -1.0 < score < pair:
                report.images[c.index].detail = f"{TWO_DISAGREE} (best similarity {score:.3f})"
            continue
        image = report.images[c.index]
        image.accepted = False
        image.reason = reason
        image.detail = (f"does not match {report.name or who}'s enrolled photos (best similarity {score:.3f}); "
                        "check it is the same person" if reason == NOT_THIS_PERSON else
                        f"does not agree with most other photos of this request (best similarity {score:.3f}); "
                        "enrol one person per request")
    if len(keep) < len(candidates):
        log.warning("enrolment %s: %d photo(s) refused as another person", request.request_id, len(candidates) - len(keep))
    return [candidates[n] for n in keep], features[keep]


def _gallery_enrol(gallery: Any, request: EnrolRequest, report: EnrolReport, candidates: list[_Candidate], features: Any) -> Any:
    from faec_rec.faces.image import encode_jpeg

    return gallery.enrol(
        request.name if request.name is not None else report.name,
        features,
        person_id=request.person_id,
        sources=[request.images[c.index].name for c in candidates],
        content_hashes=[c.content_hash for c in candidates],
        qualities=[c.quality for c in candidates],
        crops=[encode_jpeg(c.chip, 90) for c in candidates],
        metadata=request.metadata,
    )


def _confirm_durable(runtime: Runtime) -> dict[str, Any]:
    """Wait until the gallery write is durable at ``durability.enrolments``, before the
    report (what the client waits for) is written; DurabilityError makes the task retry."""
    from faec_rec.cluster.durability import confirm

    cfg = runtime.settings.durability
    return confirm(runtime.redis, runtime.keys, cfg.enrolments, min_replicas=cfg.min_replicas,
                   timeout_ms=cfg.wait_timeout_ms).to_json()


def _decode(data: bytes, name: str, settings: Any) -> Any:
    return decode(data, name, settings)


def _mark_templates(runtime: Runtime, report: EnrolReport, candidates: list[_Candidate], result: Any) -> None:
    """Attach template ids. An image this person already had (same content
    hash: a retried request, or the same photo sent again) stays accepted, with
    the existing template's id and reason "duplicate"; it is stored once."""
    duplicates = set(result.duplicates)
    added = iter(result.added)
    for c in candidates:
        image = report.images[c.index]
        if c.content_hash in duplicates:
            raw = runtime.redis.hget(runtime.keys.template_hashes(), f"{result.person_id}:{c.content_hash}")
            image.template_id = raw.decode() if raw else None
            image.reason = "duplicate"
            image.detail = "already enrolled for this person; kept once"
        else:
            image.template_id = next(added, None)


def record_failed(runtime: Runtime, request: EnrolRequest, error: str, detail: str) -> EnrolReport:
    """Store a "failed" report for a request no worker could finish (a parked task)."""
    report = EnrolReport(request_id=request.request_id, status="failed", person_id=request.person_id,
                         name=request.name, model_version=runtime.model_version)
    return _finish(runtime, request, report, error, detail)


def _finish(runtime: Runtime, request: EnrolRequest, report: EnrolReport, error: str | None, detail: str | None) -> EnrolReport:
    report.error = error
    report.detail = detail
    report.finished_at = time.time()
    if error and report.status == "done":
        report.status = "refused"
    key = runtime.keys.enrolment(request.request_id)
    pipe = runtime.redis.pipeline(transaction=True)
    pipe.hset(key, mapping={"status": report.status, "report": json.dumps(report.to_json(), separators=(",", ":"))})
    pipe.expire(key, runtime.settings.workers.result_ttl_s)
    for ref in request.images:
        if ref.key is not None:
            pipe.delete(runtime.keys.upload(ref.key))
    pipe.execute()
    from faec_rec import metrics

    for image in report.images:
        metrics.enrol_image("duplicate" if image.reason == "duplicate" else "accepted" if image.accepted else "refused")
    log.info("enrolment %s: %s, %d accepted, %d refused", request.request_id, report.status,
             len(report.accepted), len(report.refused))
    return report
