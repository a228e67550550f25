"""Turning accepted requests into Prefect flow runs executed in this process.

The flow run is created first (state Pending) so that its id can be answered at once, then run by
``prefect.flow_engine.run_flow`` on a dedicated thread pool (docs/prefect-behaviours.md, "Running flow
runs from the API process"). The container limit is enforced by the executor, not by this pool: flows
waiting for dependencies hold no container slot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.context import SyncClientContext
from prefect.flow_engine import run_flow

from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate, JobView
from core.settings import get_settings
from flows.job_flow import drop_handed_over_job, execute_job, hand_over_job, job_run_name, job_tags
from flows.job_log import WORKER_PREFIX
from flows.pipeline_flow import (
    PipelineStart,
    drop_handed_over_pipeline,
    execute_pipeline,
    hand_over_pipeline,
    pipeline_run_name,
)
from flows.pipeline_plan import load_pipeline
from flows.runtime import JobRecord, get_backend, get_inflight, get_outbox, get_registry
from worker_api.flow_runs import FlowRunFactory
from worker_api.limits import QueueFull

log = logging.getLogger(__name__)

_DISPATCH_WAIT_SECONDS = 30.0


@dataclass
class PipelineRecord:
    """A pipeline run this process accepted."""

    pipeline_execution_id: UUID
    flow_run_id: UUID | None = None
    dispatched: threading.Event = field(default_factory=threading.Event)


def room_for(jobs: int) -> Callable[[int], None]:
    """A check that refuses (QueueFull) when ``jobs`` more would pass ``WORKER_MAX_QUEUED_JOBS``."""
    limit = get_settings().max_queued_jobs

    def check(unfinished: int) -> None:
        if unfinished + jobs > limit:
            raise QueueFull(f"{unfinished} jobs accepted and unfinished, {jobs} more asked; the limit is {limit}")

    return check


def _enter_client_context() -> None:
    """One Prefect client per flow thread for the thread's life (entered, never exited).

    The flow and task engines use the thread's SyncClientContext when there is one; without it each flow
    run builds a client: an SSL context from certifi's bundle (20-80 ms) and a CSRF probe.
    """
    SyncClientContext().__enter__()


def _report_unfinished(record: JobRecord, outcome: str) -> None:
    """A flow that ended before its job got a final status (an error outside the task) must not leave the
    backend waiting: report ``FAILED`` with the reason."""
    log.error("job %s had no final status when its %s; reporting FAILED", record.job_execution_id, outcome)
    record.status, record.message = ExecutionStatus.FAILED, outcome
    record.save()
    get_outbox().put_status(JobStatusUpdate(job_execution_id=record.job_execution_id, status=ExecutionStatus.FAILED,
                                            logs=f"{WORKER_PREFIX} {outcome}\n"))
    get_inflight().remove(record.job_execution_id)


class FlowDispatcher:
    """Starts flow runs for accepted jobs and pipelines; idempotent per execution id."""

    def __init__(self, max_flows: int = 256) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_flows, thread_name_prefix="flow",
                                        initializer=_enter_client_context)
        self._pipelines: dict[UUID, PipelineRecord] = {}
        self._flow_runs = FlowRunFactory()
        self._lock = threading.Lock()

    def submit_pipeline(self, pipeline_execution_id: UUID) -> tuple[PipelineRecord, bool]:
        """Fetch and plan (raising ``PlanningError`` for an invalid run), then start its flow run.

        A pipeline run already accepted by this process starts nothing new.
        """
        with self._lock:
            known = self._pipelines.get(pipeline_execution_id)
            if known is None:
                record = self._pipelines[pipeline_execution_id] = PipelineRecord(pipeline_execution_id)
        if known is not None:
            known.dispatched.wait(_DISPATCH_WAIT_SECONDS)
            return known, False
        try:
            planned = load_pipeline(get_backend(), pipeline_execution_id)
            room_for(len(planned.jobs))(get_registry().unfinished())
            # Ids only as parameters (the Prefect API shows them): the planned jobs, env included, are handed over.
            params = {"pipeline_execution_id": str(pipeline_execution_id)}
            hand_over_pipeline(pipeline_execution_id, PipelineStart(planned=planned))
            flow_run = self._flow_runs.create(execute_pipeline, params, pipeline_run_name(pipeline_execution_id),
                                              ["cicd-pipeline", f"pipeline:{pipeline_execution_id}"])
            record.flow_run_id = flow_run.id
        except Exception:
            drop_handed_over_pipeline(pipeline_execution_id)
            with self._lock:
                self._pipelines.pop(pipeline_execution_id, None)
            raise
        record.dispatched.set()
        self._pool.submit(self._run, execute_pipeline, flow_run, params, None)
        return record, True

    def submit_job(self, job: JobExecutionDTO) -> tuple[JobRecord, bool]:
        """Start the job's flow run unless this job execution is already known.

        Returns the record and whether a new flow run was started.
        """
        registry = get_registry()
        registry.prune()
        record, created = registry.claim(job.id, job.job.name, job.pipeline_execution_id, room=room_for(1))
        if not created:
            record.dispatched.wait(_DISPATCH_WAIT_SECONDS)
            return record, False
        # Ids only as parameters (the Prefect API shows them): the job execution, env included, is handed over.
        params = {"job_execution_id": str(job.id)}
        hand_over_job(job)
        try:
            flow_run = self._flow_runs.create(execute_job, params, job_run_name(job), job_tags(job))
        except Exception:
            drop_handed_over_job(job.id)
            get_registry().forget(job.id)
            raise
        record.flow_run_id = flow_run.id
        record.save()  # on disk with its flow run: a re-send after a restart is answered 200 from it
        # Written down before the flow starts, so that a crash before its first status is reported at restart.
        get_inflight().add(job.id, flow_run.id, job.job.name)
        record.dispatched.set()
        self._pool.submit(self._run, execute_job, flow_run, params, record)
        return record, True

    @staticmethod
    def _run(flow: Flow, flow_run: FlowRun, params: dict[str, Any], record: JobRecord | None) -> None:
        try:
            state: Any = run_flow(flow, flow_run=flow_run, parameters=params, return_type="state")
            outcome = f"flow run ended {state.name}: {state.message}"
        except BaseException as exc:  # noqa: BLE001 - a thread must never die silently
            log.exception("flow run %s (%s) crashed", flow_run.id, flow.name)
            outcome = f"flow run crashed: {exc}"
        if record is not None and not record.status.is_final:
            _report_unfinished(record, outcome)

    @staticmethod
    def job_view(job_execution_id: UUID) -> JobView | None:
        """What this process knows of the job; None for a job it does not know."""
        record = get_registry().get(job_execution_id)
        return record.view() if record else None

    @staticmethod
    def cancel_job(job_execution_id: UUID) -> JobView | None:
        """Set the job's cancel switch (the executor stops its container); None for an unknown job."""
        record = get_registry().get(job_execution_id)
        if record is None:
            return None
        record.cancel.set()
        return record.view()

    def shutdown(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self._flow_runs.close()
