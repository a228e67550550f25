"""Collecting a job's artifacts from its stopped container: only what the patterns can match, streamed.

Patterns (their meaning: ``executors.artifact_patterns``) each name the one place they can match, their
literal prefix; only those places are read from the container (``build/**/*.jar`` reads ``build``,
``out/report.txt`` that file, ``*.txt`` the whole working directory), each once. The tar streams are
read entry by entry (``executors.tar_stream``): memory stays flat whatever the number of files, and file
data goes straight to a temporary directory.

Outcomes: *warnings* are logged and the job goes on; *problems* fail the job and nothing is uploaded.

* A link (symbolic or hard) that a pattern matches is never followed nor uploaded: a warning names it and
  its target, saying whether the target lies outside the working directory; the other files are
  collected as usual. A link among the parent directories of a pattern's prefix is treated the same way
  (the engine would follow it), and that pattern is not read.
* A pattern matching nothing (its prefix missing included) is a warning.
* Problems: a refused pattern (absolute, ``..``, too long, too many); a file over ``max_file_bytes``; more
  than ``max_job_bytes`` read from the engine (every byte of the archives: headers, and the data of files
  that match and files that do not) or kept; collection running past ``timeout_seconds`` (checked between
  reads, each of which the engine client's own timeout bounds).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from executors.artifact_patterns import archive_roots, parse_patterns
from executors.tar_stream import HARD_LINK, ChunkReader, TarEntry, TarError, TarReader

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


class ArchiveChunks(Protocol):
    """A tar stream from the engine: its chunks, and ``close`` to end it early."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class ArtifactSource(Protocol):
    """The files of a stopped container under its working directory (``executors.container_files``)."""

    working_dir: str

    def link_target(self, relative: str) -> str | None: ...

    def archive(self, relative: str) -> ArchiveChunks: ...


def blocked_parent(source: ArtifactSource, relative: str) -> tuple[str, str | None] | None:
    """The first parent directory of ``relative`` that is missing (``(parent, None)``) or a link (``(parent,
    its target)``); None when every parent is a real directory. The engine's archive of ``relative`` would
    follow such a link: callers do not read it."""
    parts = relative.split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        try:
            target = source.link_target(parent)
        except FileNotFoundError:
            return parent, None
        if target:
            return parent, target
    return None


@dataclass(frozen=True)
class ArtifactLimits:
    """Bounds of one job's collection; see the module docstring."""

    max_file_bytes: int
    max_job_bytes: int
    timeout_seconds: float


class _OverBudget(Exception):
    """Collection read too much or took too long: the message says which."""


def collect_artifacts(patterns: Iterable[str], source: ArtifactSource, limits: ArtifactLimits) -> ArtifactCollection:
    """Collect the files matching ``patterns`` into a temporary directory (``discard`` deletes it)."""
    return _Collector(list(patterns), source, limits).run()


def discard(collection: ArtifactCollection) -> None:
    """Delete the temporary copies."""
    if collection.directory is not None:
        shutil.rmtree(collection.directory, ignore_errors=True)


