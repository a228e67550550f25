"""Reading a tar stream entry by entry, keeping nothing but the current entry.

The Docker engine's archives (Go's ``archive/tar``) use ustar headers, with PAX extended headers for long
or non-ASCII names and large sizes, and GNU long-name records in older engines; all are read here. The
standard ``tarfile`` module keeps every entry it has read in ``TarFile.members`` and checks each header in
pure Python at ~20-40 µs apiece: 300,000 entries cost 140 MiB and seconds of CPU. This reader keeps no list
and parses a header with one ``struct`` call (checking its magic, not its checksum: the
engine made it, and a reader out of step would meet a bad magic at once).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

BLOCK = 512
_HEADER = struct.Struct("100s8x8x8x12s12x8xc100s6s2x32x32x8x8x155s12x")  # name size type link magic prefix
_MAGICS = (b"ustar\0", b"ustar ")  # POSIX (ustar, PAX) and GNU
_MAX_META_BYTES = 1 << 20  # a PAX or GNU long-name record; Linux paths are at most 4 KiB
REGULAR, HARD_LINK, SYMLINK, DIRECTORY = b"0", b"1", b"2", b"5"


class TarError(Exception):
    """The stream is not a tar archive we can read."""


@dataclass
class TarEntry:
    """One member: its path inside the archive, type flag (``REGULAR`` ...), data size and link target."""

    name: str
    kind: bytes
    size: int
    link: str

    @property
    def is_file(self) -> bool:
        return self.kind in (REGULAR, b"\0", b"7")  # "\0": pre-POSIX regular file; "7": contiguous file

    @property
    def is_link(self) -> bool:
        return self.kind in (SYMLINK, HARD_LINK)


class TarReader:
    """``next()`` gives the following entry (skipping the data of the last one), ``copy_data`` reads its data."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._unread = 0  # data bytes (padding included) of the current entry not read yet
        self._data_left = 0

    def next(self) -> TarEntry | None:
        """The next entry, or None at the end of the archive."""
        self._skip(self._unread)
        overrides: dict[str, str] = {}
        while True:
            block = self._exact(BLOCK, allow_end=True)
            if not block or block.count(0) == BLOCK:
                return None
            name, size_field, kind, link, magic, prefix = _HEADER.unpack(block)
            if magic not in _MAGICS:  # a cheap check that we are still in step with the headers
                raise TarError(f"not a tar header (magic {magic!r})")
            size = _number(size_field)
            if kind in (b"x", b"g", b"L", b"K"):
                meta = self._meta(size)
                if kind == b"x":
                    overrides.update(_pax_records(meta))
                elif kind != b"g":  # GNU long name (L) / long link target (K)
                    overrides["path" if kind == b"L" else "linkpath"] = _text(meta.rstrip(b"\0"))
                continue
            path = _text(name.split(b"\0", 1)[0])
            if magic == b"ustar\0" and prefix[0]:  # GNU headers ("ustar ") use this space for times
                path = _text(prefix.split(b"\0", 1)[0]) + "/" + path
            if "size" in overrides:  # PAX sizes are decimal
                size = int(overrides["size"]) if overrides["size"].isdigit() else _bad("PAX size")
            self._data_left, self._unread = size, _padded(size)
            return TarEntry(overrides.get("path", path).rstrip("/"), kind, size,
                            overrides.get("linkpath", _text(link.split(b"\0", 1)[0])))

    def copy_data(self, write: Callable[[bytes], object], block_size: int = 1 << 20) -> None:
        """Pass the current entry's data to ``write`` in blocks."""
        while self._data_left > 0:
            data = self._exact(min(block_size, self._data_left))
            self._data_left -= len(data)
            self._unread -= len(data)
            write(data)

    def _meta(self, size: int) -> bytes:
        if size > _MAX_META_BYTES:
            raise TarError(f"extended tar header of {size} bytes")
        data = self._exact(_padded(size))
        return data[:size]

    def _skip(self, count: int) -> None:
        while count > 0:
            count -= len(self._exact(min(count, 1 << 20)))
        self._unread = self._data_left = 0

    def _exact(self, count: int, allow_end: bool = False) -> bytes:
        data = self._stream.read(count)
        if len(data) != count and not (allow_end and not data):
            raise TarError("tar stream ended inside an entry")
        return data


def _bad(what: str) -> int:
    raise TarError(f"bad {what} in tar header")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")  # names are bytes on Linux: keep them exactly


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (GNU), for sizes beyond 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarError(f"bad number in tar header: {field!r}") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """PAX records, each ``<length> <key>=<value>\\n``."""
    records, offset = {}, 0
    while offset < len(data):
        space = data.find(b" ", offset)
        if space < 0:
            break
        length = int(data[offset:space]) if data[offset:space].isdigit() else 0
        if length <= space - offset:
            raise TarError("bad PAX record")
        key, _, value = data[space + 1:offset + length - 1].partition(b"=")
        records[key.decode("ascii", errors="replace")] = _text(value)
        offset += length
    return records


class ChunkReader(io.RawIOBase):
    """A file-like view of an archive that the engine sends in chunks, for :class:`TarReader` (wrapped in an
    ``io.BufferedReader``); ``take`` gives the next chunk, or None at the end (and may raise to stop reading)."""

    def __init__(self, take: Callable[[], bytes | None]) -> None:
        self._take = take
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = self._take()
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
