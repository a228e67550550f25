"""The worker's HTTP API (backend → worker calls of ``docs/contract.md``). Routes validate and hand off."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from core import metrics
from core.backend_client import BackendRejected
from core.models import ExecuteAccepted, JobExecutionDTO, JobView, PipelineExecuteRequest
from core.settings import Settings
from flows.planning import PlanningError
from flows.recovery import RecoveryMasks, recover
from flows.services import Services, build_services, install
from worker_api.dispatch import FlowDispatcher
from worker_api.dispatcher import Dispatcher
from worker_api.exposure import INSECURE_WARNING, Exposure, classify, refusal_message
from worker_api.health import HealthChecks, public
from worker_api.in_thread import in_thread
from worker_api.lifecycle import DRAIN
from worker_api.limits import RETRY_AFTER_SECONDS, BodyTooLarge, QueueFull, RequestGuard
from worker_api.pool_dispatch import PoolDispatcher

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
# How long an execute request waits for start-up recovery before answering 503 with Retry-After.
_START_WAIT_SECONDS = 10.0


class StartingUp(Exception):
    """Start-up recovery of the previous worker life is not finished: no job is accepted yet."""


def _token_matches(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """Whether the bearer token is ``WORKER_API_TOKEN`` (constant-time compare); True when none is set."""
    expected = settings.api_token
    if expected is None:
        return True
    given = credentials.credentials if credentials else ""
    return hmac.compare_digest(given.encode(), expected.get_secret_value().encode())


def require_token(request: Request, credentials: Credentials) -> None:
    """When ``WORKER_API_TOKEN`` is set, demand it as a bearer token."""
    if not _token_matches(request.app.state.settings, credentials):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


async def require_started(request: Request) -> None:
    """Hold job submissions until start-up recovery is done (it would report a job accepted meanwhile FAILED)."""
    started: threading.Event = request.app.state.started
    if not started.is_set() and not await in_thread(started.wait, _START_WAIT_SECONDS):
        raise StartingUp()


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


Authorized = Depends(require_token)
Started = Depends(require_started)
TheDispatcher = Annotated[Dispatcher, Depends(_dispatcher)]


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


async def _starting_up(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": "worker starting: recovering the jobs of its previous life"},
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _body_too_large(request: Request, exc: Exception) -> JSONResponse:
    limit = request.app.state.settings.max_request_bytes
    return JSONResponse(status_code=413, content={"error": f"request body over {limit} bytes", "field": "body"})


def _start_up(dispatcher: Dispatcher, services: Services) -> None:
    """Report the jobs a crash cut off (the outbox already sends what a previous life left).

    Pool dispatch runs no container here (and a pool worker on this host may share the labels): only the
    outbox resumes, and the global concurrency limit is created or updated.
    """
    if isinstance(dispatcher, PoolDispatcher):
        try:
            dispatcher.prepare()
        except Exception as exc:  # Prefect may not be up yet: retried before the first submission
            log.error("could not create the global concurrency limit: %s", exc)
        return
    try:
        count = recover(services.executor, services.outbox, services.inflight, services.settings.log_tail_bytes,
                        RecoveryMasks.from_settings(services.settings))
    except Exception as exc:  # the engine may be down: health says so, and the next start retries
        log.error("start-up recovery failed: %s", exc)
        return
    if count:
        log.warning("reported %d job(s) cut off by the previous worker life", count)


def _start_up_in_background(dispatcher: Dispatcher, services: Services, started: threading.Event) -> None:
    """``_start_up`` off the server's start: a wedged engine must not keep the API (and health) from answering."""

    def run() -> None:
        try:
            _start_up(dispatcher, services)
        except Exception:  # the outbox database may be unusable: health says so
            log.exception("start-up failed")
        finally:
            started.set()

    threading.Thread(target=run, name="start-up", daemon=True).start()


def create_app(settings: Settings | None = None, *, services: Services | None = None,
               dispatcher: Dispatcher | None = None, exposure: Exposure | None = None) -> FastAPI:
    """The FastAPI application; its services and dispatcher are made at start-up unless given.

    ``settings`` are read from the environment unless given (``serve`` reads them once and passes them).
    ``exposure`` is decided by ``serve`` from the listen address; by default from ``WORKER_HOST``,
    ``WORKER_API_TOKEN`` and ``WORKER_INSECURE``. A refused exposure raises ``ValueError``.
    """
    settings = settings or (services.settings if services else Settings())
    exposed = exposure or classify(settings.host, settings.api_token is not None, settings.insecure)
    if exposed is Exposure.REFUSED:
        raise ValueError(refusal_message(settings.host, settings.port))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if exposed is Exposure.INSECURE:
            log.warning(INSECURE_WARNING)
        # Built here, once, from the settings read for this app: the outbox's sender starts at once.
        made = services or install(build_services(settings))
        app.state.services = made
        app.state.health = HealthChecks(made)
        app.state.dispatcher = dispatcher or (PoolDispatcher(made) if settings.dispatch == "pool"
                                              else FlowDispatcher(made))
        _start_up_in_background(app.state.dispatcher, made, app.state.started)
        yield
        app.state.dispatcher.shutdown(wait=False)

    # The docs and the schema are routes of their own below, behind the token like every other route.
    app = FastAPI(title="cicd-worker", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description="Runs CI/CD jobs in Docker containers as Prefect flow runs.")
    app.state.exposure = exposed
    app.state.settings = settings
    app.state.started = threading.Event()
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(BodyTooLarge, _body_too_large)
    app.add_exception_handler(StartingUp, _starting_up)
    app.add_middleware(RequestGuard, max_bytes=settings.max_request_bytes)
    _add_doc_routes(app)
    _add_job_routes(app)
    _add_pipeline_routes(app)
    _add_worker_routes(app)
    return app


