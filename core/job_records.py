"""The registry of job executions: what this worker knows of each one, kept on disk across restarts.

A record holds ids, name, flow run id, status, times, exit code, attempts and a short message; never the
job's payload or env values (they may hold secrets). It is written when it is claimed and on each status
change (one short SQLite write: ``JobRecord.save``), and read back lazily on lookup, so a job execution
re-sent after a restart answers with its known state instead of running again. Records still unfinished
when a registry opens were cut off by the previous life of the worker: they are marked ``FAILED``
(the start-up recovery reports them to the backend). Final records beyond the newest
:data:`KEEP_ON_DISK` are pruned.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from core.models import ExecutionStatus, JobView
from core.state_db import open_state_db

log = logging.getLogger(__name__)

KEEP_ON_DISK = 50_000
KEEP_IN_MEMORY = 10_000
RESTART_MESSAGE = "worker restarted while the job was in flight"
_PRUNE_EVERY = 500
_FINAL = tuple(status.value for status in ExecutionStatus if status.is_final)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_execution_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    pipeline_execution_id TEXT,
    flow_run_id TEXT,
    status TEXT NOT NULL,
    final INTEGER NOT NULL,
    accepted_at REAL NOT NULL,          -- epoch seconds, like the other times
    start_time REAL,
    completion_time REAL,
    exit_code INTEGER,
    attempts INTEGER NOT NULL,
    message TEXT);
CREATE INDEX IF NOT EXISTS jobs_final ON jobs(final, accepted_at);
"""
_COLUMNS = ("job_execution_id, name, pipeline_execution_id, flow_run_id, status, final, accepted_at, start_time, "
            "completion_time, exit_code, attempts, message")


@dataclass
class JobRecord:
    """What this worker knows of one job execution."""

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
    store: JobStore | None = field(default=None, repr=False, compare=False)

    def view(self) -> JobView:
        return JobView(job_execution_id=self.job_execution_id, name=self.name, status=self.status,
                       flow_run_id=self.flow_run_id, pipeline_execution_id=self.pipeline_execution_id,
                       accepted_at=self.accepted_at, start_time=self.start_time,
                       completion_time=self.completion_time, exit_code=self.exit_code,
                       attempts=self.attempts, message=self.message)

    def save(self) -> None:
        """Write the record's current state to disk (when it has a store); never raises."""
        if self.store is not None:
            self.store.save(self)


class JobStore:
    """The records on disk (SQLite under the state dir); thread-safe."""

    def __init__(self, path: Path, keep: int = KEEP_ON_DISK) -> None:
        self.keep = keep
        self._db = open_state_db(path, _SCHEMA)
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a process crash, cheap commits
        self._lock = threading.Lock()
        self._writes = 0
        self._fail_unfinished()
        self.prune()

    def _fail_unfinished(self) -> None:
        now = datetime.now(UTC).timestamp()
        marks = ",".join("?" * len(_FINAL))
        cursor = self._db.execute(f"UPDATE jobs SET status=?, final=1, completion_time=?, message=? "
                                  f"WHERE status NOT IN ({marks})",
                                  (ExecutionStatus.FAILED.value, now, RESTART_MESSAGE, *_FINAL))
        if cursor.rowcount:
            log.warning("%d job(s) of the registry were in flight when the worker stopped: FAILED", cursor.rowcount)

    def save(self, record: JobRecord) -> None:
        """Insert or update one record (one statement); a failing disk is logged, never raised."""
        row = _row(record)
        try:
            with self._lock:
                self._db.execute(f"INSERT OR REPLACE INTO jobs ({_COLUMNS}) VALUES ({','.join('?' * len(row))})",
                                 row)
                self._writes += 1
                due = self._writes % _PRUNE_EVERY == 0
        except sqlite3.Error as exc:
            log.error("could not write job %s to the registry on disk: %s", record.job_execution_id, exc)
            return
        if due:
            self.prune()

    def load(self, job_execution_id: UUID) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_execution_id=?",
                                   (str(job_execution_id),)).fetchone()
        return _record(row, self) if row else None

    def delete(self, job_execution_id: UUID) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE job_execution_id=?", (str(job_execution_id),))

    def prune(self) -> None:
        """Keep the newest ``keep`` final records."""
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE final=1 AND accepted_at < (SELECT accepted_at FROM jobs "
                             "WHERE final=1 ORDER BY accepted_at DESC LIMIT 1 OFFSET ?)", (self.keep - 1,))


