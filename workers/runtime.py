"""Per-process resources of a worker: loaded once, on first use, never at import.

A worker process holds one :class:`Runtime` per deployment (settings): a Redis
client, the face engine (Keras model), the gallery replica with its projector,
and the tracker store. Before each batch the pipeline calls
:meth:`Runtime.refresh`, which applies new gallery events and hot-swaps the
projector when the model registry's current version changed, so a retrained
head goes live without a restart.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faec_rec import metrics
from faec_rec.config import Settings
from faec_rec.keys import Keys

if TYPE_CHECKING:
    import redis as redis_lib

    from faec_rec.faces.engine import FaceEngine
    from faec_rec.index.gallery import Gallery
    from faec_rec.index.projection import Projector

log = logging.getLogger(__name__)

BASE_VERSION = "base"


def load_projector(version: str, settings: Settings, redis: "redis_lib.Redis") -> "Projector":
    """The projector for a model ``version``: ``BaseProjector`` for "base",
    else the trained head from the model registry (``faec_rec.training``).

    Raises whatever the registry raises (a missing or tampered file:
    :class:`~faec_rec.errors.ModelError`); :meth:`Runtime.refresh` catches it and
    keeps serving the current version.
    """
    from faec_rec.index.projection import BaseProjector

    if version == BASE_VERSION:
        return BaseProjector()
    from faec_rec.training import registry  # heavy (Keras): only when a head is in service

    return registry.load_projector(version, settings=settings, redis=redis)


@dataclass
class QueuedRefresh:
    """The reads of a :meth:`Runtime.refresh` queued on a caller's pipeline (``count`` replies)."""

    sync: tuple[str, int] | None
    count: int
    replies: list[Any] | None = None

    def take(self, replies: list[Any]) -> list[Any]:
        """Keep this refresh's replies from the head of ``replies``; returns the rest."""
        self.replies, rest = list(replies[:self.count]), replies[self.count:]
        return rest


class Runtime:
    """The resources one worker process uses for one deployment.

    Attributes load lazily and once (thread-safe): ``engine`` (FaceEngine),
    ``gallery`` (Gallery replica following the gallery event stream), ``redis``.
    """

    def __init__(self, settings: Settings) -> None:
        import redis as redis_lib

        from faec_rec.workers.app import DEFAULT_BROKER_URL

        self.settings = settings
        self.keys = Keys(settings.prefix)
        from faec_rec.cluster.sentinel import redis_from_url  # redis:// and redis+sentinel://

        self.redis: redis_lib.Redis = redis_from_url(
            settings.redis_url or DEFAULT_BROKER_URL, health_check_interval=30
        )
        self._lock = threading.RLock()
        self._engine: FaceEngine | None = None
        self._gallery: Gallery | None = None
        self._track_store: Any = None

    # ---- lazily loaded resources ------------------------------------------
    @property
    def engine(self) -> "FaceEngine":
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from faec_rec.index.backbone_swap import current_backbone

                    engine = shared_engine(self.settings)
                    name = str(current_backbone(self.redis, self.keys)["name"])
                    if name != engine.backbone_version:  # a supplied backbone is in service
                        engine.set_embedder(self._supplied_embedder(name))
                    self._engine = engine
        return self._engine

    def _supplied_embedder(self, name: str) -> Any:
        """The embedder of backbone ``name``: None for the built-in one (the engine makes it)."""
        from faec_rec.training.backbones import BUILTIN, BackboneRegistry

        if name == BUILTIN:
            return None
        return BackboneRegistry(self.redis, self.keys, Path(self.settings.data_dir),
                                flip_average=self.settings.faces.flip_average).embedder(name)

    def _follow_backbone(self) -> None:
        """Embed with the backbone the gallery's features are in (after a switch, index/backbone_swap.py)."""
        wanted = str(self.gallery.backbone["name"])
        if wanted == self.engine.backbone_version:
            return
        with self._lock:
            try:
                embedder = self._supplied_embedder(wanted)
            except Exception:
                log.exception("cannot load backbone %r that the gallery is now in; still embedding with %r",
                              wanted, self.engine.backbone_version)
                return
            self.engine.set_embedder(embedder)
            log.info("now embedding with backbone %s", wanted)
            metrics.set_model_version(self.model_version)

    @property
    def gallery(self) -> "Gallery":
        if self._gallery is None:
            with self._lock:
                if self._gallery is None:
                    from faec_rec.index.gallery import Gallery

                    version = self._current_version()
                    try:
                        projector = load_projector(version, self.settings, self.redis)
                    except Exception:
                        log.exception("cannot load projector %r; serving %r", version, BASE_VERSION)
                        projector = load_projector(BASE_VERSION, self.settings, self.redis)
                    self._gallery = Gallery(
                        self.redis, self.keys, self.settings.gallery, self.settings.data_dir,
                        projector=projector,
                        # Lets the replica follow a "version" event on its own.
                        projector_loader=lambda v: load_projector(v, self.settings, self.redis),
                    )
        return self._gallery

    @property
    def track_store(self) -> Any:
        """The Redis-backed tracker store shared by every worker of this deployment."""
        if self._track_store is None:
            with self._lock:
                if self._track_store is None:
                    from faec_rec.workers.tracker import TrackStore

                    self._track_store = TrackStore.from_settings(self.redis, self.keys, self.settings.events)
        return self._track_store

    @property
    def projector(self) -> "Projector":
        return self.gallery.projector

    @property
    def model_version(self) -> str:
        """``"<backbone_version>/<projector version>"``, as written into events."""
        return f"{self.engine.backbone_version}/{self.projector.version}"

    # ---- per batch ----------------------------------------------------------
    def _current_version(self) -> str:
        raw = self.redis.get(self.keys.model_current())
        return raw.decode() if raw else BASE_VERSION

    def queue_refresh(self, pipe: Any) -> "QueuedRefresh":
        """Queue the reads of a :meth:`refresh` on the caller's ``pipe`` (one round trip for a
        frame's claim and its refresh); pass the result, with its replies filled in by
        :meth:`QueuedRefresh.take`, to :meth:`refresh`."""
        queued = self.gallery.queue_sync(pipe)
        pipe.get(self.keys.model_current())
        return QueuedRefresh(queued, 1 + (queued[1] if queued else 0))

    def refresh(self, queued: "QueuedRefresh | None" = None) -> None:
        """Bring the replica up to date; hot-swap the projector if a new version is current.

        Cheap when nothing changed (one XRANGE, one HGET and one GET, in one round trip,
        or none of its own with ``queued``: see :meth:`queue_refresh`). A version that
        cannot be loaded is logged and the current one keeps serving.
        """
        gallery = self.gallery
        if queued is not None and queued.replies is not None:
            sync_replies, current = queued.replies[:-1], queued.replies[-1]
            gallery.sync(None if queued.sync is None else (queued.sync[0], sync_replies))
            wanted = current.decode() if current else BASE_VERSION
        else:
            gallery.sync()
            wanted = self._current_version()
        self._follow_backbone()
        if wanted == gallery.projector.version:
            return
        with self._lock:
            if wanted == gallery.projector.version:
                return
            try:
                projector = load_projector(wanted, self.settings, self.redis)
            except Exception:
                log.exception("cannot load model version %r; still serving %r", wanted, gallery.projector.version)
                return
            gallery.set_projector(projector)
            log.info("now serving model version %s", projector.version)
            metrics.set_model_version(self.model_version)

    def warm(self) -> None:
        """Load everything now (model weights, replica) instead of on the first task."""
        import numpy as np

        engine = self.engine
        # One dummy batch compiles the model so the first real frame is not slow.
        engine.features(np.zeros((1, 150, 150, 3), dtype=np.uint8))
        engine.detect(np.zeros((240, 320, 3), dtype=np.uint8))
        metrics.mark_ready("model")
        self.refresh()
        metrics.mark_ready("gallery")
        metrics.set_model_version(self.model_version)

    def close(self) -> None:
        self.redis.close()


