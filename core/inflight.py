"""The in-flight store: job executions accepted and not yet final, on disk so that a crash cannot hide them.

Every job is written down (SQLite, under ``WORKER_STATE_DIR``) when it is accepted and removed once its final
status is queued in the outbox; what is still written down at start-up was cut off (``flows.recovery``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from uuid import UUID

from core.state_db import open_state_db, private_dir


class InflightJobs:
    """Job executions accepted and not yet final, kept on disk across crashes."""

    def __init__(self, state_dir: Path) -> None:
        private_dir(state_dir)
        self._db = open_state_db(state_dir / "inflight.db", "CREATE TABLE IF NOT EXISTS inflight (job_execution_id "
                                 "TEXT PRIMARY KEY, flow_run_id TEXT, name TEXT, accepted_at REAL NOT NULL)")
        self._lock = threading.Lock()

    def add(self, job_execution_id: UUID, flow_run_id: UUID | None, name: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO inflight VALUES (?, ?, ?, ?)",
                             (str(job_execution_id), str(flow_run_id) if flow_run_id else None, name, time.time()))

    def set_flow_run(self, job_execution_id: UUID, flow_run_id: UUID) -> None:
        """Name the flow run of a job still in flight (one created after the job started); nothing otherwise."""
        with self._lock:
            self._db.execute("UPDATE inflight SET flow_run_id=? WHERE job_execution_id=?",
                             (str(flow_run_id), str(job_execution_id)))

    def remove(self, job_execution_id: UUID) -> None:
        with self._lock:
            self._db.execute("DELETE FROM inflight WHERE job_execution_id=?", (str(job_execution_id),))

    def all(self) -> list[tuple[str, str | None, str]]:
        with self._lock:
            return list(self._db.execute("SELECT job_execution_id, flow_run_id, name FROM inflight"))
