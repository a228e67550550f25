"""HTTP client for every worker → backend call of ``docs/contract.md``.

Only a 2xx answer is a success. Transient failures (connection errors, timeouts, 3xx, 5xx, 429, an
answer broken off or too large) are retried with exponential backoff and jitter for up to
``retry_seconds``; a 4xx answer raises :class:`BackendRejected` carrying the backend's own message.
Redirects are never followed. Every attempt has one overall deadline, ``timeout`` seconds for connect,
send, answer and body together (:mod:`core.http_deadline`), and answer bodies are read up to
``max_answer_bytes``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from pydantic import TypeAdapter, ValidationError

from core.errors import InfrastructureError
from core.http_deadline import DeadlineTransport, call_deadline
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate, LogChunk
from core.multipart import ArtifactBody, name_bytes
from core.settings import Settings

log = logging.getLogger(__name__)

_JOB_LIST = TypeAdapter(list[JobExecutionDTO])
_ID_LIST = TypeAdapter(list[UUID])
_PROBE_SECONDS = 3.0
_UPLOAD_BYTES_PER_SECOND = 1024 * 1024

class BackendError(InfrastructureError):
    """A call to the CI backend did not succeed."""


class BackendUnavailable(BackendError):
    """The backend stayed unreachable, or answered no 2xx (3xx, 5xx, 429, a broken or too large answer),
    for the whole retry window.

    ``answered`` tells the two apart: False when the backend could not be reached at all (connection
    refused, connect timeout, nothing back before the deadline), True when it answered something else
    than a success; ``status_code`` is the last HTTP status, when there was one.
    """

    def __init__(self, message: str, *, answered: bool = False, status_code: int | None = None) -> None:
        super().__init__(message)
        self.answered = answered
        self.status_code = status_code


class BackendRejected(BackendError):
    """The backend answered 4xx: retrying the same request will not help."""

    retryable = False

    def __init__(self, method: str, path: str, status_code: int, body: str) -> None:
        super().__init__(f"backend refused {method} {path}: HTTP {status_code}: {body[:2000]}")
        self.status_code = status_code
        self.body = body


class BackendRequestInvalid(BackendError):
    """The request could not be built or sent from our side (a file missing, a body that cannot be
    encoded): the same request will fail the same way."""

    retryable = False


@dataclass(frozen=True)
class Answer:
    """A 2xx answer, its body read in full (within the size cap)."""

    status_code: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class _Failure:
    """Why one attempt did not succeed, and whether the backend answered at all."""

    reason: str
    answered: bool
    status_code: int | None = None


class BackendClient:
    """Synchronous client (flows and hooks run in worker threads); safe to share between threads."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0,
                 retry_seconds: float = 60.0, max_answer_bytes: int = 16 * 1024 * 1024,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport or DeadlineTransport(), follow_redirects=False)
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.max_answer_bytes = max_answer_bytes

    @classmethod
    def from_settings(cls, settings: Settings, *, retry_seconds: float | None = None) -> BackendClient:
        """The client the settings describe; ``retry_seconds`` overrides ``backend_retry_seconds``."""
        token = settings.backend_token.get_secret_value() if settings.backend_token else None
        retry = settings.backend_retry_seconds if retry_seconds is None else retry_seconds
        return cls(settings.backend_url, token=token, timeout=settings.backend_timeout_seconds,
                   retry_seconds=retry, max_answer_bytes=settings.backend_max_answer_bytes)

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

    def upload_artifact(self, job_execution_id: UUID | str, relative_path: str | bytes,
                        content: bytes | Path) -> None:
        """One file per request, filename = path relative to the working dir (contract), escaped as
        :mod:`core.multipart` says; ``content`` is the bytes or a file streamed from disk."""
        raw_name = relative_path if isinstance(relative_path, bytes) else name_bytes(relative_path)
        bodies: list[ArtifactBody] = []

        def build() -> httpx.Request:
            body = ArtifactBody(str(job_execution_id), raw_name, content)
            bodies.append(body)
            return self._http.build_request("POST", "/job/artifact/upload", content=body.chunks(), headers={
                "Content-Type": body.content_type, "Content-Length": str(body.length)})

        size = _size_of(content)
        try:
            # A large file needs time to travel: one more second per MiB on top of the call's deadline.
            self._request("POST", "/job/artifact/upload", build, extra_seconds=size / _UPLOAD_BYTES_PER_SECOND)
        finally:
            for body in bodies:
                body.close()

    def send_log_chunk(self, chunk: LogChunk) -> bool:
        """Send a live log chunk; False when the backend has no live-log endpoint (404/405)."""
        return self.send_log_chunk_text(json.dumps(chunk.to_wire()))

    def post_json_text(self, path: str, body: str) -> None:
        """POST an already serialised JSON body (the outbox stores payloads as text: no re-encoding)."""
        data = body.encode()
        headers = {"content-type": "application/json", "content-length": str(len(data))}

        def build() -> httpx.Request:
            # The body goes as a one-item iterator, which lets go of it once sent: httpx's request objects
            # sit in reference cycles, freed only by a later run of the cycle collector, and would keep a
            # megabyte log chunk alive until then (several of them under a steady stream of chunks).
            return self._http.build_request("POST", path, content=iter((data,)), headers=headers)

        self._request("POST", path, build)

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
        """Raise unless the backend answers HTTP at all (any status) within 3 s; no retries, body unread."""
        seconds = min(_PROBE_SECONDS, self.timeout)
        try:
            with call_deadline(seconds), self._http.stream("GET", "/", timeout=seconds):
                pass
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"backend unreachable at {self._http.base_url}: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------------

    def _json(self, method: str, path: str) -> Any:
        answer = self._request(method, path)
        try:
            return answer.json()
        except ValueError as exc:
            raise BackendError(f"backend answered {method} {path} with invalid JSON: {exc}") from exc

    def _request(self, method: str, path: str, build: Callable[[], httpx.Request] | None = None,
                 extra_seconds: float = 0.0, **kwargs: Any) -> Answer:
        """Attempts until a 2xx (returned), a 4xx (raised) or the end of the retry window.

        ``build`` makes a fresh request per attempt (a streamed body is used up by one); by default one
        from ``kwargs`` as ``httpx.Client.build_request`` takes them.
        """
        make = build or partial(self._http.build_request, method, path, **kwargs)
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            outcome = self._attempt(method, path, make, extra_seconds)
            if isinstance(outcome, Answer):
                return outcome
            if time.monotonic() + delay > deadline:
                raise BackendUnavailable(f"backend unavailable for {method} {path}: {outcome.reason}",
                                         answered=outcome.answered, status_code=outcome.status_code)
            log.warning("backend %s %s failed (%s); retrying in %.1f s", method, path, outcome.reason, delay)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 10.0)

    def _attempt(self, method: str, path: str, build: Callable[[], httpx.Request],
                 extra_seconds: float = 0.0) -> Answer | _Failure:
        """One try within the overall deadline: the 2xx answer, or why not (a 4xx raises)."""
        try:
            request = build()
        except Exception as exc:  # whatever our side cannot encode: the same next time
            raise BackendRequestInvalid(f"cannot build {method} {path}: {type(exc).__name__}: {exc}") from exc
        with call_deadline(self.timeout + extra_seconds) as deadline:
            try:
                response = self._http.send(request, stream=True)
            except (httpx.LocalProtocolError, OSError) as exc:  # the body did not match what it declared
                raise BackendRequestInvalid(f"cannot send {method} {path}: {type(exc).__name__}: {exc}") from exc
            except httpx.TransportError as exc:
                return _Failure(f"{type(exc).__name__}: {exc}", answered=False)
            try:
                body = self._read(response, deadline)
            finally:
                response.close()
        if isinstance(body, _Failure):
            return body
        return _judge(method, path, response, body)

    def _read(self, response: httpx.Response, deadline: float) -> bytes | _Failure:
        """The answer's body, refused beyond ``max_answer_bytes`` or past the deadline."""
        status, limit = response.status_code, self.max_answer_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _Failure(f"HTTP {status} answer of {declared} bytes refused (more than {limit})", True, status)
        chunks, size = [], 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    return _Failure(f"HTTP {status} answer refused: more than {limit} bytes", True, status)
                if time.monotonic() > deadline:  # also with a transport that does not know the deadline
                    return _Failure(f"HTTP {status} answer not read within {self.timeout:g} s", True, status)
                chunks.append(chunk)
        except httpx.TransportError as exc:
            return _Failure(f"HTTP {status} answer broken off: {type(exc).__name__}: {exc}", True, status)
        return b"".join(chunks)


