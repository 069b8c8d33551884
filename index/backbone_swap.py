"""Switching the gallery to another backbone: re-embed every template from its stored crop.

The new features are computed beside the gallery (in this process) while the old ones
keep serving; one Redis transaction then replaces every template's ``features`` and
``backbone`` fields, and every stored unknown face's (visitors: re-embedded from its
crop too, its visitor kept, a ``reset`` visitor event appended so that every visitor
replica reloads from the records), records the backbone in service (``keys.backbone_current()``:
``{"name", "generation", "threshold"}``) and appends a ``backbone`` gallery event. A
switch interrupted before that transaction leaves nothing changed. Enrolments and
unknown faces racing with the switch make the transaction retry (it watches the gallery
and visitor streams) with only their new crops to embed; a face embedded with the old
backbone and stored after the switch is refused by the visitor store. Replicas that read the event reload from the Redis
records (:class:`~faec_rec.index.gallery.Gallery`), and the worker runtime swaps its
embedder to the gallery's backbone before the next batch.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from faec_rec.errors import GalleryError
from faec_rec.keys import Keys

from faec_rec.index.events import EventLog, EventOp, GalleryEvent
from faec_rec.index.projection import BASE_VERSION, check_vectors

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "dlib-resnet-v1"
EMBED_CHUNK = 64
_RETRIES = 20
Embed = Callable[[np.ndarray], np.ndarray]  # (n, 150, 150, 3) uint8 chips -> (n, 128) float32 raw features
Progress = Callable[[int, int], None]


def current_backbone(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    """``{"name", "generation", "threshold", "raise_scale", "search"}`` of the backbone the gallery's features are in
    (the built-in one, generation 0, no threshold of its own, when never switched)."""
    raw = client.get(keys.backbone_current())
    state: dict[str, Any] = {"name": DEFAULT_BACKBONE, "generation": 0, "threshold": None, "raise_scale": 1.0, "search": None}
    if raw:
        try:
            state.update(json.loads(raw))
        except ValueError:
            log.error("unreadable %s (%r); assuming the built-in backbone", keys.backbone_current(), raw[:80])
    return state


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _templates(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """``{template id: crop path under data_dir ("" when none)}`` for every stored template."""
    from faec_rec.index.store import Store

    tids = [t for _, _, ts in Store(client, keys, Path(".")).iter_people_templates() for t in ts]
    pipe = client.pipeline(transaction=False)
    for tid in tids:
        pipe.hget(keys.template(tid), "crop")
    return {tid: _text(crop) for tid, crop in zip(tids, pipe.execute())}


def _unknown_faces(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """``{unknown face id: crop path under data_dir ("" when none)}`` for every stored unknown face."""
    fids = [_text(f) for f in client.zrange(keys.unknown_faces(), 0, -1)]
    pipe = client.pipeline(transaction=False)
    for fid in fids:
        pipe.hget(keys.unknown_face(fid), "crop")
    return {fid: _text(crop) for fid, crop in zip(fids, pipe.execute())}


UNKNOWN_FIX = "forget their visitors (faec-rec visitors forget ID) or restore the crops"


def read_crops(data_dir: Path, crops: dict[str, str], what: str = "template",
               fix: str = "remove them (faec-rec people remove-face) or restore the crops") -> dict[str, np.ndarray]:
    """Decode each template's (or unknown face's: ``what``) JPEG crop to a (150, 150, 3) uint8 RGB chip.

    Raises :class:`GalleryError` naming the ones without a readable 150x150 crop
    (``fix`` says what to do first): a switch never leaves a template or a face behind.
    """
    import cv2

    from faec_rec.faces.align import CHIP_SIZE

    chips: dict[str, np.ndarray] = {}
    bad: list[str] = []
    for tid, rel in crops.items():
        image = None
        if rel:
            try:
                data = np.frombuffer((Path(data_dir) / rel).read_bytes(), np.uint8)
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            except OSError:
                image = None
        if image is None or image.shape != (CHIP_SIZE, CHIP_SIZE, 3):
            bad.append(tid)
            continue
        chips[tid] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if bad:
        raise GalleryError(f"{len(bad)} {what}(s) have no readable {CHIP_SIZE}x{CHIP_SIZE} face crop under {data_dir} "
                           f"(e.g. {', '.join(bad[:5])}); {fix}, then switch again")
    return chips


def embed_crops(chips: dict[str, np.ndarray], embed: Embed, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """``{template id: (128,) float32}`` raw features of ``chips``, in chunks of ``EMBED_CHUNK``."""
    tids = list(chips)
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(tids), EMBED_CHUNK):
        part = tids[start:start + EMBED_CHUNK]
        feats = check_vectors(np.asarray(embed(np.stack([chips[t] for t in part])), np.float32), "re-embedded features")
        out.update(zip(part, feats))
        if progress:
            progress(min(start + EMBED_CHUNK, len(tids)), len(tids))
    return out


def swap_backbone(client: redis.Redis, keys: Keys, data_dir: Path, name: str, embed: Embed, *,
                  calibration: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Re-embed the whole gallery with ``embed`` and put backbone ``name`` in service atomically.

    ``calibration``: ``{"threshold": per-pair threshold or None (the built-in card's),
    "search": its own search table or None, "raise_scale": factor on the built-in search
    raise where it has no table}``, kept with the backbone in service.

    Stored unknown faces (visitors) are re-embedded from their crops in the same
    transaction, each kept in its visitor.

    Refused (:class:`GalleryError`) while a trained head serves the gallery (heads are
    trained on one backbone's features: roll back to "base" first) or when a template
    or an unknown face has no crop. Returns ``{"backbone", "previous", "generation",
    "templates", "unknown_faces"}``.
    """
    from faec_rec.visitors.events import VisitorEvent, VisitorLog, VisitorOp

    events = EventLog(client, keys)
    visitor_log = VisitorLog(client, keys)
    features: dict[str, np.ndarray] = {}
    unknown: dict[str, np.ndarray] = {}
    for _ in range(_RETRIES):
        crops = _templates(client, keys)
        todo = {t: c for t, c in crops.items() if t not in features}
        if todo:
            features.update(embed_crops(read_crops(data_dir, todo), embed, progress))
        faces = _unknown_faces(client, keys)
        todo = {f: c for f, c in faces.items() if f not in unknown}
        if todo:
            unknown.update(embed_crops(read_crops(data_dir, todo, "unknown face", UNKNOWN_FIX), embed, progress))
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(events.key, keys.gallery_version(), keys.model_current(), keys.backbone_current(), visitor_log.key)
                serving = _text(pipe.get(keys.gallery_version())) or BASE_VERSION
                if serving != BASE_VERSION or (_text(pipe.get(keys.model_current())) or BASE_VERSION) != BASE_VERSION:
                    raise GalleryError(f"the gallery is served through the trained head {serving!r}, which was trained on the "
                                       "current backbone's features: `faec-rec models rollback` to base first")
                if set(_templates(client, keys)) != set(crops) or set(_unknown_faces(client, keys)) != set(faces):
                    continue  # enrolled, kept or removed meanwhile: embed the new ones and try again
                previous = current_backbone(pipe, keys)
                state = {**calibration, "name": name, "generation": int(previous["generation"]) + 1}
                pipe.multi()
                for tid in crops:
                    pipe.hset(keys.template(tid), mapping={"features": features[tid].astype(np.float32).tobytes(), "backbone": name})
                for fid in faces:
                    pipe.hset(keys.unknown_face(fid), mapping={"features": unknown[fid].astype(np.float32).tobytes(), "backbone": name})
                pipe.set(keys.backbone_current(), json.dumps(state))
                events.append(pipe, GalleryEvent(EventOp.BACKBONE, version=name))
                if faces:  # every visitor replica rebuilds from the re-embedded records; memberships stay
                    visitor_log.append(pipe, VisitorEvent(VisitorOp.RESET))
                pipe.execute()
            except redis.WatchError:
                continue
        log.info("gallery re-embedded with backbone %s (generation %d, %d templates, %d unknown faces; was %s)",
                 name, state["generation"], len(crops), len(faces), previous["name"])
        return {"backbone": name, "previous": previous["name"], "generation": state["generation"], "templates": len(crops),
                "unknown_faces": len(faces)}
    raise GalleryError(f"the gallery kept changing during {_RETRIES} attempts to switch backbone; try again when enrolments are quieter")
