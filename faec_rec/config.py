"""The one typed configuration object, validated at start-up.

Sources, later wins: defaults below < a TOML or JSON file (``FAEC_CONFIG`` or an
explicit path) < environment variables ``FAEC_<FIELD>`` with ``__`` between
nested names, e.g. ``FAEC_GALLERY__THRESHOLD=0.5``.

Every field has a default, a description and bounds; an unknown key is an error
(``extra="forbid"``), so a typo fails loudly instead of being ignored.
"""
from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from faec_rec.errors import ConfigError


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/faec-rec`` or ``~/.local/share/faec-rec``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "faec-rec"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FacesConfig(_Section):
    """Detection, alignment and embedding."""

    detector: str = Field("blazeface", description="face detector: 'blazeface' (MediaPipe full-range over a window pyramid; mtcnn was measured at ~167 ms per 600 px photo and not adopted)")
    min_face_px: int = Field(40, ge=8, le=1000, description="smallest face side, pixels, to report")
    detect_max_side: int = Field(1280, ge=128, le=8192, description="larger images are downscaled to this side for detection, unless detect_max_pixels allows more; boxes are mapped back")
    detect_max_pixels: int = Field(2_500_000, ge=0, le=200_000_000, description="pixel budget of the image as detected: a large photo is downscaled only to this many pixels (never below detect_max_side), so min_face_px counts nearly in its own pixels (a 6000x4000 photo: faces from ~125 px, was ~190; a 20000x1300 panorama: from ~130 px, was ~630; a 1920x1080 photo is detected whole: from 40 px, was 60, at ~3x the detection time); large pyramid levels run in fixed-size tiles; 0 = detect_max_side alone (the old rule)")
    score_threshold: float = Field(0.5, gt=0, lt=1, description="detector confidence below which a face is ignored (0.5: no face on no_face/, 2 of 231 dlib-HOG faces missed on group_photos/; 0.6 missed 9)")
    max_image_pixels: int = Field(60_000_000, ge=1, description="refuse images with more pixels than this before decoding (decompression bombs)")
    max_image_bytes: int = Field(50_000_000, ge=1, description="refuse encoded images larger than this")
    flip_average: bool = Field(True, description="average the descriptor of each chip and its mirror image")
    batch_size: int = Field(32, ge=1, le=1024, description="faces embedded per model call")
    precision: str = Field("auto", pattern=r"^(auto|float32|bfloat16)$", description="embedding arithmetic: 'auto' (bfloat16 on CPUs with AVX512-BF16/AMX, where it is ~1.7x faster with LFW accuracy unchanged at 0.9913; float32 elsewhere), 'float32' (matches dlib to 1e-6) or 'bfloat16' (cosine scores move by up to ~0.002)")
    runtime: str = Field("auto", pattern=r"^(auto|litert|tensorflow)$", description="what runs the built-in backbone: 'auto' (LiteRT for float32, the TensorFlow graph for bfloat16), 'litert' (the TFLite runtime: ~1.3x faster than TensorFlow in float32 on AVX2 CPUs, and a cold start imports no TensorFlow; float32 only) or 'tensorflow' (the frozen TensorFlow graph)")


