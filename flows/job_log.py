"""The log of one job execution: every line the job printed and the worker said about it.

Lines are masked (values of secret env vars and their encoded forms become ``[MASKED]``, see
:mod:`flows.masking`) and split when longer than a limit before anything else sees them, so every
sink — the final status, live chunks, the Prefect UI — gets the same text. The log keeps a bounded
tail (for the final status), the size and SHA-256 of the whole log (so the backend can check
completeness), a bounded pending chunk for live shipping, and forwards lines in batches to the Prefect
run logger (one API record per line costs ~2 ms). Memory stays bounded however much a job prints.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable

from flows.masking import Masker

WORKER_PREFIX = "[cicd-worker]"
_PREFECT_BATCH_LINES = 200
_PREFECT_BATCH_SECONDS = 1.0


class JobLog:
    """Thread-safe accumulator of log lines; see the module docstring.

    ``secrets``: every string to mask (values and their forms, from :func:`flows.masking.scan_secrets`).
    """

    def __init__(self, tail_bytes: int = 1_000_000, *, secrets: Iterable[str] = (), max_line_chars: int = 65536,
                 chunk_bytes: int = 65536, prefect_max_bytes: int = 5_000_000) -> None:
        self._tail_bytes = tail_bytes
        self._masker = Masker(secrets)
        # None when there is nothing to mask: the hot path then pays one comparison per line.
        self._mask = self._masker.mask if self._masker else None
        self._max_line_chars = max_line_chars
        self.chunk_bytes = chunk_bytes
        self._prefect_budget = prefect_max_bytes
        self._tail: deque[tuple[str, int]] = deque()  # (line, its size in bytes with the newline)
        self._tail_size = 0
        self._sha = hashlib.sha256()
        self.total_bytes = 0
        self.total_lines = 0
        self._lock = threading.Lock()
        self._forward: logging.LoggerAdapter | logging.Logger | None = None
        self._batch: list[str] = []
        self._batch_started = time.monotonic()
        self._chunk: list[str] = []
        self._chunk_size = 0
        self._chunk_offset = 0
        self._chunk_seq = 0
        self.chunk_full = threading.Event()

    def mask(self, text: str) -> str:
        """``text`` with every secret (and each of its forms) replaced by ``[MASKED]``."""
        return self._masker.mask(text)

    def forward_to(self, logger: logging.LoggerAdapter | logging.Logger | None) -> None:
        """Also send lines to ``logger`` (the Prefect task run logger) in batches; ``None`` stops."""
        self.flush()
        self._forward = logger

    def line(self, text: str) -> None:
        """Add one line (without its newline); a line longer than the limit becomes several."""
        if self._mask is not None:
            text = self._mask(text)
        step = self._max_line_chars
        pieces = [text[i:i + step] for i in range(0, len(text), step)] if len(text) > step else [text]
        with self._lock:
            for piece in pieces:
                self._add_locked(piece)

    def _add_locked(self, text: str) -> None:
        # Hot path (a job may print millions of lines): encode once, remember sizes, signal once per chunk.
        encoded = (text + "\n").encode("utf-8", errors="replace")
        size = len(encoded)
        self._sha.update(encoded)
        self.total_bytes += size
        self.total_lines += 1
        self._tail.append((text, size))
        self._tail_size += size
        while self._tail_size > self._tail_bytes and len(self._tail) > 1:
            self._tail_size -= self._tail.popleft()[1]
        self._chunk.append(text)
        before = self._chunk_size
        self._chunk_size += size
        if before < self.chunk_bytes <= self._chunk_size:
            self.chunk_full.set()
        if self._forward is not None:
            self._forward_locked(text, size)

    def _forward_locked(self, text: str, size: int) -> None:
        if self._forward is None or self._prefect_budget <= 0:
            return
        self._prefect_budget -= size
        self._batch.append(text if self._prefect_budget > 0 else
                           f"{WORKER_PREFIX} further output not sent to Prefect (limit reached); the backend has it")
        due = time.monotonic() - self._batch_started >= _PREFECT_BATCH_SECONDS
        if due or len(self._batch) >= _PREFECT_BATCH_LINES or self._prefect_budget <= 0:
            self._flush_locked()

    def note(self, text: str) -> None:
        """A line from the worker itself, marked so that readers can tell it from job output."""
        self.line(f"{WORKER_PREFIX} {text}")

    def take_chunk(self) -> tuple[int, int, list[str]] | None:
        """The lines not yet shipped as ``(seq, byte offset, lines)``, or None when there are none."""
        with self._lock:
            self.chunk_full.clear()
            if not self._chunk:
                return None
            taken = (self._chunk_seq, self._chunk_offset, self._chunk)
            self._chunk_seq += 1
            self._chunk_offset += self._chunk_size
            self._chunk, self._chunk_size = [], 0
            return taken

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
            body = "".join(line + "\n" for line, _ in self._tail)
            omitted = self.total_bytes - self._tail_size
        if omitted > 0:
            return f"{WORKER_PREFIX} log truncated: first {omitted} of {self.total_bytes} bytes omitted\n" + body
        return body