def _add_doc_routes(app: FastAPI) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc``, each needing the token when one is set.

    FastAPI's own would answer anyone. A browser reaches the pages with the token only through something
    that adds the header (a proxy, a header extension), which then also sends it when the page fetches
    ``/openapi.json``.
    """

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Authorized])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Authorized])
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False, dependencies=[Authorized])
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def _add_job_routes(app: FastAPI) -> None:
    @app.post("/api/job/execute", status_code=202, response_model=ExecuteAccepted,
              response_model_by_alias=True, dependencies=[Authorized, Started],
              responses={200: {"description": "already known: same ids, nothing started"}})
    async def execute_job(job: JobExecutionDTO, dispatcher: TheDispatcher) -> Any:
        record, started = await in_thread(dispatcher.submit_job, job)
        body = ExecuteAccepted(job_execution_id=record.job_execution_id, flow_run_id=record.flow_run_id)
        return body if started else JSONResponse(status_code=200, content=_answer(body))

    @app.get("/api/job/{job_execution_id}", response_model=JobView, response_model_by_alias=True,
             dependencies=[Authorized])
    async def job_view(job_execution_id: UUID, dispatcher: TheDispatcher) -> Any:
        view = await in_thread(dispatcher.job_view, job_execution_id)
        if view is None:
            raise HTTPException(404, detail=f"job execution {job_execution_id} is not known to this worker")
        return view

    @app.post("/api/job/{job_execution_id}/cancel", status_code=202, dependencies=[Authorized])
    async def cancel_job(job_execution_id: UUID, dispatcher: TheDispatcher) -> dict[str, Any]:
        view = await in_thread(dispatcher.cancel_job, job_execution_id)
        if view is None:
            raise HTTPException(404, detail=f"job execution {job_execution_id} is not known to this worker")
        return {"jobExecutionId": str(job_execution_id), "status": view.status.value, "cancelRequested": True}


def _add_pipeline_routes(app: FastAPI) -> None:
    @app.post("/api/pipeline/execute", status_code=202, response_model=ExecuteAccepted,
              response_model_by_alias=True, dependencies=[Authorized, Started],
              responses={200: {"description": "already accepted: same flow run, nothing started"},
                         422: {"description": "invalid pipeline (cycle, unknown dependency...): every job "
                                              "of the run is reported FAILED with the reason"}})
    async def execute_pipeline(body: PipelineExecuteRequest, dispatcher: TheDispatcher) -> Any:
        try:
            record, started = await in_thread(dispatcher.submit_pipeline, body.pipeline_execution_id)
        except PlanningError as exc:
            return JSONResponse(status_code=422, content={
                "error": f"invalid pipeline: {exc}", "field": "pipelineExecutionId", "jobs": list(exc.jobs)})
        except BackendRejected as exc:
            return JSONResponse(status_code=exc.status_code if exc.status_code == 404 else 422,
                                content={"error": str(exc), "field": "pipelineExecutionId"})
        answer = ExecuteAccepted(pipeline_execution_id=record.pipeline_execution_id, flow_run_id=record.flow_run_id)
        return answer if started else JSONResponse(status_code=200, content=_answer(answer))


def _add_worker_routes(app: FastAPI) -> None:
    @app.get("/api/worker/config", dependencies=[Authorized])
    async def worker_config(request: Request) -> dict[str, Any]:
        return request.app.state.settings.public_view()

    @app.get("/metrics", dependencies=[Authorized], response_class=PlainTextResponse)
    async def prometheus_metrics(request: Request) -> PlainTextResponse:
        body = metrics.render(request.app.state.services.outbox.stats())
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/worker/health")
    async def worker_health(request: Request, credentials: Credentials) -> JSONResponse:
        """UP/DOWN for anyone; the checks only with the token, or without one on loopback."""
        exposed: Exposure = request.app.state.exposure
        report, up = await in_thread(request.app.state.health.report)
        if not request.app.state.started.is_set():
            report.status, up = "STARTING", False
        if DRAIN.started.is_set():
            report.status, up = "DRAINING", False
        if exposed is Exposure.INSECURE:
            report.insecure, report.warnings = True, [INSECURE_WARNING]
        settings: Settings = request.app.state.settings
        detail = _token_matches(settings, credentials) if exposed is Exposure.TOKEN else exposed is Exposure.LOOPBACK
        shown = report if detail else public(report)
        return JSONResponse(status_code=200 if up else 503, content=shown.to_wire())


def _answer(accepted: ExecuteAccepted) -> dict[str, Any]:
    """An execute answer for a run already known, in the shape of the 202 (``flowRunId`` null while unknown)."""
    return accepted.model_dump(mode="json", by_alias=True)
