"""Durable delivery: every status update, log chunk and artifact of a job the worker runs goes through one
outbox on disk.

Items are stored in SQLite (WAL) under ``WORKER_STATE_DIR`` and sent by one background sender, oldest
first, so that the updates of a job reach the backend in the order they were made (never an older
status after a newer one), at least once. Only a 2xx answer delivers an item. Every item is delivered
or set aside as ``dead`` with its reason, and the items after it keep flowing: an item the backend
refuses (4xx) is dead at once; any other failure is retried with exponential backoff and jitter, within
the bounds of :mod:`core.delivery_policy` (a backend that cannot be reached holds the queue for as
long as it takes; an answer that is no success, or an exception on our side, counts against the item).
A worker restarted with undelivered items sends them at start-up.

The sender is a :class:`~core.supervised.SupervisedLoop`: an exception escaping one round is
logged and the loop goes on, a dead sender thread is restarted, and ``stats()["senderAlive"]`` is False
while it is down or while one delivery runs past the call deadline plus a margin.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.backend_client import BackendClient, BackendRejected, BackendUnavailable
from core.delivery_policy import (
    CAUSES,
    FAILING,
    NO_EXTENSION,
    REFUSED,
    ExtensionHealth,
    FailureCount,
    OutboxLimits,
    backoff,
)
from core.models import JobStatusUpdate, LogChunk
from core.multipart import name_bytes, readable_name
from core.state_db import PRIVATE_FILE_MODE, open_state_db, private_dir
from core.supervised import SupervisedLoop

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
-- A table of its own (not columns of items) so that a database made by an older worker gains it too.
CREATE TABLE IF NOT EXISTS failures (
    item_id INTEGER PRIMARY KEY,
    counted INTEGER NOT NULL DEFAULT 0,  -- failures the item or the backend's answers are to blame for
    local INTEGER NOT NULL DEFAULT 0,    -- of those, exceptions on our side
    first_at REAL,                       -- epoch seconds of the first counted failure
    cause TEXT);                         -- why the item is dead (delivery_policy.CAUSES)
"""

