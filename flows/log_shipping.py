"""Live log chunks to the backend (contract extension ``POST /job/logs``).

A background thread moves what the job printed into the outbox at least every second or every 64 KiB
(``WORKER_LOG_CHUNK_BYTES``), in chunks of about that size (:meth:`flows.job_log.JobLog.take_chunk`), in
order (``seq`` counts chunks from 0, ``offset`` is the chunk's byte offset in the whole log). While the
outbox still holds chunks of the job that are not delivered (the job prints faster than the backend takes
chunks), the chunks grow to 512 KiB (``flows.job_log.CATCH_UP_CHUNK_BYTES``): each request to the backend costs
about the same whatever its size, so fewer, larger ones catch up sooner; a job printing slowly still gets
small chunks every second. A backend that answers 404/405 has no live logs: the outbox stops taking chunks
and the final status carries the log instead.
"""

from __future__ import annotations

import logging
import threading
from uuid import UUID

from core.outbox import Outbox
from flows.job_log import JobLog

log = logging.getLogger(__name__)


class LogShipper:
    """Ships one job's log chunks while it runs; ``close()`` ships the rest before the final status."""

    def __init__(self, outbox: Outbox, job_execution_id: str, job_log: JobLog, interval: float = 1.0) -> None:
        self.outbox = outbox
        self.job_execution_id = str(UUID(job_execution_id))
        self.log = job_log
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"logship-{job_execution_id[:8]}", daemon=True)

    def start(self) -> LogShipper:
        self._thread.start()
        self.log.ship_in_chunks()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._aim()
            if not self._stop.is_set():  # close() sets the event after _stop: an aim that cleared it came first
                self.log.chunk_full.wait(self.interval)  # set again at once while a whole chunk is still waiting
            self._ship(self.log.take_chunk())

    def _aim(self) -> None:
        behind = self.outbox.undelivered_chunks(self.job_execution_id) > 0
        self.log.aim(self.log.max_chunk_bytes if behind else self.log.chunk_bytes)

    def _ship(self, chunk: tuple[int, int, list[str]] | None) -> None:
        if chunk is None:
            return
        seq, offset, lines = chunk
        try:
            self.outbox.put_chunk_lines(self.job_execution_id, seq, offset, lines)
        except Exception as exc:  # the disk failed; the final status still carries the log tail
            log.error("live log chunk %d of job %s lost: %s", seq, self.job_execution_id, exc)

    def close(self) -> None:
        """Stop the thread and ship whatever is left, so that chunks precede the final status."""
        self._stop.set()
        self.log.ship_in_chunks(False)
        self.log.chunk_full.set()
        if self._thread.is_alive():
            self._thread.join()
        self._aim()
        while (chunk := self.log.take_chunk()) is not None:
            self._ship(chunk)
