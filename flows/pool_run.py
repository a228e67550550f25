"""Pool mode on a worker host (``WORKER_DISPATCH=pool``): the long-lived ``cicd-worker pool-worker`` process.

The API host creates each flow run and a Prefect task run pointing at it; a task worker on some host takes
the task run and runs the flow run in a thread of its own long-lived process (:mod:`flows.pool_tasks`).
What that process sets up once, here (:func:`start_pool_process`):

1. **State slot.** Several pool workers may run on one host; each takes a numbered slot under
   ``WORKER_STATE_DIR/pool-slots`` (an ``flock``, released by the kernel when the process dies) and keeps
   its outbox, in-flight list and job records there, so no two senders share one outbox. Taking a slot
   first delivers what a dead predecessor in that slot left, and reports the jobs it cut off (``FAILED``).
2. **Container limit across hosts**: see :mod:`flows.global_limit` (on once :func:`in_pool_process` is true).
3. **Cancel before start.** The API cancels a run that has not started by setting it ``Cancelled`` and
   reports the job itself; Prefect still lets such a run be proposed Running, so a flow checks
   :func:`canceled_before_start` first. A started run is cancelled through Prefect (``Cancelling``), which
   the process's cancel watcher turns into the job's cancel switch, as in the API's own process.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from pathlib import Path
from typing import IO

from core.settings import Settings
from core.state_db import private_dir, private_file
from flows.recovery import RecoveryMasks, recover
from flows.services import Services, build_services, install

log = logging.getLogger(__name__)

LABEL_PREFECT_WORKER = "cicd.prefect-worker"
_in_pool_process = threading.Event()
_worker_name: str | None = None
_slot_lock: IO[bytes] | None = None


def in_pool_process() -> bool:
    """Whether this process is a pool worker (set by :func:`start_pool_process`)."""
    return _in_pool_process.is_set()


def pool_labels() -> dict[str, str]:
    """Container labels naming the pool worker that runs this job (empty outside the pool)."""
    return {LABEL_PREFECT_WORKER: _worker_name} if in_pool_process() and _worker_name else {}


def canceled_before_start() -> bool:
    """Whether the API cancelled this pool run before its flow started (step 3 of the module docstring)."""
    if not in_pool_process():
        return False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run.id)
    return any(state.type == StateType.CANCELLED for state in states)


def start_pool_process(settings: Settings, worker_name: str) -> Services:
    """Steps 1 and 2 of the module docstring: take a slot, build and install the services, recover the slot."""
    global _worker_name
    slot = _take_slot(settings.state_dir)
    # The outbox, the in-flight list and the job records of this process live in the slot.
    # The caches stay the host's, shared by its slots.
    services = install(build_services(settings.model_copy(update={"state_dir": slot,
                                                                  "cache_dir": settings.cache_path})))
    _recover_slot(services)
    _worker_name = worker_name
    _in_pool_process.set()
    return services


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
