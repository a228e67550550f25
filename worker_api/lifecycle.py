"""Graceful shutdown on SIGTERM/SIGINT.

1. Stop accepting: execute requests answer 503 with ``Retry-After`` (the socket stays open so that the
   backend gets an answer, not a refused connection).
2. Let running jobs finish, up to ``WORKER_SHUTDOWN_GRACE_SECONDS``.
3. Cancel the rest: their containers are stopped and they are reported ``CANCELED``.
4. Flush the outbox, then let uvicorn exit (``serve`` then stops the local Prefect server if it started one).

A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
import time
from types import FrameType

import uvicorn

from core.job_records import JobRegistry
from flows.services import current

log = logging.getLogger(__name__)


class Drain:
    """The draining switch, read by the API on every execute request."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def run(self) -> None:
        """Steps 2-4 of the module docstring; blocks until done."""
        self.started.set()
        services = current()  # the services the app installed at its start-up
        settings, registry = services.settings, services.registry
        log.warning("shutting down: no new jobs; waiting up to %.0f s for running jobs",
                    settings.shutdown_grace_seconds)
        if not _wait_all_final(registry, settings.shutdown_grace_seconds):
            unfinished = [r for r in registry.all() if not r.status.is_final]
            log.warning("canceling %d job(s) still running after the grace period", len(unfinished))
            for record in unfinished:
                record.cancel.set()
            _wait_all_final(registry, settings.stop_grace_seconds + 15)
        if not services.outbox.flush(timeout=settings.shutdown_flush_seconds):
            log.error("outbox not empty at shutdown: %s (sent at the next start)", services.outbox.stats())


def _wait_all_final(registry: JobRegistry, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(not record.status.is_final for record in registry.all()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


DRAIN = Drain()


class DrainingServer(uvicorn.Server):
    """uvicorn server whose first SIGTERM/SIGINT drains before exiting; a second one exits at once."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if DRAIN.started.is_set():
            self.force_exit = True
            super().handle_exit(sig, frame)
            return

        def drain_then_exit() -> None:
            try:
                DRAIN.run()
            finally:
                self.should_exit = True

        threading.Thread(target=drain_then_exit, name="drain", daemon=True).start()
