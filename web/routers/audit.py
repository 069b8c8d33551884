"""``/api/v1/audit``: who changed what, when (admin only)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from faec_rec.web.deps import Admin, ClientDep
from faec_rec.web.schemas import AuditOut, ErrorResponse

router = APIRouter(prefix="/api/v1/audit", tags=["audit"],
                   responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})


@router.get("", response_model=AuditOut)
def audit_log(who: Admin, client: ClientDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditOut:
    """The newest entries first."""
    return AuditOut.model_validate({"entries": client.audit_log(limit)})
