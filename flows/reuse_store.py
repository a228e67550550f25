"""The reuse store: the folder under the state dir holding Prefect's results of reusable jobs, the artifacts
they kept, and the last key of each job name (see :mod:`flows.reuse`). No Prefect import: ``list`` reads it.

Layout under ``<state dir>/reuse/``: ``results/<key>`` (Prefect's result records, JSON), ``artifacts/<key>/``
(``manifest.json`` and ``tree/``, the artifacts laid out as in the workspace), ``last/<hash of job name>.json``
(key, components and origin of the job's last success).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

REUSED_PREFIX = "reused: "
"""A reused job's note and record message start with it (``cicd-worker run``'s summary marks the job ``cached``)."""
MAX_STORE_BYTES = 2 * 1024 ** 3
"""The artifacts kept for reuse, all keys together; past it the oldest entries go (and their results)."""


class ReuseStore:
    """The folder under the state dir holding results, kept artifacts and the last key of each job name."""

    def __init__(self, state_dir: Path, max_bytes: int = MAX_STORE_BYTES) -> None:
        self.root = state_dir / "reuse"
        self.results = self.root / "results"
        self.max_bytes = max_bytes

    def has_result(self, key: str) -> bool:
        return (self.results / key).is_file()

    def artifacts(self, key: str) -> Path:
        return self.root / "artifacts" / key

    def usable(self, key: str) -> bool:
        """A result exists for ``key`` and what it needs to be restored is still there."""
        return self.has_result(key) and (self.artifacts(key) / "manifest.json").is_file()

    def _last_path(self, job_name: str) -> Path:
        return self.root / "last" / f"{hashlib.sha256(job_name.encode('utf-8', 'surrogateescape')).hexdigest()}.json"

    def save_last(self, job_name: str, record: dict[str, Any]) -> None:
        write_json(self._last_path(job_name), record)

    def last(self, job_name: str) -> dict[str, Any] | None:
        """What the last successful run of ``job_name`` stored (its key, components, origin), or None."""
        try:
            return dict(json.loads(self._last_path(job_name).read_text()))
        except (OSError, ValueError):
            return None

    def trim(self) -> None:
        """Drop the oldest kept entries (result first) until the artifacts fit in ``max_bytes``."""
        entries = []
        for entry in (self.root / "artifacts").glob("*/manifest.json"):
            try:
                manifest = json.loads(entry.read_text())
                entries.append((entry.stat().st_mtime, int(manifest.get("bytes", 0)), entry.parent))
            except (OSError, ValueError):
                continue
        total = sum(size for _, size, _ in entries)
        for _, size, folder in sorted(entries):
            if total <= self.max_bytes:
                break
            (self.results / folder.name).unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            total -= size


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    partial.write_text(json.dumps(data, sort_keys=True))
    os.replace(partial, path)
