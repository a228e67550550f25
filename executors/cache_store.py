"""The job caches of this host: one file per resolved key in one directory, each written atomically.

A cache file holds the engine's archives of a job's cache paths as the engine made them (each a tar whose
entries are named from the path's last part), one after the other, then a JSON manifest (the key, when the
cache was made, and per path: where its archive lies in the file, the folder of the working dir it goes into,
its file count and bytes), the manifest's length and a magic. Keeping the engine's archives whole, each with
the folder it goes into, spares rewriting tar headers to root them all at the working dir. The archives are
never unpacked on this host: a restore hands each one, unread, to the engine, which unpacks it inside the
job's container.

Each file is named by the SHA-256 of its key and written under a temporary name in the same directory, then
renamed over the old one: a reader sees the old cache or the new one, never a torn one, and of two jobs
saving the same key the last one wins. A file's modification time is when it was last used (saved or
restored); eviction removes the least recently used files until the total is under the cap. A crash leaves
at most a temporary file, which a later eviction removes once it is an hour old. Nothing needs a lock: every
change is one rename or one unlink.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from core.state_db import private_dir

_MAGIC = b"CICDCAC1"
_TRAILER = struct.Struct(">Q8s")  # manifest length, magic
_MAX_MANIFEST_BYTES = 1 << 20
_SUFFIX = ".cache"
_TEMP_PREFIX = ".tmp-"
_STALE_TEMP_SECONDS = 3600.0
_CHUNK_BYTES = 1 << 20


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a cache path or key file (it must stay inside the working dir), or None."""
    normal = posixpath.normpath(path) if path else ""
    if normal in ("", ".") or path.startswith("/") or normal == ".." or normal.startswith("../"):
        return "it must be a relative path inside the working dir (not absolute, no '..')"
    return None


class CacheCorrupt(Exception):
    """A cache file that is not one: cut short, overwritten, or of another format."""


class CacheTooLarge(Exception):
    """A cache being written went over its byte budget."""


@dataclass(frozen=True)
class Segment:
    """One cache path's archive inside a cache file."""

    path: str
    """Relative to the working dir, as the job named it."""
    parent: str
    """The folder of the working dir the archive is unpacked into ("" for the working dir itself)."""
    offset: int
    size: int
    files: int
    bytes: int
    """Bytes of file content (the archive itself is larger)."""


@dataclass(frozen=True)
class CacheEntry:
    """One cache of this host, as its file says."""

    key: str
    file: Path
    size: int
    created: str
    last_used: float
    segments: tuple[Segment, ...] = field(default=())

    @property
    def files(self) -> int:
        return sum(segment.files for segment in self.segments)

    @property
    def content_bytes(self) -> int:
        return sum(segment.bytes for segment in self.segments)


