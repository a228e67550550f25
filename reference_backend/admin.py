"""The backend's own admin API (``/admin``): create runs, push them to a worker, inspect what arrived.

Used by tests and by ``cicd-worker run``; never faulted.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from reference_backend import artifacts, wire
from reference_backend.context import Context, not_found

router = APIRouter()

PUSH_TIMEOUT_SECONDS = 30.0


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness probe, used by :class:`reference_backend.server.BackendServer` to wait for start-up."""
    return {"status": "UP"}


@router.post("/pipeline-runs")
def create_pipeline_run(spec: wire.PipelineRunSpec, ctx: Context) -> dict[str, Any]:
    """Create a pipeline run; answers its id and a map job name → job execution id."""
    run_id, jobs = ctx.store.create_run(spec)
    return {"pipelineExecutionId": run_id, "jobs": jobs}


@router.get("/job-executions/{execution_id}")
def get_job_report(execution_id: str, ctx: Context) -> dict[str, Any]:
    """Status, history, violations, live log chunks and artifacts of one job execution."""
    report = ctx.store.job_report(execution_id)
    if report is None:
        raise not_found("job execution", execution_id)
    return report


@router.get("/pipeline-executions/{run_id}")
def get_pipeline_report(run_id: str, ctx: Context) -> dict[str, Any]:
    """A pipeline run with the report of each of its jobs."""
    name = ctx.store.pipeline_name(run_id)
    records = ctx.store.pipeline_jobs(run_id)
    if name is None or records is None:
        raise not_found("pipeline execution", run_id)
    return {"id": run_id, "name": name, "jobs": [ctx.store.job_report(record.id) for record in records]}


@router.get("/job-executions/{execution_id}/artifacts/{name:path}")
def get_artifact(execution_id: str, name: str, ctx: Context) -> FileResponse:
    """The stored bytes of one artifact."""
    try:
        relative = artifacts.safe_relative_path(name)
    except artifacts.UnsafeArtifactPath as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    if not ctx.store.has_artifact(execution_id, str(relative)):
        raise not_found("artifact", f"{execution_id}/{relative}")
    path = artifacts.artifact_file(ctx.data_dir, execution_id, relative)
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/job-executions/{execution_id}/push")
def push_job(execution_id: str, push: wire.PushRequest, ctx: Context) -> dict[str, Any]:
    """POST the Jackson-style JobExecutionDTO to the worker's ``/api/job/execute``."""
    record = ctx.store.job_execution(execution_id)
    if record is None:
        raise not_found("job execution", execution_id)
    return _post_to_worker(push, "/api/job/execute", wire.job_execution_dto(record))


@router.post("/pipeline-executions/{run_id}/push")
def push_pipeline(run_id: str, push: wire.PushRequest, ctx: Context) -> dict[str, Any]:
    """POST ``{"pipelineExecutionId": id}`` to the worker's ``/api/pipeline/execute``."""
    if ctx.store.pipeline_name(run_id) is None:
        raise not_found("pipeline execution", run_id)
    return _post_to_worker(push, "/api/pipeline/execute", {"pipelineExecutionId": run_id})


@router.get("/faults")
def get_faults(ctx: Context) -> dict[str, Any]:
    """Current fault settings and how many failures were injected since the last reset."""
    return ctx.faults.snapshot()


@router.post("/faults")
def set_faults(spec: wire.FaultSpec, ctx: Context) -> dict[str, Any]:
    """Start injecting 503s (or fixed answers per path) into ``/api`` (see :mod:`reference_backend.faults`)."""
    ctx.faults.configure(spec.fail_rate, spec.down_for_seconds, spec.seed, answers=spec.answers)
    return ctx.faults.snapshot()


@router.delete("/faults")
def reset_faults(ctx: Context) -> dict[str, Any]:
    """Stop injecting faults."""
    ctx.faults.reset()
    return ctx.faults.snapshot()


def _post_to_worker(push: wire.PushRequest, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {push.token}"} if push.token else {}
    url = push.worker_url.rstrip("/") + path
    try:
        answer = httpx.post(url, json=body, headers=headers, timeout=PUSH_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        # 502: the backend is fine, the worker it was asked to reach is not.
        raise HTTPException(status_code=502, detail=f"cannot reach worker at {url}: {exc!r}") from exc
    try:
        answer_body: Any = answer.json()
    except ValueError:
        answer_body = answer.text
    return {"statusCode": answer.status_code, "body": answer_body}
