"""The log of one job execution: every line the job printed and the worker said about it.

Lines are masked (values of secret env vars and their encoded forms become ``[MASKED]``, see
:mod:`flows.masking`) and split when longer than a limit before anything else sees them, so every
sink — the final status, live chunks, the Prefect UI, listeners — gets the same text. The log keeps a
bounded tail (for the final status), the size and SHA-256 of the whole log (so the backend can check
completeness), the pending lines for the next live chunk, and forwards lines to the Prefect run logger
in large records, up to a cap per job. Memory stays bounded however much a job prints.

Lines come in batches (a block of container output: :class:`executors.output.BatchSink`), and the work
is per batch, not per line: the batch is joined, masked with one pass over the text, encoded and hashed
once; tail and chunk keep the batch's list as it is. A job printing a million lines costs a few Python
steps per block of output.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain

from executors.output import cut_lines
from flows.masking import Masker

log = logging.getLogger(__name__)
WORKER_PREFIX = "[cicd-worker]"
_PREFECT_RECORD_BYTES = 65536  # one Prefect log record holds about this much (the API refuses records over 1 MB)
_PREFECT_BATCH_SECONDS = 1.0
# The largest chunk a shipper takes by default (when it is behind: fewer requests). Each chunk in flight is held
# several times (lines, JSON text, request body); 512 KiB measured half the memory of 1 MiB at nearly its speed.
CATCH_UP_CHUNK_BYTES = 512 << 10
_PENDING_BYTES = 1 << 20  # with a shipper, the lines not yet taken stay under this (or two largest chunks): the
# reader waits. Held as str objects, a line of 50 bytes takes about 100: a few MiB whatever the chunk size.
_PENDING_WAIT_SECONDS = 1.0  # a shipper that takes nothing for this long is not waited for any more
_PREFECT_LIMIT_NOTE = f"{WORKER_PREFIX} further output not sent to Prefect (limit reached); the backend has it"

Listener = Callable[[list[str]], None]


class JobLog:
    """Thread-safe accumulator of log lines; see the module docstring.

    ``secrets``: every string to mask (values and their forms, from :func:`flows.masking.scan_secrets`).
    A JobLog is itself a line sink (``log(text)`` adds one line) that takes batches (:meth:`lines`).
    """

    def __init__(self, tail_bytes: int = 1_000_000, *, secrets: Iterable[str] = (), max_line_chars: int = 65536,
                 chunk_bytes: int = 65536, prefect_max_bytes: int = 2_000_000,
                 max_chunk_bytes: int = CATCH_UP_CHUNK_BYTES) -> None:
        self._tail_bytes = tail_bytes
        self._masker = Masker(secrets)
        # None when there is nothing to mask: the hot path then pays one comparison per batch.
        self._mask = self._masker.mask if self._masker else None
        self._max_line_chars = max_line_chars
        self.chunk_bytes = chunk_bytes
        self.max_chunk_bytes = max(chunk_bytes, max_chunk_bytes)
        self._chunk_target = chunk_bytes  # chunk_full is set once this much waits; a chunk takes up to this
        self._pending_limit = max(_PENDING_BYTES, 2 * self.max_chunk_bytes)
        self._prefect_budget = prefect_max_bytes
        # Whole batches, newest last, (lines, bytes with newlines): trimmed to tail_bytes at status time.
        self._tail: deque[tuple[list[str], int]] = deque()
        self._tail_size = 0
        self._sha = hashlib.sha256()
        self.total_bytes = 0
        self.total_lines = 0
        self._lock = threading.Lock()
        self._forward: logging.LoggerAdapter | logging.Logger | None = None
        self._batch: list[str] = []
        self._batch_size = 0
        self._batch_started = time.monotonic()
        self._chunk: list[list[str]] = []  # batches not yet shipped, and their sizes
        self._chunk_sizes: list[int] = []
        self._chunk_size = 0
        self._chunk_offset = 0
        self._chunk_seq = 0
        self.chunk_full = threading.Event()
        self._taken = threading.Condition(self._lock)
        self._shipping = False
        self._listeners: list[Listener] = []

    def mask(self, text: str) -> str:
        """``text`` with every secret (and each of its forms) replaced by ``[MASKED]``."""
        return self._masker.mask(text)

    def forward_to(self, logger: logging.LoggerAdapter | logging.Logger | None) -> None:
        """Also send lines to ``logger`` (the Prefect task run logger) in large records; ``None`` stops."""
        self.flush()
        self._forward = logger

    def add_listener(self, callback: Listener) -> None:
        """Also hand every batch of lines to ``callback(lines)``: masked, complete lines (notes included), in
        log order, without their newlines, cut to the line limit — exactly what the backend gets.

        It is called from the thread that adds the lines (the container's reading thread, or the one writing
        a note), one call at a time, and must neither keep nor change the list. A callback that raises is
        logged once and dropped: a viewer never breaks the job.
        """
        with self._lock:
            self._listeners.append(callback)

    def __call__(self, text: str) -> None:
        """One line (the executor's line sink)."""
        self.lines([text])

    def line(self, text: str) -> None:
        """Add one line (without its newline); a line longer than the limit becomes several."""
        self.lines([text])

    def note(self, text: str) -> None:
        """A line from the worker itself, marked so that readers can tell it from job output."""
        self.lines([f"{WORKER_PREFIX} {text}"])

    def lines(self, lines: list[str]) -> None:
        """Add lines (without their newlines), in order; a line longer than the limit becomes several."""
        if not lines:
            return
        text = "\n".join(lines)
        if self._mask is not None:
            masked = self._mask(text)  # no secret form holds a newline: one pass finds what each line holds
            if masked != text:  # line by line, so that a line holding a newline (a note) stays one line
                lines = [self._mask(line) for line in lines]
                text = "\n".join(lines)
        if len(text) > self._max_line_chars and (cut := cut_lines(lines, self._max_line_chars)) is not lines:
            lines, text = cut, "\n".join(cut)
        data = (text + "\n").encode("utf-8", errors="replace")
        with self._lock:
            self._add_locked(lines, len(data))
            self._sha.update(data)
            if self._forward is not None and self._prefect_budget > 0:
                self._forward_locked(lines, len(data))
            if self._listeners:
                self._tell_locked(lines)
            self._wait_for_shipper_locked()

    def ship_in_chunks(self, shipping: bool = True) -> None:
        """Say that a shipper takes chunks (``LogShipper`` while it runs) or no longer does.

        While one does, a thread adding lines waits when more than 1 MiB (or two chunks of ``max_chunk_bytes``)
        are waiting to be taken: the job's output is held back in its pipe rather than piling up here (a job
        prints faster than chunks are stored). A shipper that takes nothing for a second is not waited for.
        """
        with self._lock:
            self._shipping = shipping
            self._taken.notify_all()

    def _wait_for_shipper_locked(self) -> None:
        while self._shipping and self._chunk_size > self._pending_limit:
            self.chunk_full.set()
            if not self._taken.wait(_PENDING_WAIT_SECONDS):
                return

    def _add_locked(self, lines: list[str], size: int) -> None:
        self.total_bytes += size
        self.total_lines += len(lines)
        self._tail.append((lines, size))
        self._tail_size += size
        while len(self._tail) > 1 and self._tail_size - self._tail[0][1] >= self._tail_bytes:
            self._tail_size -= self._tail.popleft()[1]
        self._chunk.append(lines)
        self._chunk_sizes.append(size)
        before = self._chunk_size
        self._chunk_size += size
        if before < self._chunk_target <= self._chunk_size:
            self.chunk_full.set()

    def _forward_locked(self, lines: list[str], size: int) -> None:
        if size < self._prefect_budget:
            self._prefect_budget -= size
            self._batch.extend(lines)
            self._batch_size += size
        else:  # the lines that still fit, then one note; nothing more goes to Prefect for this job
            for line in lines:
                self._prefect_budget -= _size(line)
                if self._prefect_budget <= 0:
                    break
                self._batch.append(line)
            self._batch.append(_PREFECT_LIMIT_NOTE)
            self._prefect_budget = 0
        due = time.monotonic() - self._batch_started >= _PREFECT_BATCH_SECONDS
        if due or self._batch_size >= _PREFECT_RECORD_BYTES or self._prefect_budget <= 0:
            self._flush_locked()

    def _tell_locked(self, lines: list[str]) -> None:
        for callback in list(self._listeners):
            try:
                callback(lines)
            except Exception:
                log.exception("job log listener %r failed; dropped", callback)
                self._listeners.remove(callback)

    def aim(self, size: int) -> None:
        """Make chunks of about ``size`` bytes (``chunk_bytes`` up to ``max_chunk_bytes``) from now on:
        ``chunk_full`` says when that much waits, and :meth:`take_chunk` takes that much."""
        with self._lock:
            self._chunk_target = min(max(size, self.chunk_bytes), self.max_chunk_bytes)
            if self._chunk_size >= self._chunk_target:
                self.chunk_full.set()
            else:
                self.chunk_full.clear()

    def take_chunk(self) -> tuple[int, int, list[str]] | None:
        """The next lines not yet shipped as ``(seq, byte offset, lines)``, or None when there are none.

        A chunk is about ``chunk_bytes`` (or what :meth:`aim` says): whole batches up to the first that
        reaches it (a batch is a block of output, at most a few hundred KiB), so that no stage of shipping
        holds megabytes at once; take again until None to ship everything.
        """
        with self._lock:
            self.chunk_full.clear()
            if not self._chunk:
                return None
            count, size = 0, 0
            while count < len(self._chunk) and size < self._chunk_target:
                size += self._chunk_sizes[count]
                count += 1
            batches = self._chunk[:count]
            lines = batches[0] if count == 1 else list(chain.from_iterable(batches))
            taken = (self._chunk_seq, self._chunk_offset, lines)
            self._chunk_seq += 1
            self._chunk_offset += size
            del self._chunk[:count], self._chunk_sizes[:count]
            self._chunk_size -= size
            if self._chunk_size >= self._chunk_target:
                self.chunk_full.set()
            self._taken.notify_all()
            return taken

    def flush(self) -> None:
        """Send the lines waiting for the Prefect logger now."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        batch, size = self._batch, self._batch_size
        if batch and self._forward is not None:
            # Records of about _PREFECT_RECORD_BYTES: a block of output may hold a megabyte of lines.
            step = max(1, len(batch) * _PREFECT_RECORD_BYTES // max(size, 1))
            for start in range(0, len(batch), step):
                self._forward.info("\n".join(batch[start:start + step]))
        self._batch, self._batch_size = [], 0
        self._batch_started = time.monotonic()

    @property
    def sha256(self) -> str:
        with self._lock:
            return self._sha.hexdigest()

    def text_for_status(self) -> str:
        """The last lines that fit in the tail size (at least one), with a first line saying how much was cut
        when the log was longer."""
        with self._lock:
            batches = [lines for lines, _ in self._tail]
            total = self.total_bytes
        kept: list[str] = []
        size = 0
        for line in chain.from_iterable(reversed(lines) for lines in reversed(batches)):
            if kept and size + _size(line) > self._tail_bytes:
                break
            kept.append(line)
            size += _size(line)
        body = "".join(line + "\n" for line in reversed(kept))
        omitted = total - size
        if omitted > 0:
            return f"{WORKER_PREFIX} log truncated: first {omitted} of {total} bytes omitted\n" + body
        return body


def _size(line: str) -> int:
    """Bytes of ``line`` in the log: UTF-8 with its newline."""
    return len(line.encode("utf-8", errors="replace")) + 1
