"""Every Redis key name, built in one place under a namespace prefix.

Nothing else in the project spells a key: it asks ``Keys(prefix).<name>(...)``.
Ids that reach a key are checked so that a person id or camera id can never
escape its namespace.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from faec_rec.errors import ConfigError

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


def safe_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it may appear in a key or a file name, else raise ``ValueError``."""
    # fullmatch: ``$`` in match() would also accept a trailing newline ("bob\n")
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value) or value in {".", ".."} or ".." in value:
        raise ValueError(f"{what} {value!r} may only hold letters, digits and _ . : @ - (1-128 characters)")
    return value


@dataclass(frozen=True)
class Keys:
    """Key builder for one deployment (``prefix``), e.g. ``Keys("faec").frame("cam1", 7)``."""

    prefix: str = "faec"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.prefix):
            raise ConfigError(f"prefix {self.prefix!r}: letters, digits, _ . - only (1-32)")

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ---- gallery (index/) -------------------------------------------------
    def person(self, person_id: str) -> str:
        """Hash: name, metadata (JSON), created."""
        return self._k("person", safe_id(person_id, "person id"))

    def people(self) -> str:
        """Set of every person id."""
        return self._k("people")

    def person_names(self) -> str:
        """Hash: display name (casefolded) -> person id."""
        return self._k("people", "by-name")

    def person_templates(self, person_id: str) -> str:
        """Set of one person's template ids."""
        return self._k("person", safe_id(person_id, "person id"), "templates")

    def template(self, template_id: str) -> str:
        """Hash: person, features (bytes), embedding version, quality, source, content hash."""
        return self._k("template", safe_id(template_id, "template id"))

    def template_hashes(self) -> str:
        """Hash: ``<person id>:<content hash of the source image>`` -> template id.

        Scoped per person (duplicate detection within a person), so one group
        photo may enrol several people.
        """
        return self._k("template-hashes")

    def gallery_events(self) -> str:
        """Stream of gallery changes that every replica follows."""
        return self._k("gallery", "events")

    def gallery_snapshot(self) -> str:
        """Hash describing the newest snapshot: path, stream id, version."""
        return self._k("gallery", "snapshot")

    def gallery_lock(self) -> str:
        return self._k("gallery", "lock")

    def gallery_version(self) -> str:
        """String: the projection (embedding) version the gallery is served in."""
        return self._k("gallery", "version")

    # ---- model registry (training/) ---------------------------------------
    def models(self) -> str:
        """Hash: version -> JSON record (metrics, path, checksum, created)."""
        return self._k("models")

    def model_current(self) -> str:
        """String: the version in service."""
        return self._k("models", "current")

    def model_events(self) -> str:
        """Stream of model-version changes (workers hot-swap on these)."""
        return self._k("models", "events")

    def backbones(self) -> str:
        """Hash: backbone name -> JSON record of a supplied backbone (training/backbones.py)."""
        return self._k("backbones")

    def backbone_current(self) -> str:
        """String: JSON ``{"name", "generation"}`` of the backbone the gallery's features are
        in (absent: the built-in one, generation 0); set with the re-embedded features."""
        return self._k("backbones", "current")

    def train_lock(self) -> str:
        return self._k("train", "lock")

    def train_progress(self) -> str:
        """Hash: the newest training run's state, stage, epoch, loss, percent (training.progress)."""
        return self._k("train", "progress")

    def feedback(self) -> str:
        """Stream of confirmations/corrections of events by people."""
        return self._k("feedback")

    # ---- visitors (visitors/) ---------------------------------------------
    def unknown_face(self, face_id: str) -> str:
        """Hash: one stored unknown face: features (bytes), visitor, good, quality, source, crop, at, ..."""
        return self._k("uface", safe_id(face_id, "face id"))

    def unknown_faces(self) -> str:
        """Sorted set: every stored unknown face id, scored by capture time (unix s): retention."""
        return self._k("ufaces")

    def visitor(self, visitor_id: str) -> str:
        """Hash: one visitor: created, first_seen, last_seen, person (once named), manual (0/1)."""
        return self._k("visitor", safe_id(visitor_id, "visitor id"))

    def visitor_faces(self, visitor_id: str) -> str:
        """Set of one visitor's face ids."""
        return self._k("visitor", safe_id(visitor_id, "visitor id"), "faces")

    def visitors(self) -> str:
        """Set of every visitor id."""
        return self._k("visitors")

    def visitor_aliases(self) -> str:
        """Hash: visitor id merged away -> the visitor it was merged into (past events and
        report entries name the old id; they resolve through this)."""
        return self._k("visitors", "aliases")

    def visitor_counter(self) -> str:
        """Integer: the last visitor number handed out (ids are ``v-<n>``)."""
        return self._k("visitors", "next")

    def visitor_events(self) -> str:
        """Stream of visitor changes that every visitor replica follows."""
        return self._k("visitors", "events")

    def visitor_lock(self) -> str:
        """String with TTL: held while a regroup or retention sweep runs."""
        return self._k("visitors", "lock")

    def visitor_snapshot_lock(self) -> str:
        """String with TTL: held while one process writes a visitor replica snapshot."""
        return self._k("visitors", "snapshot_lock")

    def visitor_tracks(self, camera_id: str) -> str:
        """Hash with TTL: track id -> visitor id of a camera's unknown tracks (for their "left" events)."""
        return self._k("visitors", "tracks", safe_id(camera_id, "camera id"))

    def negative_pairs(self) -> str:
        """Stream of hard negatives: a face that is NOT a person (``feedback --not``)."""
        return self._k("negatives")

    def person_collisions(self, person_id: str) -> str:
        """Hash: face id -> (128,) float32 features of faces corrected as not this person."""
        return self._k("person", safe_id(person_id, "person id"), "collisions")

    # ---- frames and events (producers/, workers/) -------------------------
    def frame(self, camera_id: str, frame_no: int) -> str:
        """String with TTL: one JPEG frame."""
        return self._k("frame", safe_id(camera_id, "camera id"), str(int(frame_no)))

    def in_flight(self, camera_id: str) -> str:
        """List of a camera's frame keys waiting for a worker (bounded, oldest dropped)."""
        return self._k("inflight", safe_id(camera_id, "camera id"))

    def camera_stats(self, camera_id: str) -> str:
        """Hash of counters: pushed, dropped, processed, errors, status."""
        return self._k("camera", safe_id(camera_id, "camera id"), "stats")

    def cameras(self) -> str:
        """Set of every camera id a producer registered (stats exist)."""
        return self._k("cameras")

    def camera_sources(self) -> str:
        """Hash: camera id -> JSON source record (producers.registry): the cameras a
        registry-mode runner (``faec-rec camera --registry``) keeps running."""
        return self._k("camera-sources")

    def events(self, camera_id: str | None = None) -> str:
        """Stream of recognition events: one per camera, and the combined one (None)."""
        if camera_id is None:
            return self._k("events")
        return self._k("events", safe_id(camera_id, "camera id"))

    def event_features(self, camera_id: str, frame_no: int, face: int) -> str:
        """String with TTL: raw backbone features ((128,) float32, 512 bytes) of face
        number ``face`` (0-based, detection order) of a camera frame, stored when that
        face made an "arrived"/"updated" event; the event names it as ``features_key``."""
        return self._k("event-features", safe_id(camera_id, "camera id"), str(int(frame_no)), str(int(face)))

    def event_snapshot(self, camera_id: str, frame_no: int, face: int) -> str:
        """Hash with TTL: face crop and downscaled frame (JPEG) of the face that made an
        "arrived" event; the event names it as ``snapshot`` (workers/snapshots.py)."""
        return self._k("event-snapshot", safe_id(camera_id, "camera id"), str(int(frame_no)), str(int(face)))

    def events_channel(self) -> str:
        """Pub/sub channel mirroring the combined event stream."""
        return self._k("events", "live")

    def tracks(self, camera_id: str) -> str:
        """Hash: the tracker state of one camera (JSON)."""
        return self._k("tracks", safe_id(camera_id, "camera id"))

    def job(self, job_id: str) -> str:
        """Hash: a folder/batch job's progress."""
        return self._k("job", safe_id(job_id, "job id"))

    def job_results(self, job_id: str) -> str:
        """Stream of a folder job's per-image result records."""
        return self._k("job", safe_id(job_id, "job id"), "results")

    def enrolment(self, request_id: str) -> str:
        """Hash: result of one enrolment request (idempotency)."""
        return self._k("enrolment", safe_id(request_id, "request id"))

    def upload(self, upload_id: str) -> str:
        """String with TTL: image bytes uploaded by a client for a task."""
        return self._k("upload", safe_id(upload_id, "upload id"))

    def deliveries(self, task_id: str) -> str:
        """String counter with TTL: runs of one Celery task that started and have not
        ended in their process (a run that ends deletes it); see ``workers/deadletter.py``."""
        return self._k("deliveries", safe_id(task_id, "task id"))

    def dead_letter(self) -> str:
        """Stream of parked tasks (task name, id, payload, deliveries), for ``faec-rec tasks dead-letter``."""
        return self._k("dead-letter")
    # ---- sinks (sinks/) ------------------------------------------------------
    def sink_group(self, sink: str) -> str:
        """Consumer-group name (not a key) of one sink on the combined events stream."""
        return "sink:" + safe_id(sink, "sink name")

    def sink_dead_letter(self, sink: str) -> str:
        """Stream of one sink's parked events (fields: event_id, event, error, attempts, parked_at)."""
        return self._k("sinks", safe_id(sink, "sink name"), "dead-letter")

    def sink_stats(self) -> str:
        """Hash of counters ``<sink>:<outcome>`` (delivered, failed, dead_lettered, malformed...)."""
        return self._k("sinks", "stats")

    def mqtt_people(self) -> str:
        """Hash: person id -> the person's MQTT topic name (so a forget can clear it)."""
        return self._k("sinks", "mqtt", "people")

    def mqtt_tracks(self) -> str:
        """Hash: ``<camera>:<track id>`` -> person id of each known track seen on MQTT."""
        return self._k("sinks", "mqtt", "tracks")

    def mqtt_presence(self, person_id: str) -> str:
        """Set of ``<camera>:<track id>`` where a person is now; empty = away."""
        return self._k("sinks", "mqtt", "presence", safe_id(person_id, "person id"))

    def celery(self) -> str:
        """Prefix of the Celery broker's and result backend's own keys (queues, results)."""
        return self._k("celery", "")

    # ---- operations (cluster/) ------------------------------------------
    def durability_probe(self) -> str:
        """Counter written right before WAIT/WAITAOF so the waiting connection's own
        write offset covers every earlier write (see faec_rec.cluster.durability)."""
        return self._k("durability", "probe")

    def camera_events_pattern(self) -> str:
        """Glob of every camera's event stream (retention sweep)."""
        return self._k("events", "*")

    def event_features_pattern(self) -> str:
        """Glob of every event-features key (retention sweep)."""
        return self._k("event-features", "*")

    def jobs_pattern(self) -> str:
        """Glob of every job hash and job results stream (retention sweep)."""
        return self._k("job", "*")

    def enrolments_pattern(self) -> str:
        """Glob of every enrolment report (retention sweep)."""
        return self._k("enrolment", "*")

    def retention_stats(self) -> str:
        """Hash: per sweep step, items removed in total and at the last sweep."""
        return self._k("retention", "stats")
    # ---- web server (web/) ---------------------------------------------------
    def api_keys(self) -> str:
        """Hash: key id -> JSON record (name, role, sha256 of the secret, password scrypt hash, created, revoked)."""
        return self._k("web", "api-keys")

    def api_key_hashes(self) -> str:
        """Hash: sha256 hex of an API key's secret -> key id (lookup on each request)."""
        return self._k("web", "api-key-hashes")

    def web_rate(self, who: str) -> str:
        """Hash with TTL: one key's (or session's) request token bucket (tokens, at), shared by every server process."""
        return self._k("web", "rate", safe_id(who, "rate limit id"))

    def login_failures(self, kind: str, subject_hash: str) -> str:
        """Hash with TTL: failed logins of one account name or client address (``kind``):
        count, locked_until (unix s). The subject is hashed: any text may be typed as a name."""
        return self._k("web", "login-failures", safe_id(kind, "kind"), safe_id(subject_hash, "subject"))

    def web_session(self, session_hash: str) -> str:
        """String with TTL: JSON of a page login (key id, CSRF token), under the sha256 of the cookie."""
        return self._k("web", "session", safe_id(session_hash, "session"))

    def audit(self) -> str:
        """Stream of every change (who, what, when): enrol, rename, forget, promote, keys..."""
        return self._k("audit")

    def pattern(self) -> str:
        """Glob matching every key of this deployment (tests, cleanup)."""
        return self._k("*")

    # ---- globs for erasure (index/erasure.py: forgetting a person) ----------
    def events_pattern(self) -> str:
        """Glob matching every camera's event stream."""
        return self._k("events", "*")

    def job_results_pattern(self) -> str:
        """Glob matching every job's result stream."""
        return self._k("job", "*", "results")

    def enrolment_pattern(self) -> str:
        """Glob matching every enrolment report."""
        return self._k("enrolment", "*")

    def event_snapshots_pattern(self) -> str:
        """Glob matching every event snapshot (face crop + frame)."""
        return self._k("event-snapshot", "*")

    def sink_dead_letters_pattern(self) -> str:
        """Glob matching every sink's dead-letter stream."""
        return self._k("sinks", "*", "dead-letter")

    def celery_results_pattern(self) -> str:
        """Glob matching Celery's task results (``celery-task-meta-<task id>``) of this deployment."""
        return self.celery() + "celery-task-meta-*"
