"""What a local run's workspace starts with: the project's files, minus what must not travel into a job.

Rules, in order:

1. **Which files.** In a git checkout, the files git tracks or would not ignore
   (``git ls-files --cached --others --exclude-standard``), so every ``.gitignore``, ``.git/info/exclude``
   and the user's global excludes apply exactly as git applies them. Outside a git checkout (or in a
   directory git ignores) the ``.gitignore`` files of the tree are read with ``pathspec`` (gitignore
   syntax; a deeper file's rules win, and an ignored directory is not entered).
2. **``.cicdignore``** at the top of the directory (gitignore syntax) leaves out more. It starts from
   :data:`DEFAULT_IGNORE`: ``.env`` and ``.env.*`` files stay out even when git does not ignore them (small
   projects often keep secrets there without ignoring them); ``!.env`` in ``.cicdignore`` brings one back.
3. ``.git``, ``.cicd`` and ``.venv`` are always left out, at any depth.
4. **Links are never followed.** A link whose target resolves inside the directory is stored as a
   (relative) link; one pointing outside is skipped with a warning naming it and its target. Files are
   opened with ``O_NOFOLLOW``, so a file swapped for a link after listing is not read either. Fifos,
   sockets and devices are skipped.
5. **Size cap.** The files' bytes must stay within ``max_bytes`` (``WORKER_SEED_MAX_BYTES``): checked on the
   listing, before anything is copied or run (:class:`SeedTooLarge`), and again while the archive is written.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pathspec import GitIgnoreSpec

log = logging.getLogger(__name__)

ALWAYS_EXCLUDED = frozenset({".git", ".cicd", ".venv"})
DEFAULT_IGNORE = (".env", ".env.*", "!.env.example", "!.env.sample", "!.env.template")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
CICDIGNORE = ".cicdignore"
_GIT_TIMEOUT_SECONDS = 60.0
_GIT_ENV_DROPPED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")


class SeedTooLarge(ValueError):
    """The project's files are over the seed size cap; nothing was copied."""


@dataclass(frozen=True)
class SeedEntry:
    """One archive member: a relative POSIX path and its kind (``file``, ``dir`` or ``link``)."""

    path: str
    kind: str
    size: int = 0
    link_target: str | None = None


@dataclass
class SeedPlan:
    """The entries of a seed, listed and size-checked; :func:`write_seed_archive` turns it into a tar."""

    root: Path
    entries: list[SeedEntry] = field(default_factory=list)
    total_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    source: str = "walk"  # "git" when git chose the files


def too_large(root: Path, max_bytes: int, seen: int, files: int) -> SeedTooLarge:
    return SeedTooLarge(
        f"the workspace seed of {root} is over WORKER_SEED_MAX_BYTES ({max_bytes} bytes): {seen} bytes in "
        f"{files} file(s) and counting; leave files out with .gitignore or .cicdignore, or raise "
        "WORKER_SEED_MAX_BYTES")


