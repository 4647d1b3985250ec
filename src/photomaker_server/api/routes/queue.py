"""fal's queue protocol for ``fal-ai/photomaker``: submit, status (+ SSE stream), result, cancel, synchronous run.

Handlers are thin: validate, talk to the job store, shape fal's envelopes. Work happens in the worker process.

The paths name this server's one app literally (``api/paths.py``); other app ids get a 404 from the catch-all
routes of :data:`unknown_apps`, which the app registers after every fixed path. Status and result polls are
``async`` and answer from this process's :class:`~..job_cache.JobCache` when they can (on the event loop, no thread
hop, no database read); otherwise they read the job in one trip to a worker thread. A client polling a running
request in a loop gets its next answer when the request changes (``api/held_polls.py``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from ...contract.request import PhotoMakerInput, parse_request
from ...contract.errors import ErrorType
from ...contract.result import PhotoMakerOutput, UrlRenderer, render_output
from ...contract.stored import FILE_FIELDS, stored_request
from ...inputs.errors import InputError
from ...inputs.fetch import ALLOW_HINT, address_problem, is_allow_listed, parse_literal_ip
from ...jobs.wakeups import Subscription
from ...jobs.records import CancelOutcome, Job, JobStatus, LogLine, StoreUnavailable, job_topic, log_topic, parse_priority
from ...settings import APP_ID
from ...urls import UrlError, parse_http_url
from .. import paths
from ..auth import owner_of_request, require_owner
from ..direct_route import DirectRoute, direct
from ..held_polls import connection_of
from ..connections import Held
from ..context import get_ctx
from ..data_uris import DataUriRefused, store_data_uris, unpack_budget
from ..input_budget import check_stored_inputs
from ..errors import error_response, validation_response
from ..schemas import CancelAnswer, QueueStatus, QueueSubmitted, error_responses

#: DirectRoute: the status and result polls answer through their ``@direct`` handlers (``direct_route.py``).
router = APIRouter(tags=["queue"], route_class=DirectRoute)
#: Any other ``/{owner_ns}/{alias}`` (fal's clients may be pointed at another app): 404 after the key check, as
#: before. Registered after every fixed path (``app.py``), kept out of the API docs.
unknown_apps = APIRouter(tags=["queue"], include_in_schema=False)
INPUT_BODY = Body(..., description="PhotoMakerInput (see the schema of that name)")
#: Streams and ``/run`` sleep until the job's wake-up (``job:<id>``); wake-ups are best-effort, so they also look
#: again after this long (which also refreshes a queued job's position and notices a client that went away).
FALLBACK_WAIT_S = 1.0
KEEPALIVE_S = 10.0


def _check_app(owner_ns: str, alias: str) -> None:
    if f"{owner_ns}/{alias}" != APP_ID:
        raise HTTPException(404, f"Unknown app {owner_ns}/{alias}; this server runs {APP_ID}",
                            headers={"X-Fal-Error-Type": ErrorType.NOT_FOUND})


async def _unknown_app(owner_ns: str, alias: str, owner: Annotated[str, Depends(require_owner)]) -> None:
    _check_app(owner_ns, alias)
    raise HTTPException(404, "Not Found")  # a literal route answers this app's paths; unreachable for it


for _path, _method in (("/{owner_ns}/{alias}", "POST"), ("/{owner_ns}/{alias}/requests/{request_id}/status", "GET"),
                       ("/{owner_ns}/{alias}/requests/{request_id}/status/stream", "GET"),
                       ("/{owner_ns}/{alias}/requests/{request_id}", "GET"),
                       ("/{owner_ns}/{alias}/requests/{request_id}/cancel", "PUT"), ("/run/{owner_ns}/{alias}", "POST")):
    unknown_apps.add_api_route(_path, _unknown_app, methods=[_method])


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _urls(ctx, job_id: str) -> dict[str, str]:  # noqa: ANN001
    base = f"{ctx.settings.base_url}/{APP_ID}/requests/{job_id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


def _request_headers(job_id: str) -> dict[str, str]:
    return {"x-fal-request-id": job_id}


def validate_input(ctx, payload: dict[str, Any]) -> PhotoMakerInput:  # noqa: ANN001
    return parse_request(payload, ctx.settings)


def _start_deadline(request: Request) -> float | None:
    raw = request.headers.get("x-fal-request-timeout")
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise HTTPException(400, f"X-Fal-Request-Timeout must be a positive number of seconds, got {raw!r}")
    return time.time() + seconds


def _priority(request: Request) -> int:
    raw = request.headers.get("x-fal-queue-priority", "normal")
    try:
        return parse_priority(raw.strip().lower())
    except ValueError:
        raise HTTPException(400, f"X-Fal-Queue-Priority must be low, normal or high, got {raw!r}") from None


def _webhook(url: str | None, allow: list[str]) -> str | None:
    """The checked ``fal_webhook``: a URL that cannot be delivered to is a 422 naming the field (never a 500, never
    accepted and silently dropped); a scheme or literal address we never call is a 400, as before."""
    if not url:
        return None
    try:
        target = parse_http_url(url)
    except UrlError as exc:
        if exc.kind == "url_scheme":
            raise HTTPException(400, "fal_webhook must be an absolute http(s) URL") from None
        raise HTTPException(422, [{"loc": ["query", "fal_webhook"], "msg": exc.message, "type": exc.kind}]) from None
    # A literal address we would refuse at delivery anyway: say so now rather than after ten tries over two hours.
    try:
        address = parse_literal_ip(target.host)
    except InputError as exc:  # numeric like an IPv4 address, but not one (``999.1.1.1``)
        raise HTTPException(422, [{"loc": ["query", "fal_webhook"], "msg": exc.message, "type": "url_host"}]) from None
    problem = address_problem(address) if address is not None else None
    if problem and not is_allow_listed(target.host, address, allow):
        raise HTTPException(400, f"fal_webhook points at {problem}, which this server does not call {ALLOW_HINT}")
    return url


def _enqueue(ctx, request: Request, payload: dict[str, Any], owner: str, webhook_url: str | None) -> Job | JSONResponse:  # noqa: ANN001
    try:
        data = validate_input(ctx, payload)
    except ValidationError as exc:
        return validation_response(exc)
    priority, start_deadline = _priority(request), _start_deadline(request)
    webhook = _webhook(webhook_url, ctx.settings.fetch_allow)
    files_in = data.model_dump(include=set(FILE_FIELDS), exclude_none=True)
    # Each URL parsed once for both uses below (never a data URI: neither passes one, so nothing large is hashed).
    own_key = functools.cache(ctx.storage.key_from_url)
    try:  # last: only a request that is otherwise fine gets its data URIs stored
        budget = check_stored_inputs(files_in, own_key, ctx.store, unpack_budget(ctx.settings))
        files_in = store_data_uris(files_in, ctx.files, owner, ctx.settings.max_data_uri_bytes, budget)
    except DataUriRefused as exc:
        return JSONResponse({"detail": [exc.detail()]}, status_code=422)
    # Built once: data URIs are keys now, and URLs of our own storage become keys here (the worker never parses
    # a URL back); the job row holds this, and the worker reads it as it is.
    stored_input = stored_request(data, files_in, own_key)
    return ctx.store.submit(
        owner,
        APP_ID,
        stored_input,
        priority=priority,
        start_deadline=start_deadline,
        webhook_url=webhook,
        max_attempts=ctx.settings.max_attempts,
        max_queued_total=ctx.settings.max_queued or None,
    )


@router.post(paths.SUBMIT, response_model=QueueSubmitted, summary="Submit a request to the queue",
             responses=error_responses(400, 401, 413, 422, 429, 503))
def submit(
    request: Request,
    payload: Annotated[dict[str, Any], INPUT_BODY],
    owner: Annotated[str, Depends(require_owner)],
    fal_webhook: Annotated[str | None, Query(description="URL to POST the result to when done")] = None,
) -> Any:
    ctx = get_ctx(request)
    job = _enqueue(ctx, request, payload, owner, fal_webhook)
    if isinstance(job, JSONResponse):
        return job
    body = QueueSubmitted(request_id=job.id, queue_position=job.queue_position, **_urls(ctx, job.id))
    return JSONResponse(body.model_dump(), headers=_request_headers(job.id))


def _own_job(ctx, request_id: str, owner: str) -> Job:  # noqa: ANN001
    # Inputs can hold megabytes of data URIs; no status/result/cancel answer needs them.
    job = ctx.store.get(request_id, owner=owner, with_input=False)
    if job is None:
        raise _not_found(request_id)
    return job


def _not_found(request_id: str) -> HTTPException:
    return HTTPException(404, f"Request {request_id} not found", headers={"X-Fal-Error-Type": ErrorType.NOT_FOUND})


def _read_own(ctx, request_id: str, owner: str, with_status: bool) -> tuple[Job, dict[str, Any] | None]:  # noqa: ANN001
    """The caller's job read from the database (a worker thread), with its status body when ``with_status``;
    both kept in the process's job cache unless a change was announced while they were read."""
    version = ctx.jobs.version()
    job = _own_job(ctx, request_id, owner)
    body = status_body(ctx, job, None) if with_status else None
    ctx.jobs.keep(version, job, body)
    return job, body


