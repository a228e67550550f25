"""Request guards: bounded bodies (413), draining at shutdown (503), and a bounded job queue (429)."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import WorkerError
from worker_api.lifecycle import DRAIN

RETRY_AFTER_SECONDS = 10
_EXECUTE_PATHS = ("/api/job/execute", "/api/pipeline/execute")


class QueueFull(WorkerError):
    """More jobs are accepted and unfinished than ``WORKER_MAX_QUEUED_JOBS``."""


async def _answer(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """ASGI middleware: refuse bodies over ``max_bytes`` and new executions while draining."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if DRAIN.started.is_set() and scope["method"] == "POST" and scope["path"] in _EXECUTE_PATHS:
            await _answer(send, 503, {"error": "worker is shutting down; send this job elsewhere or later"},
                          [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())])
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        await self.app(scope, self._bounded(receive), send)

    def _bounded(self, receive: Receive) -> Receive:
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        return bounded_receive

    async def _too_large(self, send: Send) -> None:
        await _answer(send, 413, {"error": f"request body over {self.max_bytes} bytes", "field": "body"}, [])


class BodyTooLarge(Exception):
    """A streamed body went past the limit (no Content-Length was declared)."""
