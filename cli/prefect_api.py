"""The Prefect API a shell command talks to: the one ``PREFECT_API_URL`` names, or a local server it starts.

Prefect reads ``PREFECT_API_URL`` when it is imported, so the Prefect-using modules are imported inside the
functions, after the URL is settled.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from core.state_db import private_dir

if TYPE_CHECKING:  # annotations only
    from flows.services import Services


def flush_outbox(services: Services) -> None:
    """Deliver what the run queued before the process exits (what is left is sent at the next start)."""
    if not services.outbox.flush(timeout=services.settings.backend_retry_seconds):
        print(f"warning: undelivered updates remain in {services.outbox.dir}; they are sent at the next start",
              file=sys.stderr)


@contextlib.contextmanager
def prefect_api(state_dir: Path, keep_server: bool = False) -> Iterator[str]:
    """Use ``PREFECT_API_URL`` when set; else start a local Prefect server for the duration.

    A server started here logs to ``state_dir/prefect-server.log``. ``keep_server`` leaves a server we
    started running afterwards, so that the UI link printed at the end of a local run still opens; it is
    reused by the next run.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    from cli.prefect_server import LocalPrefectServer

    private_dir(state_dir)
    server = LocalPrefectServer(log_path=state_dir / "prefect-server.log")
    print(f"starting a local Prefect server (log: {server.log_path}) ...", file=sys.stderr, flush=True)
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        if keep_server and server.pid is not None:
            print(f"the local Prefect server keeps running for its UI at {server.ui_url} "
                  f"(stop it with: kill {server.pid})", file=sys.stderr, flush=True)
        else:
            print("stopping the local Prefect server", file=sys.stderr, flush=True)
            server.stop()
