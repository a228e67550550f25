"""HTTP client for every worker → backend call of ``CONTRACT.md``.

Transient failures (connection errors, timeouts, 5xx, 429) are retried with exponential backoff and
jitter for up to ``retry_seconds``; a 4xx answer raises :class:`BackendRejected` carrying the backend's
own message. Every call has a timeout.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
from pydantic import TypeAdapter, ValidationError

from executors.errors import InfrastructureError
from worker_api.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate, LogChunk
from worker_api.settings import Settings

log = logging.getLogger(__name__)

_JOB_LIST = TypeAdapter(list[JobExecutionDTO])
_ID_LIST = TypeAdapter(list[UUID])


class BackendError(InfrastructureError):
    """A call to the CI backend did not succeed."""


class BackendUnavailable(BackendError):
    """The backend stayed unreachable (or answered 5xx/429) for the whole retry window."""


class BackendRejected(BackendError):
    """The backend answered 4xx: retrying the same request will not help."""

    retryable = False

    def __init__(self, method: str, path: str, status_code: int, body: str) -> None:
        super().__init__(f"backend refused {method} {path}: HTTP {status_code}: {body[:2000]}")
        self.status_code = status_code
        self.body = body


class BackendClient:
    """Synchronous client (flows and hooks run in worker threads); safe to share between threads."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0,
                 retry_seconds: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport)
        self.retry_seconds = retry_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> BackendClient:
        token = settings.backend_token.get_secret_value() if settings.backend_token else None
        return cls(settings.backend_url, token=token, timeout=settings.backend_timeout_seconds,
                   retry_seconds=settings.backend_retry_seconds)

    def close(self) -> None:
        self._http.close()

    # -- contract calls -------------------------------------------------------------------------

    def get_job_execution(self, job_execution_id: UUID | str) -> JobExecutionDTO:
        data = self._json("GET", f"/jobs/{job_execution_id}")
        return _parse(JobExecutionDTO.model_validate, data, f"/jobs/{job_execution_id}")

    def get_job_dependencies(self, job_execution_id: UUID | str) -> list[UUID]:
        data = self._json("GET", f"/jobs/{job_execution_id}/dependencies")
        return _parse(_ID_LIST.validate_python, data, f"/jobs/{job_execution_id}/dependencies")

    def get_job_status(self, job_execution_id: UUID | str) -> ExecutionStatus:
        """The status, whether the backend answers ``"SUCCESS"`` or ``{"status": "SUCCESS"}``."""
        data = self._json("GET", f"/jobs/{job_execution_id}/status")
        if isinstance(data, dict):
            data = data.get("status")
        return _parse(ExecutionStatus, data, f"/jobs/{job_execution_id}/status")

    def get_pipeline_jobs(self, pipeline_execution_id: UUID | str) -> list[JobExecutionDTO]:
        path = f"/pipeline-executions/{pipeline_execution_id}/jobs"
        return _parse(_JOB_LIST.validate_python, self._json("GET", path), path)

    def update_job_status(self, update: JobStatusUpdate) -> None:
        self._request("POST", "/job/status", json=update.to_wire())

    def upload_artifact(self, job_execution_id: UUID | str, relative_path: str, content: bytes) -> None:
        """One file per request, filename = path relative to the working dir (contract)."""
        self._request("POST", "/job/artifact/upload", data={"jobId": str(job_execution_id)},
                      files={"file": (relative_path, content, "application/octet-stream")})

    def send_log_chunk(self, chunk: LogChunk) -> bool:
        """Send a live log chunk; False when the backend has no live-log endpoint (404/405)."""
        try:
            self._request("POST", "/job/logs", json=chunk.to_wire())
        except BackendRejected as exc:
            if exc.status_code in (404, 405):
                return False
            raise
        return True

    def post_json_text(self, path: str, body: str) -> None:
        """POST an already serialised JSON body (the outbox stores payloads as text: no re-encoding)."""
        self._request("POST", path, content=body.encode(), headers={"content-type": "application/json"})

    def send_log_chunk_text(self, body: str) -> bool:
        """``send_log_chunk`` for a chunk already serialised; False when the backend has no live logs."""
        try:
            self.post_json_text("/job/logs", body)
        except BackendRejected as exc:
            if exc.status_code in (404, 405):
                return False
            raise
        return True

    def probe(self) -> None:
        """Raise unless the backend answers HTTP at all (any status); no retries."""
        try:
            self._http.get("/", timeout=3.0)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"backend unreachable at {self._http.base_url}: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------------

    def _json(self, method: str, path: str) -> Any:
        response = self._request(method, path)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"backend answered {method} {path} with invalid JSON: {exc}") from exc

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            problem = self._attempt(method, path, kwargs)
            if isinstance(problem, httpx.Response):
                return problem
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(f"backend unavailable for {method} {path}: {problem}")
            log.warning("backend %s %s failed (%s); retrying in %.1f s", method, path, problem, delay)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 10.0)

    def _attempt(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response | str:
        """One try: the response when done, or the reason to retry as text."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code == 429 or response.status_code >= 500:
            return f"HTTP {response.status_code}"
        if response.status_code >= 400:
            raise BackendRejected(method, path, response.status_code, response.text)
        return response


def _parse(parser: Callable[[Any], Any], data: Any, path: str) -> Any:
    try:
        return parser(data)
    except (ValidationError, ValueError) as exc:
        raise BackendError(f"backend answered {path} with an unexpected payload: {exc}") from exc
