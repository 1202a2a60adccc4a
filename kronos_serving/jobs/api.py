"""HTTP routes of forecast jobs and forecast records (mounted under ``/v1``).

``POST /v1/jobs`` validates like the sync routes (same 400s) and queues; ``GET /v1/jobs/{id}``,
``DELETE /v1/jobs/{id}``, ``GET /v1/jobs?status=&limit=`` and ``GET /v1/forecasts/{request_id}``
read the store. With API keys on, a key sees only its own jobs and records. A store that is
down gets 503 with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import json
import logging

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..forecasting import RequestFailed
from ..guard import caller_key_id
from ..schemas import BatchRequest, SingleRequest
from ..store import JobRecord
from ..store.errors import describe
from ..store.schema import FINISHED, JOB_STATUSES
from ..validation_errors import with_field
from .worker import store_call

log = logging.getLogger("kronos.jobs")
MAX_IDEMPOTENCY_KEY = 255
MAX_LIST = 1000
STORE_RETRY_AFTER_S = 5


def _service():
    import bentoml

    return bentoml.get_current_service()


def error(status: int, message: str, field: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status,
                        headers=headers or None)


def store_down(exc: BaseException | None = None) -> JSONResponse:
    """503: the details (hosts, drivers) go to the log, not to the client."""
    log.warning("store unavailable", extra={"event": "store_unavailable",
                                            "error": describe(exc) if exc else "not ready"})
    return error(503, "store unavailable, retry later",
                 **{"Retry-After": str(STORE_RETRY_AFTER_S)})


def parse_body(raw: bytes) -> tuple[BaseModel, list[SingleRequest], bool]:
    """(validated model, its bodies, is batch); RequestFailed 400 naming the field."""
    try:
        document = json.loads(raw or b"null")
    except ValueError as exc:
        raise RequestFailed(400, f"body: malformed JSON ({exc.msg})", "body") from None
    if not isinstance(document, dict):
        raise RequestFailed(400, "body: must be a JSON object", "body")
    batch = "batch" in document
    try:
        model = (BatchRequest if batch else SingleRequest).model_validate(document)
    except ValidationError as exc:
        details = json.loads(exc.json(include_input=False, include_url=False))
        shaped = with_field({"detail": details})
        raise RequestFailed(400, shaped["error"], shaped["field"]) from None
    return model, (model.batch if batch else [model]), batch


def owner_filter(request: Request) -> str | None:
    """The caller's key id when API keys are on (they see only their own), else no filter."""
    return caller_key_id(request.scope)


async def submit_job(request: Request) -> JSONResponse:
    service = _service()
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        return error(400, f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                     "Idempotency-Key")
    try:
        model, bodies, batch = parse_body(await request.body())
        await asyncio.to_thread(service.runner.prepare, bodies, batch)  # the sync routes' 400s
    except RequestFailed as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"error": exc.error, "field": exc.field}, status_code=exc.status,
                            headers=headers)
    if not service.store.up:
        return store_down()
    stored = model.model_dump(mode="json", exclude_unset=True)
    try:
        job, created = await store_call("submit", service.store.jobs.create_job, stored,
                                        batch=batch, owner=owner_filter(request) or "",
                                        idempotency_key=idempotency_key)
    except Exception as exc:
        return store_down(exc)
    if not created and job.request != stored:
        return error(409, "Idempotency-Key: already used for a different body", "Idempotency-Key")
    service.jobs.wake()
    status_url = f"/v1/jobs/{job.id}"
    return JSONResponse({"job_id": job.id, "status": job.status, "status_url": status_url},
                        status_code=202 if created else 200, headers={"Location": status_url})


async def _job(request: Request, operation: str, function) -> JobRecord | JSONResponse:
    """``function(job_id, owner)`` on the store: the job, or the 404/503 to answer."""
    job_id = request.path_params["job_id"]
    try:
        job = await store_call(operation, function, job_id, owner_filter(request))
    except Exception as exc:
        return store_down(exc)
    return job if job is not None else error(404, f"job_id: no job {job_id!r}", "job_id")


async def get_job(request: Request) -> JSONResponse:
    job = await _job(request, "read", _service().store.jobs.get)
    return job if isinstance(job, JSONResponse) else JSONResponse(job.public())


async def cancel_job(request: Request) -> JSONResponse:
    service = _service()
    job = await _job(request, "cancel", service.store.jobs.cancel)
    if isinstance(job, JSONResponse):
        return job
    if job.status != "canceled" and job.status in FINISHED:
        return error(409, f"job_id: job already {job.status}", "job_id")
    service.jobs.cancel_local(job.id)
    return JSONResponse(job.public())


async def list_jobs(request: Request) -> JSONResponse:
    service = _service()
    status = request.query_params.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        return error(400, f"status: must be one of {', '.join(JOB_STATUSES)}", "status")
    raw_limit = request.query_params.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST:
        return error(400, f"limit: must be an integer from 1 to {MAX_LIST}", "limit")
    try:
        jobs = await store_call("read", service.store.jobs.list, owner_filter(request), status,
                                int(raw_limit))
    except Exception as exc:
        return store_down(exc)
    return JSONResponse({"jobs": [{k: v for k, v in job.public().items() if k != "result"}
                                  for job in jobs]})


async def get_forecast(request: Request) -> JSONResponse:
    service = _service()
    request_id = request.path_params["request_id"]
    try:
        records = await store_call("read", service.store.records.by_request, request_id,
                                   owner_filter(request))
    except Exception as exc:
        return store_down(exc)
    if not records:
        return error(404, f"request_id: no forecast recorded for {request_id!r}", "request_id")
    return JSONResponse({"request_id": request_id, "forecasts": records})


routes = [Route("/jobs", submit_job, methods=["POST"]), Route("/jobs", list_jobs, methods=["GET"]),
          Route("/jobs/{job_id}", get_job, methods=["GET"]),
          Route("/jobs/{job_id}", cancel_job, methods=["DELETE"]),
          Route("/forecasts/{request_id}", get_forecast, methods=["GET"])]
