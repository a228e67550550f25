"""The execute-job flow: wait for dependencies, run the container task, report back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Failed

from core.errors import WorkerError
from core.job_records import JobRecord
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate
from core.settings import Settings
from flows.artifact_upload import artifact_key
from flows.dependencies import wait_for_dependencies
from flows.handoff import HandOff
from flows.job_log import WORKER_PREFIX
from flows.job_task import JobRun, job_task, new_job_run, run_attempts
from flows.pool_run import canceled_before_start
from flows.prefect_mirror import MirroredJob, PrefectMirror
from flows.reporting import JobReporter
from flows.services import Services, current
from flows.workspace import job_workspace_name, workspace

log = logging.getLogger(__name__)


def job_run_name(job: JobExecutionDTO) -> str:
    """Flow run name that reads well in the Prefect UI."""
    return f"job {job.job.name} [{str(job.id)[:8]}]"


def job_tags(job: JobExecutionDTO) -> list[str]:
    """Prefect tags: pipeline run, stage and commit where known."""
    tags = ["cicd-job"]
    if job.pipeline_execution_id:
        tags.append(f"pipeline:{job.pipeline_execution_id}")
    if job.stage_order is not None:
        tags.append(f"stage:{job.stage_order}")
    if job.commit_hash:
        tags.append(f"commit:{job.commit_hash[:12]}")
    return tags


_handed_over: HandOff[JobExecutionDTO] = HandOff()


def hand_over_job(job: JobExecutionDTO) -> None:
    """Give the job execution to its flow run in this process, before the run is created (see
    :mod:`flows.handoff`: its env must not be a flow-run parameter)."""
    _handed_over.put(job.id, job)


def drop_handed_over_job(job_execution_id: UUID | str) -> None:
    """Forget a job handed over whose flow run will not run (creating it failed)."""
    _handed_over.take(job_execution_id)


# No flow_run_name here: callers name the run when they create it (dispatcher, CLI). A name template makes the
# engine rename the run (a PATCH) and resolve the result store once more before the flow starts (~50 ms).
@flow(name="execute-job", persist_result=False, validate_parameters=False)
def execute_job(job_execution_id: str) -> Any:
    """Run one job execution after its dependencies; report to the backend.

    Only the id is a parameter: the job execution (with its env) is the one handed over in this process,
    else it is fetched from the backend (``GET /jobs/{id}``).
    """
    if canceled_before_start():
        return Cancelled(message="canceled through the worker API before the flow started")
    job = _handed_over.take(job_execution_id)
    if job is None:
        job = _fetch_job(job_execution_id)
    if job is None:
        return Failed(message=f"job execution {job_execution_id} could not be fetched from the backend")
    services = current()
    record, _ = services.registry.claim(job.id, job.job.name, job.pipeline_execution_id)
    record.flow_run_id = record.flow_run_id or runtime_flow_run.id
    reporter = JobReporter(job, record, services.outbox, services.inflight, services.settings)
    with services.cancel_watch.watching(runtime_flow_run.id, lambda: [record]):
        return _run_job(job, record, reporter, services)


def _in_task(run: JobRun, settings: Settings) -> Any:
    """The attempts as the run-container task, with Prefect's retries; its final state."""
    # No tags on the task run: Prefect asks the server for tag concurrency slots before a tagged task
    # runs, and on a busy SQLite server that costs ~2 s (bench/pipeline.py). The flow run has the tags.
    return job_task(run, settings)(run, return_state=True)


def _fetch_job(job_execution_id: str) -> JobExecutionDTO | None:
    """The job execution from the backend; None (reported ``FAILED`` when the id is one) when it cannot be had."""
    try:
        execution_id = UUID(job_execution_id)
    except ValueError:
        log.error("execute-job started with %r, which is not a job execution id", job_execution_id)
        return None
    try:
        return current().backend.get_job_execution(execution_id)
    except WorkerError as exc:
        reason = f"job not run: could not fetch the job execution from the backend: {exc}"
        log.error("job %s: %s", execution_id, reason)
        current().outbox.put_status(JobStatusUpdate(job_execution_id=execution_id, status=ExecutionStatus.FAILED,
                                                    logs=f"{WORKER_PREFIX} {reason}\n"))
        return None


def run_job_directly(job: JobExecutionDTO, record: JobRecord, services: Services, mirror: PrefectMirror,
                     mirrored: MirroredJob) -> None:
    """Run one job in this thread now, without Prefect's flow and task engines: its Prefect record
    (``mirrored``, begun by the caller) is written by ``mirror`` in the background, so a slow or absent
    Prefect never holds the job back. Same steps, body and retry rule as the ``execute-job`` flow."""
    reporter = JobReporter(job, record, services.outbox, services.inflight, services.settings)

    def publish(job_execution_id: str, name: str, rows: list[dict[str, object]]) -> None:
        if rows:
            mirror.artifacts(mirrored, artifact_key(name, "artifacts"), rows, f"Artifacts uploaded by job {name}")

    def attempts(run: JobRun) -> None:
        run_attempts(run, services.settings.retry_delay_seconds, lambda attempt: mirror.retrying(mirrored, attempt),
                     lambda: mirrored.late_logger, publish)

    try:
        _run_job(job, record, reporter, services, attempts)
    finally:
        mirror.finish(mirrored, record.status, record.message, record.exit_code)


def _run_job(job: JobExecutionDTO, record: JobRecord, reporter: JobReporter, services: Services,
             run_attempts: Callable[[JobRun], Any] | None = None) -> Any:
    """Dependencies, workspace, then the attempts: by default the run-container task (Prefect's engine)."""
    settings, backend = services.settings, services.backend
    try:
        blocked = wait_for_dependencies(job.id, backend, reporter.log, record.cancel,
                                        poll_seconds=settings.dependency_poll_seconds,
                                        timeout_seconds=settings.dependency_timeout_seconds)
    except WorkerError as exc:
        reporter.log.note(f"job not run: {exc}")
        reporter.final(ExecutionStatus.FAILED, message=str(exc))
        return Failed(message=str(exc))
    if blocked:
        reporter.log.note(blocked)
        reporter.final(ExecutionStatus.CANCELED, message=blocked)
        return Cancelled(message=blocked)
    labels = {"cicd.job-execution-id": str(job.id)}
    with workspace(job_workspace_name(str(job.id)), labels) as volume:
        run = new_job_run(job, reporter, settings, workspace_volume=volume)
        state = run_attempts(run) if run_attempts is not None else _in_task(run, settings)
    if not reporter.final_sent:  # an error outside the attempt must not leave the backend waiting
        ended = f"task ended {state.name}" if state is not None else "job ended"
        reporter.final(ExecutionStatus.FAILED, message=f"{ended} without a report")
    if record.status is ExecutionStatus.CANCELED:
        return Cancelled(message="job canceled")
    return state