class CacheStore:
    """The cache files under ``directory`` (created 0700 on first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def file_for(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest() + _SUFFIX)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[tuple[CacheEntry, IO[bytes]] | None]:
        """The cache of ``key`` and its file opened for :meth:`chunks`, or None when there is none; raises
        :class:`CacheCorrupt` for a file that is not a cache. The open file stays readable if a writer
        replaces it meanwhile."""
        try:
            handle = open(self.file_for(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            yield None
            return
        with handle:
            yield _read_entry(handle, Path(handle.name)), handle

    def chunks(self, handle: IO[bytes], segment: Segment) -> Iterator[bytes]:
        """The bytes of one segment, in blocks (what a restore hands to the engine)."""
        handle.seek(segment.offset)
        left = segment.size
        while left > 0:
            block = handle.read(min(left, _CHUNK_BYTES))
            if not block:
                raise CacheCorrupt("the cache file ends inside an archive")
            left -= len(block)
            yield block

    def touch(self, entry: CacheEntry) -> None:
        """Mark ``entry`` used now (eviction goes by this)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(entry.file)

    def writer(self, key: str, max_bytes: int) -> CacheWriter:
        """A new cache file for ``key``, at most ``max_bytes``; nothing is visible before ``commit``."""
        private_dir(self.directory)
        return CacheWriter(self, key, max_bytes)

    def entries(self) -> list[CacheEntry | Path]:
        """Every cache, most recently used first; a file that is no cache is listed by its path."""
        found: list[CacheEntry | Path] = []
        for path in self._files():
            try:
                with open(path, "rb") as handle:
                    found.append(_read_entry(handle, path))
            except FileNotFoundError:
                continue  # removed meanwhile
            except (CacheCorrupt, OSError):
                found.append(path)
        return sorted(found, key=lambda item: -_mtime(item if isinstance(item, Path) else item.file))

    def remove(self, key: str) -> int:
        """Remove the cache of ``key``; its size, 0 when there was none."""
        return _unlink(self.file_for(key))

    def clear(self) -> tuple[int, int]:
        """Remove every cache (and temporary file); how many caches and their bytes."""
        count = total = 0
        for path in self._files():
            total += _unlink(path)
            count += 1
        for path in self._temporary():
            _unlink(path)
        return count, total

    def evict(self, max_bytes: int, keep: Path | None = None) -> int:
        """Remove the least recently used caches (never ``keep``) until all together are at most ``max_bytes``,
        and temporary files older than an hour; how many caches were removed."""
        now = time.time()
        for path in self._temporary():
            if now - _mtime(path) > _STALE_TEMP_SECONDS:
                _unlink(path)
        sized = [(path, file_size(path)) for path in self._files()]
        total = sum(size for _, size in sized)
        removed = 0
        for path, size in sorted(sized, key=lambda item: _mtime(item[0])):
            if total <= max_bytes:
                break
            if path != keep:
                _unlink(path)  # gone already (another process evicted it): its bytes are gone too
                total -= size
                removed += 1
        return removed

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [path for path in self.directory.iterdir() if path.name.endswith(_SUFFIX)
                and not path.name.startswith(_TEMP_PREFIX)]

    def _temporary(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [path for path in self.directory.iterdir() if path.name.startswith(_TEMP_PREFIX)]


class CacheWriter:
    """Builds one cache file: ``segment`` per path, then ``commit`` (or ``abort``)."""

    def __init__(self, store: CacheStore, key: str, max_bytes: int) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self._target = store.file_for(key)
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by commit or abort
            dir=store.directory, prefix=_TEMP_PREFIX, suffix=_SUFFIX, delete=False)
        self._segments: list[Segment] = []

    @property
    def written(self) -> int:
        return self._file.tell()

    def write(self, data: bytes) -> None:
        """Append archive bytes to the current segment; :class:`CacheTooLarge` past ``max_bytes``."""
        if self.written + len(data) > self.max_bytes:
            raise CacheTooLarge(f"over {self.max_bytes} bytes")
        self._file.write(data)

    def start_segment(self) -> int:
        """Where the next segment starts (pass it to ``end_segment``)."""
        return self.written

    def end_segment(self, start: int, path: str, parent: str, files: int, content_bytes: int) -> None:
        self._segments.append(Segment(path, parent, start, self.written - start, files, content_bytes))

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self._segments)

    def commit(self) -> CacheEntry:
        """Write the manifest, flush to disk and rename into place."""
        created = datetime.now(UTC).isoformat(timespec="seconds")
        manifest = json.dumps({"version": 1, "key": self.key, "created": created,
                               "segments": [asdict(segment) for segment in self._segments]}).encode()
        self._file.write(manifest + _TRAILER.pack(len(manifest), _MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        os.replace(self._file.name, self._target)
        return CacheEntry(self.key, self._target, size, created, time.time(), self.segments)

    def abort(self) -> None:
        """Drop the temporary file (safe after ``commit`` too)."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file.name)


def _read_entry(handle: IO[bytes], path: Path) -> CacheEntry:
    """The manifest at the end of an open cache file, checked against the file's size."""
    size = os.fstat(handle.fileno()).st_size
    if size < _TRAILER.size:
        raise CacheCorrupt("too short to be a cache")
    handle.seek(size - _TRAILER.size)
    length, magic = _TRAILER.unpack(handle.read(_TRAILER.size))
    start = size - _TRAILER.size - length
    if magic != _MAGIC or length > _MAX_MANIFEST_BYTES or start < 0:
        raise CacheCorrupt("no cache manifest at its end")
    handle.seek(start)
    try:
        manifest = json.loads(handle.read(length))
        segments = tuple(_segment(item, start) for item in manifest["segments"])
        key, created = str(manifest["key"]), str(manifest["created"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheCorrupt(f"unreadable cache manifest: {exc}") from exc
    return CacheEntry(key, path, size, created, _mtime(path), segments)


def _segment(item: Any, limit: int) -> Segment:
    segment = Segment(str(item["path"]), str(item["parent"]), int(item["offset"]), int(item["size"]),
                      int(item["files"]), int(item["bytes"]))
    if segment.offset < 0 or segment.size < 0 or segment.offset + segment.size > limit:
        raise ValueError("an archive lies outside the file")
    return segment


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def file_size(path: Path) -> int:
    """The size of ``path``; 0 when it is gone."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(path: Path) -> int:
    """Remove ``path``; its size, 0 when it was already gone."""
    size = file_size(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