_RUNTIMES: dict[tuple[str | None, str, str], Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()
_ENGINES: dict[tuple[str, str], "FaceEngine"] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(settings: Settings) -> "FaceEngine":
    """The process's :class:`FaceEngine` for ``settings.faces`` and its model folder (one per
    process, whichever runtime or warm-up asks first: they share TensorFlow and the model)."""
    cache_dir = Path(settings.data_dir) / "models"
    key = (settings.faces.model_dump_json(), str(cache_dir))
    engine = _ENGINES.get(key)
    if engine is None:
        with _ENGINES_LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                # inference threads (LiteRT now, TensorFlow when it is first imported)
                from faec_rec.faces.runtime import set_threads

                set_threads(settings.workers.tf_threads)
                from faec_rec.faces.engine import FaceEngine

                engine = _ENGINES[key] = FaceEngine(settings.faces, cache_dir=cache_dir)
    return engine


def preload_engine(settings: Settings) -> threading.Thread:
    """Import TensorFlow and load the model and the detector in a background thread now, so
    that a command's start (its Redis, its in-process worker) overlaps that load instead of
    waiting for it; the worker's own warm-up then finds them loaded (:func:`shared_engine`).
    A failure is only logged: the warm-up or the first task loads (and reports) it again."""
    import numpy as np

    def run() -> None:
        try:
            engine = shared_engine(settings)
            engine.features(np.zeros((1, 150, 150, 3), dtype=np.uint8))
            engine.detect(np.zeros((240, 320, 3), dtype=np.uint8))
        except Exception:
            log.debug("preloading the face engine failed; it loads on first use", exc_info=True)

    thread = threading.Thread(target=run, name="faec-preload", daemon=True)
    thread.start()
    return thread


def get_runtime(settings: Settings) -> Runtime:
    """The process-wide :class:`Runtime` for ``settings`` (created on first call)."""
    key = (settings.redis_url, settings.prefix, str(settings.data_dir))
    runtime = _RUNTIMES.get(key)
    if runtime is None:
        with _RUNTIMES_LOCK:
            runtime = _RUNTIMES.get(key)
            if runtime is None:
                runtime = _RUNTIMES[key] = Runtime(settings)
    return runtime


def warm_up(settings: Settings) -> None:
    """Create and fully load the runtime for ``settings`` (``worker_process_init``)."""
    get_runtime(settings).warm()


def reset() -> None:
    """Forget every runtime of this process (tests, and after a fork)."""
    with _RUNTIMES_LOCK:
        for runtime in _RUNTIMES.values():
            runtime.close()
        _RUNTIMES.clear()
    with _ENGINES_LOCK:
        _ENGINES.clear()
