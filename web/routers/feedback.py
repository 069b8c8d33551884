"""``POST /api/v1/feedback``: a recognition event was (``is``) or was not (``not``) this person."""
from __future__ import annotations

from fastapi import APIRouter

from faec_rec.web.deps import ClientDep, Operator
from faec_rec.web.schemas import ErrorResponse, FeedbackIn, FeedbackOut

router = APIRouter(prefix="/api/v1", tags=["feedback"],
                   responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}})


@router.post("/feedback", response_model=FeedbackOut)
def feedback(body: FeedbackIn, who: Operator, client: ClientDep) -> FeedbackOut:
    """`is`: the face is added to the person; `not`: it moves into a visitor, becomes a hard
    negative for training, and stops that face matching the person. Give exactly one."""
    if (body.is_ is None) == (body.not_ is None):
        raise ValueError("give exactly one of 'is' (the face was this person) or 'not' (it was not)")
    return FeedbackOut.model_validate(client.feedback(body.event_id, is_=body.is_, not_=body.not_))