DELIVERED, REJECTED, PENDING = "delivered", "rejected", "pending"
_EXTENSIONS = {"chunk": "live log chunks (POST /job/logs)", "artifact": "artifact upload (POST /job/artifact/upload)"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LAST_DEAD = 5


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
    """The worker's delivery path to the backend for the statuses, log chunks and artifacts of the jobs it
    runs (the refusal of an invalid pipeline run is posted directly: ``flows.pipeline_plan``); thread-safe."""

    def __init__(self, state_dir: Path, backend: BackendClient, limits: OutboxLimits | None = None) -> None:
        self.dir = state_dir / "outbox"
        self.files = self.dir / "files"
        private_dir(state_dir)
        private_dir(self.files)
        # Checked on open: a damaged database is moved aside and a fresh one made (core.state_db).
        self._db = open_state_db(self.dir / "outbox.db", _SCHEMA)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._backend = backend
        self.limits = limits or OutboxLimits()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outcomes: dict[int, str] = {}
        self._chunks_queued: dict[str, int] = {}  # job -> chunks put and not delivered nor set aside (this process)
        self._stop = threading.Event()
        self.sender = SupervisedLoop("outbox-sender", self._round, self._stop,
                                     stuck_after=self.limits.stuck_after_seconds,
                                     period=self.limits.watchdog_seconds, max_pause=self.limits.max_backoff)
        self._extensions = {kind: ExtensionHealth(self.limits.extension_max_failures,
                                                  self.limits.extension_max_failing_seconds) for kind in _EXTENSIONS}
        self.live_logs = True

    # -- producers ------------------------------------------------------------------------------

    def put_status(self, update: JobStatusUpdate) -> int:
        return self._put(str(update.job_execution_id), "status", update.to_wire())

    def put_chunk(self, chunk: LogChunk) -> int | None:
        """Queue a live log chunk; None once the backend has shown it has no live-log endpoint."""
        return self.put_chunk_lines(str(chunk.job_execution_id), chunk.seq, chunk.offset, chunk.lines)

    def put_chunk_lines(self, job_execution_id: str, seq: int, offset: int, lines: list[str]) -> int | None:
        """:meth:`put_chunk` from its parts: the JSON text is made from ``lines`` at once, with no model copy of
        the list (a chunk may hold tens of thousands of lines)."""
        if not self.live_logs:
            return None
        text = chunk_json(job_execution_id, seq, offset, lines)
        return self._put_text(job_execution_id, "chunk", text)

    def undelivered_chunks(self, job_execution_id: str) -> int:
        """Live log chunks of the job queued and not delivered yet: the shipper makes larger chunks while the
        sender is behind (fewer requests carry the same lines)."""
        with self._lock:
            return self._chunks_queued.get(job_execution_id, 0)

    def put_artifact(self, job_execution_id: str, relative_path: str, local_file: Path) -> int:
        """Queue an upload; the file is moved into the outbox so it survives a restart.

        ``relative_path`` may carry surrogate escapes (a name that is not UTF-8): its bytes are kept
        apart, so that the upload names the file exactly while every text shows ``readable_name``.
        """
        stored = self.files / f"{uuid.uuid4().hex}"
        shutil.move(local_file, stored)
        stored.chmod(PRIVATE_FILE_MODE)  # job output may hold secrets: readable by the worker's user only
        raw = name_bytes(relative_path)
        payload: dict[str, Any] = {"path": readable_name(raw), "file": str(stored)}
        if payload["path"].encode() != raw:
            payload["rawPath"] = base64.b64encode(raw).decode("ascii")
        return self._put(job_execution_id, "artifact", payload)

    def _put(self, job_execution_id: str, kind: str, payload: dict[str, Any]) -> int:
        return self._put_text(job_execution_id, kind, json.dumps(payload, ensure_ascii=False))

    def _put_text(self, job_execution_id: str, kind: str, text: str) -> int:
        text = _storable(text)
        with self._changed:
            cursor = self._db.execute(
                "INSERT INTO items (job_execution_id, kind, payload, created_at) VALUES (?, ?, ?, ?)",
                (job_execution_id, kind, text, time.time()))
            if kind == "chunk":
                self._chunks_queued[job_execution_id] = self._chunks_queued.get(job_execution_id, 0) + 1
            self._changed.notify_all()
            return int(cursor.lastrowid or 0)

    def _chunk_gone_locked(self, item: Item) -> None:
        if item.kind == "chunk" and (left := self._chunks_queued.pop(item.job_execution_id, 0) - 1) > 0:
            self._chunks_queued[item.job_execution_id] = left

    # -- observers ------------------------------------------------------------------------------

    def wait(self, item_ids: Iterable[int], timeout: float) -> dict[int, str]:
        """Outcome of each artifact item (delivered, rejected: <reason>, or pending) once all are done or at
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
        """Depth, age of the oldest pending item (s), dead items (count, by cause, the last reasons) and
        whether the sender is alive (False: not running, or one delivery stuck; ``senderProblem`` says)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*), MIN(created_at) FROM items WHERE state='pending'").fetchone()
            by_cause = dict(self._db.execute(
                "SELECT COALESCE(f.cause, ?), COUNT(*) FROM items i LEFT JOIN failures f ON f.item_id = i.id "
                "WHERE i.state='dead' GROUP BY 1", (REFUSED,)).fetchall())
        oldest = round(time.time() - row[1], 3) if row[1] is not None else None
        problem = self.sender.problem()
        return {"depth": row[0], "oldestAgeSeconds": oldest, "dead": sum(by_cause.values()),
                "deadByCause": {cause: int(by_cause.get(cause, 0)) for cause in CAUSES},
                "lastDead": self.dead_items(last=_LAST_DEAD), "senderAlive": problem is None,
                "senderProblem": problem, "senderRestarts": self.sender.restarts}

    def dead_items(self, last: int | None = None) -> list[dict[str, Any]]:
        """Items set aside, oldest first (or only the ``last`` most recent), with cause and reason."""
        query = ("SELECT i.id, i.job_execution_id, i.kind, COALESCE(f.cause, ?), i.last_error FROM items i "
                 "LEFT JOIN failures f ON f.item_id = i.id WHERE i.state='dead' ORDER BY i.id DESC LIMIT ?")
        with self._lock:
            rows = self._db.execute(query, (REFUSED, -1 if last is None else last)).fetchall()
        return [{"id": r[0], "jobExecutionId": r[1], "kind": r[2], "cause": r[3], "error": (r[4] or "")[:1000]}
                for r in reversed(rows)]

    def _count(self, state: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items WHERE state=?", (state,)).fetchone()[0])

    # -- the sender ---------------------------------------------------------------------------

    def start(self) -> Outbox:
        """Start the supervised sender (once; later calls do nothing)."""
        self.sender.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._lock.acquire(timeout=5):  # bounded: stopping must not hang on a sender wedged with the lock
            try:
                self._changed.notify_all()
            finally:
                self._lock.release()
        self.sender.join(timeout=15)

    def _round(self) -> None:
        item = self._head()
        if item is None or item.next_attempt_at > time.time():
            with self._changed:
                delay = 1.0 if item is None else min(item.next_attempt_at - time.time(), 1.0)
                self._changed.wait(max(delay, 0.01))
            return
        with self.sender.busy():
            self._deliver(item)

    def _head(self) -> Item | None:
        with self._lock:
            row = self._db.execute("SELECT id, job_execution_id, kind, payload, attempts, next_attempt_at FROM items "
                                   "WHERE state='pending' ORDER BY id LIMIT 1").fetchone()
        return Item(row[0], row[1], row[2], row[3], row[4], row[5]) if row else None

    # -- one delivery ---------------------------------------------------------------------------

    def _deliver(self, item: Item) -> None:
        try:
            self._send(item)
        except BackendRejected as exc:
            self._set_aside(item, REFUSED, str(exc))
        except BackendUnavailable as exc:
            self._unavailable(item, exc)
        except Exception as exc:  # building or reading the item failed on our side, whatever the reason
            self._failed(item, f"{type(exc).__name__}: {exc}", counted=True, local=True)
        else:
            if item.kind in self._extensions:
                self._extensions[item.kind].succeeded()
            self._done(item, DELIVERED)

    def _send(self, item: Item) -> None:
        if item.kind == "status":
            self._backend.post_json_text("/job/status", item.payload_text)
        elif item.kind == "chunk":
            if not self._backend.send_log_chunk_text(item.payload_text):
                log.info("backend has no live-log endpoint: logs go in the final status only")
                self.live_logs = False
        elif item.kind == "artifact":
            payload = item.payload
            raw = base64.b64decode(payload["rawPath"]) if "rawPath" in payload else name_bytes(payload["path"])
            self._backend.upload_artifact(item.job_execution_id, raw, Path(payload["file"]))
        else:
            raise ValueError(f"unknown outbox item kind {item.kind!r}")

    def _done(self, item: Item, outcome: str) -> None:
        if item.kind == "artifact":
            Path(item.payload["file"]).unlink(missing_ok=True)
        with self._changed:
            self._db.execute("DELETE FROM items WHERE id=?", (item.id,))
            self._db.execute("DELETE FROM failures WHERE item_id=?", (item.id,))
            self._chunk_gone_locked(item)
            self._note_outcome(item, outcome)
            self._changed.notify_all()

    def _note_outcome(self, item: Item, outcome: str) -> None:
        # Only artifact uploads are waited for; keeping other outcomes would grow without bound.
        if item.kind == "artifact":
            self._outcomes[item.id] = outcome

    def _unavailable(self, item: Item, exc: BackendUnavailable) -> None:
        extension = self._extensions.get(item.kind)
        if extension is not None and exc.status_code is not None and exc.status_code >= 500:
            now = time.monotonic()
            if extension.failed(now):
                self._extension_missing(item, f"{extension.describe(now)}, last: {exc}")
                return
        self._failed(item, str(exc), counted=exc.answered, local=False)

    def _extension_missing(self, item: Item, reason: str) -> None:
        """The backend is taken not to have this extension, as a 404 would have said."""
        what = _EXTENSIONS[item.kind]
        if item.kind == "artifact":
            self._set_aside(item, NO_EXTENSION, f"backend taken not to accept {what}: {reason}")
            return
        self.live_logs = False
        with self._changed:
            dropped = self._db.execute("DELETE FROM items WHERE kind='chunk' AND state='pending'").rowcount
            self._db.execute("DELETE FROM failures WHERE item_id NOT IN (SELECT id FROM items)")
            self._chunks_queued.clear()
            self._changed.notify_all()
        log.error("backend taken not to have %s (%s): live logs off, %d queued chunk(s) dropped; final statuses "
                  "carry the log", what, reason, dropped)

    def _failed(self, item: Item, reason: str, *, counted: bool, local: bool) -> None:
        """One failed attempt: counted or not, then dead (bounds reached) or tried again later."""
        now = time.time()
        with self._changed:
            count = self._failure_count(item.id)
            if counted:
                count = count.add(now, local=local)
            cause = count.dead_cause(self.limits, now)
            if cause is None:
                attempts = item.attempts + 1
                delay = backoff(attempts, self.limits.max_backoff)
                self._save_failure_count(item.id, count)
                self._db.execute("UPDATE items SET attempts=?, next_attempt_at=?, last_error=? WHERE id=?",
                                 (attempts, now + delay, reason, item.id))
        if cause is not None:
            described = (f"{count.counted} failed attempts over {now - (count.first_at or now):.0f} s"
                         if cause == FAILING else f"{count.local} failures on our side")
            self._set_aside(item, cause, f"{described}; last: {reason}")
        elif item.attempts == 0 or (item.attempts + 1) % 10 == 0:
            log.warning("delivery of %s for job %s failed (attempt %d, %d counted), retrying in %.1f s: %s",
                        item.kind, item.job_execution_id, item.attempts + 1, count.counted, delay, reason)

    def _failure_count(self, item_id: int) -> FailureCount:
        row = self._db.execute("SELECT counted, local, first_at FROM failures WHERE item_id=?", (item_id,)).fetchone()
        return FailureCount(row[0], row[1], row[2]) if row else FailureCount()

    def _save_failure_count(self, item_id: int, count: FailureCount, cause: str | None = None) -> None:
        self._db.execute("INSERT OR REPLACE INTO failures (item_id, counted, local, first_at, cause) "
                         "VALUES (?, ?, ?, ?, ?)", (item_id, count.counted, count.local, count.first_at, cause))

    def _set_aside(self, item: Item, cause: str, reason: str) -> None:
        """Dead: kept in the database with its reason, never retried; a job whose artifact it was fails."""
        log.error("OUTBOX ITEM SET ASIDE (dead, %s): %s of job %s: %s", cause, item.kind, item.job_execution_id,
                  reason)
        with self._changed:
            self._db.execute("UPDATE items SET state='dead', last_error=? WHERE id=?", (reason, item.id))
            self._save_failure_count(item.id, self._failure_count(item.id), cause)
            self._chunk_gone_locked(item)
            self._note_outcome(item, f"{REJECTED}: {reason}")
            if item.kind == "artifact":
                self._fail_queued_final_status(item, reason)
            self._changed.notify_all()

    def _fail_queued_final_status(self, item: Item, reason: str) -> None:
        """A job whose artifact was lost must not be reported SUCCESS by a status still queued."""
        rows = self._db.execute("SELECT id, payload FROM items WHERE state='pending' AND kind='status' "
                                "AND job_execution_id=? AND id>?", (item.job_execution_id, item.id)).fetchall()
        for row_id, payload_text in rows:
            payload = json.loads(payload_text)
            if payload.get("status") == "SUCCESS":
                payload["status"] = "FAILED"
                payload["logs"] = (payload.get("logs") or "") + (
                    f"[cicd-worker] artifact {item.payload['path']} not delivered: {reason}\n")
                self._db.execute("UPDATE items SET payload=? WHERE id=?", (json.dumps(payload), row_id))


def chunk_json(job_execution_id: str, seq: int, offset: int, lines: list[str]) -> str:
    """The wire text of a live log chunk (``LogChunk.to_wire()`` as JSON), the lines encoded once by ``json``."""
    head = json.dumps({"jobExecutionId": str(uuid.UUID(job_execution_id)), "seq": int(seq), "offset": int(offset)})
    return f'{head[:-1]}, "lines": {json.dumps(lines, ensure_ascii=False)}}}'


def _storable(text: str) -> str:
    """``text`` with every lone surrogate (bytes of job output or a file name that were not UTF-8) replaced by
    U+FFFD: such text can be neither stored nor sent as UTF-8. ASCII text (``isascii`` is O(1)) has none."""
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)
