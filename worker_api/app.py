"""The worker's HTTP API (backend → worker calls of ``CONTRACT.md``). Routes validate and hand off."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from flows.planning import PlanningError
from flows.runtime import get_executor, get_inflight, get_outbox
from worker_api import metrics
from worker_api.backend_client import BackendRejected
from worker_api.dispatch import FlowDispatcher
from worker_api.health import health_report
from worker_api.lifecycle import DRAIN
from worker_api.limits import RETRY_AFTER_SECONDS, BodyTooLarge, QueueFull, RequestGuard
from worker_api.models import ExecuteAccepted, JobExecutionDTO, JobView, PipelineExecuteRequest
from worker_api.pool_dispatch import PoolDispatcher
from worker_api.recovery import recover
from worker_api.settings import get_settings

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)


def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """When ``WORKER_API_TOKEN`` is set, demand it as a bearer token (constant-time compare)."""
    expected = get_settings().api_token
    if expected is None:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


def _dispatcher(request: Request) -> FlowDispatcher | PoolDispatcher:
    return request.app.state.dispatcher


Authorized = Depends(require_token)
Dispatcher = Annotated[FlowDispatcher | PoolDispatcher, Depends(_dispatcher)]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the first wrong field (``job.dockerImage``), with FastAPI's full detail beside it."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg", "invalid request"))
    detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    return JSONResponse(status_code=422, content={"error": message, "field": field, "detail": detail})


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=429, content={"error": f"worker busy: {exc}"},
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _body_too_large(request: Request, exc: Exception) -> JSONResponse:
    limit = get_settings().max_request_bytes
    return JSONResponse(status_code=413, content={"error": f"request body over {limit} bytes", "field": "body"})


def _start_up(dispatcher: FlowDispatcher | PoolDispatcher) -> None:
    """Send what a previous life left in the outbox, and report the jobs a crash cut off.

    Pool dispatch runs no container here (and a pool worker on this host may share the labels): only the
    outbox resumes, and the global concurrency limit is created or updated.
    """
    outbox = get_outbox()
    if isinstance(dispatcher, PoolDispatcher):
        try:
            dispatcher.prepare()
        except Exception as exc:  # Prefect may not be up yet: retried before the first submission
            log.error("could not create the global concurrency limit: %s", exc)
        return
    try:
        count = recover(get_executor(), outbox, get_inflight(), get_settings().log_tail_bytes)
    except Exception as exc:  # the engine may be down: health says so, and the next start retries
        log.error("start-up recovery failed: %s", exc)
        return
    if count:
        log.warning("reported %d job(s) cut off by the previous worker life", count)


def create_app(dispatcher: FlowDispatcher | PoolDispatcher | None = None) -> FastAPI:
    """The FastAPI application; the dispatcher is made at start-up unless one is given."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.dispatcher = dispatcher or (PoolDispatcher() if get_settings().dispatch == "pool"
                                              else FlowDispatcher())
        await run_in_threadpool(_start_up, app.state.dispatcher)
        yield
        app.state.dispatcher.shutdown(wait=False)

    app = FastAPI(title="cicd-worker", version="0.1.0", lifespan=lifespan,
                  description="Runs CI/CD jobs in Docker containers as Prefect flow runs.")
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_middleware(RequestGuard, max_bytes=get_settings().max_request_bytes)
    _add_job_routes(app)
    _add_pipeline_routes(app)
    _add_worker_routes(app)
    return app


def _add_job_routes(app: FastAPI) -> None:
    @app.post("/api/job/execute", status_code=202, response_model=ExecuteAccepted,
              response_model_by_alias=True, dependencies=[Authorized],
              responses={200: {"description": "already known: same ids, nothing started"}})
    async def execute_job(job: JobExecutionDTO, dispatcher: Dispatcher) -> Any:
        record, started = await run_in_threadpool(dispatcher.submit_job, job)
        body = ExecuteAccepted(job_execution_id=record.job_execution_id, flow_run_id=record.flow_run_id)
        return body if started else JSONResponse(status_code=200, content=body.to_wire())

    @app.get("/api/job/{job_execution_id}", response_model=JobView, response_model_by_alias=True,
             dependencies=[Authorized])
    async def job_view(job_execution_id: UUID, dispatcher: Dispatcher) -> Any:
        view = await run_in_threadpool(dispatcher.job_view, job_execution_id)
        if view is None:
            raise HTTPException(404, detail=f"job execution {job_execution_id} is not known to this worker")
        return view

    @app.post("/api/job/{job_execution_id}/cancel", status_code=202, dependencies=[Authorized])
    async def cancel_job(job_execution_id: UUID, dispatcher: Dispatcher) -> dict[str, Any]:
        view = await run_in_threadpool(dispatcher.cancel_job, job_execution_id)
        if view is None:
            raise HTTPException(404, detail=f"job execution {job_execution_id} is not known to this worker")
        return {"jobExecutionId": str(job_execution_id), "status": view.status.value, "cancelRequested": True}


def _add_pipeline_routes(app: FastAPI) -> None:
    @app.post("/api/pipeline/execute", status_code=202, response_model=ExecuteAccepted,
              response_model_by_alias=True, dependencies=[Authorized],
              responses={200: {"description": "already accepted: same flow run, nothing started"},
                         422: {"description": "invalid pipeline (cycle, unknown dependency...): every job "
                                              "of the run is reported FAILED with the reason"}})
    async def execute_pipeline(body: PipelineExecuteRequest, dispatcher: Dispatcher) -> Any:
        try:
            record, started = await run_in_threadpool(dispatcher.submit_pipeline, body.pipeline_execution_id)
        except PlanningError as exc:
            return JSONResponse(status_code=422, content={
                "error": f"invalid pipeline: {exc}", "field": "pipelineExecutionId", "jobs": list(exc.jobs)})
        except BackendRejected as exc:
            return JSONResponse(status_code=exc.status_code if exc.status_code == 404 else 422,
                                content={"error": str(exc), "field": "pipelineExecutionId"})
        answer = ExecuteAccepted(pipeline_execution_id=record.pipeline_execution_id, flow_run_id=record.flow_run_id)
        return answer if started else JSONResponse(status_code=200, content=answer.to_wire())


def _add_worker_routes(app: FastAPI) -> None:
    @app.get("/api/worker/config", dependencies=[Authorized])
    async def worker_config() -> dict[str, Any]:
        return get_settings().public_view()

    @app.get("/metrics", dependencies=[Authorized], response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        body = metrics.render(get_outbox().stats())
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/worker/health")
    async def worker_health() -> JSONResponse:
        report, up = await run_in_threadpool(health_report)
        if DRAIN.started.is_set():
            report.status, up = "DRAINING", False
        return JSONResponse(status_code=200 if up else 503, content=report.model_dump(mode="json"))
