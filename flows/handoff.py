"""Handing what a flow needs from the process that starts it to the flow run, outside Prefect.

Flow-run parameters are stored by the Prefect server and readable by anyone who can read its API, so the
flows take ids only: a job's env (its secrets) and a host path must never be parameters. A process that
starts a flow run in-process and already holds what the flow needs (the API with a job execution or a
planned pipeline run; ``cicd-worker run`` with the directory the workspace starts from) puts it here,
keyed by the execution id, before the flow run is created; the flow takes it. A flow that finds nothing
(a pool flow process, started by a ``prefect worker``) fetches from the backend, and never gets a host
path: deployment runs cannot seed a workspace.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class HandOff(Generic[T]):
    """A thread-safe, take-once store keyed by execution id."""

    def __init__(self) -> None:
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def put(self, key: object, item: T) -> None:
        """Leave ``item`` for the flow run of execution ``key`` (replacing one left before)."""
        with self._lock:
            self._items[str(key)] = item

    def take(self, key: object) -> T | None:
        """The item left for ``key``, removed; None when there is none. Also used to drop an unused item."""
        with self._lock:
            return self._items.pop(str(key), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
