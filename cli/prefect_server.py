"""Starting and stopping a local Prefect server when ``PREFECT_API_URL`` is not set.

Prefect's own temporary per-process server costs ~10-30 s each time and prints tracebacks when it
stops, so ``serve`` runs ``prefect server start`` as a child process, waits for its health, and stops it
on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.state_db import private_file


class LocalPrefectServer:
    """A ``prefect server start`` child process on loopback."""

    def __init__(self, port: int = 4200, host: str = "127.0.0.1", log_path: Path | None = None,
                 env: dict[str, str] | None = None, database_url: str | None = None) -> None:
        """``env`` is added to the server's environment (e.g. ``PREFECT_SERVER_API_AUTH_STRING``).

        ``database_url``: the server's database as a SQLAlchemy URL, e.g. PostgreSQL's
        ``postgresql+asyncpg://cicd:cicd@127.0.0.1:5432/prefect`` (``scripts/setup-postgres.sh`` prints it);
        None keeps Prefect's embedded SQLite file, whose writes are serialised (503 "database is locked"
        under concurrent jobs).
        """
        self.host, self.port = host, port
        self.extra_env = {**(env or {}),
                          **({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {})}
        self.api_url = f"http://{host}:{port}/api"
        self.ui_url = f"http://{host}:{port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False

    def start(self, timeout: float = 180.0) -> None:
        """Start the server (or reuse one already healthy at that address) and wait for its health."""
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the server process without waiting for it; nothing when one is already healthy there."""
        if self._process is not None or self._healthy():
            return
        # PREFECT_UI_API_URL: without it the UI asks :4200 for its data, whatever port the server is on.
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
               "PREFECT_UI_API_URL": self.api_url, **self.extra_env}
        env.pop("PREFECT_API_URL", None)
        # The log is private (0600): it may name URLs and paths of this host.
        out = open(private_file(self.log_path), "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        prefect = Path(sys.executable).with_name("prefect")
        self._process = subprocess.Popen(
            [str(prefect), "server", "start", "--host", self.host, "--port", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_healthy(self, timeout: float = 180.0) -> None:
        """Wait until the server answers its health check; raise (and stop it) when it exits or times out."""
        if self._ready:
            return
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self._process.returncode} (log: {self.log_path})")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prefect server not healthy after {timeout:g} s (log: {self.log_path})")
            time.sleep(0.25)
        self._ready = True

    @property
    def pid(self) -> int | None:
        """Process id of the server we started (None when an already running one was reused)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, grace: float = 15.0) -> None:
        """Stop the server we started (its whole process group); nothing when we reused one."""
        process, self._process, self._ready = self._process, None, False
        stop_group(process, grace)


def stop_group(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM to the process group of a child started with ``start_new_session``; SIGKILL after ``grace`` s.

    Nothing when there is no child or it has already exited.
    """
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
