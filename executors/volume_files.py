"""Hashing the files of a workspace volume that match a job's ``inputs`` globs, as the job would see them.

A pipeline run sent by the backend has no project folder on this host: its files are in the workspace volume,
written by the jobs that ran before. To key a job on them (``flows.reuse``), the files matching its globs
are read through the engine's archive API from a container that mounts the volume read-only and is never
started, and hashed as they stream by: no content is kept, only ``{path: hash}``.

* Only the folders the globs can match are read (:func:`executors.artifact_patterns.archive_roots`).
* Links are hashed as their target's text and never followed (a folder under a link is not read at all); a
  hard link as the file it names when that file was hashed, else as its target's text.
* Bounded: past ``max_bytes`` read from the engine, or ``timeout_seconds``, :class:`InputsNotHashed` is raised
  (the job then has no key and simply runs).

The hashes are the ones :class:`flows.reuse_keys.InputFiles` gives a project folder's files
(:func:`content_hasher`, :func:`link_hash`), so a path means the same through both doors.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from executors.artifact_patterns import ArtifactPattern, archive_roots, parse_patterns
from executors.artifacts import ArtifactSource, blocked_parent, entry_path
from executors.tar_stream import HARD_LINK, SYMLINK, ChunkReader, TarEntry, TarError, TarReader

_READ_BLOCK = 1 << 20


class InputsNotHashed(ValueError):
    """Reading the volume's matching files went past the byte cap or the time budget, or the archive was not
    one we can read: no hash is given."""


def content_hasher() -> Any:
    """A SHA-256 primed for a file's content (update it with the content, then take ``hexdigest()``)."""
    return hashlib.sha256(b"file\0")


def link_hash(target: str) -> str:
    """The hash a link enters a key with: of its target's text (it is never followed)."""
    return hashlib.sha256(b"link\0" + target.encode("utf-8", "surrogateescape") + b"\0").hexdigest()


def matches_any(patterns: list[ArtifactPattern], path: str) -> bool:
    return any(pattern.matches(path) for pattern in patterns)


@dataclass(frozen=True)
class HashLimits:
    """Most bytes read from the engine for one job's inputs, and the time it may take."""

    max_bytes: int
    timeout_seconds: float


def hash_matching(source: ArtifactSource, globs: Iterable[str], limits: HashLimits) -> dict[str, str]:
    """``{path: hash}`` of every file, link or hard link under ``source`` matching one of ``globs`` (paths
    relative to the source's folder; invalid globs match nothing)."""
    return _Hashing(source, globs, limits).run()


class _Hashing:
    def __init__(self, source: ArtifactSource, globs: Iterable[str], limits: HashLimits) -> None:
        self._source, self._limits = source, limits
        self._patterns, _ = parse_patterns(list(globs))
        self._deadline = time.monotonic() + limits.timeout_seconds
        self._read = 0
        self.found: dict[str, str] = {}

    def run(self) -> dict[str, str]:
        try:
            for root in archive_roots(self._patterns):
                if blocked_parent(self._source, root) is None:  # a link there is never followed
                    self._read_root(root)
        except TarError as exc:
            raise InputsNotHashed(f"the volume's archive could not be read: {exc}") from exc
        return self.found

    def _read_root(self, root: str) -> None:
        try:
            stream = self._source.archive(root)
        except FileNotFoundError:
            return
        with contextlib.closing(stream):  # ends the engine's answer even when not read to the end
            reader = TarReader(io.BufferedReader(ChunkReader(self._counted(iter(stream))), _READ_BLOCK))
            for entry in iter(reader.next, None):
                relative = entry_path(root, entry.name)
                if relative and matches_any(self._patterns, relative):
                    self._hash(reader, entry, relative, root)

    def _hash(self, reader: TarReader, entry: TarEntry, relative: str, root: str) -> None:
        if entry.is_file:
            hasher = content_hasher()
            reader.copy_data(hasher.update)
            self.found[relative] = hasher.hexdigest()
        elif entry.kind == SYMLINK:
            self.found[relative] = link_hash(entry.link)
        elif entry.kind == HARD_LINK:  # names an earlier entry of the same archive
            self.found[relative] = self.found.get(entry_path(root, entry.link)) or link_hash(entry.link)

    def _counted(self, chunks: Iterator[bytes]) -> Callable[[], bytes | None]:
        def take() -> bytes | None:
            if time.monotonic() > self._deadline:
                raise InputsNotHashed(f"hashing the inputs took longer than {self._limits.timeout_seconds:g} s")
            chunk = next(chunks, None)
            self._read += len(chunk or b"")
            if self._read > self._limits.max_bytes:
                raise InputsNotHashed(f"the inputs are over {self._limits.max_bytes} bytes")
            return chunk
        return take
