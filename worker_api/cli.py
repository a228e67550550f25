"""``cicd-worker``: serve the API, or run one job from the shell.

Prefect is imported only after ``PREFECT_API_URL`` is settled, because its settings are read on import.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from worker_api.settings import get_settings


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Use ``PREFECT_API_URL`` when set; else start a local Prefect server for the duration."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    from worker_api.prefect_server import LocalPrefectServer

    state_dir = get_settings().state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    server = LocalPrefectServer(log_path=state_dir / "prefect-server.log")
    print(f"starting a local Prefect server (log: {server.log_path}) ...", file=sys.stderr, flush=True)
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        print("stopping the local Prefect server", file=sys.stderr, flush=True)
        server.stop()


def serve(host: str | None, port: int | None) -> int:
    import uvicorn

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    with prefect_api() as api_url:
        from worker_api.app import create_app

        ui = api_url.removesuffix("/api")
        print(f"cicd-worker {settings.worker_id}: API http://{host}:{port}/docs  Prefect UI {ui}  "
              f"backend {settings.backend_url}", file=sys.stderr, flush=True)
        uvicorn.run(create_app(), host=host, port=port, log_level="info")
    return 0


def execute_job(job_execution_id: str) -> int:
    with prefect_api():
        from flows.job_flow import execute_job as flow
        from flows.runtime import get_backend, get_registry

        job = get_backend().get_job_execution(job_execution_id)
        state = flow(job.model_dump(mode="json", by_alias=True), return_state=True)
        record = get_registry().get(job.id)
        status = record.status.value if record else state.name
        print(f"job {job.job.name} ({job.id}): {status}", flush=True)
        return 0 if record is not None and record.status.value == "SUCCESS" else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cicd-worker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the worker API (starts a local Prefect server if needed)")
    serve_cmd.add_argument("--host", help="listen address (default WORKER_HOST or 0.0.0.0)")
    serve_cmd.add_argument("--port", type=int, help="listen port (default WORKER_PORT or 8081)")
    job_cmd = commands.add_parser("execute-job", help="run one job execution from the configured backend")
    job_cmd.add_argument("job_execution_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve(args.host, args.port)
    if args.command == "execute-job":
        return execute_job(args.job_execution_id)
    return 2


if __name__ == "__main__":
    sys.exit(main())
