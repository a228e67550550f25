"""Durable delivery: every status update, log chunk and artifact goes through one outbox on disk.

Items are stored in SQLite (WAL) under ``WORKER_STATE_DIR`` and sent by one background sender, oldest
first, so that the updates of a job reach the backend in the order they were made (never an older
status after a newer one), at least once. A transient failure (connection error, timeout, 5xx, 429)
holds the queue and retries with exponential backoff and jitter, for as long as it takes; a worker
restarted with undelivered items sends them at start-up. An item the backend refuses (4xx) is logged
loudly with its answer and kept aside as ``dead`` — never retried forever, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_api.backend_client import BackendClient, BackendError, BackendRejected
from worker_api.models import JobStatusUpdate, LogChunk

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_execution_id TEXT NOT NULL,
    kind TEXT NOT NULL,                -- status | chunk | artifact
    payload TEXT NOT NULL,             -- JSON
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | dead
    last_error TEXT);
CREATE INDEX IF NOT EXISTS items_pending ON items(state, id);
"""

DELIVERED, REJECTED, PENDING = "delivered", "rejected", "pending"


@dataclass(frozen=True)
class Item:
    id: int
    job_execution_id: str
    kind: str
    payload_text: str  # JSON, sent as stored: a 64 KiB log chunk is not parsed and encoded again
    attempts: int
    next_attempt_at: float

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.payload_text))


