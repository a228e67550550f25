"""``python -m reference_backend`` / ``cicd-reference-backend``: run the reference backend standalone."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from reference_backend.app import create_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cicd-reference-backend", description="Reference CI/CD backend (the backend side of docs/contract.md)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data-dir", type=Path, default=Path("reference-backend-data"))
    parser.add_argument("--db-path", type=Path, help="SQLite file (default: DATA_DIR/backend.db)")
    parser.add_argument("--no-live-logs", action="store_true", help="answer 404 on POST /api/job/logs")
    parser.add_argument("--status-as-object", action="store_true", help='answer {"status": ...} on /status')
    parser.add_argument("--max-artifact-bytes", type=int, help="answer 413 for bigger artifacts")
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve until interrupted."""
    args = _parser().parse_args(argv)
    app = create_app(
        args.db_path or args.data_dir / "backend.db",
        args.data_dir,
        live_logs=not args.no_live_logs,
        status_as_object=args.status_as_object,
        max_artifact_bytes=args.max_artifact_bytes,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
