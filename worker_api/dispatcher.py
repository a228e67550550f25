"""The submit steps both dispatchers share: claim the execution id, wait if it is known, start a flow run,
forget the claim when starting failed.

How a flow run is started is the one thing local and pool dispatch do differently, so each is a subclass
that fills in the small steps below: :class:`worker_api.dispatch.FlowDispatcher` (the run is created Pending
and run in this process) and :class:`worker_api.pool_dispatch.PoolDispatcher` (a deployment run that a
``prefect worker`` picks up). Both answer the same way: the record and whether a new flow run was started
(202), or the known record once its dispatch is done (200, same ids).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

from prefect import Flow
from prefect.client.schemas.objects import FlowRun

from core.job_records import JobRecord, JobRegistry
from core.models import JobExecutionDTO, JobView
from flows.job_flow import execute_job
from flows.pipeline_flow import execute_pipeline
from flows.pipeline_plan import PipelineRun, load_pipeline
from flows.services import Services
from worker_api.limits import QueueFull

# How long a re-sent request waits for the first one's dispatch (its flow run id) before answering.
DISPATCH_WAIT_SECONDS = 30.0


@dataclass
class PipelineRecord:
    """A pipeline run this process accepted."""

    pipeline_execution_id: UUID
    flow_run_id: UUID | None = None
    dispatched: threading.Event = field(default_factory=threading.Event)


def room_for(jobs: int, limit: int) -> Callable[[int], None]:
    """A check that refuses (QueueFull) when ``jobs`` more would pass ``limit`` (``WORKER_MAX_QUEUED_JOBS``)."""

    def check(unfinished: int) -> None:
        if unfinished + jobs > limit:
            raise QueueFull(f"{unfinished} jobs accepted and unfinished, {jobs} more asked; the limit is {limit}")

    return check


R = TypeVar("R")


class Claims(Generic[R]):
    """Records by execution id, each created once (the first request wins); thread-safe.

    ``keep`` bounds how many are remembered: the oldest are forgotten first.
    """

    def __init__(self, keep: int | None = None) -> None:
        self._records: dict[UUID, R] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def claim(self, key: UUID, make: Callable[[], R]) -> tuple[R, bool]:
        """The record for ``key`` and whether this call created it."""
        with self._lock:
            known = self._records.get(key)
            if known is not None:
                return known, False
            while self._keep is not None and len(self._records) >= self._keep:
                del self._records[next(iter(self._records))]  # oldest first: dicts keep insertion order
            record = self._records[key] = make()
            return record, True

    def forget(self, key: UUID) -> None:
        with self._lock:
            self._records.pop(key, None)


class Dispatcher(ABC):
    """Turns accepted jobs and pipeline runs into flow runs; idempotent per execution id. Thread-safe.

    The submit steps are here; subclasses say how a claim is made, how much room is left, and how a flow
    run is created and started.
    """

    def __init__(self, services: Services, jobs: JobRegistry, keep_pipelines: int | None = None) -> None:
        self.services = services
        self._jobs = jobs
        self._pipelines: Claims[PipelineRecord] = Claims(keep_pipelines)

    def submit_job(self, job: JobExecutionDTO) -> tuple[JobRecord, bool]:
        """Start the job's flow run unless this job execution is already known.

        Returns the record and whether a new flow run was started.
        """
        record, created = self._claim_job(job)
        if not created:
            record.dispatched.wait(DISPATCH_WAIT_SECONDS)
            return record, False
        self._start_job(job, record)
        return record, True

    def _start_job(self, job: JobExecutionDTO, record: JobRecord) -> None:
        """Create the job's flow run, then start it; the claim is forgotten when creating fails."""
        # Ids only as parameters (the Prefect API shows them): the job's env never goes to Prefect.
        params = {"job_execution_id": str(job.id)}
        try:
            flow_run = self._create_job_run(job, params)
        except Exception:
            self._forget_job(job.id)
            raise
        record.flow_run_id = flow_run.id
        self._job_accepted(job, record)
        record.dispatched.set()
        self._launch(execute_job, flow_run, params, record)

    def submit_pipeline(self, pipeline_execution_id: UUID) -> tuple[PipelineRecord, bool]:
        """Fetch and plan (raising ``PlanningError`` for an invalid run), then start its flow run.

        A pipeline run already accepted by this process starts nothing new.
        """
        record, created = self._pipelines.claim(pipeline_execution_id, lambda: PipelineRecord(pipeline_execution_id))
        if not created:
            record.dispatched.wait(DISPATCH_WAIT_SECONDS)
            return record, False
        # Ids only as parameters, as for jobs: the planned jobs (env included) stay out of Prefect.
        params = {"pipeline_execution_id": str(pipeline_execution_id)}
        try:
            planned = load_pipeline(self.services.backend, pipeline_execution_id)
            self._check_room(len(planned.jobs))
            flow_run = self._create_pipeline_run(planned, params)
        except Exception:
            self._forget_pipeline(pipeline_execution_id)
            raise
        record.flow_run_id = flow_run.id
        record.dispatched.set()
        self._launch(execute_pipeline, flow_run, params, None)
        return record, True

    def _room(self, jobs: int) -> Callable[[int], None]:
        return room_for(jobs, self.services.settings.max_queued_jobs)

    # -- the steps a dispatcher fills in ----------------------------------------------------------

    @abstractmethod
    def _claim_job(self, job: JobExecutionDTO) -> tuple[JobRecord, bool]:
        """The job's record and whether this call created it (may refuse with QueueFull)."""

    @abstractmethod
    def _check_room(self, jobs: int) -> None:
        """Raise QueueFull when ``jobs`` more would pass ``WORKER_MAX_QUEUED_JOBS``."""

    def _create_job_run(self, job: JobExecutionDTO, params: dict[str, Any]) -> FlowRun:
        """The job's flow run, created (not yet started): for the default :meth:`_start_job`."""
        raise NotImplementedError(f"{type(self).__name__} starts jobs its own way")

    @abstractmethod
    def _create_pipeline_run(self, planned: PipelineRun, params: dict[str, Any]) -> FlowRun:
        """The pipeline run's flow run, created (not yet started)."""

    def _forget_job(self, job_execution_id: UUID) -> None:
        """Undo a claim whose flow run could not be created (a re-send then starts afresh)."""
        self._jobs.forget(job_execution_id)

    def _forget_pipeline(self, pipeline_execution_id: UUID) -> None:
        self._pipelines.forget(pipeline_execution_id)

    @abstractmethod
    def _job_accepted(self, job: JobExecutionDTO, record: JobRecord) -> None:
        """Called once the job's flow run exists, before a re-send may see the record's flow run id."""

    @abstractmethod
    def _launch(self, flow: Flow, flow_run: FlowRun, params: dict[str, Any], record: JobRecord | None) -> None:
        """Start the created flow run."""

    # -- what the API asks besides submissions ----------------------------------------------------

    @abstractmethod
    def job_view(self, job_execution_id: UUID) -> JobView | None:
        """What this process knows of the job; None for a job it does not know."""

    @abstractmethod
    def cancel_job(self, job_execution_id: UUID) -> JobView | None:
        """Cancel the job; None for an unknown job."""

    @abstractmethod
    def shutdown(self, wait: bool = False) -> None:
        """Release what the dispatcher holds (threads, Prefect clients)."""
