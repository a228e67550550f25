"""Artifact files on disk: ``<data_dir>/artifacts/<jobExecutionId>/<relative path>``, byte for byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_CHUNK = 1024 * 1024


class UnsafeArtifactPath(ValueError):
    """The uploaded file name is not a plain relative path (absolute, ``..``, empty, backslash, NUL)."""


class ArtifactTooLarge(Exception):
    """The upload is bigger than the configured maximum."""


def safe_relative_path(name: str) -> PurePosixPath:
    """The artifact name as a normalised relative path, or raise :class:`UnsafeArtifactPath`."""
    # Backslashes are refused rather than guessed at: on Windows they would be separators.
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeArtifactPath(f"artifact name {name!r} is not a plain relative path")
    path = PurePosixPath(name)  # also drops "." components and repeated slashes
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise UnsafeArtifactPath(f"artifact name {name!r} must be a relative path without '..'")
    return path


def artifact_file(data_dir: Path, execution_id: str, relative: PurePosixPath) -> Path:
    """Where an artifact of a job execution lives on disk."""
    return data_dir / "artifacts" / execution_id / relative


def write_artifact(source: BinaryIO, target: Path, max_bytes: int | None) -> tuple[int, str]:
    """Copy ``source`` to ``target`` and return (size, sha256 hex).

    Written to a temporary sibling then renamed, so a reader never sees half a
    file and a refused upload leaves nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}-{id(source)}")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise ArtifactTooLarge(f"artifact is larger than {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return size, digest.hexdigest()
