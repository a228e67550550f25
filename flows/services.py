"""The parts a flow needs (executor, backend client, outbox, job registry, in-flight store, settings), built
once per entry point and reachable from flows, tasks and hooks through :func:`current`.

Each entry point reads its settings once, builds the services from them and installs them: ``serve`` (at
the app's start-up), ``cicd-worker run``, ``execute-job`` / ``execute-pipeline``, and a pool flow process
(after taking its state slot, :mod:`flows.pool_run`). Tests build theirs, with any executor, and install them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from core.backend_client import BackendClient
from core.delivery_policy import OutboxLimits
from core.inflight import InflightJobs
from core.job_records import JobRegistry, JobStore
from core.models import JobExecutionDTO
from core.outbox import Outbox
from core.settings import Settings
from executors.base import Executor
from executors.docker_executor import DockerExecutor
from flows.cancel_watch import CancelWatch
from flows.prefect_logging import quiet_hook_bookkeeping

# Given a job, the callback its log hands each batch of masked lines to (``JobLog.add_listener``), or None.
LineListener = Callable[[JobExecutionDTO], Callable[[list[str]], None] | None]


@dataclass
class Services:
    """Everything a flow needs, built once per entry point (serve, run, execute-job/-pipeline, pool flow process)."""

    settings: Settings
    executor: Executor
    backend: BackendClient  # direct calls: fetching jobs, dependencies, statuses
    outbox: Outbox  # started
    registry: JobRegistry
    inflight: InflightJobs
    # The outbox's own client (one attempt per send), closed with the rest.
    sender: BackendClient | None = field(default=None, repr=False)
    # One watcher of cancels from Prefect for every flow run of this process.
    cancel_watch: CancelWatch = field(default_factory=CancelWatch, repr=False)
    # Who else reads each job's lines as they come (``cicd-worker run`` prints them); None: nobody.
    line_listener: LineListener | None = field(default=None, repr=False)

    def close(self) -> None:
        """Stop the outbox sender and close the backend clients (what is undelivered stays on disk)."""
        self.cancel_watch.close()
        self.outbox.stop()
        self.backend.close()
        if self.sender is not None:
            self.sender.close()


def docker_executor(settings: Settings) -> DockerExecutor:
    """The production executor the settings describe (its engine client is made on first use)."""
    return DockerExecutor(settings.worker_id, max_containers=settings.max_concurrent_jobs,
                          stop_grace_seconds=settings.stop_grace_seconds,
                          pull_timeout_seconds=settings.pull_timeout_seconds,
                          docker_timeout_seconds=settings.docker_timeout_seconds,
                          allowed_images=tuple(settings.allowed_images),
                          max_line_chars=settings.log_max_line_chars)


def build_services(settings: Settings, *, executor: Executor | None = None,
                   backend: BackendClient | None = None) -> Services:
    """Build from settings; ``executor`` defaults to a DockerExecutor made from the settings.

    The outbox's sender starts at once, so items left by a previous life go out now. The job registry is
    opened now too: a damaged file is found at start, and jobs cut off by a crash are marked FAILED.
    """
    # One attempt per send: the outbox itself retries, with backoff, without blocking producers.
    sender = BackendClient.from_settings(settings, retry_seconds=0)
    outbox = Outbox(settings.state_dir, sender, OutboxLimits.from_settings(settings)).start()
    return Services(settings=settings,
                    executor=executor if executor is not None else docker_executor(settings),
                    backend=backend if backend is not None else BackendClient.from_settings(settings),
                    outbox=outbox,
                    registry=JobRegistry(JobStore(settings.state_dir / "jobs.db")),
                    inflight=InflightJobs(settings.state_dir),
                    sender=sender)


_lock = threading.Lock()
_installed: Services | None = None


def install(services: Services) -> Services:
    """Make ``services`` this process's services (entry points call it); returns them.

    Also keeps Prefect's hook bookkeeping lines out of the run logs of this process (once per process).
    """
    global _installed
    quiet_hook_bookkeeping()
    with _lock:
        _installed = services
    return services


def current() -> Services:
    """This process's services: the one accessor flows, tasks and hooks use."""
    services = _installed
    if services is None:
        raise RuntimeError("no services installed in this process: an entry point must build them "
                           "(flows.services.build_services) and call flows.services.install first")
    return services
