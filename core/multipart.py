"""The multipart body of an artifact upload, with file names that cannot break the request.

An artifact's name is its path relative to the working dir, as bytes: a file name on Linux is any bytes
but ``/`` and NUL, so it may not be UTF-8 (Python hands such names around as ``str`` with surrogate
escapes) and may hold ``"``, CR, LF or ``;``. The rule (the README states it too):

* a name made only of printable ASCII other than ``"`` ``\\`` ``%`` ``;`` goes as is: ``filename="a/b.txt"``;
* any other name goes as ``filename="<pct>"; filename*=UTF-8''<pct>`` (RFC 6266 / RFC 5987): ``<pct>`` is
  the name's bytes (UTF-8; the bytes on disk where the name is not UTF-8) with every byte outside
  ``A-Z a-z 0-9 ! # $ & + - . ^ _ ` | ~`` written ``%XX`` (upper-case hex); the ``filename`` fallback is
  the same with ``/`` kept, for receivers that ignore ``filename*``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_PLAIN = frozenset(range(0x20, 0x7F)) - {ord(c) for c in '"\\%;'}
_ATTR_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_READ_BLOCK = 1024 * 1024


def name_bytes(name: str) -> bytes:
    """A file name as the bytes it has on disk (names that are not UTF-8 arrive with surrogate escapes)."""
    return name.encode("utf-8", "surrogateescape")


def readable_name(raw: bytes) -> str:
    """A file name as text: UTF-8, each byte that is not valid UTF-8 written ``%XX`` (``bad%FFname``)."""
    text = raw.decode("utf-8", "surrogateescape")
    return _ESCAPED_BYTE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)


def _percent(raw: bytes, keep: frozenset[int]) -> str:
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in raw)


def content_disposition(field: str, raw_name: bytes) -> str:
    """The ``Content-Disposition`` value of a file part named ``raw_name``, ASCII only (see module doc)."""
    if raw_name and all(b in _PLAIN for b in raw_name):
        return f'form-data; name="{field}"; filename="{raw_name.decode("ascii")}"'
    fallback = _percent(raw_name, _ATTR_CHARS | {ord("/")})
    return f"form-data; name=\"{field}\"; filename=\"{fallback}\"; filename*=UTF-8''{_percent(raw_name, _ATTR_CHARS)}"


class ArtifactBody:
    """``multipart/form-data`` with the field ``jobId`` and the part ``file`` (contract), streamed from disk.

    Opening happens in the constructor (a missing file fails here, before any request); ``length`` is
    exact, so the request carries a Content-Length and no chunked encoding.
    """

    def __init__(self, job_id: str, raw_name: bytes, content: bytes | Path) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self._head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"jobId\"\r\n\r\n{job_id}\r\n"
                      f"--{boundary}\r\nContent-Disposition: {content_disposition('file', raw_name)}\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n").encode("ascii")
        self._tail = f"\r\n--{boundary}--\r\n".encode("ascii")
        self._file: BinaryIO | None = None
        if isinstance(content, Path):
            self._file = content.open("rb")
            size = content.stat().st_size
            self._content = b""
        else:
            size = len(content)
            self._content = content
        self.length = len(self._head) + size + len(self._tail)
        self._size = size

    def chunks(self) -> Iterator[bytes]:
        """The body; the file is read in blocks (exactly the size it had when opened) and closed at the end."""
        yield self._head
        if self._file is None:
            yield self._content
        else:
            with self._file:
                left = self._size
                while left > 0:
                    block = self._file.read(min(_READ_BLOCK, left))
                    if not block:
                        raise OSError(f"artifact file shrank while being sent ({left} of {self._size} bytes missing)")
                    left -= len(block)
                    yield block
        yield self._tail

    def close(self) -> None:
        """Close the file (also when the body was never sent); safe to call twice."""
        if self._file is not None:
            self._file.close()
