"""Errors the engine raises on purpose, each with a message meant for the person who sent the request."""

from __future__ import annotations

from ..contract.errors import ErrorType


class InvalidRequest(ValueError):
    """The request cannot be run as given (the user's to fix); ``field`` names the input at fault."""

    #: fal's ``error_type`` of the failed request.
    error_type = ErrorType.INPUT_ERROR

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoFaceDetected(InvalidRequest):
    """PhotoMaker v2 found a face in none of the photos."""

    error_type = ErrorType.NO_FACE_DETECTED

    def __init__(self, message: str) -> None:
        super().__init__(message, field="image_archive_url")


class GenerationCancelled(Exception):
    """Raised between denoising steps when the caller asked to stop."""


class WeightsUnavailable(RuntimeError):
    """Model weights could not be found or downloaded; the message says what was tried and what to do."""
