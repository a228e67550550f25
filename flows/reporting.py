"""Reporting a job's statuses to the backend: the one delivery path, used by the state hooks.

Every status of one job execution goes ``RUNNING`` (once per attempt) → one final status, or only
``CANCELED`` when it never started. A hook that cannot reach the backend logs loudly: Prefect swallows
exceptions raised by hooks, so this module must not rely on raising.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from flows.job_log import JobLog
from flows.runtime import JobRecord
from worker_api.backend_client import BackendClient, BackendError
from worker_api.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate

log = logging.getLogger(__name__)


class JobReporter:
    """Sends one job execution's statuses to the backend and mirrors them in the local record."""

    def __init__(self, job: JobExecutionDTO, record: JobRecord, backend: BackendClient,
                 job_log: JobLog) -> None:
        self.job = job
        self.record = record
        self.backend = backend
        self.log = job_log
        self.final_sent = False

    def running(self, attempt: int) -> None:
        """Report ``RUNNING`` for this attempt (a repeat for a retry carries the new attempt number)."""
        now = datetime.now(UTC)
        self.record.status = ExecutionStatus.RUNNING
        self.record.attempts = attempt
        self.record.start_time = self.record.start_time or now
        self._send(JobStatusUpdate(job_execution_id=self.job.id, status=ExecutionStatus.RUNNING,
                                   logs="", attempt=attempt, start_time=self.record.start_time))

    def final(self, status: ExecutionStatus, *, exit_code: int | None = None, message: str | None = None) -> None:
        """Report the final status with the log; sent at most once per job execution."""
        if self.final_sent:
            return
        self.final_sent = True
        self.log.flush()
        now = datetime.now(UTC)
        record = self.record
        record.status, record.exit_code, record.message, record.completion_time = status, exit_code, message, now
        update = JobStatusUpdate(
            job_execution_id=self.job.id, status=status, logs=self.log.text_for_status(),
            exit_code=exit_code, attempt=record.attempts or None, start_time=record.start_time,
            completion_time=now, log_bytes=self.log.total_bytes, log_sha256=self.log.sha256,
        )
        self._send(update)

    def _send(self, update: JobStatusUpdate) -> None:
        try:
            self.backend.update_job_status(update)
        except BackendError as exc:
            log.error("LOST STATUS %s of job execution %s: %s", update.status, update.job_execution_id, exc)
            self.record.message = f"could not report {update.status} to the backend: {exc}"


def hook_attempt(task_run: Any) -> int:
    """The attempt number of a task run inside a hook (1 for the first run)."""
    return max(int(getattr(task_run, "run_count", 1) or 1), 1)