class Outbox:
    """The worker's one delivery path to the backend; thread-safe."""

    def __init__(self, state_dir: Path, backend: BackendClient, *, max_backoff: float = 30.0) -> None:
        self.dir = state_dir / "outbox"
        self.files = self.dir / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.dir / "outbox.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._backend = backend
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outcomes: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.live_logs = True

    # -- producers ------------------------------------------------------------------------------

    def put_status(self, update: JobStatusUpdate) -> int:
        return self._put(str(update.job_execution_id), "status", update.to_wire())

    def put_chunk(self, chunk: LogChunk) -> int | None:
        """Queue a live log chunk; None once the backend has shown it has no live-log endpoint."""
        if not self.live_logs:
            return None
        return self._put(str(chunk.job_execution_id), "chunk", chunk.to_wire())

    def put_artifact(self, job_execution_id: str, relative_path: str, local_file: Path) -> int:
        """Queue an upload; the file is moved into the outbox so it survives a restart."""
        stored = self.files / f"{uuid.uuid4().hex}"
        shutil.move(local_file, stored)
        return self._put(job_execution_id, "artifact", {"path": relative_path, "file": str(stored)})

    def _put(self, job_execution_id: str, kind: str, payload: dict[str, Any]) -> int:
        with self._changed:
            cursor = self._db.execute(
                "INSERT INTO items (job_execution_id, kind, payload, created_at) VALUES (?, ?, ?, ?)",
                (job_execution_id, kind, json.dumps(payload), time.time()))
            self._changed.notify_all()
            return int(cursor.lastrowid or 0)

    # -- observers ------------------------------------------------------------------------------

    def wait(self, item_ids: Iterable[int], timeout: float) -> dict[int, str]:
        """Outcome of each artifact item (delivered, rejected: <answer>, or pending) once all are done or at
        timeout. Outcomes are handed out once."""
        ids = list(item_ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                outcomes = {i: self._outcomes.get(i, PENDING) for i in ids}
                remaining = deadline - time.monotonic()
                if all(o != PENDING for o in outcomes.values()) or remaining <= 0:
                    for i in ids:
                        self._outcomes.pop(i, None)
                    return outcomes
                self._changed.wait(min(remaining, 1.0))

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending; False when items are still waiting at the timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count("pending") > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True

    def stats(self) -> dict[str, Any]:
        """Depth, age of the oldest pending item (seconds) and the count kept aside as dead."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), MIN(created_at) FROM items WHERE state='pending'").fetchone()
            dead = self._count("dead")
        oldest = round(time.time() - row[1], 3) if row[1] is not None else None
        return {"depth": row[0], "oldestAgeSeconds": oldest, "dead": dead}

    def dead_items(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job_execution_id, kind, last_error FROM items WHERE state='dead' ORDER BY id").fetchall()
        return [{"id": r[0], "jobExecutionId": r[1], "kind": r[2], "error": r[3]} for r in rows]

    def _count(self, state: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items WHERE state=?", (state,)).fetchone()[0])

    # -- the sender -----------------------------------------------------------------------------

    def start(self) -> Outbox:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._head()
            if item is None or item.next_attempt_at > time.time():
                with self._changed:
                    delay = 1.0 if item is None else min(item.next_attempt_at - time.time(), 1.0)
                    self._changed.wait(max(delay, 0.01))
                continue
            self._deliver(item)

    def _head(self) -> Item | None:
        with self._lock:
            row = self._db.execute("SELECT id, job_execution_id, kind, payload, attempts, next_attempt_at FROM items "
                                   "WHERE state='pending' ORDER BY id LIMIT 1").fetchone()
        return Item(row[0], row[1], row[2], row[3], row[4], row[5]) if row else None

    def _deliver(self, item: Item) -> None:
        try:
            self._send(item)
        except BackendRejected as exc:
            self._rejected(item, exc)
        except (BackendError, OSError) as exc:
            self._retry_later(item, exc)
        else:
            self._done(item, DELIVERED)

    def _send(self, item: Item) -> None:
        if item.kind == "status":
            self._backend.post_json_text("/job/status", item.payload_text)
        elif item.kind == "chunk":
            if not self._backend.send_log_chunk_text(item.payload_text):
                log.info("backend has no live-log endpoint: logs go in the final status only")
                self.live_logs = False
        elif item.kind == "artifact":
            content = Path(item.payload["file"]).read_bytes()
            self._backend.upload_artifact(item.job_execution_id, item.payload["path"], content)

    def _done(self, item: Item, outcome: str) -> None:
        if item.kind == "artifact":
            Path(item.payload["file"]).unlink(missing_ok=True)
        with self._changed:
            self._db.execute("DELETE FROM items WHERE id=?", (item.id,))
            self._note_outcome(item, outcome)
            self._changed.notify_all()

    def _note_outcome(self, item: Item, outcome: str) -> None:
        # Only artifact uploads are waited for; keeping other outcomes would grow without bound.
        if item.kind == "artifact":
            self._outcomes[item.id] = outcome

    def _rejected(self, item: Item, exc: BackendRejected) -> None:
        log.error("BACKEND REFUSED %s of job %s (kept aside in the outbox as dead): %s",
                  item.kind, item.job_execution_id, exc)
        with self._changed:
            self._db.execute("UPDATE items SET state='dead', last_error=? WHERE id=?", (str(exc), item.id))
            self._note_outcome(item, f"{REJECTED}: {exc}")
            if item.kind == "artifact":
                self._fail_queued_final_status(item, exc)
            self._changed.notify_all()

    def _fail_queued_final_status(self, item: Item, exc: BackendRejected) -> None:
        """A job whose artifact was refused must not be reported SUCCESS by a status still queued."""
        rows = self._db.execute("SELECT id, payload FROM items WHERE state='pending' AND kind='status' "
                                "AND job_execution_id=? AND id>?", (item.job_execution_id, item.id)).fetchall()
        for row_id, payload_text in rows:
            payload = json.loads(payload_text)
            if payload.get("status") == "SUCCESS":
                payload["status"] = "FAILED"
                payload["logs"] = (payload.get("logs") or "") + (
                    f"[cicd-worker] artifact {item.payload['path']} refused by the backend: {exc}\n")
                self._db.execute("UPDATE items SET payload=? WHERE id=?", (json.dumps(payload), row_id))

    def _retry_later(self, item: Item, exc: Exception) -> None:
        attempts = item.attempts + 1
        backoff = min(self._max_backoff, 0.2 * 2 ** min(attempts, 20)) * random.uniform(0.5, 1.0)
        if attempts == 1 or attempts % 10 == 0:
            log.warning("delivery of %s for job %s failed (attempt %d), retrying in %.1f s: %s",
                        item.kind, item.job_execution_id, attempts, backoff, exc)
        with self._lock:
            self._db.execute("UPDATE items SET attempts=?, next_attempt_at=?, last_error=? WHERE id=?",
                             (attempts, time.time() + backoff, str(exc), item.id))
