"""Cancel from the Prefect UI or API: watch the flow run's state and stop its jobs.

A flow running in a thread of this process gets no signal when an operator cancels it: the server only
moves it to ``Cancelling`` (docs/prefect-behaviours.md, "Cancelling an in-process flow"). This watcher
polls the flow run and sets the cancel switch of each of its jobs, so the executor stops the containers
(SIGTERM, then SIGKILL) and the jobs are reported ``CANCELED``; the flow then returns a ``Cancelled``
state, which ends the run as Cancelled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from uuid import UUID

from prefect.client.orchestration import get_client

from core.job_records import JobRecord

log = logging.getLogger(__name__)


class PrefectCancelWatcher:
    """Polls one flow run; on Cancelling/Cancelled sets the cancel switch of the given jobs."""

    def __init__(self, flow_run_id: UUID, records: Callable[[], Iterable[JobRecord]], interval: float = 1.0) -> None:
        self.flow_run_id = flow_run_id
        self._records = records
        self.interval = interval
        self.requested = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"cancel-watch-{str(flow_run_id)[:8]}", daemon=True)

    def __enter__(self) -> PrefectCancelWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.interval):
                try:
                    state = client.read_flow_run(self.flow_run_id).state
                except Exception as exc:  # the Prefect API may blip; keep watching
                    log.warning("could not read flow run %s: %s", self.flow_run_id, exc)
                    continue
                if state is not None and (state.is_cancelling() or state.is_cancelled()):
                    log.warning("flow run %s canceled from Prefect: stopping its jobs", self.flow_run_id)
                    self.requested.set()
                    for record in self._records():
                        record.cancel.set()
                    return
