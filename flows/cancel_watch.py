"""Cancel from the Prefect UI or API: watch the running flow runs' states and stop their jobs.

A flow running in a thread of this process gets no signal when an operator cancels it: the server only
moves it to ``Cancelling`` (docs/prefect-behaviours.md, "Cancelling an in-process flow"). One watcher per
process polls every watched flow run in one read per interval (``POST /flow_runs/filter`` by id and state)
and sets the cancel switch of each job of a run found cancelling, so the executor stops the containers
(SIGTERM, then SIGKILL) and the jobs are reported ``CANCELED``; the flow then returns a ``Cancelled``
state, which ends the run as Cancelled.

Its thread and Prefect client live only while something is watched: an idle worker holds neither.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType

from core.job_records import JobRecord

log = logging.getLogger(__name__)

_CANCELLING = [StateType.CANCELLING, StateType.CANCELLED]


@dataclass
class Watched:
    """One flow run being watched; ``requested`` is set once a cancel from Prefect was seen."""

    flow_run_id: UUID
    records: Callable[[], Iterable[JobRecord]]
    requested: threading.Event = field(default_factory=threading.Event)


class CancelWatch:
    """Watches many flow runs with one thread and one Prefect read per interval; thread-safe."""

    def __init__(self, interval: float = 1.0, idle_seconds: float = 5.0) -> None:
        self.interval = interval
        self.idle_seconds = idle_seconds  # the thread (and its client) ends after this long with nothing watched
        self._watched: dict[UUID, Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def watching(self, flow_run_id: UUID | str, records: Callable[[], Iterable[JobRecord]]) -> Iterator[Watched]:
        """Watch ``flow_run_id`` for the ``with`` block; on a cancel from Prefect, set the jobs' switches."""
        watched = self.add(flow_run_id, records)
        try:
            yield watched
        finally:
            self.remove(watched)

    def add(self, flow_run_id: UUID | str, records: Callable[[], Iterable[JobRecord]]) -> Watched:
        """Start watching ``flow_run_id`` (until :meth:`remove`)."""
        flow_run_id = UUID(str(flow_run_id))  # Prefect's runtime gives the id as text, its API answers UUIDs
        watched = Watched(flow_run_id, records)
        with self._lock:
            self._watched[flow_run_id] = watched
            self._start_locked()
        return watched

    def remove(self, watched: Watched) -> None:
        with self._lock:
            if self._watched.get(watched.flow_run_id) is watched:
                del self._watched[watched.flow_run_id]

    def close(self) -> None:
        """Stop the thread (if any) and close its client."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            with get_client(sync_client=True) as client:
                idle = 0.0
                while not self._wake.wait(self.interval) and idle < self.idle_seconds:
                    with self._lock:
                        watched = dict(self._watched)
                    idle = 0.0 if watched else idle + self.interval
                    if watched:
                        self._poll(client, watched)
        finally:
            with self._lock:
                self._thread = None
                if self._watched:  # something was registered while the thread was ending
                    self._start_locked()

    def _start_locked(self) -> None:
        """Start the thread unless it runs or the watch is closed (the caller holds the lock)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name="cancel-watch", daemon=True)
            self._thread.start()

    def _poll(self, client: SyncPrefectClient, watched: dict[UUID, Watched]) -> None:
        flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=list(watched)),
                                  state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_CANCELLING)))
        try:
            cancelled = client.read_flow_runs(flow_run_filter=flow_runs, limit=len(watched))
        except Exception as exc:  # the Prefect API may blip; keep watching
            log.warning("could not read the states of %d flow runs: %s", len(watched), exc)
            return
        for flow_run in cancelled:
            one = watched.get(flow_run.id)
            if one is None or one.requested.is_set():
                continue
            log.warning("flow run %s canceled from Prefect: stopping its jobs", flow_run.id)
            one.requested.set()
            for record in one.records():
                record.cancel.set()
