"""faec_rec: event-driven face recognition workers.

The import namespace for every part of the project: ``faec_rec.faces`` (the face
engine), ``faec_rec.index`` (the gallery), ``faec_rec.workers`` (Celery),
``faec_rec.producers`` (cameras and folders), ``faec_rec.training``.
"""
from __future__ import annotations

__version__ = "0.1.0"
