"""The parties a benchmark measures, started and torn down in one place, and the calls every benchmark makes.

``environment()`` starts, in order: a ``docker events`` stream (``bench.readings.EngineEvents``); a Prefect
server on a free port with a temporary ``PREFECT_HOME`` (or the server at ``PREFECT_API_URL`` when that is
set); the reference backend, in this process (``BackendServer``) or as a child process (``python -m
reference_backend``, so that what it receives costs this process nothing); a real ``cicd-worker serve``
child process (``tests.support.WorkerProcess``) with ``WORKER_PULL_POLICY=never``, its own ``WORKER_ID``
and state dir. It yields a ``Setup`` and, whatever happens, stops them all, removes the containers and
volumes labelled with the worker id (``cicd.worker-id``, or ``cicd.bench`` on a baseline's ``docker run``)
and the temporary directory (kept with ``keep``, or when the worker left containers behind).
``prefect_session()`` is its first half (events stream, Prefect server, clean-up) for a benchmark that starts
its own worker processes or CLIs.

The worker process, free ports, polling with a deadline and the backend's admin calls are the test suite's
own (``tests/support.py``): benchmarks and tests start the worker the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.readings import EngineEvents, cpu_seconds, load_average, session_cpu_seconds
from cli.prefect_server import LocalPrefectServer, stop_group
from reference_backend.server import BackendServer
from tests.support import FINAL as FINAL  # re-exported: the benchmarks import the test suite only through here
from tests.support import REPO, TEST_IMAGE, Backend, WorkerProcess, free_port, wait_for

IMAGE = TEST_IMAGE
PREFECT_DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LABEL_JOB = "cicd.job-execution-id"
LABEL_WORKER = "cicd.worker-id"
LABEL_BENCH = "cicd.bench"  # on a baseline's containers: only lets the clean-up find them


@dataclass
class Setup:
    """The running parties of one benchmark session."""

    backend: Backend  # admin and API calls to the reference backend
    worker: httpx.Client
    prefect: httpx.Client  # the Prefect server's API
    worker_process: WorkerProcess
    events: EngineEvents
    worker_id: str  # also the value of ``cicd.bench`` on a baseline's containers
    workdir: Path  # worker.log, prefect-server.log, backend/ (its backend.db), backend.log
    db_path: Path  # the backend's SQLite file
    backend_pid: int | None  # None when the backend runs in this process
    prefect_sid: int | None  # None when an external Prefect server is used

    @property
    def worker_pid(self) -> int:
        assert self.worker_process.process is not None
        return self.worker_process.process.pid


# -- set-up -----------------------------------------------------------------------------------------------------


class BackendProcess:
    """``python -m reference_backend`` as a child process on a free loopback port."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = self.url + "/api"
        self.data_dir, self.log_path = data_dir, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> BackendProcess:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reference_backend", "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(REPO))
        wait_for(self._healthy, timeout, 0.1, f"the reference backend at {self.url}")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"reference backend exited with {self.process.returncode}; "
                               f"log: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/admin/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_group(self.process, 15)


def _prefect(stack: contextlib.ExitStack, workdir: Path, env: dict[str, str], prefect_env: dict[str, str]
             ) -> tuple[str, int | None]:
    """The Prefect API URL (a server started here unless ``PREFECT_API_URL`` is set) and its session id."""
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        print(f"using the Prefect server at PREFECT_API_URL={api_url}", flush=True)
        return api_url, None
    env["PREFECT_HOME"] = str(workdir / "prefect-home")
    server = LocalPrefectServer(port=free_port(), log_path=workdir / "prefect-server.log",
                                env={"PREFECT_HOME": env["PREFECT_HOME"], **prefect_env})
    stack.callback(server.stop)
    print(f"starting a Prefect server on port {server.port} (PREFECT_HOME {env['PREFECT_HOME']}) ...", flush=True)
    server.start(timeout=240)
    return server.api_url, server.pid  # started with start_new_session: its pid is the session id


def _backend(stack: contextlib.ExitStack, workdir: Path, in_process: bool) -> tuple[str, str, int | None]:
    """The reference backend's URL, API URL and pid (None: in this process)."""
    data_dir = workdir / "backend"
    data_dir.mkdir()
    if in_process:
        server = stack.enter_context(BackendServer(data_dir))
        return server.url, server.api_url, None
    process = BackendProcess(data_dir, workdir / "backend.log")
    stack.callback(process.stop)
    process.start()
    assert process.process is not None
    return process.url, process.api_url, process.process.pid


