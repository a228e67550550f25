"""A job's cache in its container: the key worked out as the job starts, the cache paths restored into the
created container before it starts, and saved from the stopped container after a success.

Nothing here fails a job. A problem (an unreadable cache file, a full disk, the engine failing while the
paths are read or written) is a ``WARNING`` line in the job's log, and the job runs without the cache
(restore) or keeps its status (save). Cache files are never unpacked on this host (``executors.cache_store``):
the engine unpacks them inside the job's container, where a hostile member reaches nothing of the host's.

Paths and key files are relative to the job's working dir; absolute ones and ``..`` are refused. A key
string may use the job's variables (``$VAR``, ``${VAR}``; an unset one is empty); a ``files`` key is
``files-`` and a hash of those files' names and content (links by their target, a missing file as missing)
as they are in the workspace when the job starts, so that it means the same through the service and in
``cicd-worker run``.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import docker

from core.models import CacheDTO, CacheKeyFiles
from executors.base import CacheSpec, JobSpec, LogSink
from executors.cache_store import CacheCorrupt, CacheStore, CacheTooLarge, CacheWriter, path_problem
from executors.container_files import ContainerFiles
from executors.tar_stream import ChunkReader, TarReader

_NOTE = "[cicd-worker] cache"
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_MAX_KEY_CHARS = 250
_READ_BLOCK = 1 << 20


def cache_spec(dto: CacheDTO | None, directory: Path, max_bytes: int, timeout_seconds: float) -> CacheSpec | None:
    """The executor's view of a job's ``cache`` (None: the job has none)."""
    if dto is None:
        return None
    files = tuple(dto.key.files) if isinstance(dto.key, CacheKeyFiles) else ()
    return CacheSpec(key=dto.key if isinstance(dto.key, str) else "", paths=tuple(dto.paths), directory=directory,
                     files=files, policy=dto.policy, max_bytes=max_bytes, timeout_seconds=timeout_seconds)


class JobCache:
    """The cache of one job's container (a job without one: every method does nothing)."""

    def __init__(self, spec: JobSpec, api: docker.APIClient, container_id: str, log_sink: LogSink) -> None:
        self.spec = spec.cache
        self.key: str | None = None
        self._env = spec.env
        self._api, self._container = api, container_id
        self._files = ContainerFiles(api, container_id, spec.working_dir)
        self._log = log_sink
        self._store = CacheStore(spec.cache.directory) if spec.cache else None

    def restore(self) -> None:
        """Before the container starts: work out the key and, unless the policy is ``push``, restore."""
        if self.spec is None:
            return
        self._guard("no key, the job runs without its cache", self._resolve)
        if self.key is not None and self.spec.policy != "push":
            self._guard("restore failed, the job runs without (all of) its cache", self._restore)

    def save(self) -> None:
        """After a successful job, from the stopped container: save, unless the policy is ``pull``."""
        if self.spec is None or self.key is None:
            return
        if self.spec.policy == "pull":
            self._note("not saved (policy pull)")
            return
        self._guard("not saved", self._save)

    def _guard(self, what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a cache never fails a job: any problem is logged, the job goes on
            self._note(f"WARNING: {what}: {type(exc).__name__}: {exc}")

    def _note(self, text: str) -> None:
        shown = self.key or (f"files {list(self.spec.files)}" if self.spec and self.spec.files else
                             self.spec.key if self.spec else "")
        self._log(f"{_NOTE} {shown}: {text}")

    def _resolve(self) -> None:
        assert self.spec is not None
        if self.spec.files:
            self.key = "files-" + self._hash_files(checked_paths(self.spec.files, "key file"))
            return
        key = _VARIABLE.sub(lambda match: self._env.get(match[1] or match[2], ""), self.spec.key).strip()
        if not key or len(key) > _MAX_KEY_CHARS:
            raise ValueError(f"the key must hold 1 to {_MAX_KEY_CHARS} characters once its variables are set")
        self.key = key

    def _hash_files(self, names: list[str]) -> str:
        assert self.spec is not None
        digest = hashlib.sha256()
        deadline = time.monotonic() + self.spec.timeout_seconds
        for name in names:
            digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
            try:
                stream = self._files.archive(name)
            except FileNotFoundError:
                digest.update(b"\0missing\0")
                continue
            try:
                reader = TarReader(io.BufferedReader(ChunkReader(_Chunks(stream, None, deadline).take), _READ_BLOCK))
                while (entry := reader.next()) is not None:
                    digest.update(f"{entry.name}\0{entry.kind!r}\0{entry.link}\0{entry.size}\0".encode(
                        "utf-8", "surrogateescape"))
                    reader.copy_data(digest.update)
            finally:
                stream.close()
        return digest.hexdigest()[:24]

    def _restore(self) -> None:
        assert self._store is not None and self.key is not None
        try:
            with self._store.open(self.key) as found:
                if found is None:
                    self._note("not found")
                    return
                entry, handle = found
                for segment in entry.segments:
                    target = self._target_dir(segment.parent)
                    self._api.put_archive(self._container, target, self._store.chunks(handle, segment))
        except CacheCorrupt as exc:
            self._store.remove(self.key)
            raise CacheCorrupt(f"{exc}: the file is removed, the next successful run saves a new one") from exc
        self._store.touch(entry)
        self._note(f"restored {entry.files} files ({_megabytes(entry.content_bytes)})")

    def _target_dir(self, parent: str) -> str:
        """The absolute folder ``parent`` of the working dir, made first when missing (a fresh workspace)."""
        target = self._files.path(parent)
        missing, probe = [], target
        while probe != "/":
            try:
                self._files.link_target(probe)  # an absolute path: taken as is
                break
            except FileNotFoundError:
                missing.append(probe)
                probe = posixpath.dirname(probe)
        if missing:
            self._api.put_archive(self._container, probe, _folders_archive(probe, missing))
        return target

    def _save(self) -> None:
        assert self._store is not None and self.spec is not None and self.key is not None
        writer = self._store.writer(self.key, self.spec.max_bytes)
        try:
            deadline = time.monotonic() + self.spec.timeout_seconds
            for path in checked_paths(self.spec.paths, "path", self._note):
                self._save_path(writer, path, deadline)
            if not writer.segments:
                writer.abort()
                self._note("not saved: none of its paths exist")
                return
            entry = writer.commit()
        except CacheTooLarge:
            writer.abort()
            self._note(f"WARNING: not saved: bigger than WORKER_CACHE_MAX_BYTES ({self.spec.max_bytes} bytes)")
            return
        except BaseException:
            writer.abort()
            raise
        evicted = self._store.evict(self.spec.max_bytes, keep=entry.file)
        self._note(f"saved {entry.files} files ({_megabytes(entry.content_bytes)})"
                   + (f"; {evicted} least recently used cache(s) evicted" if evicted else ""))

    def _save_path(self, writer: CacheWriter, path: str, deadline: float) -> None:
        """Append the engine's archive of ``path`` to the cache file, counting its files on the way."""
        try:
            stream = self._files.archive(path)
        except FileNotFoundError:
            self._note(f"path {path!r} not found: not cached")
            return
        start, files, content = writer.start_segment(), 0, 0
        try:
            chunks = _Chunks(stream, writer.write, deadline)
            reader = TarReader(io.BufferedReader(ChunkReader(chunks.take), _READ_BLOCK))
            while (entry := reader.next()) is not None:
                if entry.is_file:
                    files, content = files + 1, content + entry.size
            chunks.drain()  # the end-of-archive blocks after the last entry
        finally:
            stream.close()
        writer.end_segment(start, path, posixpath.dirname(path), files, content)


def checked_paths(paths: Iterable[str], what: str, warn: Callable[[str], None] | None = None) -> list[str]:
    """``paths`` normalised (no trailing ``/``); one that is absolute, empty, ``.`` or reaches up with ``..`` is
    refused: with ``warn`` it is left out with a warning, without it ``ValueError`` is raised."""
    kept = []
    for path in paths:
        if problem := path_problem(path):
            if warn is None:
                raise ValueError(f"{what} {path!r} refused: {problem}")
            warn(f"WARNING: {what} {path!r} refused: {problem}")
            continue
        kept.append(posixpath.normpath(path))
    return kept


class _Chunks:
    """An engine archive's chunks one by one (for :class:`ChunkReader`): each also goes to ``sink`` as it is
    taken, and taking one past ``deadline`` raises ``TimeoutError``."""

    def __init__(self, chunks: Iterable[bytes], sink: Callable[[bytes], object] | None, deadline: float) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._sink = sink
        self._deadline = deadline

    def take(self) -> bytes | None:
        if time.monotonic() > self._deadline:
            raise TimeoutError("reading the cache's files from the container took too long")
        chunk = next(self._chunks, None)
        if chunk is not None and self._sink is not None:
            self._sink(chunk)
        return chunk

    def drain(self) -> None:
        """Take the chunks nobody read (they still go to the sink)."""
        while self.take() is not None:
            pass


def _folders_archive(base: str, folders: list[str]) -> bytes:
    """A tar making ``folders`` (absolute, deepest first) when unpacked at ``base``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for folder in reversed(folders):
            info = tarfile.TarInfo(posixpath.relpath(folder, base))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            archive.addfile(info)
    return buffer.getvalue()


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
