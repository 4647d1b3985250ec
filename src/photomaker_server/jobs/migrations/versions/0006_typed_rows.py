"""Typed job rows: the stored request's file fields and the stored output's images become file references.

Before: a request's file fields were URL strings (``"image_archive_url": "https://…"``) and an output image held
``key`` (a storage key) or ``url`` (a ``sync_mode`` data URI, or the URL of a result stored before keys existed) at
its top level. After: both are ``contract.files.FileRef`` objects — ``{"key": …}`` or ``{"url": …}`` — read back
with ``model_validate_json``.

What this cannot do: turn a URL of this deployment's own storage into its key. The migration runs without the
storage's settings (public base URL, CDN, presigning), so such a URL stays a ``{"url": …}`` reference. That is
still correct: a queued request's worker reads it through the fetcher's local resolver (``inputs.resolve``), and an
old result's image is shown at that URL and deleted by the housekeeper, which recognises it
(``jobs.results.result_keys``). Rows that are not JSON objects are left as they are (the store fails such a job
when it is claimed).

Downgrade writes the old shapes back; a queued request naming a stored file by key gets no URL then (none can be
made here), so the older release fails it: drain the queue before downgrading.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 500
_SINGLE_FILE_FIELDS = ("image_archive_url", "initial_image_url")
_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("input", sa.Text), sa.column("result", sa.Text))


def _ref(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


def _unref(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("url"), str):
        return value["url"]
    if isinstance(value, dict) and isinstance(value.get("key"), str):
        return value["key"]  # not a URL: the older release refuses the request (see the module docstring)
    return value


def _map_files(request: Any, convert: Callable[[Any], Any]) -> Any:
    """``request`` (a stored request's JSON) with ``convert`` applied to every file field."""
    if not isinstance(request, dict):
        return request
    out = dict(request)
    for field in _SINGLE_FILE_FIELDS:
        if field in out and out[field] is not None:
            out[field] = convert(out[field])
    if isinstance(out.get("image_urls"), list):
        out["image_urls"] = [convert(v) for v in out["image_urls"]]
    return out


def request_to_refs(request: Any) -> Any:
    """A stored request with its file fields as ``{"url": …}`` references (those already converted stay)."""
    return _map_files(request, _ref)


def request_from_refs(request: Any) -> Any:
    return _map_files(request, _unref)


def output_to_refs(output: Any) -> Any:
    """A stored output whose images hold their ``key`` / ``url`` in ``file`` (those already converted stay)."""
    if not isinstance(output, dict) or not isinstance(output.get("images"), list):
        return output
    images = []
    for image in output["images"]:
        if isinstance(image, dict) and "file" not in image:
            image = dict(image)
            key, url = image.pop("key", None), image.pop("url", None)
            if key is not None:
                image["file"] = {"key": key}
            elif url is not None:
                image["file"] = {"url": url}
        images.append(image)
    return {**output, "images": images}


def output_from_refs(output: Any) -> Any:
    if not isinstance(output, dict) or not isinstance(output.get("images"), list):
        return output
    images = []
    for image in output["images"]:
        if isinstance(image, dict) and isinstance(image.get("file"), dict):
            image = dict(image)
            image.update(image.pop("file"))
        images.append(image)
    return {**output, "images": images}


def _convert(text: str | None, change: Callable[[Any], Any]) -> str | None:
    """``text`` rewritten by ``change``, or None when nothing changes (or it is not JSON)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    changed = change(value)
    return None if changed == value else json.dumps(changed, ensure_ascii=False, separators=(",", ":"))


def _rewrite(request_change: Callable[[Any], Any], output_change: Callable[[Any], Any]) -> None:
    """Every job row, in id order and in batches (a big table is never held in memory at once)."""
    conn = op.get_bind()
    last = ""
    while True:
        rows = conn.execute(
            sa.select(_jobs.c.id, _jobs.c.input, _jobs.c.result).where(_jobs.c.id > last)
            .order_by(_jobs.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        for job_id, request, output in rows:
            values = {}
            if (new := _convert(request, request_change)) is not None:
                values["input"] = new
            if (new := _convert(output, output_change)) is not None:
                values["result"] = new
            if values:
                conn.execute(_jobs.update().where(_jobs.c.id == job_id).values(**values))
        last = rows[-1][0]


def upgrade() -> None:
    _rewrite(request_to_refs, output_to_refs)


def downgrade() -> None:
    _rewrite(request_from_refs, output_from_refs)