def plan_seed(directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> SeedPlan:
    """List what the seed of ``directory`` holds (see the module docstring); raises :class:`SeedTooLarge`.

    Links left out are in the plan's ``warnings`` (for the caller to log once).
    """
    root = directory.resolve(strict=True)
    plan = SeedPlan(root)
    cicd_ignore = GitIgnoreSpec.from_lines([*DEFAULT_IGNORE, *_read_lines(root / CICDIGNORE)])
    git_files = _git_listing(root)
    plan.source = "walk" if git_files is None else "git"
    candidates = _walk(root, cicd_ignore) if git_files is None else _with_parents(git_files)
    files = 0
    for relative in candidates:
        parts = PurePosixPath(relative).parts
        if ALWAYS_EXCLUDED.intersection(parts) or cicd_ignore.match_file(relative):
            continue
        entry = _entry(root, relative, plan.warnings)
        if entry is None or (entry.kind == "dir" and cicd_ignore.match_file(relative + "/")):
            continue
        plan.entries.append(entry)
        plan.total_bytes += entry.size
        files += entry.kind == "file"
        if plan.total_bytes > max_bytes:
            raise too_large(root, max_bytes, plan.total_bytes, files)
    return plan


def write_seed_archive(plan: SeedPlan, out: BinaryIO, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Write the plan as an uncompressed tar to ``out``; returns the bytes of file content written.

    Files that grew past the cap since the listing raise :class:`SeedTooLarge`; files that vanished are
    skipped.
    """
    written = 0
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in plan.entries:
            source = plan.root / entry.path
            if entry.kind == "dir":
                info = tar.gettarinfo(str(source), arcname=entry.path)
                if info.isdir():  # not a link put in its place since the listing
                    tar.addfile(info)
            elif entry.kind == "link":
                info = tarfile.TarInfo(entry.path)
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link_target or "", 0o777
                tar.addfile(info)
            else:
                written += _add_file(tar, source, entry.path)
                if written > max_bytes:
                    raise too_large(plan.root, max_bytes, written, len(plan.entries))
    return written


def _add_file(tar: tarfile.TarFile, source: Path, arcname: str) -> int:
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:  # vanished, or replaced by a link since the listing (ELOOP): not followed
        log.warning("workspace seed: %s left out: %s", arcname, exc.strerror)
        return 0
    with os.fdopen(descriptor, "rb") as handle:
        info = tar.gettarinfo(arcname=arcname, fileobj=handle)
        if info.islnk():  # a hard link to a file already in the archive: stored as such
            tar.addfile(info)
            return 0
        if not info.isreg():
            return 0
        tar.addfile(info, handle)
        return info.size


def _entry(root: Path, relative: str, warnings: list[str]) -> SeedEntry | None:
    path = root / relative
    try:
        status = path.lstat()
    except OSError:  # listed by git but deleted in the work tree
        return None
    if stat.S_ISLNK(status.st_mode):
        return _link_entry(root, path, relative, warnings)
    if stat.S_ISDIR(status.st_mode):
        return SeedEntry(relative, "dir")
    if stat.S_ISREG(status.st_mode):
        return SeedEntry(relative, "file", status.st_size)
    return None  # fifo, socket, device


def _link_entry(root: Path, path: Path, relative: str, warnings: list[str]) -> SeedEntry | None:
    target = os.readlink(path)
    resolved = Path(os.path.realpath(path))
    if resolved != root and root not in resolved.parents:
        warnings.append(f"workspace seed: link {relative} -> {target} points outside {root}: skipped (never "
                        "followed)")
        return None
    # Stored relative, so that it points at the same file inside the workspace.
    return SeedEntry(relative, "link", link_target=os.path.relpath(resolved, path.parent.resolve()))


def _git_listing(root: Path) -> list[str] | None:
    """The files git would track under ``root`` (relative), or None outside a usable git checkout."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROPPED}
    try:
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "."], env=env,
                                 capture_output=True, timeout=_GIT_TIMEOUT_SECONDS)
        if ignored.returncode != 1:  # 0: git ignores this very directory; 128: not a checkout (or unusable)
            return None
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard",
                                 "-z"], env=env, capture_output=True, timeout=_GIT_TIMEOUT_SECONDS, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("workspace seed: git unusable in %s (%s): reading .gitignore files instead", root, exc)
        return None
    names = {os.fsdecode(name) for name in listed.stdout.split(b"\0") if name}
    return sorted(name.rstrip("/") for name in names)


def _with_parents(files: list[str]) -> Iterator[str]:
    """Each file preceded by its not yet seen parent directories (so their modes travel too)."""
    seen: set[str] = set()
    for name in files:
        parents = [str(p) for p in reversed(PurePosixPath(name).parents) if str(p) != "."]
        for parent in parents:
            if parent not in seen:
                seen.add(parent)
                yield parent
        if name not in seen:
            seen.add(name)
            yield name


def _walk(root: Path, cicd_ignore: GitIgnoreSpec) -> Iterator[str]:
    """Relative paths under ``root`` that its ``.gitignore`` files do not ignore; links are not entered."""
    rules = _GitIgnoreRules()
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(directory).relative_to(root).as_posix()
        base = "" if base == "." else base
        rules.add(Path(directory) / ".gitignore", base)
        kept = []
        for name in sorted(dirnames):
            relative = f"{base}/{name}" if base else name
            if name in ALWAYS_EXCLUDED or rules.ignored(relative + "/") or cicd_ignore.match_file(relative + "/"):
                continue
            yield relative
            if not os.path.islink(os.path.join(directory, name)):
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            relative = f"{base}/{name}" if base else name
            if not rules.ignored(relative):
                yield relative


class _GitIgnoreRules:
    """The ``.gitignore`` files met so far, as one spec of root-relative patterns (deeper files come later,
    and in gitignore semantics the last matching pattern wins)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._spec = GitIgnoreSpec.from_lines([])

    def add(self, path: Path, base: str) -> None:
        lines = _read_lines(path)
        if lines:
            self._lines.extend(rooted(line, base) for line in lines)
            self._spec = GitIgnoreSpec.from_lines(self._lines)

    def ignored(self, relative: str) -> bool:
        return bool(self._spec.match_file(relative))


def rooted(line: str, base: str) -> str:
    """A pattern of the ``.gitignore`` in directory ``base``, rewritten relative to the root.

    A pattern with a slash at its start or middle is anchored to its file's directory; one without
    matches at any depth below it.
    """
    stripped = line.strip()
    if not base or not stripped or stripped.startswith("#"):
        return line
    negated = stripped.startswith("!")
    pattern = stripped[1:] if negated else stripped
    anchored = "/" in pattern.rstrip("/")
    rewritten = f"{base}/{pattern.lstrip('/')}" if anchored else f"{base}/**/{pattern}"
    return ("!" if negated else "") + rewritten


def _read_lines(path: Path) -> list[str]:
    """Lines of an ignore file; a missing file, a link or anything but a regular file counts as empty."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return []
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
