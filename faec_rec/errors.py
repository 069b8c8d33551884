"""Every exception the project raises on purpose, in one place.

Each message says what was wrong and, where it can, what to do about it. Callers
catch :class:`FaecError` to handle any of them.
"""
from __future__ import annotations


class FaecError(Exception):
    """Base class of every error faec_rec raises on purpose."""


class UsageError(FaecError):
    """Mixin for errors in what was asked (an unknown version, a malformed id, a
    name already taken): the command line exits 2 (usage) for these, not 1."""


class ConfigError(FaecError, ValueError):
    """The configuration is invalid; the message names the field."""


class ImageError(FaecError, ValueError):
    """An image could not be used: unreadable, truncated, empty or too large.

    ``source`` names the file (or key) and ``reason`` says what was wrong.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ModelError(FaecError):
    """A model file is missing, corrupt or fails its checksum."""


class VectorError(FaecError, ValueError):
    """Vectors of the wrong shape, dtype or content (NaN, zero norm)."""


class GalleryError(FaecError):
    """A gallery operation could not be carried out."""


class UnknownPersonError(GalleryError, KeyError):
    """No person with that id or name is enrolled."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else "unknown person"


class AmbiguousPersonError(UnknownPersonError):
    """A bare string that is one person's id and another's name: say ``id:`` or ``name:``."""


class UnknownTemplateError(GalleryError, KeyError):
    """No template with that id is stored."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown template"


class DuplicateTemplateError(GalleryError):
    """The same image (by content hash) is already enrolled for that person."""


class VersionMismatchError(GalleryError):
    """Vectors from one model version were compared with another's."""


class QualityError(FaecError):
    """An enrolment image failed the quality gate; ``reason`` is a short code."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{source}: {reason}" + (f" ({detail})" if detail else ""))
        self.source = source
        self.reason = reason
        self.detail = detail


class BackendUnavailable(FaecError, ConnectionError):
    """Redis (or another backing service) cannot be reached."""


class FrameExpired(FaecError):
    """A frame's Redis key expired before a worker read it."""


class TrainingError(FaecError):
    """A training run could not start or finish (too little data, a lock held...)."""


class PayloadError(FaecError, ValueError):
    """A task message is malformed: a field is missing or of the wrong type."""


class TaskTimeout(FaecError, TimeoutError):
    """A queued task gave no result in time (usually: no worker consumes its queue)."""


class TrackStateConflict(FaecError):
    """A camera's tracker state kept changing under concurrent updates; the update was not applied."""


class SourceError(FaecError):
    """A camera or video source cannot be opened, or stopped sending frames."""


class UnknownVersionError(ModelError, UsageError, KeyError):
    """No model version of that name in the registry."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain message
        return str(self.args[0]) if self.args else ""


class BackboneRefused(ModelError, UsageError):
    """A supplied backbone was refused: its file does not load or does not match its card."""


class NothingToRollBackError(ModelError, UsageError):
    """``models rollback`` with no earlier version in service."""


class BadEventIdError(TrainingError, UsageError):
    """Feedback on an event id that is malformed, unknown or not a recognition."""


class DuplicateCameraError(SourceError, UsageError):
    """Two cameras of one run (or of the source registry) with the same id."""


class NameTakenError(GalleryError, UsageError):
    """A rename (or enrolment by id) to a name another person already has."""


class UnknownJobError(UsageError, KeyError):
    """No folder/batch job with that id (never submitted, or its results expired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidNameError(GalleryError, UsageError, ValueError):
    """A person's name the gallery refuses (empty, too long, a path, control characters)."""
class DurabilityError(BackendUnavailable):
    """Redis took a write but could not confirm it durable at the configured level
    (``durability.enrolments``): the task retries, and the retry finds the data."""


class ArchiveError(FaecError, ValueError):
    """A gallery archive is damaged, of a foreign version, or does not fit the target."""


class SinkError(FaecError):
    """An event could not be delivered to a sink (MQTT broker, webhook); counts as one failed attempt."""


class SinkUnavailable(SinkError):
    """The sink as a whole is away (broker disconnected): wait for it, do not count an attempt."""


class DeliveryRefused(SinkError):
    """Delivery can never succeed as configured (e.g. a webhook host resolves to a forbidden
    address): the event is parked in the dead-letter stream at once."""


class AuthError(FaecError):
    """A request carries no credentials, or unknown, revoked or wrong ones (HTTP 401)."""


class PermissionDenied(FaecError):
    """The caller's role may not do this (HTTP 403)."""


class CsrfError(PermissionDenied):
    """A page request changing something came without the session's CSRF token (HTTP 403)."""


class RateLimited(FaecError):
    """Too many requests from one key; ``retry_after`` seconds until the next is allowed (HTTP 429)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTooLarge(FaecError):
    """A request body or an uploaded image is over the configured size or pixel cap (HTTP 413)."""


class UnsupportedImage(ImageError):
    """An upload is not an image format the engine reads (HTTP 415)."""


class NotFound(FaecError, KeyError):
    """No such job, event, model version or crop (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class UnknownCameraError(NotFound, UsageError):
    """No camera of that id in the source registry (HTTP 404)."""


class VisitorError(FaecError):
    """A visitor operation that cannot be done as asked (merge into itself, split out every face...)."""


class VisitorNameTaken(VisitorError, UsageError):
    """Naming a visitor with the name of an enrolled person without ``into_existing``."""


class UnknownVisitorError(VisitorError, KeyError):
    """No visitor (or unknown face) with that id is stored."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
