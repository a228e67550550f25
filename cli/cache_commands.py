"""``cicd-worker cache ls | clear [KEY]``: the job caches kept on this machine (no Prefect, no engine).

Which caches: with ``WORKER_CACHE_DIR`` or ``WORKER_STATE_DIR`` set, the worker's (``<state dir>/caches``);
otherwise those of ``cicd-worker run`` in the current directory (``.cicd/state/caches``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from core.settings import Settings
from executors.cache_store import CacheEntry, CacheStore, file_size

LOCAL_RUN_CACHES = Path(".cicd/state/caches")  # `cicd-worker run` keeps its state in .cicd/state


def cache_dir(settings: Settings) -> Path:
    """The directory the command works on (see the module docstring)."""
    if "WORKER_CACHE_DIR" in os.environ or "WORKER_STATE_DIR" in os.environ:
        return settings.cache_path
    return LOCAL_RUN_CACHES


def list_caches(settings: Settings, as_json: bool) -> int:
    """Print every cache, most recently used first: key, size, last use; exit 0."""
    directory = cache_dir(settings)
    entries = CacheStore(directory).entries()
    if as_json:
        print(json.dumps([_as_dict(entry) for entry in entries], indent=2))
        return 0
    if not entries:
        print(f"no caches in {directory}")
        return 0
    rows = [(entry.key, _size(entry.size), _when(entry.last_used)) if isinstance(entry, CacheEntry)
            else (f"(unreadable: {entry.name})", _size(file_size(entry)), "-") for entry in entries]
    width = max(len("KEY"), *(len(row[0]) for row in rows))
    print(f"{'KEY':<{width}}  {'SIZE':>10}  LAST USED")
    for key, size, used in rows:
        print(f"{key:<{width}}  {size:>10}  {used}")
    total = sum(entry.size if isinstance(entry, CacheEntry) else file_size(entry) for entry in entries)
    print(f"{len(rows)} cache(s), {_size(total)} of WORKER_CACHE_MAX_BYTES {_size(settings.cache_max_bytes)}, "
          f"in {directory}")
    return 0


def clear_caches(settings: Settings, key: str | None) -> int:
    """Remove the cache of ``key``, or every cache; exit 1 when ``key`` has none."""
    directory = cache_dir(settings)
    store = CacheStore(directory)
    if key is None:
        count, total = store.clear()
        print(f"removed {count} cache(s) ({_size(total)}) from {directory}")
        return 0
    removed = store.remove(key)
    if not removed:
        print(f"no cache with key {key!r} in {directory} (see cicd-worker cache ls)", file=sys.stderr)
        return 1
    print(f"removed cache {key!r} ({_size(removed)})")
    return 0


def _as_dict(entry: CacheEntry | Path) -> dict[str, object]:
    if isinstance(entry, Path):
        return {"key": None, "file": str(entry), "bytes": file_size(entry), "unreadable": True}
    return {"key": entry.key, "file": str(entry.file), "bytes": entry.size, "files": entry.files,
            "created": entry.created, "lastUsed": _when(entry.last_used)}


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
