"""Pool dispatch (``WORKER_DISPATCH=pool``): accepted requests become flow runs of the deployments.

Nothing runs in this process: ``prefect worker`` processes on any number of hosts pick the runs up
(scale-out, see ``prefect.yaml`` and :mod:`worker_api.deploy`). What the API contract keeps:

* **Submission**: ``run_deployment(..., timeout=0)`` returns the Scheduled flow run, whose id is the
  answer. The idempotency key (the job or pipeline execution id) makes Prefect return the existing run
  for an execution it already has, also after an API restart or from another API replica; this process
  dedupes in memory first (200, nothing new).
* **Queue bound**: the work pool's flow runs not yet final, counted through the Prefect API, stand in for
  ``WORKER_MAX_QUEUED_JOBS`` (a pipeline counts as its jobs when it is submitted, then as one run).
* **Job view**: the flow run's state and times, read from Prefect. Exit code and attempts live in the
  flow process and are not shown (the backend gets them with the statuses).
* **Cancel**: a run that has not started is set ``Cancelled`` and its job reported ``CANCELED`` from
  here; a started one is set ``Cancelling``, the worker sends its process SIGTERM, and the flow stops the
  container and reports ``CANCELED`` itself (:mod:`flows.pool_run`).
* **Container limit**: a Prefect global concurrency limit across all workers, created or updated here
  at start-up (:mod:`flows.global_limit`); its name reaches the flow processes as a job variable.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling

from core.job_records import JobRecord, JobRegistry
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate, JobView
from flows.job_flow import job_run_name, job_tags
from flows.job_log import WORKER_PREFIX
from flows.pipeline_flow import pipeline_run_name
from flows.pipeline_plan import PipelineRun
from flows.services import Services
from worker_api.deploy import ensure_concurrency_limit
from worker_api.dispatcher import Dispatcher
from worker_api.flow_runs import SharedPrefectClient

log = logging.getLogger(__name__)

_KEEP_RECORDS = 10_000
_NOT_STARTED = (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED)
_NOT_FINAL = [*_NOT_STARTED, StateType.RUNNING, StateType.CANCELLING]
_STATUS_OF = {StateType.RUNNING: ExecutionStatus.RUNNING, StateType.CANCELLING: ExecutionStatus.RUNNING,
              StateType.COMPLETED: ExecutionStatus.SUCCESS, StateType.FAILED: ExecutionStatus.FAILED,
              StateType.CRASHED: ExecutionStatus.FAILED, StateType.CANCELLED: ExecutionStatus.CANCELED}


class PoolDispatcher(Dispatcher):
    """Submits flow runs to the work pool; idempotent per execution id. Thread-safe.

    Job records are kept in memory only (the newest ``_KEEP_RECORDS``): Prefect's idempotency key answers
    for an execution this process no longer remembers.
    """

    def __init__(self, services: Services) -> None:
        super().__init__(services, JobRegistry(), keep_pipelines=_KEEP_RECORDS)
        self._shared = SharedPrefectClient()
        self._limit_ready = False

    def prepare(self) -> None:
        """Create or update the global concurrency limit; done at start-up, retried before a submission."""
        if not self._limit_ready:
            settings = self.services.settings
            ensure_concurrency_limit(settings.concurrency_limit_name, settings.max_concurrent_jobs)
            self._limit_ready = True

    def _claim_job(self, job: JobExecutionDTO) -> tuple[JobRecord, bool]:
        # Records never become final here (the jobs run elsewhere): the oldest are forgotten whatever their status.
        self._jobs.prune(_KEEP_RECORDS - 1, finals_only=False)
        return self._jobs.claim(job.id, job.job.name, job.pipeline_execution_id)

    def _create_job_run(self, job: JobExecutionDTO, params: dict[str, Any]) -> FlowRun:
        self._check_room(1)
        # The flow process fetches the job execution (its env) from the backend.
        return self._run_deployment("execute-job", params, job_run_name(job), job_tags(job), f"cicd-job-{job.id}")

    def _create_pipeline_run(self, planned: PipelineRun, params: dict[str, Any]) -> FlowRun:
        # The flow process fetches and plans the run again (its jobs' env never goes to Prefect).
        pipeline_execution_id = planned.pipeline_execution_id
        return self._run_deployment("execute-pipeline", params, pipeline_run_name(pipeline_execution_id),
                                    ["cicd-pipeline", f"pipeline:{pipeline_execution_id}"],
                                    f"cicd-pipeline-{pipeline_execution_id}")

    def _job_accepted(self, job: JobExecutionDTO, record: JobRecord) -> None:
        """Nothing to write down: the flow process keeps the job's in-flight entry in its own slot."""

    def _launch(self, flow: Flow, flow_run: FlowRun, params: dict[str, Any], record: JobRecord | None) -> None:
        """Nothing to start: a ``prefect worker`` picks the scheduled run up."""

    def job_view(self, job_execution_id: UUID) -> JobView | None:
        """The job's flow run as Prefect sees it; None for a job not submitted through this process."""
        record = self._jobs.get(job_execution_id)
        if record is None or record.flow_run_id is None:
            return None
        flow_run = self._api().read_flow_run(record.flow_run_id)
        state = flow_run.state
        return JobView(job_execution_id=record.job_execution_id, name=record.name,
                       status=_STATUS_OF.get(state.type, ExecutionStatus.PENDING) if state else ExecutionStatus.PENDING,
                       flow_run_id=record.flow_run_id, pipeline_execution_id=record.pipeline_execution_id,
                       accepted_at=record.accepted_at, start_time=flow_run.start_time,
                       completion_time=flow_run.end_time, message=state.message if state else None)

    def cancel_job(self, job_execution_id: UUID) -> JobView | None:
        """Cancel the job's flow run (see the module docstring); None for an unknown job."""
        record = self._jobs.get(job_execution_id)
        if record is None or record.flow_run_id is None:
            return None
        api, flow_run_id = self._api(), record.flow_run_id
        state = api.read_flow_run(flow_run_id).state
        if state is None or not state.is_final():
            not_started = state is None or state.type in _NOT_STARTED
            if not (not_started and self._cancel_before_start(record)):
                api.set_flow_run_state(flow_run_id, Cancelling(message="canceled through the worker API"))
        return self.job_view(job_execution_id)

    def _cancel_before_start(self, record: JobRecord) -> bool:
        """Set the run Cancelled; when its flow never ran, report ``CANCELED`` from here. False if refused."""
        assert record.flow_run_id is not None
        api = self._api()
        result: Any = api.set_flow_run_state(record.flow_run_id, Cancelled(message="canceled before it started"))
        if result.status != SetStateStatus.ACCEPT:
            return False
        # Cancelled is final, so a flow process starting now is refused Running. If it got Running first,
        # its cancel watcher sees Cancelled and reports the job itself.
        if not any(state.type == StateType.RUNNING for state in api.read_flow_run_states(record.flow_run_id)):
            self.services.outbox.put_status(JobStatusUpdate(
                job_execution_id=record.job_execution_id, status=ExecutionStatus.CANCELED,
                logs=f"{WORKER_PREFIX} canceled before it started\n"))
        return True

    def shutdown(self, wait: bool = False) -> None:
        self._shared.close()

    def _run_deployment(self, flow_name: str, params: dict[str, Any], name: str, tags: list[str],
                        key: str) -> FlowRun:
        self.prepare()
        settings = self.services.settings
        flow_run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync here: no event loop in this thread
            f"{flow_name}/{settings.deployment_name}", parameters=params, flow_run_name=name, tags=tags,
            idempotency_key=key, timeout=0, as_subflow=False,
            job_variables={"env": {"WORKER_CONCURRENCY_LIMIT_NAME": settings.concurrency_limit_name}})
        return flow_run

    def _check_room(self, jobs: int) -> None:
        settings = self.services.settings
        unfinished = self._api().count_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[settings.work_pool])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_NOT_FINAL))))
        self._room(jobs)(unfinished)

    def _api(self) -> SyncPrefectClient:
        return self._shared.get()