async def _poll(ctx, request_id: str, owner: str, with_status: bool,  # noqa: ANN001
                finished_only: bool = False) -> tuple[Job, dict[str, Any] | None]:
    """The caller's job (and its status body, ``with_status``): from the job cache on the event loop when it is
    fresh there, else one trip to a worker thread. Another key's request is a 404 either way. ``finished_only``:
    only a finished job is taken from memory (the result: a client that saw COMPLETED on another replica, whose
    wake-up has not reached this one yet, must get the result, not "still in progress")."""
    entry = ctx.jobs.lookup(request_id)
    if finished_only and entry is not None and entry.job.status != JobStatus.COMPLETED:
        entry = None
    if entry is not None and (not with_status or entry.status_body is not None):
        if entry.job.owner != owner:
            raise _not_found(request_id)
        return entry.job, entry.status_body
    return await to_thread.run_sync(_read_own, ctx, request_id, owner, with_status)


def _current(ctx, job: Job) -> Job:  # noqa: ANN001
    """The job as stored now (without its input); the given one if it has meanwhile been deleted."""
    return ctx.store.get(job.id, with_input=False) or job


async def _refresh(ctx, job: Job) -> Job:  # noqa: ANN001
    """``_current`` for a waiting request (``/run``): while the database restarts, the job as last seen, so the
    wait rides out the outage (the job was accepted; a 503 now would make the client submit it again)."""
    try:
        return await to_thread.run_sync(_current, ctx, job)
    except StoreUnavailable:
        return job


