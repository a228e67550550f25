"""The execute-job flow: wait for dependencies, run the container task, report back."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Failed

from executors.errors import WorkerError
from flows.cancel_watch import PrefectCancelWatcher
from flows.dependencies import wait_for_dependencies
from flows.job_task import job_task, new_job_run
from flows.pool_run import canceled_before_start, pool_process
from flows.reporting import JobReporter
from flows.runtime import JobRecord, get_backend, get_inflight, get_outbox, get_registry
from flows.workspace import job_workspace_name, workspace
from worker_api.models import ExecutionStatus, JobExecutionDTO
from worker_api.settings import get_settings


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


# No flow_run_name here: callers name the run when they create it (dispatcher, CLI). A name template makes the
# engine rename the run (a PATCH) and resolve the result store once more before the flow starts (~50 ms).
@flow(name="execute-job", persist_result=False, validate_parameters=False)
def execute_job(job_execution: dict[str, Any]) -> Any:
    """Run one job execution (a JobExecutionDTO as JSON) after its dependencies; report to the backend."""
    job = JobExecutionDTO.model_validate(job_execution)
    if canceled_before_start():
        return Cancelled(message="canceled through the worker API before the flow started")
    with pool_process():  # a no-op unless a pool worker started this run
        settings = get_settings()
        record, _ = get_registry().claim(job.id, job.job.name, job.pipeline_execution_id)
        record.flow_run_id = record.flow_run_id or runtime_flow_run.id
        reporter = JobReporter(job, record, get_outbox(), get_inflight(), settings)
        with PrefectCancelWatcher(runtime_flow_run.id, lambda: [record]):
            return _run_job(job, record, reporter)


def _run_job(job: JobExecutionDTO, record: JobRecord, reporter: JobReporter) -> Any:
    settings, backend = get_settings(), get_backend()
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
        # No tags on the task run: Prefect asks the server for tag concurrency slots before a tagged task
        # runs, and on a busy SQLite server that costs ~2 s (bench/pipeline.py). The flow run has the tags.
        state = job_task(run, settings)(run, return_state=True)
    if not reporter.final_sent:  # a hook that crashed must not leave the backend waiting
        reporter.final(ExecutionStatus.FAILED, message=f"task ended {state.name} without a report")
    if record.status is ExecutionStatus.CANCELED:
        return Cancelled(message="job canceled")
    return state
