"""Health checks of what the worker depends on: the Docker engine, the Prefect API, the backend."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import docker
import httpx

from flows.runtime import get_backend, get_outbox
from worker_api.models import HealthReport
from worker_api.settings import get_settings

_CHECK_TIMEOUT_SECONDS = 3.0


def _timed(check: Callable[[], str | None]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        detail = check()
        result: dict[str, Any] = {"status": "UP"}
        if detail:
            result["detail"] = detail
    except Exception as exc:  # any failure of a probe means DOWN, with the reason shown
        result = {"status": "DOWN", "error": f"{type(exc).__name__}: {exc}"}
    result["millis"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _docker() -> str | None:
    client = docker.from_env(timeout=_CHECK_TIMEOUT_SECONDS, version="auto")
    try:
        client.ping()
        return f"engine {client.version().get('Version', '?')}"
    finally:
        client.close()


def _prefect() -> str | None:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise RuntimeError("PREFECT_API_URL is not set")
    response = httpx.get(url.rstrip("/") + "/health", timeout=_CHECK_TIMEOUT_SECONDS)
    response.raise_for_status()
    return url


def _backend() -> str | None:
    get_backend().probe()
    return None


def _outbox() -> dict[str, Any]:
    return {"status": "UP", **get_outbox().stats()}


def health_report() -> tuple[HealthReport, bool]:
    """The report and whether the worker is UP (Docker and Prefect; backend and outbox are informative).

    With pool dispatch no container runs in this process, so Docker is informative too.
    """
    checks = {"docker": _timed(_docker), "prefect": _timed(_prefect), "backend": _timed(_backend),
              "outbox": _outbox()}
    docker_needed = get_settings().dispatch == "local"
    up = (checks["docker"]["status"] == "UP" or not docker_needed) and checks["prefect"]["status"] == "UP"
    return HealthReport(status="UP" if up else "DOWN", checks=checks), up