def status_body(ctx, job: Job, logs: list | None) -> dict[str, Any]:  # noqa: ANN001
    """fal's status envelope (:class:`QueueStatus`) for the job's current state, as JSON; ``logs`` are the entries
    to include (or None: ``logs`` is then null)."""
    fields: dict[str, Any] = {"request_id": job.id, **_urls(ctx, job.id)}
    if job.status == JobStatus.QUEUED:
        fields.update(status="IN_QUEUE", queue_position=ctx.store.queue_position(job))
    elif job.status == JobStatus.RUNNING:
        fields.update(status="IN_PROGRESS")
    else:
        fields.update(status="COMPLETED")
        if job.inference_time is not None:
            fields["metrics"] = {"inference_time": job.inference_time}
        if job.error:
            fields.update(error=job.error, error_type=ErrorType.of(job.error_type))
    body = QueueStatus(**fields).model_dump(mode="json", exclude_none=True)
    body["logs"] = logs
    return body


def _status_with_logs(ctx, request_id: str, owner: str) -> dict[str, Any]:  # noqa: ANN001
    job = _own_job(ctx, request_id, owner)
    return status_body(ctx, job, [line.to_fal() for line in ctx.store.logs(job.id)])


async def _status_now(request: Request) -> JSONResponse:
    """``status`` for a request as it comes (the direct handler: no parameter solving per poll)."""
    return await _status(request, request.path_params["request_id"], owner_of_request(request),
                         request.query_params.get("logs"))


@router.get(paths.STATUS, response_model=QueueStatus, summary="Request status",
            responses=error_responses(401, 404, 503))
@direct(_status_now)
async def status(
    request_id: str,
    request: Request,
    owner: Annotated[str, Depends(require_owner)],
    logs: str | None = None,
) -> Any:
    return await _status(request, request_id, owner, logs)


async def _status(request: Request, request_id: str, owner: str, logs: str | None) -> JSONResponse:
    ctx = get_ctx(request)
    with_logs = _flag(logs)
    connection = connection_of(request.scope, owner)
    changes = _hold_subscription(ctx, connection, request_id, with_logs)
    if changes is None:
        body = await _status_answer(ctx, request_id, owner, with_logs)
    else:
        with changes:  # subscribed before the read: a change after it ends the hold, never goes unheard
            body = await _status_answer(ctx, request_id, owner, with_logs)
            if body["status"] == "IN_PROGRESS":  # answered when it changes, or after the hold: read afresh either way
                await changes.wait_async(ctx.settings.status_hold_s)
                body = await _status_answer(ctx, request_id, owner, with_logs)
    ctx.polls.answered(connection, request_id, body["status"] != "COMPLETED")
    return JSONResponse(body, headers=_request_headers(request_id))


