"""Container slots across every pool worker: a Prefect global concurrency limit (GCL).

In a pool worker (:mod:`flows.pool_run`) each container runs inside one slot of the GCL named by
``WORKER_CONCURRENCY_LIMIT_NAME`` (the same name on the API host and every pool worker), which the API (at
start-up) and ``cicd-worker deploy`` create with ``WORKER_MAX_CONCURRENT_JOBS`` slots. Elsewhere this is a
no-op: the executor's own semaphore is the limit of one process.

Why not ``prefect.concurrency.sync.concurrency``:

* it skips a limit that does not exist with a warning and limits nothing (docs/prefect-behaviours.md,
  "Concurrency"); here that fails the job, naming the limit;
* its wait sleeps a server-chosen ``Retry-After`` (up to 30 s) and cannot be interrupted, and with
  ``max_retries=0`` every refusal logs an ERROR. Here each refusal (HTTP 423) sleeps
  ``min(Retry-After, _MAX_POLL_SECONDS)`` on the job's cancel switch: a canceled job stops waiting at once
  and a freed slot is taken within two seconds. Waiters are not served in order;
* a lease renewal failure (Prefect briefly unreachable) must not kill a running job. The lease is
  renewed every ``_LEASE_SECONDS / 3``; if renewals fail for a whole lease the server frees the slot early
  and the limit may be passed for a while. A pool worker killed outright holds its slots until their leases
  run out (``_LEASE_SECONDS``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.runtime import flow_run as runtime_flow_run

from core.errors import InfrastructureError
from flows.pool_run import in_pool_process
from flows.services import current

log = logging.getLogger(__name__)

_LEASE_SECONDS = 300.0
_MAX_POLL_SECONDS = 2.0  # N waiting jobs cost N/2 requests a second to the Prefect server
_LOCKED = 423


class ContainerLimitUnavailable(InfrastructureError):
    """The global concurrency limit could not be used: Prefect unreachable (retried), or no such limit (not)."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@contextlib.contextmanager
def container_slot(cancel: threading.Event, note: Callable[[str], None]) -> Iterator[None]:
    """Hold one slot of the global limit for the block (pool workers only).

    When ``cancel`` is set while waiting, the block runs without a slot: the executor then reports the job
    canceled without starting a container.
    """
    if not in_pool_process():
        yield
        return
    name = current().settings.concurrency_limit_name
    with get_client(sync_client=True) as client:
        lease_id = _acquire(client, name, cancel, note)
        if lease_id is None:
            yield
            return
        stop = threading.Event()
        renewer = threading.Thread(target=_keep_lease, args=(lease_id, stop), name="slot-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            try:
                client.release_concurrency_slots_with_lease(lease_id)
            except httpx.HTTPError as exc:  # the lease runs out by itself
                log.warning("could not release container slot (lease %s): %s", lease_id, exc)


def _acquire(client: SyncPrefectClient, name: str, cancel: threading.Event,
             note: Callable[[str], None]) -> UUID | None:
    """A lease on one slot, or None when ``cancel`` was set first."""
    flow_run_id = runtime_flow_run.id
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id)) if flow_run_id else None
    waiting = False
    while not cancel.is_set():
        try:
            response = client.increment_concurrency_slots_with_lease([name], 1, "concurrency", _LEASE_SECONDS, holder)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != _LOCKED:
                raise ContainerLimitUnavailable(f"global concurrency limit {name!r}: {exc}") from exc
            if not waiting:
                note(f"waiting for a container slot (global concurrency limit {name!r})")
                waiting = True
            cancel.wait(min(float(exc.response.headers.get("Retry-After", _MAX_POLL_SECONDS)), _MAX_POLL_SECONDS))
            continue
        except httpx.HTTPError as exc:
            raise ContainerLimitUnavailable(f"Prefect API unreachable for global concurrency limit {name!r}: {exc}"
                                            ) from exc
        granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
        if not granted.limits:
            raise ContainerLimitUnavailable(
                f"global concurrency limit {name!r} does not exist: start the API with WORKER_DISPATCH=pool "
                "or run `cicd-worker deploy` to create it", retryable=False)
        return granted.lease_id
    return None


def _keep_lease(lease_id: UUID, stop: threading.Event) -> None:
    with get_client(sync_client=True) as client:
        while not stop.wait(_LEASE_SECONDS / 3):
            try:
                client.renew_concurrency_lease(lease_id, _LEASE_SECONDS)
            except httpx.HTTPError as exc:
                log.warning("could not renew container slot lease %s: %s", lease_id, exc)