@dataclass
class Session:
    """The first half of a benchmark session: temporary directory, worker id, Docker events, Prefect server."""

    workdir: Path
    worker_id: str
    env: dict[str, str]  # for a worker process: PREFECT_API_URL, WORKER_ID, WORKER_STATE_DIR, WORKER_PULL_POLICY
    events: EngineEvents
    prefect_sid: int | None  # None when an external Prefect server is used


@contextlib.contextmanager
def prefect_session(name: str, *, keep: bool, worker_env: dict[str, str] | None = None,
                    prefect_env: dict[str, str] | None = None) -> Iterator[Session]:
    """``_prologue()``, a ``docker events`` stream and a Prefect server for the benchmark ``name``; at the end the
    clean-up by label of ``environment()``. For benchmarks that start their own worker processes (or CLIs)."""
    _prologue()
    workdir = Path(tempfile.mkdtemp(prefix=f"cicd-bench-{name}-"))
    worker_id = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "WORKER_PULL_POLICY": "never", "WORKER_ID": worker_id,
           "WORKER_STATE_DIR": str(workdir / "state"), **(worker_env or {})}
    with contextlib.ExitStack() as stack:
        stack.callback(_cleanup, workdir, worker_id, keep)
        events = EngineEvents().start()
        stack.callback(events.stop)
        env["PREFECT_API_URL"], prefect_sid = _prefect(stack, workdir, env, prefect_env or {})
        yield Session(workdir, worker_id, env, events, prefect_sid)


@contextlib.contextmanager
def environment(name: str, *, keep: bool, backend_in_process: bool = False, worker_env: dict[str, str] | None = None,
                prefect_env: dict[str, str] | None = None, limits: httpx.Limits | None = None) -> Iterator[Setup]:
    """Docker events, Prefect server, reference backend and worker process for the benchmark ``name``.

    ``worker_env`` is added to the worker's environment, ``prefect_env`` to the Prefect server's (when one is
    started here), ``limits`` bounds the connections of each HTTP client. First it calls ``_prologue()``.
    """
    client: dict[str, Any] = {"timeout": 60, **({"limits": limits} if limits else {})}
    with contextlib.ExitStack() as stack:
        session = stack.enter_context(prefect_session(name, keep=keep, worker_env=worker_env, prefect_env=prefect_env))
        workdir, worker_id, env, events = session.workdir, session.worker_id, session.env, session.events
        backend_url, env["WORKER_BACKEND_URL"], backend_pid = _backend(stack, workdir, backend_in_process)
        worker = WorkerProcess(env, workdir / "worker.log")
        stack.callback(worker.stop)
        worker.start(timeout=120)
        backend = Backend(backend_url, **client)
        stack.callback(backend.http.close)
        worker_http, prefect_http = (stack.enter_context(httpx.Client(base_url=url, **client))
                                     for url in (worker.url, env["PREFECT_API_URL"]))
        yield Setup(backend, worker_http, prefect_http, worker, events, worker_id, workdir,
                    workdir / "backend" / "backend.db", backend_pid, session.prefect_sid)


def _docker_ids(*command: str) -> list[str]:
    return subprocess.run(["docker", *command], capture_output=True, text=True).stdout.split()


