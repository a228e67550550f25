"""Artifact files on disk: ``<data_dir>/artifacts/<jobExecutionId>/<relative path>``, byte for byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

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


def submitted_name(content_disposition: str | None, filename: str | None) -> str:
    """The uploaded file's name: ``filename*`` (RFC 6266/5987) when the part has one, else ``filename``.

    ``filename*=UTF-8''<percent-encoded bytes>`` is decoded as UTF-8, each byte that is not valid UTF-8
    kept as ``%XX`` (so ``bad%FFname`` for a file named with the byte 0xFF). Starlette's multipart
    parser ignores ``filename*`` (RFC 7578 discourages it), hence reading the part's header here.
    """
    extended = _extended_filename(content_disposition or "")
    return extended if extended is not None else filename or ""


def _extended_filename(header: str) -> str | None:
    for parameter in _parameters(header):
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "filename*":
            continue
        charset, _, rest = value.strip().partition("'")
        _language, _, encoded = rest.partition("'")
        if charset.lower() not in ("utf-8", "iso-8859-1"):
            return None
        raw = unquote_to_bytes(encoded)
        if charset.lower() == "iso-8859-1":
            return raw.decode("latin-1")
        text = raw.decode("utf-8", "surrogateescape")
        return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in text)
    return None


def _parameters(header: str) -> list[str]:
    """The ``;``-separated parts of a header value, a ``;`` inside a quoted string not splitting."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts[1:]  # the first is the disposition type


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
