"""A Docker engine that stops answering, for tests: the real engine behind a unix-socket proxy that can wedge.

A wedged dockerd (seen with 20.10 deadlocked under concurrent container starts and deletes) still accepts
connections but never answers some or all requests. The proxy forwards the real HTTP protocol to the real
engine, request by request. Requests the ``hold`` rule picks are read and never forwarded; requests the
``swallow`` rule picks reach the engine (which acts on them) but their answer never comes back, like a
``docker run`` that left its container in ``Created`` and hung. With ``freeze()`` it holds every request and
stops passing answers back, like an engine wedged mid-run.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_UPGRADE = re.compile(rb"^upgrade:", re.IGNORECASE | re.MULTILINE)


def real_engine_socket() -> str:
    """Path of the engine the tests use (a unix socket)."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    assert host.startswith("unix://"), f"the wedging proxy needs a unix socket engine, not {host}"
    return host.removeprefix("unix://")


class WedgingEngine:
    """A unix socket in front of the real engine; the rules get the request line (``POST /v1.41/... HTTP/1.1``).

    ``silent=True``: nothing reaches the engine at all (a socket that accepts and never answers).
    ``requests`` lists every request line received, held or not, in order.
    """

    def __init__(self, hold: Callable[[str], bool] = lambda line: False,
                 swallow: Callable[[str], bool] = lambda line: False, silent: bool = False) -> None:
        self._dir = tempfile.mkdtemp(prefix="wedge-", dir="/tmp")  # a unix socket path must stay short
        self.path = str(Path(self._dir) / "docker.sock")
        self.url = f"unix://{self.path}"
        self.hold = hold
        self.swallow = swallow
        self.silent = silent
        self.upstream = real_engine_socket()  # resolved now: a test may then point DOCKER_HOST at this proxy
        self.requests: list[str] = []
        self._frozen = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(64)
        threading.Thread(target=self._accept, daemon=True, name="wedge-accept").start()

    def freeze(self) -> None:
        """From now on hold every request, and pass no more answers back on open connections."""
        self._frozen.set()

    def close(self) -> None:
        for sock in [self._server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self._dir)

    def __enter__(self) -> WedgingEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="wedge-conn").start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        if not self.silent:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            self._sockets.append(upstream)
        muted = threading.Event()  # set: answers on this connection are dropped
        if upstream is not None:
            threading.Thread(target=self._answers, args=(upstream, client, muted), daemon=True).start()
        with contextlib.suppress(OSError):
            self._requests(client, upstream, muted)

    def _requests(self, client: socket.socket, upstream: socket.socket | None, muted: threading.Event) -> None:
        buffer = b""
        while True:
            while _HEAD_END not in buffer:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(_HEAD_END, 1)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.requests.append(line)
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            while len(buffer) < length:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
            body, buffer = buffer[:length], buffer[length:]
            if upstream is None or self._frozen.is_set() or self.hold(line):
                _drain(client)  # held: read on, answer nothing
                return
            if self.swallow(line):
                muted.set()
            upstream.sendall(head + _HEAD_END + body)
            if _UPGRADE.search(head):  # attach hijacks the connection: raw bytes from here on
                _copy(client, upstream, buffer, self._frozen.is_set)
                return

    def _answers(self, upstream: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        with contextlib.suppress(OSError):
            _copy(upstream, client, b"", lambda: muted.is_set() or self._frozen.is_set())


def _copy(source: socket.socket, target: socket.socket, pending: bytes, stopped: Callable[[], bool]) -> None:
    if pending:
        target.sendall(pending)
    while True:
        data = source.recv(65536)
        if not data or stopped():
            break
        target.sendall(data)
    if stopped():
        _drain(source)  # wedged: keep the connection open and silent (until close())
        return
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass
