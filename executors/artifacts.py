"""Collecting a job's artifacts from its stopped container (docker-py ``get_archive``, no bind mounts).

Patterns are paths or globs relative to the working directory (``*`` and ``?`` stay within one path
part, ``**`` spans parts; a directory matches everything under it). Patterns that would escape the
working directory (absolute, ``..``) and symlinks pointing out of it are refused with a message; a
pattern matching nothing is a warning. Files are streamed from the archive to a temporary directory,
so memory stays flat whatever their size; size limits per file and per job are enforced while streaming.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class CollectedArtifact:
    """One file taken out of the container, waiting in ``local_path`` to be uploaded."""

    relative_path: str
    local_path: Path
    size: int
    sha256: str


@dataclass
class ArtifactCollection:
    """What collection found: files, warnings (not failures) and problems (the job must fail)."""

    directory: Path | None = None
    files: list[CollectedArtifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused, or None when it stays inside the working directory."""
    if not pattern.strip():
        return "empty artifact pattern"
    if pattern.startswith("/"):
        return f"artifact path {pattern!r} is absolute: paths are relative to the working directory"
    if ".." in pattern.split("/"):
        return f"artifact path {pattern!r} leaves the working directory ('..')"
    return None


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex for a relative glob: ``*``/``?`` within a path part, ``**`` across parts, dirs match contents."""
    pattern = posixpath.normpath(pattern.strip()).removeprefix("./")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "(?:/.*)?$", re.DOTALL)


class _ChunkReader(io.RawIOBase):
    """A file-like view of docker-py's archive chunk iterator, for ``tarfile`` stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


class ArtifactCollector:
    """Matches and extracts the artifacts of one job from a tar stream of its working directory."""

    def __init__(self, patterns: Sequence[str], max_file_bytes: int, max_total_bytes: int) -> None:
        self.result = ArtifactCollection()
        self._max_file, self._max_total = max_file_bytes, max_total_bytes
        self._total = 0
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for pattern in patterns:
            problem = pattern_problem(pattern)
            if problem:
                self.result.problems.append(problem)
            else:
                self._patterns.append((pattern, glob_regex(pattern)))
        self._matched: set[str] = set()

    @property
    def wanted(self) -> bool:
        return bool(self._patterns)

    def collect(self, chunks: Iterator[bytes]) -> ArtifactCollection:
        """Read the archive (whose top folder is the working directory) and keep what matches."""
        self.result.directory = Path(tempfile.mkdtemp(prefix="cicd-artifacts-"))
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), _COPY_BLOCK), mode="r|") as archive:
            for member in archive:
                relative = member.name.partition("/")[2]
                if relative and self._match(relative) and not self._take(archive, member, relative):
                    break
        for pattern, _ in self._patterns:
            if pattern not in self._matched:
                self.result.warnings.append(f"artifact pattern {pattern!r} matched no file")
        return self.result

    def _match(self, relative: str) -> bool:
        hits = [pattern for pattern, regex in self._patterns if regex.match(relative)]
        self._matched.update(hits)
        return bool(hits)

    def _take(self, archive: tarfile.TarFile, member: tarfile.TarInfo, relative: str) -> bool:
        """Keep one matching member; False stops collection (a limit was hit)."""
        if member.issym() or member.islnk():
            self._link(member, relative)
            return True
        if not member.isfile():
            return True
        if member.size > self._max_file:
            self.result.problems.append(
                f"artifact {relative!r} is {member.size} bytes, over the per-file limit of {self._max_file} bytes")
            return True
        if self._total + member.size > self._max_total:
            self.result.problems.append(
                f"artifacts exceed the per-job limit of {self._max_total} bytes at {relative!r}; later files skipped")
            return False
        source = archive.extractfile(member)
        assert source is not None and self.result.directory is not None
        self.result.files.append(_save(source, self.result.directory, relative))
        self._total += member.size
        return True

    def _link(self, member: tarfile.TarInfo, relative: str) -> None:
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), target)) \
            if member.issym() else posixpath.normpath(target.partition("/")[2] or target)
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            self.result.problems.append(
                f"artifact {relative!r} is a link pointing outside the working directory ({target}): refused")
        else:
            self.result.warnings.append(f"artifact {relative!r} is a link to {target!r}: skipped (name the target)")


def _save(source: IO[bytes], directory: Path, relative: str) -> CollectedArtifact:
    local = directory / relative
    local.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(local, "wb") as out:
        while block := source.read(_COPY_BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
    return CollectedArtifact(relative, local, size, digest.hexdigest())


def discard(collection: ArtifactCollection) -> None:
    """Delete the temporary copies."""
    if collection.directory is not None:
        shutil.rmtree(collection.directory, ignore_errors=True)
