"""The execute-pipeline flow: every job of a pipeline run as one flow run, in dependency order.

The pure :class:`flows.planning.Scheduler` decides what may start; this flow submits each ready job's
task as soon as its predecessors are final, reports jobs dropped by an upstream failure as ``CANCELED``,
and ends Failed unless every job succeeded. The container limit holds for the whole process because
the executor's slots are shared by every flow.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import allow_failure, flow
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Completed, Failed

from core.models import ExecutionStatus
from executors.volume_files import HashLimits
from flows.artifact_upload import artifact_key
from flows.handoff import HandOff
from flows.job_task import JobRun, job_task, new_job_run
from flows.pipeline_plan import PipelineRun, load_pipeline
from flows.planning import Outcome, Scheduler, upstream
from flows.reporting import JobReporter
from flows.reuse import (
    PipelineReuse,
    ReuseEntry,
    ReuseStore,
    answered_from_cache,
    cached_record,
    restore,
    restore_workspace,
    workspace_prefix,
)
from flows.reuse_keys import InputFiles, VolumeFiles
from flows.services import Services, current
from flows.workspace import pipeline_workspace_name, workspace

_RESTORE_THREADS = 4  # reused jobs reported at once (each waits for the upload of its artifacts)
_OUTCOME_OF = {ExecutionStatus.SUCCESS: Outcome.SUCCESS, ExecutionStatus.CANCELED: Outcome.CANCELED}


def pipeline_run_name(pipeline_execution_id: UUID | str) -> str:
    return f"pipeline [{str(pipeline_execution_id)[:8]}]"


class PipelineDriver:
    """Walks one planned pipeline run: submit ready jobs, collect outcomes, cancel downstream."""

    def __init__(self, pipeline: PipelineRun, services: Services, workspace_volume: str | None = None,
                 reuse: PipelineReuse | None = None) -> None:
        self.pipeline = pipeline
        self.workspace_volume = workspace_volume
        self.services = services
        self.settings = services.settings
        self.reuse = reuse or PipelineReuse(ReuseStore(self.settings.state_dir), None, services.executor.image_id)
        self.scheduler = Scheduler(pipeline.graph)
        self.runs: dict[str, JobRun] = {}
        self.reporters = {job_id: self._reporter(job_id) for job_id in pipeline.jobs}
        self.running: dict[concurrent.futures.Future[Any], str] = {}
        self.futures: dict[str, PrefectFuture[Any]] = {}
        self.restoring: dict[str, dict[str, Any]] = {}  # reused jobs being reported, their stored records
        self.workspace_steps: list[Callable[[], object]] = []
        """Copies into the workspace not made yet (the project's seed, reused jobs' outputs), in order: made before
        the first job that runs, so a run where every job is reused copies nothing."""
        self.workspace_problem: str | None = None

    def _reporter(self, job_id: str) -> JobReporter:
        job = self.pipeline.jobs[job_id]
        record, _ = self.services.registry.claim(job.id, job.job.name, job.pipeline_execution_id)
        record.flow_run_id = runtime_flow_run.id
        return JobReporter(job, record, self.services.outbox, self.services.inflight, self.settings,
                           self.services.line_listener)

    def run(self) -> None:
        self._drop(self.scheduler.take_notices())  # jobs skipped before anything ran (their ``when``)
        self._submit_ready()
        with concurrent.futures.ThreadPoolExecutor(_RESTORE_THREADS, thread_name_prefix="reuse") as restorer:
            while self.running:
                done, _ = concurrent.futures.wait(list(self.running), return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    self._task_done(self.running.pop(future), restorer)
                self._submit_ready()

    def _task_done(self, job_id: str, restorer: concurrent.futures.ThreadPoolExecutor) -> None:
        """A job's task (or its restore) ended: a reused job is reported and its artifacts uploaded again first,
        side by side with the others, its outputs queued for the workspace; any other job is finished."""
        entry = self.runs[job_id].reuse if job_id in self.runs else None
        if job_id in self.restoring and entry is not None:
            self.restoring.pop(job_id)
            if self.workspace_volume is not None:
                self.workspace_steps.append(functools.partial(
                    restore_workspace, entry, self.pipeline.jobs[job_id].job.docker_image, self.services.executor,
                    self.workspace_volume, self.settings))
            self._finished(job_id)
            return
        record = self._cached(job_id)
        if record is None or entry is None:
            self._finished(job_id)
            return
        self.restoring[job_id] = record  # Prefect answered from its cache: nothing ran
        self.running[restorer.submit(restore, self.reporters[job_id], entry, record, self.settings)] = job_id

    def _prepare_workspace(self) -> str | None:
        """Make the pending workspace copies, in order; why they failed (then for good), or None."""
        while self.workspace_steps and self.workspace_problem is None:
            step = self.workspace_steps.pop(0)
            try:
                step()
            except Exception as exc:  # any failure fails the jobs that need it, reported, rather than the flow
                self.workspace_problem = f"{type(exc).__name__}: {exc}"
        return self.workspace_problem

    def _submit_ready(self) -> None:
        for job_id in self.scheduler.take_ready():
            reporter = self.reporters[job_id]
            if reporter.record.cancel.is_set():
                self._finished(job_id, canceled_before_start=True)
                continue
            run = new_job_run(reporter.job, reporter, self.settings, workspace_volume=self.workspace_volume)
            run.reuse = self._reuse_entry(job_id, run)
            self.runs[job_id] = run
            if not answered_from_cache(run.reuse) and (problem := self._prepare_workspace()):
                reporter.log.note(f"job failed: the workspace could not be prepared: {problem}")
                reporter.final(ExecutionStatus.FAILED, message=f"workspace: {problem}")
                self._finished(job_id)
                continue
            # Untagged on purpose: see flows/job_flow.py (tag concurrency checks cost seconds per task start).
            future: PrefectFuture[Any] = job_task(run, self.settings).submit(run, wait_for=self._upstream(job_id))
            self.futures[job_id] = future
            self.running[future.wrapped_future] = job_id  # type: ignore[attr-defined]

    def _reuse_entry(self, job_id: str, run: JobRun) -> ReuseEntry | None:
        """The job's reuse key (:mod:`flows.reuse`), from the keys of the jobs it waits for. Inputs read from
        the workspace volume are read once the pending copies into it (reused jobs' outputs) are made."""
        if self.reuse.from_volume and run.job.job.inputs and self._prepare_workspace():
            self.reuse.skip(job_id)  # the workspace is broken: the job fails below, without a key
            return None
        needs = {self.pipeline.jobs[dep].job.name: dep for dep in upstream(self.pipeline.graph, job_id)}
        prefix = workspace_prefix(run.spec.working_dir, run.spec.workspace_mount, self.workspace_volume)
        return self.reuse.entry(job_id, run.job, needs, prefix)

    def _upstream(self, job_id: str) -> list[Any]:
        """The task runs of the jobs this one waits for, as Prefect's ``wait_for``: recorded as the task run's
        inputs, they are the edges of the flow run's graph in the Prefect UI.

        They have all finished (the scheduler hands a job out only then), so Prefect does not wait on them;
        ``allow_failure`` keeps Prefect from ever refusing to run a job the scheduler released (whether a job
        runs is the scheduler's decision alone).
        """
        return [allow_failure(self.futures[dep]) for dep in upstream(self.pipeline.graph, job_id)
                if dep in self.futures]

    def _finished(self, job_id: str, canceled_before_start: bool = False) -> None:
        reporter = self.reporters[job_id]
        if canceled_before_start:
            reporter.log.note("canceled before it started")
            reporter.final(ExecutionStatus.CANCELED, message="canceled")
        elif not reporter.final_sent:  # a hook that crashed must not leave the backend waiting
            reporter.final(ExecutionStatus.FAILED, message="task ended without a report")
        outcome = _OUTCOME_OF.get(reporter.record.status, Outcome.FAILED)
        self._drop(self.scheduler.finish(job_id, outcome))

    def _cached(self, job_id: str) -> dict[str, Any] | None:
        """What a reused job's task answered from the cache, or None when its task ran."""
        future = self.futures.get(job_id)
        if future is None or self.reporters[job_id].final_sent:
            return None
        try:
            state = future.wrapped_future.result()  # type: ignore[attr-defined]  # the final state: no API call
        except Exception:  # the task's thread itself broke: reported FAILED by the caller
            return None
        return cached_record(state)

    def _drop(self, notices: list[tuple[str, str]]) -> None:
        """Report jobs canceled by a failure upstream or skipped by their ``when`` (CANCELED, with the reason)."""
        for dropped, reason in notices:
            dropped_reporter = self.reporters[dropped]
            dropped_reporter.log.note(reason)
            dropped_reporter.final(ExecutionStatus.CANCELED, message=reason)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for job_id, reporter in self.reporters.items():
            record = reporter.record
            duration = (record.completion_time - record.start_time).total_seconds() \
                if record.start_time and record.completion_time else None
            rows.append({"job": record.name, "status": record.status.value, "attempts": record.attempts,
                         "exit code": record.exit_code, "duration s": round(duration, 2) if duration else None,
                         "job execution id": job_id})
        return rows


@dataclass
class PipelineStart:
    """What the process starting a pipeline's flow run hands over (see :mod:`flows.handoff`)."""

    planned: PipelineRun | None = None  # already fetched and planned: not fetched again
    seed_directory: Path | None = None  # files the workspace starts with (local runs: the pipeline's directory)
    reuse: bool = True  # False: every job runs and overwrites its stored result (``--no-cache``)


_handed_over: HandOff[PipelineStart] = HandOff()


def hand_over_pipeline(pipeline_execution_id: UUID | str, start: PipelineStart) -> None:
    """Give the flow run of this pipeline run, in this process, what it needs before the run is created:
    the planned jobs hold every job's env and the seed is a host path, neither may be a flow-run parameter."""
    _handed_over.put(pipeline_execution_id, start)


def drop_handed_over_pipeline(pipeline_execution_id: UUID | str) -> None:
    """Forget what was handed over for a flow run that will not run (creating it failed)."""
    _handed_over.take(pipeline_execution_id)


# Named by callers when they create the run, like execute-job (see there).
@flow(name="execute-pipeline", persist_result=False, validate_parameters=False)
def execute_pipeline(pipeline_execution_id: str) -> Any:
    """Run every job of a pipeline run.

    Only the id is a parameter: the planned run is the one handed over in this process, else it is fetched
    from the backend and planned; the workspace is seeded only when this process handed over a directory.
    """
    start = _handed_over.take(pipeline_execution_id) or PipelineStart()
    return _execute_pipeline(pipeline_execution_id, start)


def _pipeline_reuse(start: PipelineStart, services: Services, volume: str) -> PipelineReuse:
    """Reuse keys for this run: a job's ``inputs`` are hashed in the seed folder when the run has one
    (``cicd-worker run``), else (a backend's pipeline run) in the workspace volume as the job is ready."""
    settings, executor, store = services.settings, services.executor, ReuseStore(services.settings.state_dir)
    if start.seed_directory is not None:
        files = InputFiles(start.seed_directory, settings.seed_max_bytes)
        return PipelineReuse(store, lambda image: files, executor.image_id, enabled=start.reuse)
    limits = HashLimits(settings.seed_max_bytes, settings.artifact_collect_timeout_seconds)
    mount = settings.default_working_dir
    return PipelineReuse(store, lambda image: VolumeFiles(executor, volume, image, mount, limits), executor.image_id,
                         enabled=start.reuse, from_volume=True)


def _execute_pipeline(pipeline_execution_id: str, start: PipelineStart) -> Any:
    services = current()
    planned = start.planned or load_pipeline(services.backend, UUID(pipeline_execution_id))
    volume_name = pipeline_workspace_name(str(planned.pipeline_execution_id))
    with workspace(volume_name, {"cicd.pipeline-execution-id": str(planned.pipeline_execution_id)}) as volume:
        driver = PipelineDriver(planned, services, volume, _pipeline_reuse(start, services, volume))
        if start.seed_directory is not None:  # copied before the first job that runs (none when all are reused)
            first_image = next(iter(planned.jobs.values())).job.docker_image
            settings = services.settings
            driver.workspace_steps.append(functools.partial(
                services.executor.seed_volume, volume, start.seed_directory, first_image,
                settings.default_working_dir, max_bytes=settings.seed_max_bytes))
        records = [reporter.record for reporter in driver.reporters.values()]
        with services.cancel_watch.watching(runtime_flow_run.id, lambda: records) as watcher:
            driver.run()
    rows = driver.summary()
    create_table_artifact(table=rows, key=artifact_key(f"pipeline-{pipeline_execution_id[:8]}", "jobs"),
                          description=f"Jobs of pipeline run {pipeline_execution_id}")
    if watcher.requested.is_set():
        return Cancelled(message="pipeline canceled from Prefect")
    skipped = {job_id for job_id, outcome in driver.scheduler.outcomes.items() if outcome is Outcome.SKIPPED}
    failed = [row["job"] for row in rows
              if row["status"] != ExecutionStatus.SUCCESS.value and row["job execution id"] not in skipped]
    if failed:
        return Failed(message=f"pipeline did not succeed: {', '.join(failed)} did not succeed")
    return Completed(message=f"all {len(rows)} jobs succeeded")
