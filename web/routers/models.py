"""``/api/v1/models``: comparison-head versions with metrics and the gate's reasons; promote, roll back, train now."""
from __future__ import annotations

from fastapi import APIRouter

from faec_rec.web.deps import Admin, ClientDep, Viewer
from faec_rec.web.schemas import BackbonesOut, ErrorResponse, ModelEvent, ModelsOut, PromoteIn, TaskQueued, TrainingProgress

router = APIRouter(prefix="/api/v1/models", tags=["models"],
                   responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})


@router.get("", response_model=ModelsOut)
def list_models(who: Viewer, client: ClientDep) -> ModelsOut:
    """Every registered version (oldest first) and the one in service ('base' = no head)."""
    return ModelsOut.model_validate(client.models())


@router.get("/backbones", response_model=BackbonesOut)
def list_backbones(who: Viewer, client: ClientDep) -> BackbonesOut:
    """The backbone in service and every one added, each with the licence of its weights."""
    return BackbonesOut.model_validate(client.backbones())


@router.get("/training", response_model=TrainingProgress)
def training(who: Viewer, client: ClientDep) -> TrainingProgress:
    """The newest training run's state, stage, epoch, loss and percent (poll it while it runs)."""
    return TrainingProgress.model_validate(client.training_progress())


@router.post("/{version}/promote", response_model=ModelEvent, responses={400: {"model": ErrorResponse}})
def promote(version: str, who: Admin, client: ClientDep, body: PromoteIn | None = None) -> ModelEvent:
    """Put a version in service now (its file is verified first); workers swap live."""
    return ModelEvent.model_validate(client.promote_model(version, reason=(body or PromoteIn()).reason))


@router.post("/rollback", response_model=ModelEvent, responses={400: {"model": ErrorResponse}})
def rollback(who: Admin, client: ClientDep, body: PromoteIn | None = None) -> ModelEvent:
    """Return to the version in service before the current one."""
    return ModelEvent.model_validate(client.rollback_model(reason=(body or PromoteIn()).reason))


@router.post("/train", response_model=TaskQueued, status_code=202)
def train(who: Admin, client: ClientDep) -> TaskQueued:
    """Queue a training run for a worker on queue 'train'; the new version shows in the list when done."""
    return TaskQueued(task_id=client.train_head())
