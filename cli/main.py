"""``cicd-worker``: serve the API, or run jobs, pipelines and pipeline files from the shell.

Prefect is imported only after ``PREFECT_API_URL`` is settled, because its settings are read on import.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cli.prefect_api import flush_outbox, prefect_api
from core.settings import Settings
from worker_api.exposure import INSECURE_WARNING, Exposure, classify, refusal_message


def _loud(message: str) -> str:
    bar = "!" * 100
    return f"{bar}\n{message}\n{bar}"


def serve(settings: Settings, host: str | None, port: int | None, insecure: bool = False) -> int:
    """Serve the API; refuses (2) to listen beyond loopback without ``WORKER_API_TOKEN`` unless ``insecure``.

    The app builds the services from ``settings`` at its start-up.
    """
    import uvicorn

    host, port = host or settings.host, port or settings.port
    exposed = classify(host, settings.api_token is not None, insecure or settings.insecure)
    if exposed is Exposure.REFUSED:
        print(refusal_message(host, port), file=sys.stderr, flush=True)
        return 2
    if exposed is Exposure.INSECURE:
        print(_loud(INSECURE_WARNING), file=sys.stderr, flush=True)
    if settings.dispatch == "pool" and not os.environ.get("PREFECT_API_AUTH_STRING"):
        print(_loud("WARNING: pool mode without PREFECT_API_AUTH_STRING: a Prefect server without basic auth "
                    "lets anyone who reaches it start flow runs on the pool hosts."), file=sys.stderr, flush=True)
    with prefect_api(settings.state_dir) as api_url:
        from worker_api.app import create_app

        ui = api_url.removesuffix("/api")
        print(f"cicd-worker {settings.worker_id}: API http://{host}:{port}/docs  Prefect UI {ui}  "
              f"backend {settings.backend_url}", file=sys.stderr, flush=True)
        from worker_api.lifecycle import DrainingServer

        app = create_app(settings, exposure=exposed)
        DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
    return 0


def execute_job(settings: Settings, job_execution_id: str) -> int:
    with prefect_api(settings.state_dir):
        from flows.job_flow import execute_job as flow
        from flows.job_flow import hand_over_job, job_run_name
        from flows.services import build_services, install

        services = install(build_services(settings))
        job = services.backend.get_job_execution(job_execution_id)
        named = flow.with_options(flow_run_name=job_run_name(job))
        hand_over_job(job)  # fetched once: the flow takes it (its env is never a flow-run parameter)
        state: Any = named(str(job.id), return_state=True)
        flush_outbox(services)
        record = services.registry.get(job.id)
        status = record.status.value if record else state.name
        print(f"job {job.job.name} ({job.id}): {status}", flush=True)
        return 0 if record is not None and record.status.value == "SUCCESS" else 1


def execute_pipeline(settings: Settings, pipeline_execution_id: str) -> int:
    with prefect_api(settings.state_dir):
        from cli.progress import PipelineProgress
        from flows.pipeline_flow import execute_pipeline as flow
        from flows.pipeline_flow import pipeline_run_name
        from flows.planning import PlanningError
        from flows.services import build_services, install

        services = install(build_services(settings))
        with PipelineProgress(services.registry, pipeline_execution_id):
            try:
                named = flow.with_options(flow_run_name=pipeline_run_name(pipeline_execution_id))
                state: Any = named(pipeline_execution_id, return_state=True)
            except PlanningError as exc:
                print(f"pipeline refused (every job reported FAILED):\n{exc}", file=sys.stderr)
                return 2
        flush_outbox(services)
        print(f"pipeline {pipeline_execution_id}: {state.name}: {state.message}", flush=True)
        return 0 if state.is_completed() else 1


def pool_worker(settings: Settings, pool: str | None, limit: int, name: str | None) -> int:
    """A long-lived pool worker on this host (``PREFECT_API_URL`` must name the shared Prefect server)."""
    if not os.environ.get("PREFECT_API_URL"):
        print("cicd-worker pool-worker: PREFECT_API_URL is not set: point it at the Prefect server of the pool",
              file=sys.stderr)
        return 2
    # The pool tasks' own runs belong to no flow run: their few log lines stay in this process's log.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    from flows import pool_tasks

    return pool_tasks.serve(settings, pool or settings.work_pool, limit, name or socket.gethostname())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cicd-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cicd-worker {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the worker API (starts a local Prefect server if needed)")
    serve_cmd.add_argument("--host", help="listen address (default WORKER_HOST or 127.0.0.1); beyond loopback "
                                          "WORKER_API_TOKEN is required")
    serve_cmd.add_argument("--port", type=int, help="listen port (default WORKER_PORT or 8081)")
    serve_cmd.add_argument("--insecure", action="store_true",
                           help="listen beyond loopback without a token anyway (WORKER_INSECURE=true); anyone who "
                                "reaches the port can run any script here")
    job_cmd = commands.add_parser("execute-job", help="run one job execution from the configured backend")
    job_cmd.add_argument("job_execution_id")
    pipeline_cmd = commands.add_parser("execute-pipeline", help="run every job of a pipeline run of the backend")
    pipeline_cmd.add_argument("pipeline_execution_id")
    run_cmd = commands.add_parser("run", help="run a pipeline file on this machine (exit 0 only if it succeeded)")
    run_cmd.add_argument("file", type=Path)
    run_cmd.add_argument("jobs", nargs="*", metavar="JOB",
                         help="run only these jobs (manual ones included); default: every job but the manual ones")
    run_cmd.add_argument("--needs", action="store_true", help="with JOBs: also every job they wait for, transitively")
    run_cmd.add_argument("--var", action="append", default=[], metavar="KEY=VALUE",
                         help="set a variable in every job, over the file's (repeatable)")
    run_cmd.add_argument("--env-file", type=Path, metavar="PATH",
                         help="variables from a dotenv file (KEY=VALUE lines), over the file's; --var wins")
    run_cmd.add_argument("--concurrency", type=int, metavar="N",
                         help="at most N jobs at once (default WORKER_MAX_CONCURRENT_JOBS)")
    run_cmd.add_argument("--dry-run", action="store_true", help="print the plan, level by level; run nothing")
    run_cmd.add_argument("--verbose", action="store_true", help="also print Prefect's and the worker's INFO logging")
    run_cmd.add_argument("--timestamps", action="store_true",
                         help="print the seconds since the job's start before each line of its output")
    run_cmd.add_argument("--no-cache", action="store_true",
                         help="run every job, also those whose inputs did not change (their stored results replaced)")
    run_cmd.add_argument("--explain", metavar="JOB",
                         help="print why JOB's reuse key changed since its last successful run; run nothing")
    check_cmd = commands.add_parser("check", help="validate a pipeline file (exit 2 when invalid)")
    check_cmd.add_argument("file", type=Path, help="the pipeline file; - reads standard input")
    list_cmd = commands.add_parser("list", help="list the jobs of a pipeline file (exit 2 when invalid)")
    list_cmd.add_argument("file", type=Path, help="the pipeline file; - reads standard input")
    list_cmd.add_argument("--json", action="store_true", help="as a JSON list")
    cache_cmd = commands.add_parser("cache", help="the job caches kept on this machine (see cicd-worker cache -h)")
    cache_actions = cache_cmd.add_subparsers(dest="cache_action", required=True)
    cache_ls = cache_actions.add_parser("ls", help="list the caches: key, size, last use")
    cache_ls.add_argument("--json", action="store_true", help="as a JSON list")
    cache_clear = cache_actions.add_parser("clear", help="remove the cache of KEY, or every cache")
    cache_clear.add_argument("key", nargs="?", metavar="KEY", help="the key as `cache ls` shows it")
    commands.add_parser("deploy", help="create the global container limit on the Prefect server (pool mode)",
                        add_help=False)
    pool_cmd = commands.add_parser("pool-worker", help="run pool mode's jobs and pipelines on this host (long-lived)")
    pool_cmd.add_argument("--pool", help="pool to serve (default WORKER_WORK_POOL, as on the API host)")
    pool_cmd.add_argument("--limit", type=int, default=4,
                          help="flow runs at once in this process, waiting ones included (default 4); containers "
                               "across all hosts are capped by the global limit")
    pool_cmd.add_argument("--name", help="this worker's name on its containers' labels (default: the host name)")
    return parser


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from cli import local_run
    from cli.run_selection import Selection

    if args.concurrency is not None:
        if args.concurrency < 1:
            print("cicd-worker run: --concurrency must be at least 1", file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"max_concurrent_jobs": args.concurrency})
    selection = Selection(jobs=tuple(args.jobs), needs=args.needs, variables=tuple(args.var), env_file=args.env_file)
    return local_run.run(args.file, settings, dry=args.dry_run, selection=selection,
                         show=local_run.Show(verbose=args.verbose, timestamps=args.timestamps),
                         reuse=local_run.Reuse(no_cache=args.no_cache, explain=args.explain))


def _version() -> str:
    try:
        return importlib.metadata.version("cicd-worker")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "unknown"


def read_settings() -> tuple[Settings | None, str | None]:
    """The settings from the environment (read once per command), or None and their validation errors as lines
    naming the variables."""
    try:
        return Settings(), None
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name, *rest = [str(part) for part in error["loc"]] or ["?"]
            variable = name.upper() if name.upper().startswith("WORKER_") else f"WORKER_{name.upper()}"
            where = variable + "".join(f"[{part}]" for part in rest)
            lines.append(f"  {where}: {str(error['msg']).removeprefix('Value error, ')}")
        return None, "cicd-worker: invalid settings:\n" + "\n".join(lines)


def _parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; ``run``'s job names may also come after its options (``run FILE --needs lint``), which
    argparse alone refuses: it takes the positionals in one go, before the options."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run" and extra and not any(item.startswith("-") for item in extra):
        args.jobs = [*args.jobs, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _offline_command(settings: Settings, args: argparse.Namespace) -> int:
    """``check``, ``list`` and ``cache``: no Prefect, no engine, so that they stay fast."""
    if args.command == "cache":
        from cli import cache_commands

        return cache_commands.list_caches(settings, args.json) if args.cache_action == "ls" else \
            cache_commands.clear_caches(settings, args.key)
    from cli import file_commands

    if args.command == "list":
        from cli.reuse_view import marks_for

        return file_commands.list_jobs(args.file, args.json, marks_for(settings))
    return file_commands.check(args.file)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:  # answered whatever the settings
        _parser().parse_args(argv)
    settings, problem = read_settings()
    if settings is None:
        print(problem, file=sys.stderr)
        return 2
    if argv and argv[0] == "deploy":  # its own options: see `cicd-worker deploy --help`
        from worker_api import deploy  # its own options and Prefect imports: loaded only for this command

        return deploy.main(settings, argv[1:])
    args = _parse(argv)
    # Jobs' lines go to Prefect's run logs in records of ~64 KiB; Prefect's default batch (4 MB) held ~10 MiB of
    # them in the worker's memory under a 50 MB log (bench/logs.py). Set before Prefect is imported.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_SIZE", "1000000")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns what matters
    if args.command == "serve":
        return serve(settings, args.host, args.port, insecure=args.insecure)
    if args.command == "execute-job":
        return execute_job(settings, args.job_execution_id)
    if args.command == "execute-pipeline":
        return execute_pipeline(settings, args.pipeline_execution_id)
    if args.command == "pool-worker":
        return pool_worker(settings, args.pool, args.limit, args.name)
    if args.command in ("check", "list", "cache"):
        return _offline_command(settings, args)
    if args.command == "run":
        return _run(settings, args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
