"""Fault injection: make the contract endpoints answer 503 (or another status) on demand.

Three knobs, all reset by ``DELETE /admin/faults``:

* ``failRate``: each request under ``/api`` fails with this probability,
  drawn from a seeded :class:`random.Random` so a run is reproducible;
* ``downForSeconds``: every request under ``/api`` fails until that many
  seconds from now (a backend restart, as the worker sees it);
* ``answers``: request path → status answered there every time, e.g.
  ``{"/api/job/logs": 500}`` (a Spring backend's catch-all error handler
  answers 500 for a path it does not have) or ``{"/api/job/status": 302}``
  (a proxy redirecting to a login page); a 3xx carries a ``Location``.

Admin endpoints are never faulted, so tests can always inspect and reset.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http import HTTPStatus
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from reference_backend.wire import error_body

DEFAULT_SEED = 0


class Faults:
    """Current fault settings; thread safe."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._rng = random.Random(seed)
        self._fail_rate = 0.0
        self._down_until = 0.0
        self._injected = 0
        self._answers: dict[str, int] = {}

    def configure(self, fail_rate: float, down_for_seconds: float, seed: int | None = None,
                  answers: dict[str, int] | None = None) -> None:
        """Replace the settings; a given seed restarts the random sequence."""
        with self._lock:
            self._answers = dict(answers or {})
            if seed is not None:
                self._seed = seed
                self._rng = random.Random(seed)
            self._fail_rate = fail_rate
            self._down_until = time.monotonic() + down_for_seconds

    def reset(self) -> None:
        """No faults, the random sequence restarted and the counter cleared."""
        with self._lock:
            self._rng = random.Random(self._seed)
            self._fail_rate = 0.0
            self._down_until = 0.0
            self._injected = 0
            self._answers = {}

    def answer_for(self, path: str) -> int | None:
        """The fixed status configured for ``path``, counted as an injected failure; None when none is."""
        with self._lock:
            status = self._answers.get(path)
            if status is not None:
                self._injected += 1
            return status

    def should_fail(self) -> bool:
        """Decide for one request; counts the failures it injects."""
        with self._lock:
            down = time.monotonic() < self._down_until
            # Draw only when a rate is set, so enabling faults later replays the same sequence.
            fail = down or (self._fail_rate > 0 and self._rng.random() < self._fail_rate)
            if fail:
                self._injected += 1
            return fail

    def snapshot(self) -> dict[str, Any]:
        """Settings and how many failures were injected, for ``GET /admin/faults``."""
        with self._lock:
            return {
                "failRate": self._fail_rate,
                "downForSeconds": max(0.0, self._down_until - time.monotonic()),
                "seed": self._seed,
                "injected": self._injected,
                "answers": dict(self._answers),
            }


class FaultMiddleware:
    """ASGI middleware answering 503 for faulted requests under ``prefix``."""

    def __init__(self, app: ASGIApp, faults: Faults, prefix: str = "/api") -> None:
        self.app = app
        self.faults = faults
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        status = None
        if scope["type"] == "http" and (path == self.prefix or path.startswith(self.prefix + "/")):
            status = self.faults.answer_for(path) or (503 if self.faults.should_fail() else None)
        if status is None:
            await self.app(scope, receive, send)
            return
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Fault"
        body = json.dumps(error_body(status, phrase, "fault injected", path)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if 300 <= status < 400:
            headers.append((b"location", b"/login"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
