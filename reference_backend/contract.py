"""The contract side (docs/contract.md, "Worker → backend"): routes a worker calls, mounted under ``/api``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile
from fastapi.responses import JSONResponse

from reference_backend import artifacts, wire
from reference_backend.context import Context, not_found

router = APIRouter()
live_logs_router = APIRouter()
"""The live log extension, included only when the backend has it (otherwise the route is a 404)."""


@router.get("/jobs/{job_execution_id}")
def get_job_execution(job_execution_id: str, ctx: Context) -> JSONResponse:
    """getJobExecution: the Jackson-style JobExecutionDTO."""
    record = ctx.store.job_execution(job_execution_id)
    if record is None:
        raise not_found("job execution", job_execution_id)
    return JSONResponse(wire.job_execution_dto(record))


@router.get("/jobs/{job_execution_id}/dependencies")
def get_job_dependencies(job_execution_id: str, ctx: Context) -> JSONResponse:
    """getJobDependencies: job execution ids this one waits for."""
    waits_for = ctx.store.waits_for(job_execution_id)
    if waits_for is None:
        raise not_found("job execution", job_execution_id)
    return JSONResponse(waits_for)


@router.get("/jobs/{job_execution_id}/status")
def get_job_status(job_execution_id: str, ctx: Context) -> JSONResponse:
    """getJobStatus: a bare JSON string, or ``{"status": ...}`` when the instance is configured so."""
    record = ctx.store.job_execution(job_execution_id)
    if record is None:
        raise not_found("job execution", job_execution_id)
    status = record.status.value
    return JSONResponse({"status": status} if ctx.status_as_object else status)


@router.post("/job/status")
def update_job_status(update: wire.JobStatusUpdate, ctx: Context) -> Response:
    """updateJobStatus: recorded in full, contract breaches noted but not refused."""
    if not ctx.store.record_status(update):
        raise not_found("job execution", update.job_execution_id)
    # A Spring controller returning ResponseEntity<Void>: 200 with no body.
    return Response(status_code=200)


@router.post("/job/artifact/upload")
def upload_artifact(
    job_id: Annotated[str, Form(alias="jobId")], file: Annotated[UploadFile, File()], ctx: Context
) -> JSONResponse:
    """uploadArtifacts: one file per request, its filename (``filename*`` preferred) being its relative path."""
    if ctx.store.job_execution(job_id) is None:
        raise not_found("job execution", job_id)
    try:
        relative = artifacts.safe_relative_path(
            artifacts.submitted_name(file.headers.get("content-disposition"), file.filename))
    except artifacts.UnsafeArtifactPath as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    target = artifacts.artifact_file(ctx.data_dir, job_id, relative)
    try:
        size, sha256 = artifacts.write_artifact(file.file, target, ctx.max_artifact_bytes)
    except artifacts.ArtifactTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from exc
    except OSError as exc:  # e.g. "a" stored as a file and now "a/b" wanted
        raise HTTPException(status_code=409, detail=f"cannot store {relative}: {exc.strerror}") from exc
    ctx.store.add_artifact(job_id, str(relative), size, sha256)
    return JSONResponse({"name": str(relative), "size": size, "sha256": sha256})


@router.get("/pipeline-executions/{pipeline_execution_id}/jobs")
def get_pipeline_jobs(pipeline_execution_id: str, ctx: Context) -> JSONResponse:
    """Jobs of a pipeline run, as JobExecutionDTOs in creation order."""
    records = ctx.store.pipeline_jobs(pipeline_execution_id)
    if records is None:
        raise not_found("pipeline execution", pipeline_execution_id)
    return JSONResponse([wire.job_execution_dto(record) for record in records])


@live_logs_router.post("/job/logs")
def post_log_chunk(chunk: wire.LogChunk, ctx: Context) -> JSONResponse:
    """Live log chunk (extension); a repeated seq is accepted and dropped."""
    if ctx.store.job_execution(chunk.job_execution_id) is None:
        raise not_found("job execution", chunk.job_execution_id)
    stored = ctx.store.add_log_chunk(chunk.job_execution_id, chunk.seq, chunk.offset, chunk.lines)
    return JSONResponse({"seq": chunk.seq, "duplicate": not stored})
