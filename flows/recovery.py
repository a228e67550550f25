"""What a worker restarted after a crash does first: finish the story of the jobs of its previous life.

Every job this worker accepted is written down (SQLite, under ``WORKER_STATE_DIR``) until its final
status is queued in the outbox. At start-up, jobs still written down were cut off by the crash: each is
reported ``FAILED`` ("worker restarted while the job was running", with the log captured so far from its
container), its container is removed, and its Prefect flow run is marked Crashed instead of being left
Running; the service containers and the network of a cut-off job (``JobSpec.services``) are removed with it
(never reported: a service ran no job). The API's start-up then sweeps every other container, every job
network and every volume with this worker's label (workspace volumes included); a pool flow process
(``sweep=False``, beside others on the same engine) removes only what its own cut-off jobs left and leaves
volumes alone.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.states import Crashed

from core.backend_client import BackendClient, BackendUnavailable
from core.errors import InfrastructureError, WorkerError
from core.inflight import InflightJobs
from core.models import ExecutionStatus, JobStatusUpdate
from core.outbox import Outbox
from core.settings import Settings
from executors.base import Executor, LeftoverContainer, LeftoverNetwork
from flows.masking import Masker, SecretScan, SecretSettings, scan_job_env

log = logging.getLogger(__name__)
RESTART_NOTE = "[cicd-worker] worker restarted while the job was running: job FAILED"
RESTART_BEFORE_START_NOTE = "[cicd-worker] worker restarted before the job started: job FAILED"
WITHHELD_NOTE = ("[cicd-worker] the output captured from the job's container is withheld: its secrets could not "
                 "be learnt from the backend, so it could not be masked")
LABEL_FLOW_RUN = "cicd.flow-run-id"
MASK_FETCH_SECONDS = 15.0  # retry window of one fetch of a cut-off job at start-up (a backend restarting)


class MaskUnavailable(Exception):
    """The secrets of a cut-off job could not be learnt, so its captured output cannot be masked."""


class RecoveryMasks:
    """The masker of each cut-off job, from its job execution fetched from the backend.

    A job's env is never written to disk, so after a crash the only way to learn which values to mask in
    the output captured from its container is to ask the backend (``GET /jobs/{id}``), with a short retry
    window: start-up must not wait a minute per job. Once the backend failed to answer, later jobs are not
    tried.
    """

    def __init__(self, backend: BackendClient, settings: SecretSettings) -> None:
        self._backend = backend
        self._settings = settings
        self._down: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RecoveryMasks:
        backend = BackendClient.from_settings(settings)
        backend.retry_seconds = min(settings.backend_retry_seconds, MASK_FETCH_SECONDS)
        return cls(backend, settings)

    @property
    def min_length(self) -> int:
        return self._settings.secret_min_length

    def scan(self, job_execution_id: str) -> SecretScan:
        """What to mask in this job's output; raises :class:`MaskUnavailable` when it cannot be known."""
        if self._down is not None:
            raise MaskUnavailable(self._down)
        try:
            job = self._backend.get_job_execution(job_execution_id)
        except BackendUnavailable as exc:
            self._down = f"backend unavailable: {exc}"
            raise MaskUnavailable(self._down) from exc
        except WorkerError as exc:
            raise MaskUnavailable(str(exc)) from exc
        return scan_job_env(job.job.env, job.job.masked_env, self._settings)


def recover(executor: Executor, outbox: Outbox, inflight: InflightJobs, tail_bytes: int,
            masks: RecoveryMasks, sweep: bool = True) -> int:
    """Report and clean up what a previous life of this worker left; returns the number of jobs reported.

    The output captured from a cut-off job's container is masked with ``masks`` (the job's secrets, from
    the backend); when they cannot be learnt the output is withheld, never sent unmasked.
    ``sweep=False`` (a pool flow process, beside others on the same engine): only the jobs of this
    in-flight list and their containers; other labelled containers and all volumes are left alone.
    """
    leftovers = executor.leftover_containers()
    networks = executor.leftover_networks()
    by_job = {c.job_execution_id: c for c in leftovers if c.job_execution_id is not None and c.service_of is None}
    removed: set[str] = set()
    reported = 0
    for job_execution_id, flow_run_id, name in inflight.all():
        container = by_job.get(job_execution_id)
        captured = _masked_log(executor, container, tail_bytes, masks) if container is not None else ""
        outbox.put_status(JobStatusUpdate(job_execution_id=UUID(job_execution_id), status=ExecutionStatus.FAILED,
                                          logs=captured + (RESTART_NOTE if container else RESTART_BEFORE_START_NOTE)
                                          + "\n"))
        log.warning("job %s (%s) was cut off by a worker restart: reported FAILED", name, job_execution_id)
        flow_run_id = flow_run_id or (container.labels.get(LABEL_FLOW_RUN) if container is not None else None)
        if flow_run_id:
            _mark_crashed(flow_run_id)
        if container is not None:
            executor.remove_container(container.container_id)
            removed.add(container.container_id)
        removed |= _remove_services_of(executor, job_execution_id, leftovers, networks)
        inflight.remove(UUID(job_execution_id))
        reported += 1
    if not sweep:
        return reported
    for leftover in leftovers:  # labelled but not a cut-off job's: nothing to report, just remove
        if leftover.container_id not in removed:
            executor.remove_container(leftover.container_id)
    for network in networks:  # after the containers: a network in use cannot be removed
        if network.name not in removed:
            executor.remove_network(network.name)
    for volume in executor.leftover_volumes():
        executor.remove_volume(volume)
    return reported


def _remove_services_of(executor: Executor, job_execution_id: str, leftovers: list[LeftoverContainer],
                        networks: list[LeftoverNetwork]) -> set[str]:
    """Remove the service containers, then the network, of one cut-off job; returns what was removed."""
    removed = set()
    for leftover in leftovers:
        if leftover.service_of == job_execution_id:
            executor.remove_container(leftover.container_id)
            removed.add(leftover.container_id)
    for network in networks:
        if network.job_execution_id == job_execution_id:
            executor.remove_network(network.name)
            removed.add(network.name)
    return removed


def _masked_log(executor: Executor, container: LeftoverContainer, tail_bytes: int, masks: RecoveryMasks) -> str:
    """The output captured so far, masked like the live log; a note instead when it cannot be masked."""
    captured = _captured_log(executor, container.container_id, tail_bytes)
    if not captured:
        return ""
    job_execution_id = str(container.job_execution_id)
    try:
        scan = masks.scan(job_execution_id)
    except MaskUnavailable as exc:
        log.error("job %s: captured output withheld, its secrets are unknown: %s", job_execution_id, exc)
        return f"{WITHHELD_NOTE} ({str(exc)[:300]})\n"
    notes = "".join(f"[cicd-worker] {warning}\n" for warning in scan.warnings(masks.min_length))
    return notes + Masker(scan.needles).mask(captured)


def _captured_log(executor: Executor, container_id: str, tail_bytes: int) -> str:
    try:
        raw = executor.captured_output(container_id, tail_bytes)
    except InfrastructureError as exc:
        return f"[cicd-worker] could not read the container's log: {exc}\n"
    text = raw.decode("utf-8", errors="replace")
    return text if not text or text.endswith("\n") else text + "\n"


def _mark_crashed(flow_run_id: str) -> None:
    try:
        with get_client(sync_client=True) as client:
            state: Any = Crashed(message="worker restarted while the run was in flight")
            client.set_flow_run_state(UUID(flow_run_id), state, force=True)
    except Exception as exc:  # Prefect may be down; the backend report matters more
        log.error("could not mark flow run %s crashed: %s", flow_run_id, exc)
