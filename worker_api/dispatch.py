"""Running accepted jobs and pipeline runs in this process.

A job starts at once on a thread of its own, without Prefect's engines (``flows.job_flow.run_job_directly``);
its Prefect flow run and task run are written in the background by ``flows.prefect_mirror``, and the answer
waits up to ``WORKER_FLOW_RUN_ID_WAIT_SECONDS`` for the flow run's id. A pipeline run's flow run is created first
(state Pending) so that its id can be answered at once, then run by ``prefect.flow_engine.run_flow`` on a
thread pool (docs/prefect-behaviours.md, "Running flow runs from the API process"). The container limit is
enforced by the executor, not by this pool: jobs waiting for dependencies hold no container slot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.context import SyncClientContext
from prefect.flow_engine import run_flow

from core.job_records import JobRecord
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate, JobView
from flows.job_flow import (
    execute_job,
    job_run_name,
    job_tags,
    run_job_directly,
)
from flows.job_log import WORKER_PREFIX
from flows.pipeline_flow import (
    PipelineStart,
    drop_handed_over_pipeline,
    execute_pipeline,
    hand_over_pipeline,
    pipeline_run_name,
)
from flows.pipeline_plan import PipelineRun
from flows.prefect_mirror import PrefectMirror
from flows.prefect_writes import FlowRunFactory, without_heartbeats
from flows.services import Services
from worker_api.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def _enter_client_context() -> None:
    """One Prefect client per flow thread for the thread's life (entered, never exited).

    The flow and task engines use the thread's SyncClientContext when there is one; without it each flow
    run builds a client: an SSL context from certifi's bundle (20-80 ms) and a CSRF probe.
    """
    try:
        SyncClientContext().__enter__()
    except Exception as exc:  # Prefect down: the engines build a client per run; an initializer must not raise
        log.warning("no shared Prefect client for this flow thread: %s", exc)


class FlowDispatcher(Dispatcher):
    """Starts flow runs for accepted jobs and pipelines in this process; idempotent per execution id.

    Job records live in the services' registry (on disk): a re-send after a restart is answered from it.
    """

    def __init__(self, services: Services, max_flows: int = 256) -> None:
        super().__init__(services, services.registry)
        self._pool = ThreadPoolExecutor(max_workers=max_flows, thread_name_prefix="flow",
                                        initializer=_enter_client_context)
        self._job_threads: set[threading.Thread] = set()  # one per running job: none left when idle
        self._job_threads_lock = threading.Lock()
        self._flow_runs = FlowRunFactory()
        self._mirror = PrefectMirror(execute_job, services.cancel_watch)

    def _start_job(self, job: JobExecutionDTO, record: JobRecord) -> None:
        """Start the job now on a thread of its own; its Prefect record follows in the background
        (:mod:`flows.prefect_mirror`). The answer waits a little for the flow run's id, never the job."""
        self._job_accepted(job, record)
        inflight = self.services.inflight
        mirrored = self._mirror.begin(record, job_run_name(job), {"job_execution_id": str(job.id)}, job_tags(job),
                                      on_created=lambda flow_run_id: inflight.set_flow_run(job.id, flow_run_id))
        self._start_thread(f"job-{str(job.id)[:8]}", lambda: self._run_guarded(
            f"job {job.id}", record, lambda: run_job_directly(job, record, self.services, self._mirror, mirrored)))
        if mirrored.created.wait(self.services.settings.flow_run_id_wait_seconds) and mirrored.flow_run_id is not None:
            record.save()  # with its flow run id: a re-send after a restart is answered with it
        record.dispatched.set()

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        """A thread of its own for one job (a pool would keep its threads after a burst of jobs)."""
        def run() -> None:
            try:
                target()
            finally:
                with self._job_threads_lock:
                    self._job_threads.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._job_threads_lock:
            self._job_threads.add(thread)
        thread.start()

    def _claim_job(self, job: JobExecutionDTO) -> tuple[JobRecord, bool]:
        self._jobs.prune()
        return self._jobs.claim(job.id, job.job.name, job.pipeline_execution_id, room=self._room(1))

    def _check_room(self, jobs: int) -> None:
        self._room(jobs)(self._jobs.unfinished())

    def _create_pipeline_run(self, planned: PipelineRun, params: dict[str, Any]) -> FlowRun:
        pipeline_execution_id = planned.pipeline_execution_id
        hand_over_pipeline(pipeline_execution_id, PipelineStart(planned=planned))  # planned once, here
        return self._flow_runs.create(execute_pipeline, params, pipeline_run_name(pipeline_execution_id),
                                      ["cicd-pipeline", f"pipeline:{pipeline_execution_id}"])

    def _forget_pipeline(self, pipeline_execution_id: UUID) -> None:
        drop_handed_over_pipeline(pipeline_execution_id)
        super()._forget_pipeline(pipeline_execution_id)

    def _job_accepted(self, job: JobExecutionDTO, record: JobRecord) -> None:
        record.save()  # on disk: a re-send after a restart is answered 200 from it
        # Written down before the flow starts, so that a crash before its first status is reported at restart.
        self.services.inflight.add(job.id, record.flow_run_id, job.job.name)

    def _launch(self, flow: Flow, flow_run: FlowRun, params: dict[str, Any], record: JobRecord | None) -> None:
        self._pool.submit(self._run, flow, flow_run, params, record)

    def _run(self, flow: Flow, flow_run: FlowRun, params: dict[str, Any], record: JobRecord | None) -> None:
        def run() -> str:
            with without_heartbeats():
                state: Any = run_flow(flow, flow_run=flow_run, parameters=params, return_type="state")
            return f"flow run ended {state.name}: {state.message}"

        self._run_guarded(f"flow run {flow_run.id} ({flow.name})", record, run)

    def _run_guarded(self, what: str, record: JobRecord | None, run: Callable[[], str | None]) -> None:
        """``run()`` on this thread; a job left without a final status is reported ``FAILED`` with why."""
        try:
            outcome = run() or "job ended"
        except BaseException as exc:  # noqa: BLE001 - a thread must never die silently
            log.exception("%s crashed", what)
            outcome = f"{what} crashed: {exc}"
        if record is not None and not record.status.is_final:
            self._report_unfinished(record, outcome)

    def _report_unfinished(self, record: JobRecord, outcome: str) -> None:
        """A flow that ended before its job got a final status (an error outside the task) must not leave the
        backend waiting: report ``FAILED`` with the reason."""
        log.error("job %s had no final status when its %s; reporting FAILED", record.job_execution_id, outcome)
        record.status, record.message = ExecutionStatus.FAILED, outcome
        record.save()
        self.services.outbox.put_status(JobStatusUpdate(
            job_execution_id=record.job_execution_id, status=ExecutionStatus.FAILED,
            logs=f"{WORKER_PREFIX} {outcome}\n"))
        self.services.inflight.remove(record.job_execution_id)

    def job_view(self, job_execution_id: UUID) -> JobView | None:
        """What this process knows of the job; None for a job it does not know."""
        record = self._jobs.get(job_execution_id)
        return record.view() if record else None

    def cancel_job(self, job_execution_id: UUID) -> JobView | None:
        """Set the job's cancel switch (the executor stops its container); None for an unknown job."""
        record = self._jobs.get(job_execution_id)
        if record is None:
            return None
        record.cancel.set()
        return record.view()

    def shutdown(self, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if wait:
            with self._job_threads_lock:
                running = list(self._job_threads)
            for thread in running:
                thread.join()
        self._mirror.close()
        self._flow_runs.close()