class GalleryConfig(_Section):
    """The enrolled gallery and the open-set decision."""

    threshold: float | None = Field(None, ge=-1, le=1, description="global cosine-similarity threshold; None takes the value calibrated for the model")
    margin: float = Field(0.0, ge=0, le=2, description="minimum gap between best and runner-up person for a 'known' decision")
    per_person_thresholds: bool = Field(False, description="raise the threshold for people who resemble many others (off by default since the gallery-size rule, search_far: on benchmarks.openset's tune half it cost 5 points of named-correctly at the same stranger rejection)")
    hnsw_above: int = Field(200_000, ge=1, description="use the approximate index (see `approximate`) above this many templates, exact search below")
    approximate: str = Field("ivf", pattern="^(ivf|hnsw)$", description="approximate index kind above `hnsw_above`: 'ivf' (inverted lists of 4-bit PQ codes, candidates re-scored exactly; builds 1M in ~20 s) or 'hnsw' (graph; builds 1M in ~19 min)")
    ivf_nlist: int = Field(0, ge=0, le=1_000_000, description="IVF inverted lists; 0 = 2*sqrt(templates) at build time")
    ivf_nprobe: int = Field(288, ge=1, le=1_000_000, description="IVF lists searched per query (recall vs speed): at 1M templates (2000 lists) 288 agrees with exact search's top template for 99.4% of faces in ~0.7 ms here, 256 for 99.2%, 320 for 99.6% in ~0.85 ms; all find the right identity for 100%")
    ivf_refine: int = Field(2, ge=1, le=64, description="IVF candidates per wanted neighbour that are re-scored exactly from stored vectors")
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree")
    hnsw_ef_search: int = Field(192, ge=8, le=4096, description="HNSW search depth (recall vs speed): at 1M templates 192 finds the right identity for 99.8% of faces in 1.5 ms here, 128 for 98.5% in 1.1 ms")
    hnsw_ef_construction: int = Field(200, ge=8, le=4096, description="HNSW build depth")
    snapshot_every: int = Field(10_000, ge=1, description="write a snapshot after this many gallery events")
    search_k: int = Field(32, ge=2, le=4096, description="nearest templates fetched per query before grouping them by person")
    impostor_quantile: float = Field(0.9, ge=0, le=1, description="quantile, over a person's templates, of the similarity the nearest other person reaches; their threshold is raised to it")
    impostor_guard: float = Field(0.02, ge=0, le=1, description="added to that quantile: how far above look-alikes a match must score")
    max_raise: float = Field(0.05, ge=0, le=2, description="most a per-person threshold may exceed the global one (base-projection cosines of LFW genuine and impostor pairs sit within a few hundredths of the 0.92 threshold)")
    trim_stream: bool = Field(True, description="after a snapshot, delete gallery events older than the oldest snapshot kept; a replica behind the trim rebuilds from the Redis records")
    centroid_weight: float = Field(0.7, ge=0, le=1, description="a person's score mixes the similarity to the mean of all their templates (this weight) with the best single template (the rest): one lucky template of a stranger counts less; see README 'Open-set accuracy'; 0 = best template only")
    search_far: float | None = Field(0.005, ge=0.0001, le=0.5, description="family-wise false-accept rate per search: with the calibrated threshold (threshold None) the threshold rises with the number of enrolled people so that about this share of strangers reach it, whatever the gallery size (model card 'search' table); None = the per-pair threshold at any size")
    faiss_threads: int = Field(1, ge=0, le=256, description="FAISS OpenMP threads of a process holding a replica; 1 suits workers (parallelism comes from processes, and idle OpenMP threads spin); 0 leaves FAISS's default")


class WorkerConfig(_Section):
    """Celery workers."""

    concurrency: int = Field(2, ge=1, le=256, description="worker processes per `faec-rec worker`")
    frame_ttl_s: int = Field(60, ge=1, le=86_400, description="seconds a frame's bytes live in Redis")
    max_retries: int = Field(3, ge=0, le=100, description="retries of a failed task (backoff doubles)")
    prefetch_multiplier: int = Field(1, ge=1, le=64, description="tasks each process reserves ahead")
    health_port: int = Field(0, ge=0, le=65535, description="HTTP health/readiness and metrics port; 0 = off")
    visibility_timeout_s: int = Field(600, ge=2, le=86_400, description="seconds before a task taken by a worker that died unacknowledged is handed to another; must exceed the longest task")
    max_frame_age_s: float = Field(0.0, ge=0, le=86_400, description="shed a frame older than this (capture to pick-up) while newer frames of its camera wait, counting it as dropped: a live view stays live under overload; 0 = process every frame")
    tf_threads: int = Field(1, ge=0, le=256, description="inference threads per worker process (TensorFlow and LiteRT); 1 suits a prefork pool with a process per core (parallelism comes from processes); 0 leaves the runtimes' defaults")
    upload_ttl_s: int = Field(3600, ge=10, le=7 * 86_400, description="seconds image bytes uploaded by a client wait for a worker")
    result_ttl_s: int = Field(86_400, ge=60, le=30 * 86_400, description="seconds enrolment reports, job results and task results are kept")
    task_soft_time_limit_s: int = Field(120, ge=1, le=86_400, description="seconds a frame, image or enrolment task may run before it is interrupted (SoftTimeLimitExceeded: it fails, is acknowledged, not run again); keep below visibility_timeout_s")
    task_time_limit_s: int = Field(180, ge=1, le=86_400, description="seconds after which a task still running has its worker process killed (prefork pool); keep below visibility_timeout_s")
    max_deliveries: int = Field(3, ge=1, le=100, description="runs of one task that may end with their worker process dead (crash, OOM kill) before the next delivery parks it in the dead-letter stream instead of running it")
    cluster_metrics: bool = Field(False, description="serve the cluster metrics read from Redis (queue depths, cameras, people, parked tasks) on this worker's /metrics; turn it on in ONE process per deployment (the trainer in deploy/), not on every worker, or each scrape of each pod reads Redis again")
    liveness_stale_s: int = Field(120, ge=5, le=3600, description="/healthz of a worker fails when its consumer loop (which beats every 5 s) has not run for this long: stuck, or its broker connection lost")
    read_roots: tuple[Path, ...] = Field((), description="folders a task may name image files in (folder jobs sent by path); a path outside them, or any path when empty and redis_url is set, is refused (uploads always work). Empty with the private Redis: any file this user can read")
    folder_batch: int = Field(16, ge=1, le=256, description="images of a folder job per task: their faces are embedded in one model call (1 = one task per image, the unbatched path)")
    decode_threads: int = Field(2, ge=1, le=64, description="threads that read, decode and detect the images of one folder-job batch in a worker process (at most this many decoded images are held at once)")


