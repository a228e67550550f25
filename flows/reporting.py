"""Reporting a job's statuses to the backend through the durable outbox; used by the state hooks and flows.

Every status of one job execution goes ``RUNNING`` (once per attempt) → one final status; a job that
never starts gets its final status only (docs/contract.md, "The status rules"). Statuses are queued in
the outbox (:mod:`core.outbox`), never posted here, so a hook never waits for the backend. Queuing
can still fail (the disk): that is logged loudly, since Prefect swallows exceptions raised by hooks
(docs/prefect-behaviours.md, "Task state hooks"). The one status posted outside the outbox is the refusal
of an invalid pipeline run before anything ran (:func:`flows.pipeline_plan.report_refusal`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from core import metrics
from core.inflight import InflightJobs
from core.job_records import JobRecord
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate
from core.outbox import Outbox
from core.settings import Settings
from flows.job_log import JobLog
from flows.log_shipping import LogShipper
from flows.masking import scan_job_env
from flows.services import LineListener

log = logging.getLogger(__name__)


def new_job_log(job: JobExecutionDTO, settings: Settings, listen: LineListener | None = None) -> JobLog:
    """The job's log, masking its secrets (:mod:`flows.masking`); it opens with a warning for each secret
    too short to be masked. ``listen`` gives the job's listener of its lines, if any."""
    scan = scan_job_env(job.job.env, job.job.masked_env, settings)
    job_log = JobLog(settings.log_tail_bytes, secrets=scan.needles, max_line_chars=settings.log_max_line_chars,
                     chunk_bytes=settings.log_chunk_bytes, prefect_max_bytes=settings.prefect_log_max_bytes)
    listener = listen(job) if listen is not None else None
    if listener is not None:
        job_log.add_listener(listener)
    for warning in scan.warnings(settings.secret_min_length):
        job_log.note(warning)
    return job_log


class JobReporter:
    """Sends one job execution's statuses and live log to the backend; mirrors them in the local record."""

    def __init__(self, job: JobExecutionDTO, record: JobRecord, outbox: Outbox, inflight: InflightJobs,
                 settings: Settings, listen: LineListener | None = None) -> None:
        self.job = job
        self.record = record
        self.outbox = outbox
        self.log = new_job_log(job, settings, listen)
        self.final_sent = False
        self._inflight = inflight
        inflight.add(job.id, record.flow_run_id, job.job.name)
        self._shipper: LogShipper | None = None
        self._chunk_interval = settings.log_chunk_interval_seconds

    def running(self, attempt: int) -> None:
        """Report ``RUNNING`` for this attempt (a repeat for a retry carries the new attempt number)."""
        now = datetime.now(UTC)
        if self.record.start_time is None:
            metrics.QUEUE_WAIT.observe((now - self.record.accepted_at).total_seconds())
        self.record.status = ExecutionStatus.RUNNING
        self.record.attempts = attempt
        self.record.start_time = self.record.start_time or now
        self._send(JobStatusUpdate(job_execution_id=self.job.id, status=ExecutionStatus.RUNNING,
                                   logs="", attempt=attempt, start_time=self.record.start_time))
        self.record.save()  # the registry on disk: a job re-sent after a restart is answered from it
        if self._shipper is None:
            self._shipper = LogShipper(self.outbox, str(self.job.id), self.log, self._chunk_interval).start()

    def final(self, status: ExecutionStatus, *, exit_code: int | None = None, message: str | None = None) -> None:
        """Report the final status with the log; sent at most once per job execution."""
        if self.final_sent:
            return
        self.final_sent = True
        self.log.flush()
        if self._shipper is not None:
            self._shipper.close()
        now = datetime.now(UTC)
        record = self.record
        record.status, record.exit_code, record.message, record.completion_time = status, exit_code, message, now
        update = JobStatusUpdate(
            job_execution_id=self.job.id, status=status, logs=self.log.text_for_status(),
            exit_code=exit_code, attempt=record.attempts or None, start_time=record.start_time,
            completion_time=now, log_bytes=self.log.total_bytes, log_sha256=self.log.sha256,
        )
        self._send(update)
        record.save()
        self._inflight.remove(self.job.id)  # the final status is durable now: nothing left to recover
        metrics.JOBS.labels(status.value).inc()
        if record.start_time is not None:
            metrics.JOB_DURATION.observe((now - record.start_time).total_seconds())

    def _send(self, update: JobStatusUpdate) -> None:
        # Into the durable outbox: a hook never waits for the backend and an update is never lost.
        try:
            self.outbox.put_status(update)
        except Exception as exc:  # the disk failed: Prefect would swallow it, so say it loudly here
            log.error("LOST STATUS %s of job execution %s: %s", update.status, update.job_execution_id, exc)
            self.record.message = f"could not queue {update.status} for the backend: {exc}"