async def _status_answer(ctx, request_id: str, owner: str, with_logs: bool) -> dict[str, Any]:  # noqa: ANN001
    if with_logs:  # log lines change without a status change: always read
        return await to_thread.run_sync(_status_with_logs, ctx, request_id, owner)
    _job, body = await _poll(ctx, request_id, owner, with_status=True)
    return body


def _hold_subscription(ctx, connection: tuple[Any, ...] | None, request_id: str,  # noqa: ANN001
                       with_logs: bool) -> Subscription | None:
    """The wake-ups a held poll waits on, when this poll may be held (``api/held_polls.py``): the connection's last
    poll found this same request unfinished, holding is on, and changes can be heard now."""
    if not (ctx.settings.status_hold_s > 0 and ctx.polls.waiting(connection, request_id)
            and ctx.store.health.up and getattr(ctx.wakeups, "live", True)):
        return None
    topics = (job_topic(request_id), log_topic(request_id)) if with_logs else (job_topic(request_id),)
    try:
        return ctx.wakeups.subscribe(*topics)
    except ValueError:  # not a topic (a newline in the id): no such request; the read answers 404
        return None


@router.get(paths.STATUS_STREAM, summary="Status as Server-Sent Events", response_class=StreamingResponse,
            responses={200: {"description": "One `data:` event (a QueueStatus) per change",
                             "content": {"text/event-stream": {}}}, **error_responses(401, 404, 429, 503)})
async def status_stream(
    request_id: str,
    request: Request,
    owner: Annotated[str, Depends(require_owner)],
    logs: str | None = None,
) -> StreamingResponse:
    """One ``data:`` event per change, carrying only the *new* log lines; closed after the COMPLETED event."""
    ctx = get_ctx(request)
    with_logs = _flag(logs)
    held = ctx.connections.hold(owner, "stream")  # 429 past the key's limit; released when the response ends
    try:
        return await _open_stream(ctx, request, request_id, owner, with_logs, held)
    except BaseException:
        held.release()
        raise


