"""Health checks of what the worker depends on: the Docker engine, the Prefect API, the backend, the outbox.

A dependency that hangs must not hang health: every check runs in its own thread and the report is made
at a deadline (``DEADLINE_SECONDS``, under the 5 s a load balancer typically waits); a check that has not
answered by then is DOWN. A check still running from an earlier report (a wedged engine) is waited on again
instead of being started once more, so a flood of health calls does not pile up threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

import docker
import httpx

from core.models import HealthReport
from core.state_db import state_problems
from flows.services import Services

CHECK_TIMEOUT_SECONDS = 3.0
DEADLINE_SECONDS = 4.0

Check = Callable[[], dict[str, Any]]


def _docker() -> dict[str, Any]:
    # No engine version in the answer: it tells an attacker which engine bugs to try.
    client = docker.from_env(timeout=CHECK_TIMEOUT_SECONDS, version="auto")
    try:
        client.ping()
    finally:
        client.close()
    return {"status": "UP"}


def _prefect() -> dict[str, Any]:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise RuntimeError("PREFECT_API_URL is not set")
    # /health answers without credentials even when the server demands basic auth.
    response = httpx.get(url.rstrip("/") + "/health", timeout=CHECK_TIMEOUT_SECONDS)
    response.raise_for_status()
    return {"status": "UP", "detail": url}


def _backend(services: Services) -> Check:
    def check() -> dict[str, Any]:
        services.backend.probe()
        return {"status": "UP"}

    return check


def _outbox(services: Services) -> Check:
    return lambda: _outbox_check(services)


def _outbox_check(services: Services) -> dict[str, Any]:
    stats = dict(services.outbox.stats())
    if stats.get("senderAlive") is False:  # nothing reaches the backend while the sender is down
        return {**stats, "status": "DOWN", "error": stats.get("senderProblem") or "the outbox sender is not running"}
    return {**stats, "status": "UP"}


def _state() -> dict[str, Any]:
    """Databases found damaged (moved aside, started fresh): UP, since the worker works, with the problems."""
    problems = state_problems()
    return {"status": "UP", **({"errors": problems} if problems else {})}


def all_checks(services: Services) -> dict[str, Check]:
    """Every check, those of the backend and the outbox on these services."""
    return {"docker": _docker, "prefect": _prefect, "backend": _backend(services), "outbox": _outbox(services),
            "state": _state}


def _run(check: Check, result: Future[dict[str, Any]]) -> None:
    started = time.monotonic()
    try:
        answer = check()
    except Exception as exc:  # any failure of a probe means DOWN, with the reason shown (to who may see detail)
        answer = {"status": "DOWN", "error": f"{type(exc).__name__}: {exc}"}
    answer["millis"] = round((time.monotonic() - started) * 1000, 1)
    result.set_result(answer)


class HealthChecks:
    """Runs the checks concurrently with a deadline; one instance per app."""

    def __init__(self, services: Services, checks: dict[str, Check] | None = None,
                 deadline: float = DEADLINE_SECONDS) -> None:
        self._checks = checks or all_checks(services)
        self._local = services.settings.dispatch == "local"
        self._deadline = deadline
        self._running: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _start(self, name: str) -> Future[dict[str, Any]]:
        with self._lock:
            result = self._running.get(name)
            if result is None or result.done():
                result = Future()
                threading.Thread(target=_run, args=(self._checks[name], result), name=f"health-{name}",
                                 daemon=True).start()
                self._running[name] = result
            return result

    def report(self) -> tuple[HealthReport, bool]:
        """The full report and whether the worker is UP.

        UP needs Docker (local dispatch only: in pool mode no container runs in this process), Prefect and a
        running outbox sender; the backend is informative (the outbox keeps what it cannot deliver yet).
        """
        results = {name: self._start(name) for name in self._checks}
        wait(list(results.values()), timeout=self._deadline)
        checks = {name: result.result() if result.done() else
                  {"status": "DOWN", "error": f"no answer within {self._deadline:g} s"}
                  for name, result in results.items()}
        needed = ["prefect", "outbox"] + (["docker"] if self._local else [])
        up = all(checks[name]["status"] == "UP" for name in needed if name in checks)
        return HealthReport(status="UP" if up else "DOWN", checks=checks), up


def public(report: HealthReport) -> HealthReport:
    """What a caller who may not see detail gets: the status and the insecure flag, nothing else."""
    return HealthReport(status=report.status, insecure=report.insecure)
