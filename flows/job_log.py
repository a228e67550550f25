"""The log of one job execution: every line the job printed and the worker said about it.

It keeps a bounded tail (for the final status update), the size and SHA-256 of the whole log (so the
backend can check completeness), and forwards lines in batches to the Prefect run logger, because one
API log record per line costs ~2 ms each (NOTES §8).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque

WORKER_PREFIX = "[cicd-worker]"
_PREFECT_BATCH_LINES = 200
_PREFECT_BATCH_SECONDS = 1.0


class JobLog:
    """Thread-safe accumulator of log lines; memory bounded by ``tail_bytes``."""

    def __init__(self, tail_bytes: int = 1_000_000) -> None:
        self._tail_bytes = tail_bytes
        self._tail: deque[str] = deque()
        self._tail_size = 0
        self._sha = hashlib.sha256()
        self.total_bytes = 0
        self.total_lines = 0
        self._lock = threading.Lock()
        self._forward: logging.LoggerAdapter | logging.Logger | None = None
        self._batch: list[str] = []
        self._batch_started = time.monotonic()

    def forward_to(self, logger: logging.LoggerAdapter | logging.Logger | None) -> None:
        """Also send lines to ``logger`` (the Prefect task run logger) in batches; ``None`` stops."""
        self.flush()
        self._forward = logger

    def line(self, text: str) -> None:
        """Add one line (without its newline)."""
        encoded = (text + "\n").encode("utf-8", errors="replace")
        with self._lock:
            self._sha.update(encoded)
            self.total_bytes += len(encoded)
            self.total_lines += 1
            self._tail.append(text)
            self._tail_size += len(encoded)
            while self._tail_size > self._tail_bytes and len(self._tail) > 1:
                self._tail_size -= len((self._tail.popleft() + "\n").encode("utf-8", errors="replace"))
            if self._forward is not None:
                self._batch.append(text)
                due = time.monotonic() - self._batch_started >= _PREFECT_BATCH_SECONDS
                if due or len(self._batch) >= _PREFECT_BATCH_LINES:
                    self._flush_locked()

    def note(self, text: str) -> None:
        """A line from the worker itself, marked so that readers can tell it from job output."""
        self.line(f"{WORKER_PREFIX} {text}")

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._batch and self._forward is not None:
            self._forward.info("\n".join(self._batch))
        self._batch = []
        self._batch_started = time.monotonic()

    @property
    def sha256(self) -> str:
        with self._lock:
            return self._sha.hexdigest()

    def text_for_status(self) -> str:
        """The kept tail, with a first line saying how much was cut when the log was longer."""
        with self._lock:
            body = "".join(line + "\n" for line in self._tail)
            omitted = self.total_bytes - self._tail_size
        if omitted > 0:
            return f"{WORKER_PREFIX} log truncated: first {omitted} of {self.total_bytes} bytes omitted\n" + body
        return body