class ProducerConfig(_Section):
    """Camera and folder producers."""

    fps: float = Field(10.0, gt=0, le=120, description="frames per second sampled from each camera")
    # 1 = the freshest frame per camera: measured (benchmarks.system, 4x10 fps, 2 workers)
    # p95 capture-to-event 145 ms at 1, 258 ms at 2, 955 ms at 8, for 3-6 % more drops.
    max_in_flight: int = Field(1, ge=1, le=10_000, description="frames per camera waiting for a worker before the oldest is dropped (1 = always the freshest; raise it to process every frame of a file)")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of frames pushed to Redis")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="longest wait between camera reconnection attempts")
    max_side: int = Field(1280, ge=64, le=8192, description="frames larger than this are downscaled before pushing")


class EventsConfig(_Section):
    """Event streams and tracking."""

    stream_maxlen: int = Field(100_000, ge=100, description="approximate length cap of each event stream")
    track_iou: float = Field(0.3, gt=0, lt=1, description="box overlap that continues a track between frames")
    track_timeout_s: float = Field(2.0, gt=0, le=600, description="a track unseen this long is 'left'")
    track_switch_frames: int = Field(2, ge=1, le=100, description="matched frames in a row naming another person before a track's identity changes")
    track_min_hits: int = Field(2, ge=1, le=100, description="frames a face must be tracked in before its 'arrived' event (1 = at once)")
    features_ttl_s: int = Field(7 * 86_400, ge=0, le=90 * 86_400, description="seconds the face features of an 'arrived'/'updated' event are kept so feedback on it can train the head (0 = not stored); also how long a forgotten person's face may stay in those keys")
    snapshot_ttl_s: int = Field(86_400, ge=0, le=90 * 86_400, description="seconds the face crop and downscaled frame of an 'arrived' event (its `snapshot` key) are kept; 0 = no snapshots")
    snapshot_max_side: int = Field(640, ge=64, le=8192, description="longest side, pixels, of the frame kept with an 'arrived' event")


