"""Process-wide parts shared by flows and the API: the executor, the backend client, the job registry.

Built on first use from the settings (never at import time) and replaceable by tests via ``reset()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from uuid import UUID

from executors.docker_executor import DockerExecutor
from worker_api.backend_client import BackendClient
from worker_api.models import ExecutionStatus, JobView
from worker_api.outbox import Outbox
from worker_api.recovery import InflightJobs
from worker_api.settings import get_settings


@dataclass
class JobRecord:
    """What this worker process knows of one job execution."""

    job_execution_id: UUID
    name: str
    pipeline_execution_id: UUID | None = None
    status: ExecutionStatus = ExecutionStatus.PENDING
    flow_run_id: UUID | None = None
    accepted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    start_time: datetime | None = None
    completion_time: datetime | None = None
    exit_code: int | None = None
    attempts: int = 0
    message: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    dispatched: threading.Event = field(default_factory=threading.Event)

    def view(self) -> JobView:
        return JobView(job_execution_id=self.job_execution_id, name=self.name, status=self.status,
                       flow_run_id=self.flow_run_id, pipeline_execution_id=self.pipeline_execution_id,
                       accepted_at=self.accepted_at, start_time=self.start_time,
                       completion_time=self.completion_time, exit_code=self.exit_code,
                       attempts=self.attempts, message=self.message)


class JobRegistry:
    """Job records by job execution id; ``claim`` makes execute requests idempotent."""

    def __init__(self) -> None:
        self._records: dict[UUID, JobRecord] = {}
        self._lock = threading.Lock()

    def claim(self, job_execution_id: UUID, name: str, pipeline_execution_id: UUID | None = None,
              room: Callable[[int], None] | None = None) -> tuple[JobRecord, bool]:
        """The record for this id, and whether this call created it (False: already known).

        ``room(unfinished)`` is called under the lock before a new record is made; it raises to refuse.
        """
        with self._lock:
            record = self._records.get(job_execution_id)
            if record is not None:
                return record, False
            if room is not None:
                room(sum(1 for r in self._records.values() if not r.status.is_final))
            record = JobRecord(job_execution_id, name, pipeline_execution_id)
            self._records[job_execution_id] = record
            return record, True

    def unfinished(self) -> int:
        """Jobs accepted and not final yet (queued, waiting or running)."""
        with self._lock:
            return sum(1 for record in self._records.values() if not record.status.is_final)

    def prune(self, keep: int = 10_000) -> None:
        """Forget the oldest final records beyond ``keep``, so months of jobs do not grow memory."""
        with self._lock:
            excess = len(self._records) - keep
            if excess <= 0:
                return
            finals = sorted((r for r in self._records.values() if r.status.is_final), key=lambda r: r.accepted_at)
            for record in finals[:excess]:
                del self._records[record.job_execution_id]

    def get(self, job_execution_id: UUID) -> JobRecord | None:
        with self._lock:
            return self._records.get(job_execution_id)

    def forget(self, job_execution_id: UUID) -> None:
        with self._lock:
            self._records.pop(job_execution_id, None)

    def all(self) -> list[JobRecord]:
        with self._lock:
            return list(self._records.values())


@lru_cache(maxsize=1)
def get_executor() -> DockerExecutor:
    settings = get_settings()
    return DockerExecutor(settings.worker_id, max_containers=settings.max_concurrent_jobs,
                          stop_grace_seconds=settings.stop_grace_seconds,
                          pull_timeout_seconds=settings.pull_timeout_seconds)


@lru_cache(maxsize=1)
def get_backend() -> BackendClient:
    return BackendClient.from_settings(get_settings())


@lru_cache(maxsize=1)
def get_outbox() -> Outbox:
    """The durable delivery path, its sender started (so items left by a previous life go out at once)."""
    settings = get_settings()
    token = settings.backend_token.get_secret_value() if settings.backend_token else None
    # One attempt per send: the outbox itself retries, with backoff, without blocking producers.
    sender = BackendClient(settings.backend_url, token=token, timeout=settings.backend_timeout_seconds,
                           retry_seconds=0)
    return Outbox(settings.state_dir, sender).start()


@lru_cache(maxsize=1)
def get_inflight() -> InflightJobs:
    return InflightJobs(get_settings().state_dir)


@lru_cache(maxsize=1)
def get_registry() -> JobRegistry:
    return JobRegistry()


def reset() -> None:
    """Forget every process-wide part (tests that change settings call this)."""
    get_settings.cache_clear()
    for accessor in (get_executor, get_backend, get_registry, get_outbox, get_inflight):
        accessor.cache_clear()