def _row(record: JobRecord) -> tuple[Any, ...]:
    return (str(record.job_execution_id), record.name, _text(record.pipeline_execution_id),
            _text(record.flow_run_id), record.status.value, int(record.status.is_final),
            record.accepted_at.timestamp(), _epoch(record.start_time), _epoch(record.completion_time),
            record.exit_code, record.attempts, record.message)


def _record(row: tuple[Any, ...], store: JobStore) -> JobRecord:
    record = JobRecord(UUID(row[0]), row[1], _uuid(row[2]), ExecutionStatus(row[4]), _uuid(row[3]),
                       _time(row[6]) or datetime.now(UTC), _time(row[7]), _time(row[8]), row[9], row[10],
                       row[11], store=store)
    record.dispatched.set()  # known from a previous life: nothing is being dispatched
    return record


def _text(value: UUID | None) -> str | None:
    return str(value) if value is not None else None


def _uuid(value: str | None) -> UUID | None:
    return UUID(value) if value else None


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class JobRegistry:
    """Job records by job execution id; ``claim`` makes execute requests idempotent, across restarts too
    when the registry has a store."""

    def __init__(self, store: JobStore | None = None) -> None:
        self._records: dict[UUID, JobRecord] = {}
        self._lock = threading.Lock()
        self._store = store

    def claim(self, job_execution_id: UUID, name: str, pipeline_execution_id: UUID | None = None,
              room: Callable[[int], None] | None = None) -> tuple[JobRecord, bool]:
        """The record for this id, and whether this call created it (False: already known, maybe on disk).

        ``room(unfinished)`` is called under the lock before a new record is made; it raises to refuse.
        A new record is written to disk before this returns.
        """
        with self._lock:
            record = self._known(job_execution_id)
            if record is not None:
                return record, False
            if room is not None:
                room(sum(1 for r in self._records.values() if not r.status.is_final))
            record = JobRecord(job_execution_id, name, pipeline_execution_id, store=self._store)
            self._records[job_execution_id] = record
        record.save()
        return record, True

    def _known(self, job_execution_id: UUID) -> JobRecord | None:
        """In memory, else from disk (then kept in memory). Called under the lock."""
        record = self._records.get(job_execution_id)
        if record is None and self._store is not None:
            record = self._store.load(job_execution_id)
            if record is not None:
                self._records[job_execution_id] = record
        return record

    def unfinished(self) -> int:
        """Jobs accepted and not final yet (queued, waiting or running)."""
        with self._lock:
            return sum(1 for record in self._records.values() if not record.status.is_final)

    def prune(self, keep: int = KEEP_IN_MEMORY, *, finals_only: bool = True) -> None:
        """Forget the oldest final records beyond ``keep`` in memory (they stay on disk, pruned there apart).

        ``finals_only=False`` forgets the oldest whatever their status: for a registry whose records never
        become final here (pool dispatch: the jobs run in other processes).
        """
        with self._lock:
            excess = len(self._records) - keep
            if excess <= 0:
                return
            finals = sorted((r for r in self._records.values() if r.status.is_final or not finals_only),
                            key=lambda r: r.accepted_at)
            for record in finals[:excess]:
                del self._records[record.job_execution_id]

    def get(self, job_execution_id: UUID) -> JobRecord | None:
        with self._lock:
            return self._known(job_execution_id)

    def forget(self, job_execution_id: UUID) -> None:
        """Drop the record, on disk too (a claim whose flow run could not be created)."""
        with self._lock:
            self._records.pop(job_execution_id, None)
        if self._store is not None:
            self._store.delete(job_execution_id)

    def all(self) -> list[JobRecord]:
        """The records in memory: those of this process life, and those looked up since."""
        with self._lock:
            return list(self._records.values())
