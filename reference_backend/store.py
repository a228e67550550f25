"""SQLite storage of the reference backend (stdlib ``sqlite3``).

One connection guarded by a lock: requests arrive on FastAPI's thread pool,
and a lock keeps each method one atomic transaction without the
busy/retry dance of several writers. WAL mode lets another process (a test,
``sqlite3`` on the command line) read the file while the backend writes.

Thread safety: every public method may be called from any thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reference_backend.violations import violations_for
from reference_backend.wire import (
    ExecutionStatus,
    JobExecutionRecord,
    JobSpec,
    JobStatusUpdate,
    PipelineRunSpec,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_executions (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, commit_hash TEXT, local INTEGER NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, stage_id TEXT, name TEXT NOT NULL, docker_image TEXT NOT NULL,
    script TEXT NOT NULL, dependencies TEXT NOT NULL, allow_failure INTEGER NOT NULL,
    artifacts TEXT NOT NULL, working_dir TEXT, env TEXT, timeout_seconds INTEGER, retries INTEGER,
    artifacts_when TEXT, masked_env TEXT, before_script TEXT, after_script TEXT, job_when TEXT,
    services TEXT, cache TEXT, inputs TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_executions (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL,
    pipeline_execution_id TEXT NOT NULL REFERENCES pipeline_executions(id),
    stage_execution_id TEXT, stage_order INTEGER, job_id TEXT NOT NULL REFERENCES jobs(id),
    status TEXT NOT NULL, waits_for TEXT NOT NULL, start_time TEXT, completion_time TEXT);
CREATE TABLE IF NOT EXISTS status_updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_execution_id TEXT NOT NULL, status TEXT NOT NULL,
    logs TEXT, exit_code INTEGER, attempt INTEGER, start_time TEXT, completion_time TEXT,
    log_bytes INTEGER, log_sha256 TEXT, received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS violations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_execution_id TEXT NOT NULL, message TEXT NOT NULL,
    received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log_chunks (
    job_execution_id TEXT NOT NULL, seq INTEGER NOT NULL, byte_offset INTEGER NOT NULL,
    lines TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (job_execution_id, seq));
CREATE TABLE IF NOT EXISTS artifacts (
    job_execution_id TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    received_at TEXT NOT NULL, PRIMARY KEY (job_execution_id, name));
"""

_JOB_EXECUTION_SELECT = """
SELECT e.id, e.pipeline_execution_id, e.stage_execution_id, e.stage_order, p.commit_hash, p.local,
       e.status, e.start_time, e.completion_time, j.id AS job_id, j.stage_id, j.name, j.docker_image,
       j.script, j.dependencies, j.allow_failure, j.artifacts, j.working_dir, j.env,
       j.timeout_seconds, j.retries, j.artifacts_when, j.masked_env, j.created_at, j.updated_at,
       j.before_script, j.after_script, j.job_when, j.services, j.cache, j.inputs
FROM job_executions e JOIN jobs j ON j.id = e.job_id
JOIN pipeline_executions p ON p.id = e.pipeline_execution_id
"""


def utc_now() -> datetime:
    """Now as a naive UTC datetime: what a Java ``LocalDateTime`` on a UTC server holds."""
    return datetime.now(UTC).replace(tzinfo=None)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


# Columns copied as they are, and columns holding JSON (NULL stays None), into the record's field of that name.
_PLAIN_COLUMNS = ("id", "pipeline_execution_id", "stage_execution_id", "stage_order", "commit_hash", "job_id",
                  "stage_id", "name", "docker_image", "working_dir", "timeout_seconds", "retries", "artifacts_when")
_JSON_COLUMNS = ("script", "dependencies", "artifacts", "env", "masked_env", "before_script", "after_script",
                 "services", "cache", "inputs")


