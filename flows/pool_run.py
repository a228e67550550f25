"""Flow runs that a ``prefect worker`` started from a deployment (scale-out, ``WORKER_DISPATCH=pool``).

Such a run has a process of its own (``python -m prefect.engine``, spawned by the worker with the
worker's environment), so four things differ from a run in the API's process. :func:`pool_process`
does them; it is a no-op for a run that did not come from a deployment.

1. **State slot.** Several flow processes run at once on one host; each takes a numbered slot under
   ``WORKER_STATE_DIR/pool-slots`` (an ``flock``, released by the kernel when the process dies) and keeps
   its outbox and in-flight list there, so no two senders share one outbox. Taking a slot first delivers
   what a dead predecessor in that slot left, and reports the jobs it cut off (``FAILED``).
2. **Container limit across hosts**: see :mod:`flows.global_limit`.
3. **SIGTERM means cancel.** The worker cancels a run by SIGTERM to its process (docs/prefect-behaviours.md,
   "Cancelling a deployment run"), which Prefect turns into an exception wherever the main thread is,
   leaving containers and statuses behind. Here it sets the cancel switch of every job instead:
   containers are stopped, jobs are reported ``CANCELED``, and the process exits well inside the
   worker's 30 s grace.
4. **Nothing left unsent.** The outbox is flushed before the process exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

from prefect.context import FlowRunContext

from core.settings import Settings
from core.state_db import private_dir, private_file
from flows.recovery import RecoveryMasks, recover
from flows.services import Services, build_services, current, install

log = logging.getLogger(__name__)

LABEL_PREFECT_WORKER = "cicd.prefect-worker"
_SIGTERM_FLUSH_SECONDS = 10.0  # the worker kills the process 30 s after its SIGTERM
_in_pool_process = threading.Event()
_slot_lock: IO[bytes] | None = None


def in_pool_process() -> bool:
    """Whether this process runs a flow run started by a pool worker (set by :func:`pool_process`)."""
    return _in_pool_process.is_set()


def pool_labels() -> dict[str, str]:
    """Container labels naming the Prefect worker that started this process (empty outside the pool)."""
    name = os.environ.get("PREFECT__WORKER_NAME")
    return {LABEL_PREFECT_WORKER: name} if in_pool_process() and name else {}


def _from_deployment() -> bool:
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def canceled_before_start() -> bool:
    """Whether the API cancelled this pool run before its flow process started.

    The API reports ``CANCELED`` itself in that case (``PoolDispatcher._cancel_before_start``), but Prefect
    lets a Cancelled run be proposed Running again, so a process picked up at that moment must not run it.
    """
    if not _from_deployment():
        return False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run.id)
    return any(state.type == StateType.CANCELLED for state in states)


@contextlib.contextmanager
def pool_process() -> Iterator[None]:
    """Wrap a flow body: steps 1, 3 and 4 of the module docstring when the run came from a deployment."""
    if not _from_deployment():
        yield
        return
    _in_pool_process.set()
    settings = Settings()  # this process's entry point: the settings are read here, once
    slot = _take_slot(settings.state_dir)
    # The outbox, the in-flight list and the job records of this process live in the slot.
    services = install(build_services(settings.model_copy(update={"state_dir": slot})))
    _recover_slot(services)
    canceled = threading.Event()
    try:
        with _sigterm_cancels(canceled):
            yield
    finally:
        timeout = _SIGTERM_FLUSH_SECONDS if canceled.is_set() else settings.shutdown_flush_seconds
        if not services.outbox.flush(timeout=timeout):
            log.error("undelivered updates left in %s: sent by the next flow run in this slot", slot)


def _take_slot(base: Path) -> Path:
    """Lock the lowest free slot directory under ``base/pool-slots``; held until the process exits."""
    global _slot_lock
    slots = base / "pool-slots"
    private_dir(slots)
    number = 0
    while True:
        handle = open(private_file(slots / f"{number}.lock"), "ab")  # noqa: SIM115 - held for the process life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            number += 1
            continue
        _slot_lock = handle
        return slots / str(number)


def _recover_slot(services: Services) -> None:
    """Send what the slot's previous process left and report the jobs it cut off (only this slot's)."""
    settings, outbox, inflight = services.settings, services.outbox, services.inflight  # the sender runs
    if not inflight.all():  # the usual case; listing containers would race the other flow processes' removals
        return
    try:
        count = recover(services.executor, outbox, inflight, settings.log_tail_bytes,
                        RecoveryMasks.from_settings(settings), sweep=False)
    except Exception as exc:  # the engine may be down: the job itself will say so
        log.error("recovery of slot %s failed: %s", settings.state_dir, exc)
        return
    if count:
        log.warning("reported %d job(s) cut off by the previous flow process in this slot", count)


@contextlib.contextmanager
def _sigterm_cancels(canceled: threading.Event) -> Iterator[None]:
    """While the block runs, SIGTERM sets every job's cancel switch instead of raising (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel_all(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM (flow run canceled or worker stopping): canceling this run's jobs")
        canceled.set()
        for record in current().registry.all():
            record.cancel.set()

    previous: Any = signal.signal(signal.SIGTERM, cancel_all)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
