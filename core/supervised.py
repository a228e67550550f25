"""A background loop that keeps running: its thread is restarted when it dies, and a stuck step is flagged.

``step()`` is called over and over in a daemon thread until the stop event is set. An exception escaping
one step is logged and the loop goes on after a pause (1 s, doubling up to ``max_pause``, back to none
after a good step). Should the thread die all the same (a ``BaseException``: ``SystemExit`` raised into
it, say), a watchdog thread sees it, waits one more period (so a thread dying at once again does not
spin) and starts a new one. ``problem()`` says what is wrong meanwhile: the thread is not running, or
one step marked :meth:`busy` runs for longer than ``stuck_after`` seconds (a thread cannot be killed in
Python, so a stuck step is flagged, not replaced; a second thread would race the first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class SupervisedLoop:
    """``step`` called in a supervised thread until ``stop`` is set; thread-safe observers."""

    def __init__(self, name: str, step: Callable[[], None], stop: threading.Event, *, stuck_after: float,
                 period: float = 1.0, max_pause: float = 30.0) -> None:
        self.name = name
        self.stuck_after = stuck_after
        self.restarts = 0
        self.thread: threading.Thread | None = None
        self._step = step
        self._stop = stop
        self._period = period
        self._max_pause = max_pause
        self._watchdog: threading.Thread | None = None
        self._busy_since: float | None = None
        self._death: str | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the loop and its watchdog (once; later calls do nothing)."""
        with self._lock:
            if self._watchdog is None:
                self._spawn()
                self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
                self._watchdog.start()

    def join(self, timeout: float) -> None:
        """Wait for both threads after the stop event was set."""
        for thread in (self.thread, self._watchdog):
            if thread is not None:
                thread.join(timeout=timeout)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Mark one unit of work, so that one running past ``stuck_after`` is flagged."""
        self._busy_since = time.monotonic()
        try:
            yield
        finally:
            self._busy_since = None

    def problem(self) -> str | None:
        """None while the loop runs and is not stuck; otherwise what is wrong."""
        thread, busy = self.thread, self._busy_since
        if thread is None or not thread.is_alive() or self._stop.is_set():
            return f"{self.name} not running" + (f" (it died: {self._death})" if self._death else "")
        if busy is not None and time.monotonic() - busy > self.stuck_after:
            return f"one {self.name} step running for {time.monotonic() - busy:.0f} s"
        return None

    def _spawn(self) -> None:
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # what the loop's guard lets through (SystemExit...): the thread ends
            self._death = f"{type(exc).__name__}: {exc}"
            log.error("%s DIED (the watchdog restarts it): %s", self.name.upper(), self._death)

    def _loop(self) -> None:
        pause = 0.0
        while not self._stop.is_set():
            try:
                self._step()
                pause = 0.0
            except Exception:  # e.g. the disk failed under a database: logged, then tried again
                pause = min(max(pause * 2, 1.0), self._max_pause)
                log.exception("%s: unexpected error, going on in %.0f s", self.name, pause)
                self._stop.wait(pause)

    def _watch(self) -> None:
        flagged = False
        dead_since: float | None = None
        while not self._stop.wait(self._period):
            try:
                flagged, dead_since = self._watch_once(flagged, dead_since)
            except Exception:  # e.g. no thread could be started: logged, tried again next period
                log.exception("%s watchdog", self.name)

    def _watch_once(self, flagged: bool, dead_since: float | None) -> tuple[bool, float | None]:
        """One look: (whether a problem is flagged, since when the thread is seen dead)."""
        thread = self.thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            if dead_since is None:
                dead_since = time.monotonic()
                log.error("%s thread is not running (%s): restarting it", self.name, self._death)
            elif time.monotonic() - dead_since >= self._period:
                dead_since = None
                self.restarts += 1
                self._spawn()
        problem = self.problem()
        if problem and not flagged and problem.startswith("one "):
            log.error("%s STUCK: %s (limit %.0f s)", self.name.upper(), problem, self.stuck_after)
        return bool(problem), dead_since
