"""A whole-call deadline for HTTP calls made with httpx.

httpx's timeouts apply to each socket operation: a server that sends one byte a second never trips a
10 s read timeout and holds a call for ever. Here every socket operation of a call (connect, each send,
each receive) is given at most the time left until the call's deadline, and an operation started after
it fails at once, so connect + send + answer + body together take at most the deadline (plus one
scheduling tick). The deadline is per thread (a context variable), so one client serves many threads.

Name resolution (``getaddrinfo``) is not bounded by it: the standard library gives it no timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

# (monotonic time of the deadline, the seconds it was set for: for the message)
_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("backend_call_deadline", default=None)
_SEND_SLICE = 64 * 1024


@contextmanager
def call_deadline(seconds: float) -> Iterator[float]:
    """Every HTTP call made by this thread through a :class:`DeadlineTransport` inside the block must end
    within ``seconds`` from now; yields the deadline (``time.monotonic()`` based)."""
    deadline = time.monotonic() + seconds
    token = _DEADLINE.set((deadline, seconds))
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def _time_left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the current deadline; ``error`` once it has passed."""
    current = _DEADLINE.get()
    if current is None:
        return timeout
    deadline, seconds = current
    left = deadline - time.monotonic()
    if left <= 0:
        raise error(f"deadline of {seconds:g} s for the whole call passed")
    return left if timeout is None else min(timeout, left)


def _blame_deadline(exc: Exception) -> Exception:
    """A timeout that happened because the call's deadline was reached, said so; others unchanged."""
    current = _DEADLINE.get()
    if current is not None and time.monotonic() >= current[0]:
        return type(exc)(f"deadline of {current[1]:g} s for the whole call passed")
    return exc


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write respects the deadline of the call using it."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # A receive returns as soon as any byte arrives, so a drip re-checks the deadline per byte.
        try:
            return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))
        except httpcore.ReadTimeout as exc:
            raise _blame_deadline(exc) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        sock = self._inner.get_extra_info("socket")
        if not isinstance(sock, socket.socket):  # TLS inside TLS: no socket of our own to drive
            self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))
            return
        # The inner write loops on send() with one timeout per send: a server reading slowly would
        # keep it going for ever, so the loop is ours, with the time left checked before each send.
        view = memoryview(buffer)
        try:
            while view:
                sock.settimeout(_time_left(timeout, httpcore.WriteTimeout))
                view = view[sock.send(view[:_SEND_SLICE]):]
        except TimeoutError as exc:
            raise _blame_deadline(httpcore.WriteTimeout(str(exc) or "write timed out")) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, its streams wrapped in :class:`_DeadlineStream`."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        try:
            return _DeadlineStream(self._inner.connect_tcp(host, port, left, local_address, socket_options))
        except httpcore.ConnectTimeout as exc:
            raise _blame_deadline(exc) from exc

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's default transport (HTTP/1.1, system CA bundle) whose calls honour :func:`call_deadline`."""

    def __init__(self) -> None:
        super().__init__()
        # httpx offers no way to pass a network backend: the pool it built is replaced by the same
        # pool (httpx's default limits and TLS settings) on the deadline-aware backend.
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend())