async def _open_stream(ctx, request: Request, request_id: str, owner: str, with_logs: bool,  # noqa: ANN001
                       held: Held) -> StreamingResponse:

    def look(current: Job | None, last_log: int) -> tuple[Job, list[LogLine], dict[str, Any]]:
        """The job now (the first time: the caller's own, else 404), its log lines after ``last_log`` (when
        following logs) and its status body: one trip to a worker thread per wake-up."""
        current = _own_job(ctx, request_id, owner) if current is None else _current(ctx, current)
        new_logs = ctx.store.logs(current.id, last_log) if with_logs else []
        return current, new_logs, status_body(ctx, current, [])

    # Subscribe first, then read: a change between the two is then a pending wake-up, never a missed one. Only a
    # stream that shows logs wakes up for each log line.
    topics = (job_topic(request_id), log_topic(request_id)) if with_logs else (job_topic(request_id),)
    try:
        changes = ctx.wakeups.subscribe(*topics)
    except ValueError:  # not a topic (a newline in the id): no such request either
        raise _not_found(request_id) from None
    try:
        first = await to_thread.run_sync(look, None, 0)
    except BaseException:
        changes.close()
        raise
    job = first[0]

    async def events():  # noqa: ANN202
        last_log = 0
        last_state = None
        last_sent = time.monotonic()
        with changes:
            current, pending = job, first
            while True:
                try:
                    current, new_logs, body = pending or await to_thread.run_sync(look, current, last_log)
                    pending = None
                except StoreUnavailable:
                    # The database is restarting: the headers are sent, so no 503 can be said any more. The
                    # stream stays open (keep-alives) and reads again shortly; the job is safe in the database.
                    if time.monotonic() - last_sent > KEEPALIVE_S:
                        yield ": keep-alive\n\n"
                        last_sent = time.monotonic()
                    if await request.is_disconnected():
                        return
                    await changes.wait_async(FALLBACK_WAIT_S)
                    continue
                if new_logs:
                    last_log = new_logs[-1].id
                body["logs"] = [line.to_fal() for line in new_logs] if with_logs else None
                state = (body["status"], body.get("queue_position"))
                if new_logs or state != last_state:
                    yield f"data: {json.dumps(body)}\n\n"
                    last_state, last_sent = state, time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if body["status"] == "COMPLETED" or await request.is_disconnected():
                    return
                await changes.wait_async(FALLBACK_WAIT_S)

    return _SubscribedStream(
        changes,
        held,
        events(),
        media_type="text/event-stream",
        headers={**_request_headers(job.id), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _SubscribedStream(StreamingResponse):
    """A stream that owns a wake-up subscription and its key's stream slot: both given back when the response
    ends, however it ends (the generator's own ``with`` never runs when the client leaves before the first
    chunk)."""

    def __init__(self, subscription: Subscription, held: Held, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscription, self.held = subscription, held

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()
            self.held.release()


def result_response(job: Job, url_for: UrlRenderer) -> JSONResponse:
    """The result endpoint's (and ``/run``'s) answer: the stored output rendered by the one renderer
    (:func:`~photomaker_server.contract.result.render_output`; ``url_for`` renders stored images' URLs for this
    replica), or fal's error body (``contract.errors.failure_body``, as webhooks send it) with the status of the
    job's error type."""
    headers = _request_headers(job.id)
    if job.status != JobStatus.COMPLETED:
        return error_response(ErrorType.REQUEST_IN_PROGRESS, "Request is still in progress", headers)
    if job.error or job.result is None:  # a job completed without error always has its result
        error_type = ErrorType.of(job.error_type)
        return error_response(error_type, job.error or "The request's result is missing", headers)
    return JSONResponse(render_output(job.result, url_for).model_dump(mode="json", exclude_none=True), headers=headers)


async def _result_now(request: Request) -> JSONResponse:
    """``result`` for a request as it comes (the direct handler)."""
    return await _result(request, request.path_params["request_id"], owner_of_request(request))


@router.get(paths.REQUEST, response_model=PhotoMakerOutput, summary="Request result",
            responses=error_responses(400, 401, 404, 422, 499, 500, 503, 504))
@direct(_result_now)
async def result(request_id: str, request: Request, owner: Annotated[str, Depends(require_owner)]) -> Any:
    return await _result(request, request_id, owner)


async def _result(request: Request, request_id: str, owner: str) -> JSONResponse:
    ctx = get_ctx(request)
    job, _body = await _poll(ctx, request_id, owner, with_status=False, finished_only=True)
    return result_response(job, ctx.file_url)


@router.put(paths.CANCEL, summary="Cancel a request", status_code=202, response_model=CancelAnswer,
            responses={400: {"model": CancelAnswer, "description": "The request had already finished"},
                       **error_responses(401, 404, 503)})
def cancel(request_id: str, request: Request, owner: Annotated[str, Depends(require_owner)]) -> JSONResponse:
    ctx = get_ctx(request)
    outcome = ctx.store.request_cancel(request_id, owner)
    ctx.jobs.forget(request_id)  # this process's next poll reads the cancellation (its wake-up may come later)
    headers = _request_headers(request_id)
    if outcome == CancelOutcome.NOT_FOUND:
        return error_response(ErrorType.NOT_FOUND, f"Request {request_id} not found")
    if outcome == CancelOutcome.ALREADY_COMPLETED:
        return JSONResponse(CancelAnswer(status="ALREADY_COMPLETED").model_dump(), status_code=400, headers=headers)
    return JSONResponse(CancelAnswer(status="CANCELLATION_REQUESTED").model_dump(), status_code=202, headers=headers)


@router.post(paths.RUN, response_model=PhotoMakerOutput, summary="Run synchronously",
             responses=error_responses(400, 401, 413, 422, 429, 499, 500, 503, 504))
async def run(
    request: Request,
    payload: Annotated[dict[str, Any], INPUT_BODY],
    owner: Annotated[str, Depends(require_owner)],
) -> Any:
    """Queue the request and hold the connection until it finishes; a client that goes away cancels it."""
    ctx = get_ctx(request)
    with ctx.connections.hold(owner, "run"):  # 429 past the key's limit, before anything is queued
        return await _run_held(ctx, request, payload, owner)


async def _run_held(ctx, request: Request, payload: dict[str, Any], owner: str) -> Any:  # noqa: ANN001
    job = await to_thread.run_sync(_enqueue, ctx, request, payload, owner, None)
    if isinstance(job, JSONResponse):
        return job
    with ctx.wakeups.subscribe(job_topic(job.id)) as changes:
        job = await _refresh(ctx, job)  # it may have finished before the subscription
        while job.status != JobStatus.COMPLETED:
            if await request.is_disconnected():
                await to_thread.run_sync(ctx.store.request_cancel, job.id, owner)
                return error_response(ErrorType.CLIENT_CANCELLED, "Client disconnected", _request_headers(job.id))
            await changes.wait_async(FALLBACK_WAIT_S)
            job = await _refresh(ctx, job)
    return result_response(job, ctx.file_url)
