"""The Prefect task that runs one job's container, with its retry rule and reporting hooks.

Used by both the execute-job flow and the execute-pipeline flow.

Retries: infrastructure failures are retried up to ``WORKER_MAX_RETRIES`` times (or the job's own
``retries``); a script's own failure (non-zero exit, timeout) only when the job sets ``retries``.
Reporting: the task body reports ``RUNNING`` on every attempt and the final status with the log as soon
as the outcome is known; no state hooks, so nothing waits on Prefect's state writes.
"""

from __future__ import annotations

import functools
import posixpath
import threading
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import Completed, State

from core import metrics
from core.errors import ArtifactsLost, InfrastructureError, JobFailure, JobTimedOut, ScriptFailed, is_retryable
from core.models import ExecutionStatus, JobExecutionDTO
from core.settings import Settings
from executors.artifacts import discard
from executors.base import JobResult, JobSpec
from executors.job_cache import cache_spec
from executors.job_services import service_specs
from flows.artifact_upload import publish_artifact_table, upload_artifacts
from flows.global_limit import container_slot
from flows.job_log import JobLog
from flows.pool_run import pool_labels
from flows.predefined_env import with_predefined
from flows.recovery import LABEL_FLOW_RUN
from flows.reporting import JobReporter
from flows.reuse import ReuseEntry, cache_options, settle
from flows.services import current


class JobRun:
    """One job execution in flight: its spec, log, reporter and cancel switch.

    A plain class, not a dataclass: Prefect walks dataclass task parameters looking for futures.
    """

    def __init__(self, job: JobExecutionDTO, spec: JobSpec, reporter: JobReporter,
                 cancel: threading.Event, retries: int, script_retries: bool,
                 artifact_wait_seconds: float = 60.0) -> None:
        self.job = job
        self.spec = spec
        self.reporter = reporter
        self.log: JobLog = reporter.log
        self.cancel = cancel
        self.retries = retries
        self.script_retries = script_retries
        self.artifact_wait_seconds = artifact_wait_seconds  # how long the task waits for its uploads
        self.result: JobResult | None = None
        self.reuse: ReuseEntry | None = None  # its reuse key, when it has one (flows.reuse)


def job_spec(job: JobExecutionDTO, settings: Settings, workspace_volume: str | None = None) -> JobSpec:
    """The container spec of a job execution under the worker's settings."""
    working_dir = job.job.working_dir or settings.default_working_dir
    if not working_dir.startswith("/"):
        working_dir = posixpath.join(settings.default_working_dir, working_dir)
    return JobSpec(
        job_execution_id=str(job.id), name=job.job.name, image=job.job.docker_image,
        script=(*job.job.before_script, *job.job.script), after_script=tuple(job.job.after_script),
        env=with_predefined(job, settings.default_working_dir), working_dir=posixpath.normpath(working_dir),
        timeout_seconds=float(job.job.timeout_seconds or settings.job_timeout_seconds),
        pull_policy=settings.pull_policy, network=settings.docker_network,
        labels={"cicd.pipeline-execution-id": str(job.pipeline_execution_id or "")},
        workspace_volume=workspace_volume, workspace_mount=settings.default_working_dir,
        artifacts=tuple(job.job.artifacts), artifacts_when=job.job.artifacts_when or settings.artifacts_when,
        max_artifact_bytes=settings.max_artifact_bytes, max_job_artifact_bytes=settings.max_job_artifact_bytes,
        artifact_collect_timeout_seconds=settings.artifact_collect_timeout_seconds,
        pids_limit=settings.container_pids_limit, memory_limit=settings.container_memory_limit,
        privileged=settings.privileged, cap_drop=tuple(settings.cap_drop), cap_add=tuple(settings.cap_add),
        cpus=settings.container_cpus, read_only_rootfs=settings.read_only_rootfs,
        services=service_specs(job.job.services),
        cache=cache_spec(job.job.cache, settings.cache_path, settings.cache_max_bytes,
                         settings.artifact_collect_timeout_seconds),
    )


def new_job_run(job: JobExecutionDTO, reporter: JobReporter, settings: Settings,
                workspace_volume: str | None = None) -> JobRun:
    explicit = job.job.retries
    spec = job_spec(job, settings, workspace_volume)
    spec.labels[LABEL_FLOW_RUN] = str(reporter.record.flow_run_id or "")
    spec.labels.update(pool_labels())
    return JobRun(job, spec, reporter, reporter.record.cancel,
                  retries=settings.max_retries if explicit is None else explicit,
                  script_retries=bool(explicit), artifact_wait_seconds=settings.artifact_wait_seconds)


@task(name="run-container", cache_policy=NO_CACHE, persist_result=False)
def run_container(run: JobRun) -> Any:
    """Run the job's container once; raise on failure so that Prefect's retry rule applies."""
    context = TaskRunContext.get()
    attempt = context.task_run.run_count if context else 1
    summary = one_attempt(run, attempt, get_run_logger(), publish_artifact_table)
    return _final_state(settle(run.reuse, run.job, run.reporter.record.flow_run_id, summary))


Publish = Callable[[str, str, list[dict[str, object]]], None]


