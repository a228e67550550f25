"""Turning a container's output bytes into log lines, in time linear in the output and bounded memory.

A line is what ends with a newline. A line longer than ``max_chars`` characters is cut into pieces of
``max_chars`` characters (the last piece shorter), each passed on as a line of its own; a cut never falls
inside a UTF-8 character. Output that never prints a newline is therefore passed on piece by piece as it
comes, and at most about ``4 * max_chars`` bytes are held (a character takes up to 4 bytes in UTF-8).
Bytes that are not UTF-8 become U+FFFD.
"""

from __future__ import annotations

from collections.abc import Callable

_CONTINUATION_MASK, _CONTINUATION = 0xC0, 0x80  # UTF-8 bytes 10xxxxxx continue a character


class LineSplitter:
    """Re-joins byte chunks into lines (docker splits long lines into frames); see the module docstring."""

    def __init__(self, sink: Callable[[str], None], max_chars: int = 65536) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be positive")
        self._sink = sink
        self._max_chars = max_chars
        # Enough bytes to hold max_chars characters even after stepping back over a cut character (3 bytes).
        self._hold = 4 * max_chars + 3
        self._buffer = bytearray()
        self._scanned = 0  # the buffer holds no newline before this offset
        self.total_bytes = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of output; pass on every line (or piece) they complete."""
        self.total_bytes += len(chunk)
        buffer = self._buffer
        buffer += chunk
        start = 0
        # Search from where the previous call stopped: bytes already scanned are never scanned again.
        while (end := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            self._line(buffer[start:end])
            start = end + 1
        while len(buffer) - start > self._hold:  # the byte after the window is there: see _cut
            start = self._cut(start)
        del buffer[:start]  # CPython drops a bytearray's head without moving the rest
        self._scanned = len(buffer)

    def close(self) -> None:
        """Pass on what is left (a last line without newline)."""
        if self._buffer:
            self._line(self._buffer)
            self._buffer.clear()
        self._scanned = 0

    def _line(self, data: bytes | bytearray) -> None:
        text = data.decode("utf-8", errors="replace")
        step = self._max_chars
        if len(text) <= step:
            self._sink(text)
            return
        for offset in range(0, len(text), step):
            self._sink(text[offset:offset + step])

    def _cut(self, start: int) -> int:
        """Pass on the whole pieces of the window at ``start`` (newline-free, followed by more bytes).

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
            self._sink(raw.decode("utf-8", errors="replace"))
            start += len(raw)
        return start


def whole_line_tail(output: bytes, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of ``output`` at most; when cut, from the start of a whole line on (a secret cut in
    two would not be recognised to be masked)."""
    if len(output) <= max_bytes:
        return output
    tail = output[-max_bytes:] if max_bytes > 0 else b""
    return tail[tail.find(b"\n") + 1:]
