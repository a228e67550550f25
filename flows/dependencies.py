"""Waiting for a single job's dependencies through the backend's statuses (``/api/job/execute`` path)."""

from __future__ import annotations

import threading
import time
from uuid import UUID

from core.backend_client import BackendClient
from core.errors import WorkerError
from core.models import ExecutionStatus
from flows.job_log import JobLog


class DependencyTimeout(WorkerError):
    """Dependencies were not final within the deadline."""


def wait_for_dependencies(job_execution_id: UUID, backend: BackendClient, job_log: JobLog,
                          cancel: threading.Event, *, poll_seconds: float, timeout_seconds: float) -> str | None:
    """Block until every dependency is final. Returns why the job must not run, or None to run it.

    A dependency that ``FAILED`` or was ``CANCELED`` means this job is ``CANCELED`` (contract); a
    dependency that passed with ``allowFailure`` is reported ``SUCCESS`` by the backend, so it lets us run.
    """
    pending = set(backend.get_job_dependencies(job_execution_id))
    if not pending:
        return None
    job_log.note(f"waiting for {len(pending)} dependencies: {', '.join(sorted(map(str, pending)))}")
    deadline = time.monotonic() + timeout_seconds
    while True:
        for dependency in sorted(pending, key=str):
            status = backend.get_job_status(dependency)
            if status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELED):
                return f"not run: dependency {dependency} ended {status.value}"
            if status is ExecutionStatus.SUCCESS:
                pending.discard(dependency)
        if not pending:
            job_log.note("dependencies succeeded")
            return None
        if time.monotonic() >= deadline:
            raise DependencyTimeout(
                f"dependencies not finished after {timeout_seconds:g} s: {', '.join(sorted(map(str, pending)))}")
        if cancel.wait(poll_seconds):
            return "canceled while waiting for dependencies"
