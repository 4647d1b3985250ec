"""The JSON fal POSTs when a request finishes: ``{"request_id", "gateway_request_id", "status": "OK" | "ERROR",
"payload", "error"}``, rendered from the finished job at each attempt (output URLs from storage keys then)."""

from __future__ import annotations

import json
from typing import Any

from ..contract.errors import ErrorType, failure_body
from ..contract.result import UrlRenderer, render_output
from ..jobs.records import Job


def webhook_body(request_id: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    """The JSON fal POSTs on completion.

    ``error`` is the error body the status/result endpoints show (``{"detail": ..., "error_type": ...}``);
    when given, the status is ``ERROR``, ``payload`` is that body and ``error`` its human-readable ``detail``.
    We have no separate gateway, so ``gateway_request_id`` equals ``request_id``.
    """
    if error is not None:
        detail = error.get("detail")
        body = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "ERROR",
            "payload": error,
            "error": detail if isinstance(detail, str) else json.dumps(detail),
        }
    else:
        body = {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": result,
            "error": None,
        }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _relative_url(key: str) -> str:
    """Where the API serves a stored file, without a host: for callers that know no public URL (tests, tools)."""
    return f"/files/{key}"


def job_webhook_body(job: Job, url_for: UrlRenderer | None = None) -> bytes:
    """:func:`webhook_body` for a finished job (the dispatcher's default ``render_body``): the payload is what the
    result endpoint answers (``contract.result.render_output``). ``url_for`` renders the URLs of stored images from
    their keys (without it: the API's relative ``/files/<key>`` path)."""
    if job.error is None and job.result is not None:
        result = render_output(job.result, url_for or _relative_url).model_dump(mode="json", exclude_none=True)
        return webhook_body(job.id, result, None)
    # as the result endpoint answers it (a job completed without error always has its result)
    detail = job.error or "The request's result is missing"
    return webhook_body(job.id, None, failure_body(detail, ErrorType.of(job.error_type)))
