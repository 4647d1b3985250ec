"""Database rows → the records of :mod:`photomaker_server.jobs.records` (and JSON encoding for TEXT columns)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from ...contract.errors import ErrorType
from ...contract.result import StoredOutput
from ...contract.stored import StoredRequest
from ..records import Delivery, Job, JobStatus, LogLine, WorkerInfo


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def to_job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        owner=m["owner"],
        app=m["app"],
        input=StoredRequest.model_validate_json(m["input"]) if "input" in m else None,
        status=JobStatus(m["status"]),
        priority=m["priority"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        start_deadline=m["start_deadline"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        cancel_requested=bool(m["cancel_requested"]),
        result=None if m["result"] is None else StoredOutput.model_validate_json(m["result"]),
        error=m["error"],
        error_type=None if m["error_type"] is None else ErrorType.of(m["error_type"]),
        inference_time=m["inference_time"],
        webhook_url=m["webhook_url"],
    )


def to_delivery(row: sa.Row[Any]) -> Delivery:
    m = row._mapping
    return Delivery(
        id=m["id"],
        job_id=m["job_id"],
        owner=m["owner"],
        url=m["url"],
        attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"],
        delivered_at=m["delivered_at"],
        last_error=m["last_error"],
        given_up=bool(m["given_up"]),
    )


def to_log_line(row: sa.Row[Any]) -> LogLine:
    m = row._mapping
    return LogLine(id=m["id"], ts=m["ts"], level=m["level"], message=m["message"])


def worker_values(info: WorkerInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "host": info.host,
        "pid": int(info.pid),
        "device": info.device,
        "state": info.state,
        "detail": info.detail,
        "demo_model": bool(info.demo_model),
        "loaded_bases": dumps(list(info.loaded_bases)),
        "current_job": info.current_job,
        "started_at": info.started_at,
        "stats": dumps(info.stats),
    }


def to_worker(row: sa.Row[Any]) -> WorkerInfo:
    m = row._mapping
    return WorkerInfo(
        id=m["id"],
        host=m["host"],
        pid=m["pid"],
        device=m["device"],
        state=m["state"],
        detail=m["detail"],
        demo_model=bool(m["demo_model"]),
        loaded_bases=json.loads(m["loaded_bases"]),
        current_job=m["current_job"],
        started_at=m["started_at"],
        heartbeat_at=m["heartbeat_at"],
        stats=json.loads(m["stats"]),
    )


def chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
