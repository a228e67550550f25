"""Scale-out: submission -> RUNNING in pool mode (``WORKER_DISPATCH=pool``), over long-lived pool workers.

Run from the repository root: ``.venv/bin/python -m bench.scaleout [--jobs N] [--workers W] [--concurrency C]``
(defaults 20, 2 and 2). Target: submission -> RUNNING at most 2 s (median and max).

Set-up, all torn down at the end: a Prefect server on a fresh PostgreSQL database (``scripts/setup-postgres.sh``;
the bench stops, exit 2, when PostgreSQL cannot be set up here), the reference backend as a child process,
the API (``cicd-worker serve``) with ``WORKER_DISPATCH=pool`` on a pool named for this run, and W
``cicd-worker pool-worker --limit C`` processes on this host (standing for W hosts), all with
``WORKER_MAX_CONCURRENT_JOBS = W * C`` so that no job waits for a container slot: the figure is dispatch only.

Jobs: N one-job pipeline runs (script ``true``), created in the backend before the clock starts. C client
threads; each POSTs the next job's DTO to the API's ``/api/job/execute`` (202 expected), waits for its final
status at the backend (its SQLite file, read-only), then takes the next. Per job: submission = just before the
POST; RUNNING = the ``startTime`` the pool worker put on the RUNNING status (same host clock), and the time the
backend received it. One warm-up job first (not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import harness, postgres, readings
from bench.readings import epoch, median
from cli.prefect_server import stop_group
from tests.support import wait_for

TARGET_SECONDS = 2.0


def pool_workers(setup: harness.Setup, pool: str, count: int, limit: int, env: dict[str, str]
                 ) -> list[subprocess.Popen[bytes]]:
    """``count`` pool workers on this host, each with its own state dir and log in the bench's workdir."""
    cli = Path(sys.executable).with_name("cicd-worker")
    started = []
    for index in range(count):
        with open(setup.workdir / f"pool-worker-{index}.log", "ab") as out:
            started.append(subprocess.Popen(
                [str(cli), "pool-worker", "--pool", pool, "--limit", str(limit), "--name", f"bench-w{index}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **env, "WORKER_STATE_DIR": str(setup.workdir / f"pool-state-{index}")}))
    return started


def subscribed(setup: harness.Setup, pool: str) -> int:
    from flows.pool_tasks import pool_task

    body = {"task_worker_filter": {"task_keys": [pool_task("job", pool).task_key]}}
    return len(setup.prefect.post("/task_workers/filter", json=body).json())


def one_job(setup: harness.Setup, db: harness.BackendDB, job_id: str, dto: dict[str, Any], timeout: float
            ) -> tuple[float, float | None, float | None]:
    """POST one job, wait for its final status: (POST -> 202, POST -> RUNNING built, POST -> RUNNING received)."""
    sent, start = time.time(), time.perf_counter()
    answer = setup.worker.post("/api/job/execute", json=dto, timeout=timeout)
    acked = time.perf_counter() - start
    if answer.status_code != 202:
        raise RuntimeError(f"the API answered {answer.status_code}: {answer.text[:300]}")
    wait_for(lambda: db.status(job_id) in harness.FINAL, timeout, 0.02, f"final status of job {job_id}")
    running = next((h for h in db.history(job_id) if h["status"] == "RUNNING"), None)
    if running is None:
        return acked, None, None
    built, received = epoch(running["start_time"]), epoch(running["received_at"])
    return acked, (built - sent if built else None), (received - sent if received else None)


def phase(setup: harness.Setup, jobs: list[tuple[str, dict[str, Any]]], concurrency: int, timeout: float
          ) -> list[tuple[float, float | None, float | None]]:
    def run(job: tuple[str, dict[str, Any]]) -> tuple[float, float | None, float | None]:
        db = harness.BackendDB(setup.db_path)
        try:
            return one_job(setup, db, *job, timeout)
        finally:
            db.close()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(run, jobs))


def show(label: str, samples: list[tuple[float, float | None, float | None]]) -> list[float]:
    """Print median/max of each figure; the POST -> RUNNING (built) values."""
    print(f"\n{label}: {len(samples)} jobs")
    columns = ("POST -> 202", "POST -> RUNNING (startTime)", "POST -> RUNNING received by the backend")
    for index, name in enumerate(columns):
        values = [v for v in (s[index] for s in samples) if v is not None]
        print(f"  {name:<42} median {readings.fmt(median(values), 6, 2)} s   max "
              f"{readings.fmt(max(values) if values else None, 6, 2)} s   (n={len(values)})")
    return [v for v in (s[1] for s in samples) if v is not None]


@contextlib.contextmanager
def pool_mode(setup: harness.Setup, args: argparse.Namespace, pool: str) -> Iterator[None]:
    env = {"PREFECT_API_URL": str(setup.prefect.base_url).rstrip("/"), "WORKER_ID": setup.worker_id,
           "WORKER_BACKEND_URL": setup.backend.api_url, "WORKER_PULL_POLICY": "never",
           "WORKER_CONCURRENCY_LIMIT_NAME": f"bench-{pool}",
           "WORKER_MAX_CONCURRENT_JOBS": str(args.workers * args.concurrency)}
    workers = pool_workers(setup, pool, args.workers, args.concurrency, env)
    try:
        wait_for(lambda: subscribed(setup, pool) == args.workers, 120, 0.5, f"{args.workers} pool workers subscribed")
        yield
    finally:
        for process in workers:
            stop_group(process, 30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs in each mode (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="pool worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads, and --limit of each pool worker")
    parser.add_argument("--job-timeout", type=float, default=120.0, help="seconds a job may take (default 120)")
    harness.common_options(parser)
    args = harness.parse(parser, argv)
    pool = f"bench-{uuid.uuid4().hex[:8]}"
    with postgres.database("prefect_scaleout") as url:
        if url is None:
            return 2
        worker_env = {"WORKER_DISPATCH": "pool", "WORKER_WORK_POOL": pool,
                      "WORKER_CONCURRENCY_LIMIT_NAME": f"bench-{pool}",
                      "WORKER_MAX_CONCURRENT_JOBS": str(args.workers * args.concurrency)}
        with harness.environment("scaleout", keep=args.keep, backend_in_process=False, worker_env=worker_env,
                                 prefect_env={postgres.URL_SETTING: url}) as setup, pool_mode(setup, args, pool):
            print(f"scale-out: {args.jobs} jobs over {args.workers} pool workers (--limit {args.concurrency}), client "
                  f"concurrency {args.concurrency}, Prefect on PostgreSQL; load average {readings.load_average()}",
                  flush=True)
            phase(setup, [harness.new_job(setup, "scaleout-warm-up")], 1, args.job_timeout)
            jobs = [harness.new_job(setup, f"scaleout-{i}") for i in range(args.jobs)]
            to_running = show("pool mode", phase(setup, jobs, args.concurrency, args.job_timeout))
        print(f"\nload average {readings.load_average()}")
        readings.verdict("pool mode: submission -> RUNNING, median", median(to_running), TARGET_SECONDS, " s")
        worst = readings.verdict("pool mode: submission -> RUNNING, max", max(to_running, default=None),
                                 TARGET_SECONDS, " s")
    return 0 if worst.endswith("PASS") and len(to_running) == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
