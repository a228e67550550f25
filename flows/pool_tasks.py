"""Pool mode's hand-off between hosts: Prefect task workers run the flow runs the API created.

Submission (API host, :func:`submit`): the flow run of ``execute-job`` / ``execute-pipeline`` exists already
(created ``Scheduled`` by the API, its parameters only the execution id); a *deferred* task run of
``cicd-pool-job`` / ``cicd-pool-pipeline`` is created next to it, with the flow run's id as its own id and as
its dynamic key. The Prefect server queues it (in memory) for the task workers subscribed to its task key,
over a websocket: one of them gets it within a fraction of a second.

Execution (each worker host, :func:`serve`): ``cicd-worker pool-worker`` is one long-lived process
(:mod:`flows.pool_run` sets it up once) running a Prefect ``TaskWorker`` for both tasks. The task reads the
flow run named by its own id and runs it with ``prefect.flow_engine.run_flow`` in the task worker's thread,
as the API's own process runs local flow runs. No Python start-up, no deployment, no work pool per run.

Why it is built this way (Prefect 3.9):

* **No task parameters.** A deferred task's parameters are written to result storage on the submitting host
  and read back by the task worker (``PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK``, local files by
  default): across hosts that needs shared storage. These tasks take none; the task run's id is the flow run
  id, and the job execution is fetched from the backend, so no job data passes through Prefect.
* **Task keys name the pool.** Prefect keys a task by its function's name and source hash; here the key is
  ``cicd-pool-<kind>@<WORKER_WORK_POOL>``, so pools are separate queues and a worker host of another code
  version still takes the runs.
* **No result persisted.** ``TaskWorker`` turns result persistence on for the tasks it serves; nothing here
  reads a result, so :class:`PoolTaskWorker` serves copies with persistence off (no file per run on the host).
* **Idempotent.** The server returns the existing task run for a known (task key, dynamic key) without
  queueing it again; the flow run's idempotency key does the same for the flow run.
* **At most once.** The server's queue lives in its memory: task runs queued when it restarts, or taken by a
  worker that dies before starting the flow, are not handed out again; their flow runs stay ``Scheduled``
  and the jobs get no status (the backend's own timeout applies). A job whose flow started is covered by
  the slot's in-flight list (:mod:`flows.pool_run`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any, Literal

import anyio
from prefect import Flow, Task, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.context import TaskRunContext
from prefect.flow_engine import run_flow
from prefect.states import Scheduled, State
from prefect.task_worker import TaskWorker

from core.settings import Settings
from flows.job_flow import execute_job
from flows.pipeline_flow import execute_pipeline
from flows.pool_run import start_pool_process
from flows.services import current

log = logging.getLogger(__name__)

Kind = Literal["job", "pipeline"]


def _run_own_flow_run(flow: Flow) -> None:
    """Run the flow run whose id is this task run's id, unless it is already final (cancelled before start)."""
    context = TaskRunContext.get()
    assert context is not None, "a pool task runs in a task worker"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(context.task_run.id)
    if flow_run.state is not None and flow_run.state.is_final():
        log.info("flow run %s is already %s: not run", flow_run.id, flow_run.state.name)
        return
    state: Any = run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    log.info("flow run %s (%s) ended %s", flow_run.id, flow_run.name, state.name)


@task(name="cicd-pool-job", persist_result=False, log_prints=False)
def pool_job() -> None:
    """Run one ``execute-job`` flow run created by the API (see the module docstring)."""
    _run_own_flow_run(execute_job)


@task(name="cicd-pool-pipeline", persist_result=False, log_prints=False)
def pool_pipeline() -> None:
    """Run one ``execute-pipeline`` flow run created by the API."""
    _run_own_flow_run(execute_pipeline)


def pool_task(kind: Kind, pool: str) -> Task[[], None]:
    """The task of ``kind`` keyed for ``pool`` (both sides must agree on the key)."""
    copy: Task[[], None] = (pool_job if kind == "job" else pool_pipeline).with_options(persist_result=False)
    copy.task_key = f"cicd-pool-{kind}@{pool}"
    return copy


def submit(client: SyncPrefectClient, flow_run: FlowRun, kind: Kind, pool: str) -> TaskRun:
    """Queue ``flow_run`` for the pool's task workers (idempotent per flow run)."""
    state: State[Any] = Scheduled()
    state.state_details.deferred = True
    # No tags: Prefect asks the server for tag concurrency slots before a tagged task runs (the flow run has them).
    return client.create_task_run(task=pool_task(kind, pool), flow_run_id=None, dynamic_key=str(flow_run.id),
                                  id=flow_run.id, name=flow_run.name, state=state)


class PoolTaskWorker(TaskWorker):
    """Prefect's task worker serving the two pool tasks as given (no result persistence), stopped on SIGTERM by
    canceling this process's jobs first."""

    def __init__(self, pool: str, limit: int) -> None:
        tasks = [pool_task("job", pool), pool_task("pipeline", pool)]
        super().__init__(*tasks, limit=limit)
        self.tasks = tasks  # TaskWorker served copies with result persistence turned on
        self.serving: asyncio.Task[None] | None = None
        self.stop_requested = threading.Event()

    async def _safe_submit_scheduled_task_run(self, task_run: TaskRun) -> None:
        # Shielded: stopping cancels the subscription (no run is taken any more) but lets each run already
        # taken finish (its jobs canceled) instead of abandoning its thread with an error.
        with anyio.CancelScope(shield=True):
            await super()._safe_submit_scheduled_task_run(task_run)

    def handle_sigterm(self, signum: int, frame: object) -> None:
        """Stop taking task runs and cancel the running jobs (containers stopped, ``CANCELED`` reported)."""
        if self.stop_requested.is_set():  # Prefect's TaskWorker registers this handler too
            return
        log.warning("signal %d: canceling this pool worker's jobs and stopping", signum)
        self.stop_requested.set()
        for record in current().registry.all():
            if not record.status.is_final:
                record.cancel.set()
        if self.serving is not None:
            self.serving.get_loop().call_soon_threadsafe(self.serving.cancel)


async def _serve(worker: PoolTaskWorker) -> None:
    worker.serving = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.handle_sigterm, sig, None)
    try:
        await worker.astart()
    except asyncio.CancelledError:
        if not worker.stop_requested.is_set():
            raise


def serve(settings: Settings, pool: str, limit: int, worker_name: str) -> int:
    """``cicd-worker pool-worker``: run the pool's flow runs on this host until SIGTERM / SIGINT; exit code."""
    services = start_pool_process(settings, worker_name)
    log.info("pool worker %s: pool %r, up to %d flow runs at once, global limit %r", worker_name, pool, limit,
             settings.concurrency_limit_name)

    async def main() -> None:
        await _serve(PoolTaskWorker(pool, limit))  # TaskWorker must be made inside the event loop

    try:
        asyncio.run(main())
    finally:
        # Running flows finished when the task worker's thread pool closed; deliver what they reported.
        if not services.outbox.flush(timeout=settings.shutdown_flush_seconds):
            log.error("undelivered updates left in %s: sent by the next pool worker in this slot",
                      services.settings.state_dir)
        services.close()
    return 0