class _Collector:
    def __init__(self, texts: list[str], source: ArtifactSource, limits: ArtifactLimits) -> None:
        self.result = ArtifactCollection()
        self._patterns, problems = parse_patterns(texts)
        self.result.problems.extend(problems)
        self._source, self._limits = source, limits
        self._deadline = time.monotonic() + limits.timeout_seconds
        self._read = self._kept = 0
        self._matched: set[str] = set()

    def run(self) -> ArtifactCollection:
        if not self._patterns:
            return self.result
        self.result.directory = Path(tempfile.mkdtemp(prefix="cicd-artifacts-"))
        try:
            self._read_roots()
        except BaseException:  # the engine failed us: the caller gets the error, not the half-filled directory
            discard(self.result)
            raise
        self.result.warnings.extend(f"artifact pattern {p.text!r} matched no file"
                                    for p in self._patterns if p.text not in self._matched)
        return self.result

    def _read_roots(self) -> None:
        try:
            for root in archive_roots(self._patterns):
                self._check_budget()
                if not self._through_link(root):
                    self._read_root(root)
        except _OverBudget as exc:
            self.result.problems.append(str(exc))
        except TarError as exc:
            self.result.problems.append(f"could not read the artifacts from the container: {exc}")

    def _through_link(self, root: str) -> bool:
        """Whether a parent directory of ``root`` is a link (warned) or missing: then ``root`` is not read."""
        blocked = blocked_parent(self._source, root)
        if blocked is not None and blocked[1]:
            self._link_warning(blocked[0], blocked[1], hard=False)
            self._claim_under(blocked[0])
        return blocked is not None

    def _read_root(self, root: str) -> None:
        try:
            stream = self._source.archive(root)
        except FileNotFoundError:
            return  # its patterns matched nothing: warned at the end
        try:
            reader = TarReader(io.BufferedReader(ChunkReader(_budgeted(stream, self)), _COPY_BLOCK))
            while (entry := reader.next()) is not None:
                relative = entry_path(root, entry.name)
                if relative and not self._entry(reader, entry, relative, root):
                    return
        finally:
            stream.close()

    def _entry(self, reader: TarReader, entry: TarEntry, relative: str, root: str) -> bool:
        """Handle one archive entry; False stops collection (a limit was hit)."""
        if entry.is_link:
            if relative == root:  # the pattern's own prefix is a link
                self._claim_under(relative)
            elif not self._match(relative):
                return True
            hard = entry.kind == HARD_LINK  # a hard link names another entry of the same archive
            self._link_warning(relative, entry_path(root, entry.link) if hard else entry.link, hard)
            return True
        if not entry.is_file or not self._match(relative):
            return True
        if ".." in relative.split("/"):  # the engine never names entries so; refuse rather than write outside
            self.result.problems.append(f"artifact {relative!r}: unexpected name in the container's archive")
            return True
        if entry.size > self._limits.max_file_bytes:
            self.result.problems.append(f"artifact {relative!r} is {entry.size} bytes, over the per-file limit "
                                        f"of {self._limits.max_file_bytes} bytes")
            return True
        if self._kept + entry.size > self._limits.max_job_bytes:
            self.result.problems.append(f"artifacts exceed the per-job limit of {self._limits.max_job_bytes} "
                                        f"bytes at {relative!r}; later files skipped")
            return False
        assert self.result.directory is not None
        self.result.files.append(_save(reader, entry, self.result.directory, relative))
        self._kept += entry.size
        return True

    def _match(self, relative: str) -> bool:
        hits = [p.text for p in self._patterns if p.matches(relative)]
        self._matched.update(hits)
        return bool(hits)

    def _claim_under(self, relative: str) -> None:
        """Patterns whose prefix lies at or under ``relative`` are accounted for (by a link warning)."""
        self._matched.update(p.text for p in self._patterns if _under(p.prefix, relative))

    def _link_warning(self, relative: str, target: str, hard: bool) -> None:
        kind = "a hard link" if hard else "a link"
        if not hard and self._outside(relative, target):
            self.result.warnings.append(f"artifact {relative!r} is {kind} to {target!r}, outside the working "
                                        "directory: skipped (links are never followed)")
        else:
            self.result.warnings.append(f"artifact {relative!r} is {kind} to {target!r}: skipped (links are not "
                                        "followed; name the target itself in the artifact patterns)")

    def _outside(self, relative: str, target: str) -> bool:
        if target.startswith("/"):
            return not _under(posixpath.normpath(target), self._source.working_dir)
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), target))
        return resolved == ".." or resolved.startswith("../")

    def count_read(self, size: int) -> None:
        """Called for every chunk read from the engine."""
        self._read += size
        if self._read > self._limits.max_job_bytes:
            raise _OverBudget(f"artifact collection read more than {self._limits.max_job_bytes} bytes from the "
                              "container (WORKER_MAX_JOB_ARTIFACT_BYTES): stopped; give the artifact patterns a "
                              "narrower directory prefix")
        self._check_budget()

    def _check_budget(self) -> None:
        if time.monotonic() > self._deadline:
            raise _OverBudget(f"artifact collection took longer than {self._limits.timeout_seconds:g} s "
                              "(WORKER_ARTIFACT_COLLECT_TIMEOUT_SECONDS): stopped")


def _budgeted(chunks: ArchiveChunks, collector: _Collector) -> Callable[[], bytes | None]:
    """The chunks of an archive one by one, each counted against the collection's budget."""
    iterator = iter(chunks)

    def take() -> bytes | None:
        chunk = next(iterator, None)
        if chunk is not None:
            collector.count_read(len(chunk))
        return chunk

    return take


def entry_path(root: str, name: str) -> str:
    """An archive entry's path relative to the directory archived from (the working directory, a volume's root).

    The archive of ``root`` names its entries from root's last part (the directory's own name when ``root`` is
    ``""``).
    """
    if not root:
        return name.partition("/")[2]
    return posixpath.join(posixpath.dirname(root), name)


def _under(path: str, directory: str) -> bool:
    return directory in ("", "/") or path == directory or path.startswith(directory.rstrip("/") + "/")


def _save(reader: TarReader, entry: TarEntry, directory: Path, relative: str) -> CollectedArtifact:
    local = directory / relative
    local.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(local, "wb") as out:
        def write(block: bytes) -> None:
            digest.update(block)
            out.write(block)

        reader.copy_data(write, _COPY_BLOCK)
    return CollectedArtifact(relative, local, entry.size, digest.hexdigest())
