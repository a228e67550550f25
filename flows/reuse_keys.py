"""Reuse keys: what decides whether a job with ``inputs`` may be reused instead of run (pure, no Prefect).

A job's key is the SHA-256 of its *components*, each a name and a hash, never a value:

* ``image``: the image's id as the engine reports it (``docker image inspect``), not its tag;
* ``script``: ``before_script``, ``script`` and ``after_script``;
* ``config``: what else shapes the job's outcome: working dir, artifact patterns and rule, services, cache;
* ``variables``: each variable's name with a hash of its value (secret or not, a value is never kept in
  clear; a secret's value is only present as this hash);
* ``files``: each file matching the job's ``inputs`` globs, by path, with the hash of its content (a link: of
  its target's text) -- in the project folder (:class:`InputFiles`, ``cicd-worker run``) or, for a pipeline
  run without one (the backend's), in the workspace volume as the job is about to start (:class:`VolumeFiles`);
* ``needs``: the key of every job it waits for, by name, so a change upstream changes every key downstream.
  Reading the workspace volume, a job it waits for that has no key of its own enters with its *definition
  key* (:func:`definition_key`): that job's outputs are measured where they land, in the volume.

The components are stored beside a successful result, so ``cicd-worker run --explain JOB`` can say which
one changed (:func:`explain`). The globs mean what artifact patterns mean (:mod:`executors.artifact_patterns`:
linear-time matching), relative to the project folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.models import JobDTO
from executors.artifact_patterns import parse_patterns
from executors.base import Executor
from executors.volume_files import HashLimits, content_hasher, link_hash, matches_any
from executors.workspace_seed import DEFAULT_MAX_BYTES, plan_seed

_BLOCK = 1 << 20
KEY_VERSION = "cicd-reuse-1"  # changes every key when the recipe below changes


def _digest(*parts: str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape"))
        hasher.update(b"\0")
    return hasher.hexdigest()


def variable_hash(name: str, value: str) -> str:
    """The hash a variable enters the key with (its value is never stored)."""
    return _digest("variable", name, value)


def job_parts(job: JobDTO) -> dict[str, Any]:
    """The components that come from the job definition alone: script, config and variables."""
    script = json.dumps([job.before_script, job.script, job.after_script])
    config = json.dumps({
        "workingDir": job.working_dir or "", "artifacts": job.artifacts, "artifactsWhen": job.artifacts_when or "",
        "services": [service.to_wire() for service in job.services],
        "cache": job.cache.to_wire() if job.cache else None}, sort_keys=True)
    return {"script": _digest("script", script), "config": _digest("config", config),
            "variables": {name: variable_hash(name, value) for name, value in sorted((job.env or {}).items())}}


def key_of(components: Mapping[str, Any]) -> str:
    """The key of a job: a hash of its components (names and hashes only)."""
    return _digest(KEY_VERSION, json.dumps(components, sort_keys=True))


@dataclass(frozen=True)
class KeyedJob:
    """A job's key and the components it was computed from."""

    key: str
    components: dict[str, Any]


def keyed(job: JobDTO, image_id: str, files: Mapping[str, str], needs: Mapping[str, str]) -> KeyedJob:
    """The job's key from its definition, its image's id, the hashes of its input files and its upstream keys."""
    components = {"image": image_id, **job_parts(job), "files": dict(sorted(files.items())),
                  "needs": dict(sorted(needs.items()))}
    return KeyedJob(key_of(components), components)


def definition_key(job: JobDTO, image_id: str, needs: Mapping[str, str]) -> str:
    """What a job without a key of its own contributes downstream when inputs are read from the workspace
    volume: a hash of its definition (image id, scripts, config, variables) and of its upstream keys, never
    equal to a reuse key. Its outputs count through the downstream job's own ``inputs``."""
    return key_of({"definition": True, "image": image_id, **job_parts(job), "needs": dict(sorted(needs.items()))})


class InputSource(Protocol):
    """Where a job's ``inputs`` are hashed: ``{path: content hash}`` of the files matching the globs."""

    def matching(self, globs: Iterable[str]) -> dict[str, str]: ...


class InputFiles:
    """The files of a project folder that a job's ``inputs`` may match: the ones that seed its workspace
    (:func:`executors.workspace_seed.plan_seed`: git's rules, ``.cicdignore``, no link followed), listed once
    and each hashed once, when a job first asks for it."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root.resolve()
        self._max_bytes = max_bytes
        self._entries: dict[str, str | None] | None = None  # path -> link target (None: a regular file)
        self._hashes: dict[str, str] = {}

    def _listing(self) -> dict[str, str | None]:
        if self._entries is None:
            plan = plan_seed(self.root, self._max_bytes)
            self._entries = {entry.path: entry.link_target for entry in plan.entries if entry.kind != "dir"}
        return self._entries

    def matching(self, globs: Iterable[str]) -> dict[str, str]:
        """``{path: content hash}`` of every file matching one of ``globs`` (invalid globs match nothing)."""
        patterns, _ = parse_patterns(list(globs))
        found = {}
        for path, target in self._listing().items():
            if matches_any(patterns, path):
                found[path] = self._hash(path, target)
        return found

    def _hash(self, path: str, target: str | None) -> str:
        if path not in self._hashes:
            self._hashes[path] = link_hash(target) if target is not None else _file_hash(self.root / path)
        return self._hashes[path]


class VolumeFiles:
    """The files of a workspace volume that a job's ``inputs`` may match, read as they are now (nothing is kept
    between calls: the volume changes as jobs run) through :meth:`executors.base.Executor.volume_files`,
    with a container of ``image`` (the job's own, present here)."""

    def __init__(self, executor: Executor, volume: str, image: str, mount: str, limits: HashLimits) -> None:
        self._executor, self._volume, self._image, self._mount = executor, volume, image, mount
        self._limits = limits

    def matching(self, globs: Iterable[str]) -> dict[str, str]:
        """``{path: content hash}`` of every file of the volume matching one of ``globs``, paths from its root."""
        return self._executor.volume_files(self._volume, self._image, self._mount, list(globs), self._limits)


def _file_hash(path: Path) -> str:
    """SHA-256 of a file's content, opened without following a link (one swapped in since the listing)."""
    hasher = content_hasher()
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return "missing"
    with os.fdopen(descriptor, "rb") as source:
        while block := source.read(_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def explain(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Why the key changed from ``before``'s components to ``now``'s, one line per changed input."""
    lines = []
    if before.get("image") != now.get("image"):
        lines.append(f"image id: {_short(before.get('image'))} -> {_short(now.get('image'))}")
    for part in ("script", "config"):
        if before.get(part) != now.get(part):
            lines.append(f"{part}: changed" if part == "config" else "script (before/after script included): changed")
    lines += _mapping_changes("variable", before.get("variables", {}), now.get("variables", {}), values=False)
    lines += _mapping_changes("file", before.get("files", {}), now.get("files", {}), values=False)
    lines += _mapping_changes("upstream job", before.get("needs", {}), now.get("needs", {}), values=True)
    return lines


def _mapping_changes(what: str, before: Mapping[str, str], now: Mapping[str, str], values: bool) -> list[str]:
    lines = []
    for name in sorted(set(before) | set(now)):
        if name not in before:
            lines.append(f"{what} {name}: added")
        elif name not in now:
            lines.append(f"{what} {name}: removed")
        elif before[name] != now[name]:
            detail = f" (key {_short(before[name])} -> {_short(now[name])})" if values else ""
            lines.append(f"{what} {name}: changed{detail}")
    return lines


def _short(value: object) -> str:
    text = str(value or "none")
    return text.removeprefix("sha256:")[:12]
