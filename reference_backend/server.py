"""Run the reference backend in-process: uvicorn on a background thread, on loopback.

Used by tests and by ``cicd-worker run``::

    with BackendServer() as backend:
        httpx.post(f"{backend.url}/admin/pipeline-runs", json=...)
        worker_settings.backend_url = backend.api_url
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from reference_backend.app import create_app


class BackendServer:
    """A reference backend listening on ``host:port`` (port 0 picks a free one).

    ``start()`` returns once the server answers; ``stop()`` is safe to call
    twice and after a failed start. Without ``data_dir`` a temporary directory
    is used and removed by ``stop()``.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        db_path: str | Path | None = None,
        live_logs: bool = True,
        status_as_object: bool = False,
        max_artifact_bytes: int | None = None,
        log_level: str = "warning",
    ) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="refbackend-"))
        self.db_path = Path(db_path) if db_path is not None else self.data_dir / "backend.db"
        self.host = host
        self.app = create_app(
            self.db_path,
            self.data_dir,
            live_logs=live_logs,
            status_as_object=status_as_object,
            max_artifact_bytes=max_artifact_bytes,
        )
        self._requested_port = port
        self._log_level = log_level
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (known once started)."""
        if self._port is None:
            raise RuntimeError("BackendServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Base URL of the contract endpoints: what a worker is configured with."""
        return self.url + "/api"

    def start(self, timeout: float = 10.0) -> BackendServer:
        """Start serving and wait until ``/admin/health`` answers."""
        if self._thread is not None:
            raise RuntimeError("BackendServer already started")
        self._socket = _listening_socket(self.host, self._requested_port)
        self._port = self._socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self._log_level, access_log=False, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="reference-backend", daemon=True
        )
        self._thread.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._thread is not None
            if not self._thread.is_alive():
                raise RuntimeError("reference backend exited during start-up")
            try:
                if httpx.get(self.url + "/admin/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"reference backend did not answer within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, close the database and remove a temporary data directory."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        # The app's shutdown closes the store too; this covers a server that never got that far.
        self.app.state.backend.store.close()
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> BackendServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bind here, not in uvicorn, so the chosen port is known before the server thread runs.

    The protocol must be IPPROTO_TCP explicitly (``socket.create_server`` leaves it 0): asyncio only
    sets TCP_NODELAY on accepted sockets whose proto says TCP, and without it every loopback request
    waits ~40 ms on Nagle's algorithm and delayed ACKs.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock
