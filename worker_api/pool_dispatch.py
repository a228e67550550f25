"""Pool dispatch (``WORKER_DISPATCH=pool``): accepted requests become flow runs that pool workers run.

Nothing runs in this process: ``cicd-worker pool-worker`` processes on any number of hosts take the runs
(scale-out, see :mod:`flows.pool_tasks`). What the API contract keeps:

* **Submission**: the flow run is created ``Scheduled`` here (its id is the answer), then a deferred task run
  of the pool's task is created next to it; a pool worker gets it over its websocket within a fraction of a
  second. The idempotency key (the job or pipeline execution id) makes Prefect return the existing flow run
  for an execution it already has, also after an API restart or from another API replica, and the task run
  is then not queued again; this process dedupes in memory first (200, nothing new).
* **Queue bound**: the pool's flow runs not yet final (tag ``pool:<WORKER_WORK_POOL>``), counted through the
  Prefect API, stand in for ``WORKER_MAX_QUEUED_JOBS`` (a pipeline counts as its jobs when it is submitted,
  then as one run).
* **Job view**: the flow run's state and times, read from Prefect. Exit code and attempts live in the
  pool worker and are not shown (the backend gets them with the statuses).
* **Cancel**: a run that has not started is set ``Cancelled`` and its job reported ``CANCELED`` from
  here; a started one is set ``Cancelling``, which the pool worker's cancel watcher sees: it stops the
  container and reports ``CANCELED`` itself.
* **Container limit**: a Prefect global concurrency limit across all workers, created or updated here
  at start-up (:mod:`flows.global_limit`); every pool worker must use the same
  ``WORKER_CONCURRENCY_LIMIT_NAME``.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import FlowCreate, FlowRunCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Cancelled, Cancelling, Scheduled, to_state_create

from core.job_records import JobRecord, JobRegistry
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate, JobView
from flows.job_flow import execute_job, job_run_name, job_tags
from flows.job_log import WORKER_PREFIX
from flows.pipeline_flow import execute_pipeline, pipeline_run_name
from flows.pipeline_plan import PipelineRun
from flows.pool_tasks import Kind, submit
from flows.prefect_writes import SharedPrefectClient
from flows.services import Services
from worker_api.deploy import ensure_concurrency_limit
from worker_api.dispatcher import Dispatcher

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
        self._flow_ids: dict[str, UUID] = {}

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
        return self._create_run(execute_job, "job", params, job_run_name(job), job_tags(job), f"cicd-job-{job.id}")

    def _create_pipeline_run(self, planned: PipelineRun, params: dict[str, Any]) -> FlowRun:
        # The flow process fetches and plans the run again (its jobs' env never goes to Prefect).
        pipeline_execution_id = planned.pipeline_execution_id
        return self._create_run(execute_pipeline, "pipeline", params, pipeline_run_name(pipeline_execution_id),
                                ["cicd-pipeline", f"pipeline:{pipeline_execution_id}"],
                                f"cicd-pipeline-{pipeline_execution_id}")

    def _job_accepted(self, job: JobExecutionDTO, record: JobRecord) -> None:
        """Nothing to write down: the flow process keeps the job's in-flight entry in its own slot."""

    def _launch(self, flow: Flow, flow_run: FlowRun, params: dict[str, Any], record: JobRecord | None) -> None:
        """Nothing to start: a pool worker takes the queued task run."""

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

    @property
    def _pool_tag(self) -> str:
        return f"pool:{self.services.settings.work_pool}"

    def _create_run(self, flow: Flow, kind: Kind, params: dict[str, Any], name: str, tags: list[str],
                    key: str) -> FlowRun:
        """The flow run (Scheduled; the existing one for a known ``key``), queued for the pool's workers."""
        self.prepare()
        api = self._api()
        create = FlowRunCreate(flow_id=self._flow_id(flow), flow_version=flow.version, name=name, parameters=params,
                               context={}, tags=[*tags, self._pool_tag], idempotency_key=key,
                               state=to_state_create(Scheduled()))
        answer = api.request("POST", "/flow_runs/", json=create.model_dump(mode="json"))
        flow_run = FlowRun.model_validate(answer.json())
        submit(api, flow_run, kind, self.services.settings.work_pool)
        return flow_run

    def _flow_id(self, flow: Flow) -> UUID:
        flow_id = self._flow_ids.get(flow.name)
        if flow_id is None:
            answer = self._api().request("POST", "/flows/", json=FlowCreate(name=flow.name).model_dump(mode="json"))
            flow_id = self._flow_ids[flow.name] = UUID(answer.json()["id"])
        return flow_id

    def _check_room(self, jobs: int) -> None:
        unfinished = self._api().count_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[self._pool_tag]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_NOT_FINAL))))
        self._room(jobs)(unfinished)

    def _api(self) -> SyncPrefectClient:
        return self._shared.get()