class TrainingConfig(_Section):
    """Comparison-head training."""

    schedule: str = Field("0 3 * * *", description="cron expression (minute hour day month weekday) for scheduled retraining")
    epochs: int = Field(30, ge=1, le=10_000, description="head training epochs")
    identities_per_batch: int = Field(16, ge=2, le=1024, description="P in a P x K balanced batch")
    images_per_identity: int = Field(4, ge=2, le=64, description="K in a P x K balanced batch")
    max_lfw_drop: float = Field(0.002, ge=0, le=1, description="largest generic (LFW) accuracy loss a promoted head may cause")
    seed: int = Field(0, description="random seed of training runs")
    loss: str = Field("triplet", pattern=r"^(contrastive|triplet|amsoftmax)$", description="head metric loss: triplet (semi-hard; measured best within the LFW budget), contrastive or amsoftmax")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="head training learning rate (Adam)")
    anchor_weight: float = Field(2.0, ge=0, le=1000, description="penalty on the head moving embeddings away from the base ones (keeps generic accuracy)")
    holdout_fraction: float = Field(0.34, gt=0, lt=1, description="share of each person's gallery templates held out to judge a candidate head")
    min_gain: float = Field(0.0, ge=0, le=1, description="gallery TAR@1%FAR a candidate must gain over the head in service to be promoted")
    reference_dir: Path | None = Field(None, description="generic reference set: an LFW folder (<person>/<images> + pairs.txt); unset = <data_dir>/reference/lfw")
    lock_ttl_s: int = Field(3600, ge=10, le=86_400, description="seconds the training lock lives if a trainer dies holding it")
    soft_time_limit_s: int = Field(3300, ge=60, le=7 * 86_400, description="seconds a training task may run before it is interrupted (and fails); keep below lock_ttl_s. Training is acknowledged when it starts, so a run longer than the broker's visibility timeout is never delivered twice")
    signing_key: SecretStr | None = Field(None, description="secret key (HMAC-SHA256) that signs every registered comparison head; set, a head whose record is unsigned or signed with another key is refused (tampering with the file and its checksum in Redis is caught); unset, the checksum catches corruption only. Give it from a secret: FAEC_TRAINING__SIGNING_KEY or the file named by FAEC_TRAINING__SIGNING_KEY_FILE")
    time_limit_s: int = Field(3500, ge=60, le=7 * 86_400, description="seconds after which a training task still running has its process killed; keep below lock_ttl_s")


class DurabilityConfig(_Section):
    """How sure an enrolment reported "done" is to survive Redis going away (faec_rec.cluster.durability)."""

    enrolments: str = Field("auto", pattern=r"^(auto|off|fsync|replicas)$", description="'auto': confirm with WAITAOF where Redis >= 7.2 has it (AOF fsynced, plus connected replicas), else take what the server's AOF policy gives and WAIT for connected replicas; 'fsync': refuse to report done until the AOF is fsynced (WAITAOF, or appendfsync always on Redis < 7.2); 'replicas': also wait for min_replicas replicas; 'off': no check")
    min_replicas: int = Field(1, ge=0, le=16, description="replicas that must acknowledge an enrolment in 'replicas' mode (and at most this many are waited for in 'auto')")
    wait_timeout_ms: int = Field(2000, ge=1, le=60_000, description="longest wait for WAITAOF/WAIT on one enrolment; short of the level, the enrol task retries")


class RetentionConfig(_Section):
    """How long things are kept; `faec-rec retention sweep` and the beat task enforce it (0 = keep forever)."""

    events_days: float = Field(30.0, ge=0, le=3650, description="recognition events (per-camera and combined streams) older than this are trimmed")
    event_features_days: float = Field(7.0, ge=0, le=90, description="face features stored for feedback on events (also capped by events.features_ttl_s at write time)")
    job_results_days: float = Field(1.0, ge=0, le=365, description="folder/identify job progress and result streams")
    enrolment_reports_days: float = Field(1.0, ge=0, le=365, description="enrolment reports kept for idempotency and `enrol_report`")
    feedback_days: float = Field(365.0, ge=0, le=3650, description="feedback entries (confirmations/corrections) with the face features they hold")
    crops_days: float = Field(0.0, ge=0, le=3650, description="crop files under data_dir/crops with no template left pointing at them are deleted once older than this; 0 = never (a template's own crop is kept while the template lives)")
    snapshots_days: float = Field(0.0, ge=0, le=3650, description="gallery snapshot files older than this, other than the newest, are deleted; 0 = leave them to the gallery's own pruning")
    unknown_faces_days: float = Field(30.0, ge=0, le=3650, description="unknown faces (visitors) older than this; enforced by the visitors part's own sweep step when it is installed")
    audit_days: float = Field(365.0, ge=0, le=3650, description="audit entries older than this; enforced by the audit part's own sweep step when it is installed")
    sweep_schedule: str = Field("17 * * * *", description="cron expression (UTC) of the periodic sweep sent by `faec-rec beat`; empty = no periodic sweep")