def _cleanup(workdir: Path, worker_id: str, keep: bool) -> None:
    """Containers and volumes labelled with the worker id removed; the temporary directory too, unless kept."""
    left = _docker_ids("ps", "-aq", "--filter", f"label={LABEL_WORKER}={worker_id}")
    if left:
        print(f"WARNING: the worker left {len(left)} container(s) behind ({' '.join(left)}); removed now, "
              f"{workdir} kept", flush=True)
    baseline = _docker_ids("ps", "-aq", "--filter", f"label={LABEL_BENCH}={worker_id}")
    if left or baseline:
        subprocess.run(["docker", "rm", "-f", *left, *baseline], capture_output=True)
    volumes = _docker_ids("volume", "ls", "-q", "--filter", f"label={LABEL_WORKER}={worker_id}")
    if volumes:
        subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True)
    if keep or left:
        print(f"kept {workdir} (worker.log, prefect-server.log, backend/backend.db, backend.log)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# -- what every benchmark does ------------------------------------------------------------------------------------


def common_options(parser: argparse.ArgumentParser, *, worker_env: bool = False) -> None:
    """``--keep``, and ``--worker-env KEY=VALUE`` (repeatable) when the benchmark lets the worker be tuned."""
    if worker_env:
        parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                            help="extra environment of the worker process (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker, backend and Prefect logs)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, ``--worker-env`` as a dict in ``args.worker_env``."""
    args = parser.parse_args(argv)
    items = getattr(args, "worker_env", [])
    if any("=" not in item for item in items):
        parser.error("--worker-env takes KEY=VALUE")
    args.worker_env = dict(item.split("=", 1) for item in items)
    return args


def _prologue() -> None:
    """SIGTERM ends the benchmark through its clean-up; the versions of what it measures are printed."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    docker_version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                    capture_output=True, text=True).stdout.strip() or "?"
    print(f"python {platform.python_version()}, prefect {metadata.version('prefect')}, docker engine "
          f"{docker_version}, {os.cpu_count()} CPUs, load average {load_average()}, host {socket.gethostname()}",
          flush=True)


def new_job(setup: Setup, run_name: str, job_name: str = "noop", script: Sequence[str] = ("true",),
            **job: Any) -> tuple[str, dict[str, Any]]:
    """A one-job pipeline run in the backend (image ``IMAGE``): its job execution id and JobExecutionDTO."""
    run = setup.backend.create_run([{"name": job_name, "script": list(script), **job}], name=run_name)
    job_id = run["jobs"][job_name]
    return job_id, setup.backend.dto(job_id)


def flow_run_done(setup: Setup, flow_run_id: str) -> bool:
    answer = setup.prefect.get(f"/flow_runs/{flow_run_id}")
    answer.raise_for_status()
    return (answer.json().get("state") or {}).get("type") in PREFECT_DONE


def cpu_of(setup: Setup) -> dict[str, float]:
    """CPU seconds so far of the worker, the backend (or this process when it holds it) and the Prefect server."""
    out = {"worker": cpu_seconds(setup.worker_pid)}
    if setup.backend_pid is not None:
        out["backend"] = cpu_seconds(setup.backend_pid)
    else:
        out["bench+backend (in-process)"] = cpu_seconds(os.getpid())
    if setup.prefect_sid is not None:
        out["prefect server"] = session_cpu_seconds(setup.prefect_sid)
    return out


def docker_run_command(*command: str, labels: dict[str, str] | None = None, options: Sequence[str] = ()
                       ) -> list[str]:
    """``docker run --rm --network none [--label K=V ...] [options] IMAGE command``: the baselines' run."""
    label_args = [arg for key, value in (labels or {}).items() for arg in ("--label", f"{key}={value}")]
    return ["docker", "run", "--rm", "--network", "none", *label_args, *options, IMAGE, *command]


def timed_run(command: list[str], timeout: float) -> tuple[float, float]:
    """Run a CLI, its output thrown away: (epoch seconds at its start, wall seconds); RuntimeError if it fails."""
    sent, start = time.time(), time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} ... exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-2000:]}")
    return sent, wall


# -- the backend's records ------------------------------------------------------------------------------------------


class BackendDB:
    """Read-only view of the reference backend's SQLite file (WAL mode: readable while it writes)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def status(self, job_id: str) -> str | None:
        row = self._db.execute("SELECT status FROM job_executions WHERE id = ?", (job_id,)).fetchone()
        return row["status"] if row else None

    def history(self, job_id: str) -> list[dict[str, Any]]:
        return [dict(row) for row in self._db.execute(
            "SELECT status, exit_code, log_bytes, log_sha256, received_at, start_time, completion_time"
            " FROM status_updates WHERE job_execution_id = ? ORDER BY id", (job_id,))]

    def violations(self, job_id: str) -> list[str]:
        return [row["message"] for row in self._db.execute(
            "SELECT message FROM violations WHERE job_execution_id = ? ORDER BY id", (job_id,))]

    def chunks(self, job_id: str) -> Iterator[tuple[int, int, list[str], str]]:
        """(seq, byte offset, lines, received_at) in seq order, one row at a time."""
        cursor = self._db.execute(
            "SELECT seq, byte_offset, lines, received_at FROM log_chunks WHERE job_execution_id = ? ORDER BY seq",
            (job_id,))
        for row in cursor:
            yield row["seq"], row["byte_offset"], json.loads(row["lines"]), row["received_at"]