def _record(row: sqlite3.Row) -> JobExecutionRecord:
    return JobExecutionRecord(
        **{column: row[column] for column in _PLAIN_COLUMNS},
        **{column: _json_or_none(row[column]) for column in _JSON_COLUMNS},
        local=bool(row["local"]),
        allow_failure=bool(row["allow_failure"]),
        status=ExecutionStatus(row["status"]),
        start_time=_time(row["start_time"]),
        completion_time=_time(row["completion_time"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        when=row["job_when"],
    )


def _json_or_none(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _definition_columns(job: JobSpec) -> dict[str, Any]:
    return {
        "name": job.name,
        "docker_image": job.docker_image,
        "script": json.dumps(job.script),
        "allow_failure": job.allow_failure,
        "artifacts": json.dumps(job.artifacts),
        "working_dir": job.working_dir,
        "env": json.dumps(job.env) if job.env is not None else None,
        "masked_env": json.dumps(job.masked_env) if job.masked_env is not None else None,
        "timeout_seconds": job.timeout_seconds,
        "retries": job.retries,
        "artifacts_when": job.artifacts_when,
        "before_script": json.dumps(job.before_script) if job.before_script is not None else None,
        "after_script": json.dumps(job.after_script) if job.after_script is not None else None,
        "job_when": job.when,
        **{column: json.dumps(getattr(job, column)) if getattr(job, column) is not None else None
           for column in ("services", "cache", "inputs")},
    }


class Store:
    """Pipeline runs, job executions and everything workers report about them."""

    def __init__(self, db_path: str | Path) -> None:
        self._lock = threading.Lock()
        # check_same_thread=False: the lock, not the thread, serialises access.
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        # A database made before an extension gets its columns.
        for column in ("masked_env", "before_script", "after_script", "job_when", "services", "cache", "inputs"):
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")

    def close(self) -> None:
        """Close the connection; the store is unusable afterwards. Safe to call twice."""
        with self._lock:
            self._db.close()

    # Table and column names below are constants of this module, never request data.
    def _insert(self, table: str, verb: str = "INSERT", **values: Any) -> sqlite3.Cursor:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        return self._db.execute(f"{verb} INTO {table} ({columns}) VALUES ({marks})", tuple(values.values()))

    def _exists(self, table: str, ident: str) -> bool:
        return self._db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (ident,)).fetchone() is not None

    def create_run(self, spec: PipelineRunSpec) -> tuple[str, dict[str, str]]:
        """Create a pipeline execution with one job definition and execution per job.

        Returns the pipeline execution id and a map job name → job execution id.
        """
        now = utc_now().isoformat()
        run_id = str(uuid.uuid4())
        execution_ids = {job.name: str(uuid.uuid4()) for job in spec.jobs}
        definition_ids = {job.name: str(uuid.uuid4()) for job in spec.jobs}
        # One stage (definition and execution) per distinct stageOrder, None included.
        stages = {job.stage_order: (str(uuid.uuid4()), str(uuid.uuid4())) for job in spec.jobs}
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._insert(
                "pipeline_executions",
                id=run_id,
                name=spec.name,
                commit_hash=spec.commit_hash,
                local=spec.local,
                created_at=now,
            )
            for position, job in enumerate(spec.jobs):
                stage_id, stage_execution_id = stages[job.stage_order]
                self._insert(
                    "jobs",
                    id=definition_ids[job.name],
                    stage_id=stage_id,
                    dependencies=json.dumps([definition_ids[need] for need in job.needs]),
                    created_at=now,
                    updated_at=now,
                    **_definition_columns(job),
                )
                waits_for = [execution_ids[need] for need in job.needs] + job.raw_dependencies
                self._insert(
                    "job_executions",
                    id=execution_ids[job.name],
                    position=position,
                    pipeline_execution_id=run_id,
                    stage_execution_id=stage_execution_id,
                    stage_order=job.stage_order,
                    job_id=definition_ids[job.name],
                    status=ExecutionStatus.PENDING.value,
                    waits_for=json.dumps(waits_for),
                )
        return run_id, execution_ids

    def job_execution(self, execution_id: str) -> JobExecutionRecord | None:
        """One job execution, or None if unknown."""
        with self._lock:
            row = self._db.execute(_JOB_EXECUTION_SELECT + " WHERE e.id = ?", (execution_id,)).fetchone()
        return _record(row) if row is not None else None

    def pipeline_jobs(self, run_id: str) -> list[JobExecutionRecord] | None:
        """The job executions of a pipeline run in creation order, or None if the run is unknown."""
        with self._lock:
            if not self._exists("pipeline_executions", run_id):
                return None
            rows = self._db.execute(
                _JOB_EXECUTION_SELECT + " WHERE e.pipeline_execution_id = ? ORDER BY e.position", (run_id,)
            ).fetchall()
        return [_record(row) for row in rows]

    def pipeline_name(self, run_id: str) -> str | None:
        """The name of a pipeline run, or None if unknown."""
        with self._lock:
            row = self._db.execute("SELECT name FROM pipeline_executions WHERE id = ?", (run_id,)).fetchone()
        return row["name"] if row is not None else None

    def waits_for(self, execution_id: str) -> list[str] | None:
        """Job execution ids this one waits for (``needs`` resolved, then raw ones), or None if unknown."""
        with self._lock:
            row = self._db.execute("SELECT waits_for FROM job_executions WHERE id = ?", (execution_id,)).fetchone()
        return json.loads(row["waits_for"]) if row is not None else None

    def record_status(self, update: JobStatusUpdate) -> bool:
        """Record a status update and any contract violation it shows. False if the job is unknown."""
        now = utc_now().isoformat()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if not self._exists("job_executions", update.job_execution_id):
                return False
            previous = [
                ExecutionStatus(row["status"])
                for row in self._db.execute(
                    "SELECT status FROM status_updates WHERE job_execution_id = ? ORDER BY id",
                    (update.job_execution_id,),
                )
            ]
            for message in violations_for(previous, update.status):
                self._insert("violations", job_execution_id=update.job_execution_id, message=message, received_at=now)
            self._insert("status_updates", received_at=now, **update.model_dump(mode="json"))
            # The DTO's startTime/completionTime are the backend's own receive times, as a
            # backend that stamps entities itself would hold them.
            self._db.execute(
                "UPDATE job_executions SET status = ?,"
                " start_time = CASE WHEN ? AND start_time IS NULL THEN ? ELSE start_time END,"
                " completion_time = CASE WHEN ? THEN ? ELSE completion_time END WHERE id = ?",
                (
                    update.status.value,
                    update.status is ExecutionStatus.RUNNING,
                    now,
                    update.status.is_final,
                    now,
                    update.job_execution_id,
                ),
            )
        return True

    def add_log_chunk(self, execution_id: str, seq: int, offset: int, lines: list[str]) -> bool:
        """Store a live log chunk; False if this seq was already stored (a redelivery)."""
        with self._lock, self._db:
            cursor = self._insert(
                "log_chunks",
                "INSERT OR IGNORE",
                job_execution_id=execution_id,
                seq=seq,
                byte_offset=offset,
                lines=json.dumps(lines),
                received_at=utc_now().isoformat(),
            )
        return cursor.rowcount == 1

    def add_artifact(self, execution_id: str, name: str, size: int, sha256: str) -> None:
        """Record a stored artifact; a re-upload of the same name (a retry) replaces it."""
        with self._lock, self._db:
            self._insert(
                "artifacts",
                "INSERT OR REPLACE",
                job_execution_id=execution_id,
                name=name,
                size=size,
                sha256=sha256,
                received_at=utc_now().isoformat(),
            )

    def has_artifact(self, execution_id: str, name: str) -> bool:
        """True if an artifact of that name was uploaded for that job execution."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM artifacts WHERE job_execution_id = ? AND name = ?", (execution_id, name)
            ).fetchone()
        return row is not None

    def job_report(self, execution_id: str) -> dict[str, Any] | None:
        """Everything received for one job execution, in the admin API's shape; None if unknown."""
        record = self.job_execution(execution_id)
        if record is None:
            return None
        # Rows are selected straight into their admin wire shape (camelCase aliases) to spare a model layer.
        with self._lock:
            history = self._db.execute(
                "SELECT status, logs, exit_code AS exitCode, attempt, start_time AS startTime,"
                " completion_time AS completionTime, log_bytes AS logBytes, log_sha256 AS logSha256,"
                " received_at AS receivedAt FROM status_updates WHERE job_execution_id = ? ORDER BY id",
                (execution_id,),
            ).fetchall()
            violations = self._db.execute(
                "SELECT message FROM violations WHERE job_execution_id = ? ORDER BY id", (execution_id,)
            ).fetchall()
            chunks = self._db.execute(
                "SELECT seq, byte_offset AS offset, lines FROM log_chunks WHERE job_execution_id = ? ORDER BY seq",
                (execution_id,),
            ).fetchall()
            artifacts = self._db.execute(
                "SELECT name, size, sha256 FROM artifacts WHERE job_execution_id = ? ORDER BY name",
                (execution_id,),
            ).fetchall()
        return {
            "id": record.id,
            "name": record.name,
            "pipelineExecutionId": record.pipeline_execution_id,
            "status": record.status.value,
            "history": [dict(row) for row in history],
            "violations": [row["message"] for row in violations],
            "logChunks": [{**dict(row), "lines": json.loads(row["lines"])} for row in chunks],
            "artifacts": [dict(row) for row in artifacts],
        }
