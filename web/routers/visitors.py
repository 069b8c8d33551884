"""``/api/v1/visitors``: recurring strangers (filled in once the visitors Client methods exist)."""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/visitors", tags=["visitors"])
