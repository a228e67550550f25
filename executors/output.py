"""Turning a container's output bytes into log lines, in time linear in the output and bounded memory.

A line is what ends with a newline. A line longer than ``max_chars`` characters is cut into pieces of
``max_chars`` characters (the last piece shorter), each passed on as a line of its own; a cut never falls
inside a UTF-8 character. Output that never prints a newline is therefore passed on piece by piece as it
comes, and at most about ``4 * max_chars`` bytes are held (a character takes up to 4 bytes in UTF-8).
Bytes that are not UTF-8 become U+FFFD.

The work is per block of output, not per line: a block's complete lines are decoded and split at once
(C loops), and handed on together to a sink that takes batches (:class:`BatchSink`). A job printing a
million short lines thus costs a few Python steps per block of output instead of several per line.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol, runtime_checkable

_CONTINUATION_MASK, _CONTINUATION = 0xC0, 0x80  # UTF-8 bytes 10xxxxxx continue a character
_FRAME_HEADER = struct.Struct(">BxxxL")  # docker's multiplexed stream: stream type, 3 zero bytes, payload length


@runtime_checkable
class BatchSink(Protocol):
    """A line sink that also takes lines in batches (``flows.job_log.JobLog``): one call per block of output."""

    def __call__(self, line: str) -> None: ...

    def lines(self, lines: list[str]) -> None:
        """Take several lines (without their newlines) at once, in order; the list is not kept by the caller."""


class LineSplitter:
    """Re-joins byte chunks into lines (docker splits long lines into frames); see the module docstring.

    ``sink`` gets every line in order: through its ``lines`` method in batches when it is a :class:`BatchSink`,
    otherwise one call per line.
    """

    def __init__(self, sink: Callable[[str], None], max_chars: int = 65536) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be positive")
        self._emit = sink.lines if isinstance(sink, BatchSink) else _one_by_one(sink)
        self._max_chars = max_chars
        # Enough bytes to hold max_chars characters even after stepping back over a cut character (3 bytes).
        self._hold = 4 * max_chars + 3
        self._buffer = bytearray()  # the start of a line: no newline in it
        self.total_bytes = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of output; pass on every line (or piece) they complete."""
        self.total_bytes += len(chunk)
        last = chunk.rfind(b"\n")
        if last < 0:
            self._buffer += chunk
        else:
            head = chunk[:last]
            if self._buffer:
                self._buffer += head
                head, self._buffer = bytes(self._buffer), bytearray()
            self._buffer += chunk[last + 1:]
            self._lines(head)
        if len(self._buffer) > self._hold:  # the byte after the window is there: see _cut
            self._cut_pieces()

    def close(self) -> None:
        """Pass on what is left (a last line without newline)."""
        if self._buffer:
            self._lines(bytes(self._buffer))
            self._buffer.clear()

    def _lines(self, data: bytes) -> None:
        """Pass on the lines of ``data`` (complete lines without the last newline), cut to ``max_chars``."""
        # A newline is never part of a character, so decoding the block at once decodes each line alike.
        text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if len(text) > self._max_chars:
            lines = cut_lines(lines, self._max_chars)
        self._emit(lines)

    def _cut_pieces(self) -> None:
        buffer, start = self._buffer, 0
        pieces: list[str] = []
        while len(buffer) - start > self._hold:
            start = self._cut(start, pieces)
        del buffer[:start]  # CPython drops a bytearray's head without moving the rest
        self._emit(pieces)

    def _cut(self, start: int, pieces: list[str]) -> int:
        """Add the whole pieces of the window at ``start`` (newline-free, followed by more bytes) to ``pieces``.

        Returns the new start. The window ends before a character's first byte, so that its last character
        is complete; it still holds at least ``max_chars`` characters, so at least one piece goes out.
        """
        buffer, end = self._buffer, start + self._hold
        for _ in range(3):  # a character has at most 3 continuation bytes (invalid data may have more)
            if buffer[end] & _CONTINUATION_MASK != _CONTINUATION:
                break
            end -= 1
        # surrogateescape keeps one character per undecodable byte, so character counts map back to bytes.
        text = buffer[start:end].decode("utf-8", errors="surrogateescape")
        whole = len(text) - len(text) % self._max_chars
        for offset in range(0, whole, self._max_chars):
            raw = text[offset:offset + self._max_chars].encode("utf-8", errors="surrogateescape")
            pieces.append(raw.decode("utf-8", errors="replace"))
            start += len(raw)
        return start


def cut_lines(lines: list[str], max_chars: int) -> list[str]:
    """``lines`` with every line longer than ``max_chars`` cut into pieces of ``max_chars`` (the last shorter);
    the same list when none is longer."""
    if max(map(len, lines), default=0) <= max_chars:
        return lines
    out: list[str] = []
    for line in lines:
        if len(line) <= max_chars:
            out.append(line)
        else:
            out.extend(line[i:i + max_chars] for i in range(0, len(line), max_chars))
    return out


def _one_by_one(sink: Callable[[str], None]) -> Callable[[list[str]], None]:
    def emit(lines: list[str]) -> None:
        for line in lines:
            sink(line)
    return emit


class FrameReader:
    """The payload bytes of docker's multiplexed attach stream (a container without a TTY), stdout and stderr
    in the order they came: each frame is an 8-byte header (stream type, 3 zero bytes, big-endian payload
    length) followed by its payload. Fed blocks of the stream as they arrive, cut anywhere."""

    def __init__(self) -> None:
        self._header = b""  # the start of a header cut by the end of the previous block
        self._remaining = 0  # payload bytes of the current frame still to come

    def payload(self, block: bytes) -> bytes:
        """The payload bytes in ``block``, joined (frames are docker's unit, not the job's: lines span them)."""
        view, parts, position, size = memoryview(block), [], 0, len(block)
        while position < size:
            if self._remaining:
                end = min(position + self._remaining, size)
                parts.append(view[position:end])
                self._remaining -= end - position
                position = end
                continue
            wanted = _FRAME_HEADER.size - len(self._header)
            self._header += bytes(view[position:position + wanted])
            position += wanted
            if len(self._header) == _FRAME_HEADER.size:
                self._remaining = _FRAME_HEADER.unpack(self._header)[1]
                self._header = b""
        return b"".join(parts)


def whole_line_tail(output: bytes, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of ``output`` at most; when cut, from the start of a whole line on (a secret cut in
    two would not be recognised to be masked)."""
    if len(output) <= max_bytes:
        return output
    tail = output[-max_bytes:] if max_bytes > 0 else b""
    return tail[tail.find(b"\n") + 1:]