class SinksConfig(_Section):
    """The sink runner (`faec-rec sinks`): events out to MQTT and webhooks."""

    batch: int = Field(100, ge=1, le=10_000, description="events read from the stream per XREADGROUP")
    block_ms: int = Field(1000, ge=10, le=60_000, description="how long one read waits for new events, ms")
    max_attempts: int = Field(8, ge=1, le=1000, description="delivery attempts of one event to one sink before it is parked in that sink's dead-letter stream (a broker that is down does not count: the sink waits for it)")
    backoff_base_s: float = Field(0.5, gt=0, le=3600, description="first retry delay; doubles each attempt, half of each delay random (jitter)")
    backoff_max_s: float = Field(30.0, gt=0, le=3600, description="longest retry delay (also the longest wait between checks of a sink that is down)")
    claim_idle_ms: int = Field(30_000, ge=100, le=86_400_000, description="a delivery pending this long in a runner that died is reclaimed (XAUTOCLAIM) by another runner or the restarted one; must exceed the longest delivery with its retries in flight")
    dead_letter_maxlen: int = Field(100_000, ge=100, description="approximate length cap of each sink's dead-letter stream")
    health_port: int = Field(0, ge=0, le=65535, description="HTTP /metrics, /healthz and /readyz port of `faec-rec sinks`; 0 = off")
    allow_networks: list[str] = Field([], description="CIDRs webhooks may reach although they are loopback, private, link-local or otherwise internal (e.g. ['10.0.0.0/8']); by default only public addresses are allowed")


class MqttConfig(_Section):
    """MQTT output with Home Assistant discovery; off while ``url`` is unset."""

    url: str | None = Field(None, description="mqtt://[user:pass@]host[:1883] or mqtts://[user:pass@]host[:8883] (TLS); unset = no MQTT sink")
    prefix: str = Field("faec_rec", pattern=r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64})*$", description="first topic level(s): <prefix>/events, <prefix>/<camera>/person, <prefix>/person/<name>, <prefix>/available")
    qos: int = Field(1, ge=0, le=2, description="QoS of every message; with 1 or 2 an event is acknowledged only after the broker's PUBACK/PUBCOMP")
    retain: bool = Field(True, description="retain the state topics (<camera>/person, person/<name>) so a new subscriber sees the current state")
    client_id: str = Field("", max_length=64, description="MQTT client id; empty = faec_rec-<host>-<pid>")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds")
    connect_timeout_s: float = Field(10.0, gt=0, le=600, description="how long delivery waits for a (re)connection before treating the broker as down")
    ca_file: Path | None = Field(None, description="CA bundle for mqtts:// (unset = system CAs)")
    tls_insecure: bool = Field(False, description="mqtts:// without checking the broker's certificate name (test brokers only)")
    discovery: bool = Field(True, description="publish Home Assistant MQTT discovery configs (a sensor per camera, a device tracker per person)")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Home Assistant's discovery prefix")
    node_id: str = Field("faec_rec", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="node id in discovery topics and the shared device's identifier")

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        from urllib.parse import urlsplit

        if not value:  # an empty FAEC_MQTT__URL (compose's ${VAR:-}) means unset
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
            raise ValueError("must be mqtt://host[:port] or mqtts://host[:port] (TLS), optionally with user:pass@")
        parts.port  # raises ValueError on a bad port
        return value


class WebhookConfig(_Section):
    """One webhook: events POSTed as JSON, signed when a secret is set."""

    url: str = Field(..., description="http:// or https:// URL; its host must resolve to an allowed address (see sinks.allow_networks)")
    name: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,64}$", description="sink name (dead-letter stream, consumer group, metrics); empty = webhook-<hash of url>")
    cameras: list[str] = Field(default_factory=list, description="only events of these cameras (empty = all)")
    people: list[str] = Field(default_factory=list, description="only events naming these people, by name or person id (empty = all)")
    decisions: list[str] = Field(default_factory=list, description="only these decisions: known, unknown (empty = all)")
    types: list[str] = Field(default_factory=list, description="only these event types: arrived, updated, left, error (empty = all)")
    secret: str | None = Field(None, description="HMAC-SHA256 key of X-Faec-Signature (prefer secret_file or secret_env)")
    secret_file: Path | None = Field(None, description="file holding the secret (trailing newline stripped)")
    secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", description="environment variable holding the secret")
    timeout_s: float = Field(5.0, gt=0, le=300, description="connect and response timeout of one POST")
    ca_file: Path | None = Field(None, description="CA bundle that signs an https:// receiver's certificate (unset = system CAs)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers (e.g. Authorization)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("decisions")
    @classmethod
    def _decisions(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v not in {"known", "unknown"}]
        if bad:
            raise ValueError(f"unknown decision(s) {bad}: use known, unknown")
        return value

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v not in {"arrived", "updated", "left", "error"}]
        if bad:
            raise ValueError(f"unknown event type(s) {bad}: use arrived, updated, left, error")
        return value