def _judge(method: str, path: str, response: httpx.Response, body: bytes) -> Answer | _Failure:
    """Only 2xx is a success; 4xx is refused for good; anything else (3xx, 5xx, 429) is tried again."""
    status = response.status_code
    if 200 <= status < 300:
        return Answer(status, body)
    if 400 <= status < 500 and status != 429:
        raise BackendRejected(method, path, status, body.decode("utf-8", "replace"))
    where = f" to {response.headers.get('location', '?')} (not followed)" if 300 <= status < 400 else ""
    return _Failure(f"HTTP {status}{where}", answered=True, status_code=status)


def _size_of(content: bytes | Path) -> int:
    """Bytes to upload; 0 for a file that cannot be read (the request build then says why)."""
    if not isinstance(content, Path):
        return len(content)
    try:
        return content.stat().st_size
    except OSError:
        return 0


def _parse(parser: Callable[[Any], Any], data: Any, path: str) -> Any:
    try:
        return parser(data)
    except ValidationError as exc:
        # Without the input values: a bad env value (a secret) must not end up in the worker's log.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False)[:10])
        raise BackendError(f"backend answered {path} with an unexpected payload: {problems}") from None
    except ValueError as exc:
        raise BackendError(f"backend answered {path} with an unexpected payload: {exc}") from exc
