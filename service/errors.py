"""The one error family of the service; each maps to an HTTP status and a JSON `ErrorResponse`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class GenserveError(Exception):
    """Base class: `status` is the HTTP status, `reason` a short stable code (a metric label)."""

    status = 500
    reason = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(GenserveError):
    """The request is well-formed JSON but asks for something the model cannot do."""

    status = 422
    reason = "invalid_request"


class ModelNotFound(GenserveError):
    status = 404
    reason = "model_not_found"


class Overloaded(GenserveError):
    """The model's queue is full; the client should retry after `retry_after` seconds."""

    status = 503
    reason = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(GenserveError):
    status = 504
    reason = "deadline_exceeded"


class ModelLoadError(GenserveError):
    """A model folder could not be loaded: the message names the file and what is wrong."""

    status = 500
    reason = "model_load"


def read_json_object(path: Path) -> dict[str, Any]:
    """A model folder's JSON file as a dict; anything else fails with a message naming the file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


class TooCostly(GenserveError):
    """Valid, but more work than a replica could finish before the request's deadline even when
    idle: retrying cannot help, so this is a 4xx, never a 503."""

    status = 422
    reason = "too_costly"
