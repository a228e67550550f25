"""The execute-pipeline flow: every job of a pipeline run as one flow run, in dependency order.

The pure :class:`flows.planning.Scheduler` decides what may start; this flow submits each ready job's
task as soon as its predecessors are final, reports jobs dropped by an upstream failure as ``CANCELED``,
and ends Failed unless every job succeeded. The container limit holds for the whole process because
the executor's slots are shared by every flow.
"""

from __future__ import annotations

import concurrent.futures
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
from flows.artifact_upload import artifact_key
from flows.handoff import HandOff
from flows.job_task import JobRun, job_task, new_job_run
from flows.pipeline_plan import PipelineRun, load_pipeline
from flows.planning import Outcome, Scheduler, upstream
from flows.reporting import JobReporter
from flows.services import Services, current
from flows.workspace import pipeline_workspace_name, workspace

_OUTCOME_OF = {ExecutionStatus.SUCCESS: Outcome.SUCCESS, ExecutionStatus.CANCELED: Outcome.CANCELED}


def pipeline_run_name(pipeline_execution_id: UUID | str) -> str:
    return f"pipeline [{str(pipeline_execution_id)[:8]}]"


class PipelineDriver:
    """Walks one planned pipeline run: submit ready jobs, collect outcomes, cancel downstream."""

    def __init__(self, pipeline: PipelineRun, services: Services, workspace_volume: str | None = None) -> None:
        self.pipeline = pipeline
        self.workspace_volume = workspace_volume
        self.services = services
        self.settings = services.settings
        self.scheduler = Scheduler(pipeline.graph)
        self.runs: dict[str, JobRun] = {}
        self.reporters = {job_id: self._reporter(job_id) for job_id in pipeline.jobs}
        self.running: dict[concurrent.futures.Future[Any], str] = {}
        self.futures: dict[str, PrefectFuture[Any]] = {}

    def _reporter(self, job_id: str) -> JobReporter:
        job = self.pipeline.jobs[job_id]
        record, _ = self.services.registry.claim(job.id, job.job.name, job.pipeline_execution_id)
        record.flow_run_id = runtime_flow_run.id
        return JobReporter(job, record, self.services.outbox, self.services.inflight, self.settings,
                           self.services.line_listener)

    def run(self) -> None:
        self._drop(self.scheduler.take_notices())  # jobs skipped before anything ran (their ``when``)
        self._submit_ready()
        while self.running:
            done, _ = concurrent.futures.wait(list(self.running), return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                self._finished(self.running.pop(future))
            self._submit_ready()

    def _submit_ready(self) -> None:
        for job_id in self.scheduler.take_ready():
            reporter = self.reporters[job_id]
            if reporter.record.cancel.is_set():
                self._finished(job_id, canceled_before_start=True)
                continue
            run = new_job_run(reporter.job, reporter, self.settings, workspace_volume=self.workspace_volume)
            self.runs[job_id] = run
            # Untagged on purpose: see flows/job_flow.py (tag concurrency checks cost seconds per task start).
            future: PrefectFuture[Any] = job_task(run, self.settings).submit(run, wait_for=self._upstream(job_id))
            self.futures[job_id] = future
            self.running[future.wrapped_future] = job_id  # type: ignore[attr-defined]

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


def _execute_pipeline(pipeline_execution_id: str, start: PipelineStart) -> Any:
    services = current()
    planned = start.planned or load_pipeline(services.backend, UUID(pipeline_execution_id))
    volume_name = pipeline_workspace_name(str(planned.pipeline_execution_id))
    with workspace(volume_name, {"cicd.pipeline-execution-id": str(planned.pipeline_execution_id)}) as volume:
        if start.seed_directory is not None:
            first_image = next(iter(planned.jobs.values())).job.docker_image
            settings = services.settings
            services.executor.seed_volume(volume, start.seed_directory, first_image, settings.default_working_dir,
                                       max_bytes=settings.seed_max_bytes)
        driver = PipelineDriver(planned, services, volume)
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