def one_attempt(run: JobRun, attempt: int, logger: Any, publish: Publish) -> dict[str, Any]:
    """One attempt at the job, reported: the task's body, and the direct path's (:func:`run_attempts`).

    The statuses are reported from here, not from state hooks: ``RUNNING`` as the attempt starts and the
    final status the moment the attempt's outcome is known (a failure that will not be retried included),
    so the backend never waits for Prefect's state writes. ``logger`` gets the job's lines (Prefect's run
    log; None for none), ``publish`` the table of uploaded artifacts.
    """
    if attempt > 1:
        run.log.note(f"attempt {attempt} of {run.retries + 1}")
    run.reporter.running(attempt)
    try:
        summary = _attempt(run, logger, publish)
    except Exception as exc:
        if will_retry(run, exc, attempt):
            run.log.note(f"attempt {attempt} failed; retrying")
            metrics.RETRIES.labels("script" if isinstance(exc, JobFailure) else "infrastructure").inc()
        else:
            exit_code = run.result.exit_code if run.result else None
            run.reporter.final(ExecutionStatus.FAILED, exit_code=exit_code,
                               message=f"Task run encountered an exception {type(exc).__name__}: {exc}")
        raise
    if summary.get("canceled"):
        run.reporter.final(ExecutionStatus.CANCELED, exit_code=summary["exitCode"], message="canceled")
    else:
        run.reporter.final(ExecutionStatus.SUCCESS, exit_code=summary["exitCode"])
    return summary


def run_attempts(run: JobRun, retry_delay_seconds: float, on_retry: Callable[[int], None],
                 logger: Callable[[], Any], publish: Publish) -> None:
    """Every attempt of the job without Prefect's task engine (the direct path): the same body and retry
    rule as the task, the wait between attempts cut short by a cancel. The last failure is reported, not
    raised."""
    for attempt in range(1, run.retries + 2):
        if attempt > 1:
            on_retry(attempt)
        try:
            one_attempt(run, attempt, logger(), publish)
            return
        except Exception as exc:
            if not will_retry(run, exc, attempt):
                return
        run.cancel.wait(retry_delay_seconds)


def _attempt(run: JobRun, logger: Any, publish: Publish) -> dict[str, Any]:
    """One container run, its artifacts delivered, judged."""
    run.result = None
    run.log.forward_to(logger)
    metrics.RUNNING_CONTAINERS.inc()
    try:
        with container_slot(run.cancel, run.log.note):  # across pool workers; a no-op in-process
            result = current().executor.run(run.spec, run.log, run.cancel)
    except InfrastructureError as exc:
        run.log.note(f"infrastructure failure: {exc}")
        raise
    finally:
        metrics.RUNNING_CONTAINERS.dec()
        run.log.forward_to(None)
    run.result = result
    if run.reuse is not None and result.succeeded:
        run.reuse.keep_artifacts(result.artifacts)  # before the upload moves them into the outbox
    try:
        rows = upload_artifacts(run.reporter.outbox, str(run.job.id), result.artifacts, run.log,
                                wait_seconds=run.artifact_wait_seconds)
    except ArtifactsLost as exc:
        run.log.note(f"job failed: {exc}")
        raise
    finally:
        discard(result.artifacts)
    publish(str(run.job.id), run.job.job.name, rows)
    return _judge(run, result)


def _judge(run: JobRun, result: JobResult) -> dict[str, Any]:
    """Turn a finished container into a return value or a job failure."""
    summary = {"exitCode": result.exit_code, "durationSeconds": round(result.duration_seconds, 3)}
    if result.canceled:
        run.log.note("canceled")
        return {**summary, "canceled": True}
    failure: JobFailure | None = None
    if result.timed_out:
        failure = JobTimedOut(run.spec.timeout_seconds)
    elif result.exit_code != 0:
        failure = ScriptFailed(result.exit_code if result.exit_code is not None else -1)
    if failure is None:
        run.log.note("job succeeded")
        return summary
    run.log.note(f"job failed: {failure}")
    if run.job.allows_failure:
        run.log.note("failure allowed (allowFailure): reported as SUCCESS")
        reason = f"exit {failure.exit_code}" if isinstance(failure, ScriptFailed) else str(failure)
        return {**summary, "allowedFailure": reason}
    raise failure


def _final_state(summary: dict[str, Any]) -> Any:
    """What the task returns: its summary, or for an allowed failure a Completed state named
    ``AllowedFailure`` with the message ``allowed to fail: exit N``, so the Prefect UI does not show it as a
    plain success (no tag: a tagged task run costs concurrency-slot calls to the server)."""
    reason = summary.get("allowedFailure")
    if not reason:
        return summary
    return Completed(name="AllowedFailure", message=f"allowed to fail: {reason}", data=summary)


def will_retry(run: JobRun, exc: BaseException, attempt: int) -> bool:
    """Whether a failed attempt is tried again: attempts left and the retry rule says so."""
    return attempt <= run.retries and _retryable(run, exc)


def _retryable(run: JobRun, exc: BaseException) -> bool:
    """The retry rule: infrastructure failures by kind, the script's own failures only when the job sets
    ``retries``, lost artifacts never."""
    if isinstance(exc, ArtifactsLost):
        return False
    if isinstance(exc, JobFailure):
        return run.script_retries
    return isinstance(exc, Exception) and is_retryable(exc)


def _should_retry(run: JobRun, task: Any, task_run: Any, state: State) -> bool:
    """Prefect's ``retry_condition_fn``: the same rule the task body applied when it chose not to report."""
    try:
        state.result()
    except Exception as exc:
        return _retryable(run, exc)
    return False


def job_task(run: JobRun, settings: Settings, tags: list[str] | None = None) -> Any:
    """``run_container`` configured for this job: name, retries and the retry rule (no state hooks: the body
    reports, and Prefect would log two lines per hook per job)."""
    return run_container.with_options(
        task_run_name=run.job.job.name,
        retries=run.retries,
        retry_delay_seconds=settings.retry_delay_seconds,
        retry_condition_fn=functools.partial(_should_retry, run),
        tags=tags,
        **cache_options(run.reuse),  # Prefect's cache on the job's reuse key, when it has one
    )