class WebConfig(_Section):
    """`faec-rec serve`: the REST API and the pages."""

    host: str = Field("127.0.0.1", min_length=1, max_length=255, description="address the server listens on (127.0.0.1 = this machine only; see the README's threat model before widening)")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the server")
    max_upload_bytes: int = Field(20_000_000, ge=1_000, le=1_000_000_000, description="largest request body accepted (413 above); each image is also held to faces.max_image_bytes and faces.max_image_pixels")
    max_images_per_request: int = Field(50, ge=1, le=10_000, description="most images in one enrol or jobs request")
    rate_limit_per_s: float = Field(50.0, gt=0, le=100_000, description="requests per second each key (or session) may sustain")
    rate_burst: int = Field(100, ge=1, le=1_000_000, description="requests a key may make at once before the rate limit applies")
    task_timeout_s: float = Field(30.0, gt=0, le=3600, description="seconds a request waits for a worker (identify, enrol) before a 504 'no worker answered'")
    session_ttl_s: int = Field(12 * 3600, ge=60, le=30 * 86_400, description="seconds a page login lasts")
    secure_cookies: bool = Field(True, description="mark the session cookie Secure (sent over HTTPS only; browsers also accept it on http://localhost)")
    trusted_proxy: bool = Field(False, description="trust X-Forwarded-For/-Proto from a reverse proxy in front of the server")
    login_failures_per_account: int = Field(5, ge=1, le=1000, description="failed logins of one key name before it is locked out (then each further failure doubles the lockout)")
    login_failures_per_address: int = Field(20, ge=1, le=100_000, description="failed logins from one client address (any name, or a wrong key) before that address is locked out")
    login_lockout_s: float = Field(30.0, gt=0, le=86_400, description="first lockout in seconds; it doubles with each failure after it, up to login_lockout_max_s")
    login_lockout_max_s: float = Field(900.0, gt=0, le=7 * 86_400, description="longest lockout in seconds")
    login_failure_window_s: int = Field(3600, ge=60, le=30 * 86_400, description="seconds a failure is remembered after the last one (counts reset then, and on a successful login for the account)")
class VisitorsConfig(_Section):
    """Unknown faces kept and grouped into visitors (see faec_rec.visitors)."""

    enabled: bool = Field(True, description="store every face decided 'unknown' and group it into a visitor")
    link_threshold: float = Field(0.94, ge=-1, le=1, description="cosine similarity (L2-normalised backbone features) at which two faces count as a link")
    strong_threshold: float = Field(0.95, ge=-1, le=1, description="similarity a single link needs to join a visitor that holds one good face (two faces make a visitor only this close)")
    centre_threshold: float = Field(0.94, ge=-1, le=1, description="similarity a face needs to its visitor's centre (mean of its good faces) to join it: linkage to the group, not to one face")
    min_links: int = Field(2, ge=1, le=64, description="links to a visitor's good faces a face needs to join it (fewer when the visitor holds fewer good faces)")
    merge_threshold: float = Field(0.94, ge=-1, le=1, description="centre-to-centre similarity at which two visitors that one face joins strongly are merged")
    ambiguity_margin: float = Field(0.01, ge=0, le=1, description="a face whose similarity to its best visitor's centre is not this much above its similarity to another visitor it is near (a face of it at rival_threshold or more) joins neither and stays in no visitor: between two people is no evidence for either (0 = off)")
    rival_threshold: float = Field(0.92, ge=-1, le=1, description="a visitor with a face at least this similar counts as a rival for ambiguity_margin")
    search_k: int = Field(32, ge=4, le=1024, description="nearest stored faces examined per join")
    approximate_above: int = Field(50_000, ge=1, description="above this many good faces the visitor index is IVF (inverted lists, exact re-scoring), below it exact (flat search costs ~0.05 ms per 1000 faces here)")
    ivf_nprobe: int = Field(48, ge=1, le=100_000, description="IVF lists searched per join: recall of the links vs speed")
    retention_days: float = Field(30.0, ge=0, le=3650, description="unknown faces older than this that belong to no named person are deleted (0 = keep forever)")
    max_faces: int = Field(1_000_000, ge=0, le=100_000_000, description="at most this many unknown faces are kept: the oldest go first (0 = no limit)")
    crop_quality: int = Field(90, ge=10, le=100, description="JPEG quality of stored unknown-face crops")
    snapshot_every: int = Field(10_000, ge=1, description="a worker writes a visitor replica snapshot (data_dir/visitor-snapshots/<prefix>) after this many visitor events; a starting worker loads the newest plus the events after it instead of reading every face from Redis")


