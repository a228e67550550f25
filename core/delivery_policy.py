"""How the outbox treats a failed delivery: when to try again, when to set an item aside as ``dead``.

Pure decisions, no I/O. A failure *counts* against an item when the item or the backend's answer is to
blame: an exception on our side while building or sending it (``local``), or an answer that is not a
success (3xx, 5xx, 429, broken off, too large). A backend that cannot be reached at all (connection
refused, connect timeout, nothing back before the deadline) does not count: a backend down for an hour
gets everything when it is back. An item is dead after ``max_local_failures`` local failures, or after
``max_attempts`` counted failures spread over at least ``max_failing_seconds``.

The extensions of the contract (live log chunks, artifact upload) have one more bound: a backend that
answers 5xx to one of them ``extension_max_failures`` times in a row, for ``extension_max_failing_seconds``
at least, is taken not to have it, as a 404 says (a Spring backend answers unknown paths with a 500).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from core.settings import Settings

REFUSED, LOCAL, FAILING, NO_EXTENSION = "refused", "local", "failing", "no-extension"
CAUSES = (REFUSED, LOCAL, FAILING, NO_EXTENSION)
"""Why an item is dead: a 4xx; local failures; failing for too long; an extension the backend lacks."""

STUCK_MARGIN_SECONDS = 30.0


@dataclass(frozen=True)
class OutboxLimits:
    """The outbox's bounds (see the module doc); ``from_settings`` maps the ``WORKER_`` settings."""

    max_attempts: int = 50
    max_failing_seconds: float = 900.0
    max_local_failures: int = 3
    extension_max_failures: int = 8
    extension_max_failing_seconds: float = 60.0
    max_backoff: float = 30.0
    stuck_after_seconds: float = 10.0 + STUCK_MARGIN_SECONDS
    watchdog_seconds: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxLimits:
        return cls(max_attempts=settings.outbox_max_attempts,
                   max_failing_seconds=settings.outbox_max_failing_seconds,
                   extension_max_failures=settings.extension_max_failures,
                   extension_max_failing_seconds=settings.extension_max_failing_seconds,
                   stuck_after_seconds=settings.backend_timeout_seconds + STUCK_MARGIN_SECONDS)


@dataclass(frozen=True)
class FailureCount:
    """The counted failures of one item: how many, how many were local, when the first was (epoch s)."""

    counted: int = 0
    local: int = 0
    first_at: float | None = None

    def add(self, now: float, *, local: bool) -> FailureCount:
        return replace(self, counted=self.counted + 1, local=self.local + int(local),
                       first_at=self.first_at if self.first_at is not None else now)

    def dead_cause(self, limits: OutboxLimits, now: float) -> str | None:
        """``LOCAL`` or ``FAILING`` once the item must be set aside, None while it is worth trying."""
        if self.local >= limits.max_local_failures:
            return LOCAL
        failing_for = now - self.first_at if self.first_at is not None else 0.0
        if self.counted >= limits.max_attempts and failing_for >= limits.max_failing_seconds:
            return FAILING
        return None


def backoff(attempts: int, max_backoff: float) -> float:
    """Seconds before the next try: exponential from 0.4 s, capped, with jitter (half to full)."""
    return min(max_backoff, 0.2 * 2 ** min(attempts, 20)) * random.uniform(0.5, 1.0)


class ExtensionHealth:
    """Consecutive 5xx answers of one extension call, across items; used by the sender thread only."""

    def __init__(self, max_failures: int, max_failing_seconds: float) -> None:
        self.max_failures = max_failures
        self.max_failing_seconds = max_failing_seconds
        self.failures = 0
        self.first_at: float | None = None

    def failed(self, now: float) -> bool:
        """Count one 5xx; True when the backend is now taken not to have the extension."""
        self.failures += 1
        if self.first_at is None:
            self.first_at = now
        return self.failures >= self.max_failures and now - self.first_at >= self.max_failing_seconds

    def succeeded(self) -> None:
        self.failures, self.first_at = 0, None

    def describe(self, now: float) -> str:
        since = now - self.first_at if self.first_at is not None else 0.0
        return f"{self.failures} consecutive 5xx answers over {since:.0f} s"
