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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

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


class GalleryConfig(_Section):
    """The enrolled gallery and the open-set decision."""

    threshold: float | None = Field(None, ge=-1, le=1, description="global cosine-similarity threshold; None takes the value calibrated for the model")
    margin: float = Field(0.0, ge=0, le=2, description="minimum gap between best and runner-up person for a 'known' decision")
    per_person_thresholds: bool = Field(True, description="raise the threshold for people who resemble many others")
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
    tf_threads: int = Field(1, ge=0, le=256, description="TensorFlow threads per worker process; 1 suits a prefork pool with a process per core (parallelism comes from processes); 0 leaves TensorFlow's default")
    upload_ttl_s: int = Field(3600, ge=10, le=7 * 86_400, description="seconds image bytes uploaded by a client wait for a worker")
    result_ttl_s: int = Field(86_400, ge=60, le=30 * 86_400, description="seconds enrolment reports, job results and task results are kept")
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


class Settings(BaseSettings):
    """Everything configurable, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="FAEC_", env_nested_delimiter="__", extra="forbid", frozen=True,
        # a rejected redis_url holds a password: never echo input values in errors
        hide_input_in_errors=True,
    )

    redis_url: str | None = Field(None, description="redis:// or rediss:// URL; unset = start a private Redis under data_dir")
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

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        # Checked here, not at first connection: Celery's result backend refuses a
        # rediss:// URL without ssl_cert_reqs with a message that does not name the setting.
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        if scheme == "rediss" and "ssl_cert_reqs=" not in value:
            raise ValueError("a rediss:// URL needs ?ssl_cert_reqs=required "
                             "(and &ssl_ca_certs=/path/to/ca.pem for a private certificate authority)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init values), as documented above.
        return (env_settings, init_settings)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
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
        field = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ConfigError(f"invalid configuration: {field}: {first['msg']}") from exc