class Settings(BaseSettings):
    """Everything configurable, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="FAEC_", env_nested_delimiter="__", extra="forbid", frozen=True,
        # a rejected redis_url holds a password: never echo input values in errors
        hide_input_in_errors=True,
    )

    redis_url: str | None = Field(None, description="redis:// or rediss:// URL, or redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB] for Redis Sentinel; unset = start a private Redis under data_dir")
    prefix: str = Field("faec", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="namespace of every Redis key")
    data_dir: Path = Field(default_factory=default_data_dir, description="crops, snapshots, models and the private Redis")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="logging level")
    log_json: bool = Field(False, description="structured JSON logs")
    faces: FacesConfig = FacesConfig()
    gallery: GalleryConfig = GalleryConfig()
    workers: WorkerConfig = WorkerConfig()
    producers: ProducerConfig = ProducerConfig()
    events: EventsConfig = EventsConfig()
    training: TrainingConfig = TrainingConfig()
    redis_require_noeviction: bool = Field(True, description="refuse to start a worker on a Redis whose maxmemory-policy evicts keys (it would drop queued tasks and gallery records silently); false only warns")
    redis_tls_insecure_skip_verify: bool = Field(False, description="INSECURE: accept a rediss:// URL whose ssl_cert_reqs is none/optional (or ssl_check_hostname=false), i.e. TLS without checking who answers; for a test bench only")
    durability: DurabilityConfig = DurabilityConfig()
    retention: RetentionConfig = RetentionConfig()
    sinks: SinksConfig = SinksConfig()
    mqtt: MqttConfig = MqttConfig()
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="webhooks that receive events (each a sink of `faec-rec sinks`)")
    web: WebConfig = WebConfig()
    visitors: VisitorsConfig = VisitorsConfig()

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        # Checked here, not at first connection: Celery's result backend refuses a
        # rediss:// URL without ssl_cert_reqs with a message that does not name the setting.
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme == "redis+sentinel":  # faec_rec.cluster.sentinel: sentinels, service name, db
            from faec_rec.cluster.sentinel import parse

            try:
                parse(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            return value
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// (TLS), unix:// or redis+sentinel://")
        if scheme == "rediss" and "ssl_cert_reqs" not in _url_query(value):
            raise ValueError("a rediss:// URL needs ?ssl_cert_reqs=required "
                             "(and &ssl_ca_certs=/path/to/ca.pem for a private certificate authority)")
        return value

    @model_validator(mode="after")
    def _tls_verified(self) -> "Settings":
        # Separate from the scheme check: it needs redis_tls_insecure_skip_verify too.
        if self.redis_url is None or self.redis_tls_insecure_skip_verify or not self.redis_url.lower().startswith("rediss:"):
            return self
        query = _url_query(self.redis_url)
        reqs = query.get("ssl_cert_reqs", [])
        if len(set(v.lower().removeprefix("cert_") for v in reqs)) > 1:
            raise ValueError("redis_url: ssl_cert_reqs is given more than once with different values")
        for value in reqs:
            level = value.strip().lower().removeprefix("ssl.").removeprefix("cert_")
            if level != "required":
                raise ValueError(
                    f"redis_url: ssl_cert_reqs={level or '(empty)'} does not check the server's certificate, "
                    "so anyone on the path can read the password and the faces: use ssl_cert_reqs=required "
                    "(with &ssl_ca_certs=... for a private CA), or set redis_tls_insecure_skip_verify=true "
                    "(FAEC_REDIS_TLS_INSECURE_SKIP_VERIFY) to accept that")
        for value in query.get("ssl_check_hostname", []):
            if value.strip().lower() in {"false", "0", "no", "off", "n", "f"}:
                raise ValueError("redis_url: ssl_check_hostname=false accepts any host's certificate: drop it, "
                                 "or set redis_tls_insecure_skip_verify=true to accept that")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init values), as documented above;
        # FAEC_<NAME>_FILE reads a secret's value from a file (Docker/Kubernetes secrets).
        return (_EnvWithFileSecrets(settings_cls), init_settings)


class _EnvWithFileSecrets(EnvSettingsSource):
    """The environment, where ``FAEC_<NAME>_FILE=/path`` stands for ``FAEC_<NAME>`` = that
    file's text (trailing newline removed): a password or key then never appears in the
    environment, a command line or ``docker inspect``, only in a mounted file."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = dict(super()._load_env_vars())
        fields = {f.lower() for f in Settings.model_fields}
        for name in [n for n in env if n.lower().startswith("faec_") and n.lower().endswith("_file")]:
            target = name[: -len("_file")]
            if target.lower()[len("faec_"):].split("__", 1)[0] not in fields:
                continue  # not a setting's secret (FAEC_CONFIG_FILE of compose, a test's own variable)
            path = env.pop(name)
            if target in env:
                raise ConfigError(f"both {target.upper()} and {name.upper()} are set: keep one")
            try:
                env[target] = Path(path or "").read_text().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{name.upper()}: cannot read the secret file {path!r}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from exc
        return env


