"""The enrolled gallery: people and templates in Redis, a FAISS replica per
process kept current from a gallery event stream, and the open-set decision.

The names below load on first use (PEP 562): importing ``faec_rec.index.commands`` for the
CLI's command list must not import FAISS and the gallery (~0.3-0.6 s of every command's start).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faec_rec.index.decision import Decision, Match, RunnerUp
    from faec_rec.index.gallery import Gallery
    from faec_rec.index.projection import BaseProjector, Projector
    from faec_rec.index.store import EnrolResult, Person

_HOMES = {"Decision": "decision", "Match": "decision", "RunnerUp": "decision", "Gallery": "gallery",
          "BaseProjector": "projection", "Projector": "projection", "EnrolResult": "store", "Person": "store"}

__all__ = ["BaseProjector", "Decision", "EnrolResult", "Gallery", "Match", "Person", "Projector", "RunnerUp"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
