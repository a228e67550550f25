"""Process-wide parts shared by flows and the API: the executor, the backend client, the outbox, the
in-flight store and the job registry.

Built on first use from the settings (never at import time) and replaceable by tests via ``reset()``.
"""

from __future__ import annotations

from functools import lru_cache

from core.backend_client import BackendClient
from core.delivery_policy import OutboxLimits
from core.inflight import InflightJobs
from core.job_records import JobRecord as JobRecord  # re-exported: flows and the API import it from here
from core.job_records import JobRegistry, JobStore
from core.outbox import Outbox
from core.settings import get_settings
from executors.docker_executor import DockerExecutor


@lru_cache(maxsize=1)
def get_executor() -> DockerExecutor:
    settings = get_settings()
    return DockerExecutor(settings.worker_id, max_containers=settings.max_concurrent_jobs,
                          stop_grace_seconds=settings.stop_grace_seconds,
                          pull_timeout_seconds=settings.pull_timeout_seconds,
                          docker_timeout_seconds=settings.docker_timeout_seconds,
                          allowed_images=tuple(settings.allowed_images),
                          max_line_chars=settings.log_max_line_chars)


@lru_cache(maxsize=1)
def get_backend() -> BackendClient:
    return BackendClient.from_settings(get_settings())


@lru_cache(maxsize=1)
def get_outbox() -> Outbox:
    """The durable delivery path, its sender started (so items left by a previous life go out at once)."""
    settings = get_settings()
    # One attempt per send: the outbox itself retries, with backoff, without blocking producers.
    sender = BackendClient.from_settings(settings, retry_seconds=0)
    return Outbox(settings.state_dir, sender, OutboxLimits.from_settings(settings)).start()


@lru_cache(maxsize=1)
def get_inflight() -> InflightJobs:
    return InflightJobs(get_settings().state_dir)


@lru_cache(maxsize=1)
def get_registry() -> JobRegistry:
    """The registry of job executions, on disk under the state dir (see :mod:`core.job_records`)."""
    return JobRegistry(JobStore(get_settings().state_dir / "jobs.db"))


def reset() -> None:
    """Forget every process-wide part (tests that change settings call this)."""
    get_settings.cache_clear()
    for accessor in (get_executor, get_backend, get_registry, get_outbox, get_inflight):
        accessor.cache_clear()