def _url_query(url: str) -> dict[str, list[str]]:
    """The query parameters of a URL, names lower-cased, values percent-decoded
    (``?SSL_CERT_REQS=%6Eone`` is ``{"ssl_cert_reqs": ["none"]}``)."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    out: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(name.strip().lower(), []).append(value)
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}): give a TOML or JSON file") from exc
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return data


# FAEC_ variables that are not settings: the config file's path and the tests' own.
_ENV_NOT_SETTINGS = ("FAEC_CONFIG", "FAEC_TEST_")


def check_env_names(environ: Mapping[str, str] | None = None) -> None:
    """Refuse a ``FAEC_`` variable that looks like a misspelt setting (``FAEC_REDIS_ULR``).

    pydantic-settings ignores unknown top-level names silently (nested ones such as
    ``FAEC_GALLERY__TRESHOLD`` already fail); a near miss of a setting's name is almost
    always a typo, so it fails naming the setting it resembles. Other ``FAEC_`` names are
    left to whoever reads them.
    """
    environ = os.environ if environ is None else environ
    heads = [name.upper() for name in Settings.model_fields]
    for var in environ:
        upper = var.upper()
        if not upper.startswith("FAEC_") or upper.startswith(_ENV_NOT_SETTINGS):
            continue
        if upper.endswith("_FILE"):  # FAEC_<NAME>_FILE: a secret read from a file
            upper = upper[: -len("_FILE")]
        head, sep, rest = upper[len("FAEC_"):].partition("__")
        if head in heads:
            continue
        close = difflib.get_close_matches(head, heads, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"environment variable {var} names no setting: did you mean FAEC_{close[0]}{sep}{rest}?")


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings.

    ``path`` (or ``$FAEC_CONFIG``) names a TOML or JSON file; ``overrides`` are
    keyword values for tests and the CLI. Raises :class:`ConfigError` naming the
    first bad field.
    """
    check_env_names()
    file_path = path or os.environ.get("FAEC_CONFIG")
    values: dict[str, Any] = _read_file(Path(file_path)) if file_path else {}
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if not field:  # a check across fields: its message names them
            raise ConfigError(f"invalid configuration: {str(first['msg']).removeprefix('Value error, ')}") from exc
        raise ConfigError(f"invalid configuration: {field}: {first['msg']}") from exc
