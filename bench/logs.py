"""A job printing 50 MB of lines through a real worker, against plain ``docker run`` measured in the same run.

Run from the repository root: ``.venv/bin/python bench/logs.py [--runs N]``. No pass/fail target: it
prints the figures, the ratio to the baseline and a breakdown, and fails only when a log arrives
incomplete (or a run fails).

The job (image ``cicd-busybox:latest``), 1,000,000 lines of 50 bytes + newline (``--lines`` changes it)::

    seq -w 1 1000000 | sed 's/.*/line & of the fifty megabyte log, padded..../'

Set-up, all torn down at the end: a Prefect server on a free port with a temporary ``PREFECT_HOME`` and
``PREFECT_SERVER_ANALYTICS_ENABLED=false`` (or the server at ``PREFECT_API_URL`` when that is set); the
reference backend as a child process, ``python -m reference_backend`` (so that receiving 50 MB of chunks
costs neither memory nor CPU in this process; ``--backend in-process`` runs ``BackendServer`` here
instead); a real ``cicd-worker serve`` child process with ``WORKER_PULL_POLICY=never`` and the worker's
default log settings (``--worker-env KEY=VALUE`` overrides one); a ``docker events`` stream.

One worker run: create a one-job pipeline run in the backend, fetch its JobExecutionDTO with
``GET /api/jobs/{id}``, POST it straight to the worker's ``/api/job/execute`` (the backend's own push is
not measured) and wait for the final status, then for the flow run's end in Prefect, so that runs do not
overlap. The figure is the time from the POST to the moment the job's LAST line reached the backend,
taken from what the backend recorded:

- ``Store.add_log_chunk`` stamps each chunk row with ``received_at`` = ``datetime.now(UTC)`` (naive, ISO
  text, microseconds) as the request is handled, and ``Store.record_status`` stamps each status the same
  way. The admin API (``GET /admin/job-executions/{id}``) shows ``receivedAt`` for statuses but not for
  chunks, so this bench reads the backend's SQLite file directly (read-only; the store runs in WAL mode for
  exactly that). Backend and bench run on this host, so ``received_at`` and this process's ``time.time()``
  read the same wall clock.
- The last line is the chunk holding the job's last output line (the last line that is not a
  ``[cicd-worker]`` note); without chunks (a backend without live logs), the final status.

The SQLite file is also polled (``--poll-ms``) to learn that the run ended; the polling period is not part
of the figure. Completeness, for every worker run: chunk ``seq`` 0..n-1 and contiguous byte offsets, the
sum of chunk bytes (UTF-8 + newline per line) equal to the final status's ``logBytes``, SHA-256 of the
chunk text equal to its ``logSha256``, exactly ``--lines`` job lines, first and last line as expected,
history ``RUNNING, SUCCESS``, no contract violation.

Memory: the worker's peak resident set (``VmHWM`` of ``/proc/PID/status``; the flows run in threads of
that very process) before the run and after its flow run ended, and ``VmRSS`` sampled every 50 ms during
the run, and its thread count before and after. CPU: user+system seconds of the worker, the backend and the
Prefect server over each run.

Baseline: ``docker run --rm --network none --label cicd.bench=<id> cicd-busybox:latest sh -c '<same
command>' > /dev/null`` (the label only lets the clean-up find it), under ``/usr/bin/time -v`` when
present for the docker CLI's own peak RSS and CPU. Runs alternate worker/baseline (alternating which goes
first); one small warm-up of each is not counted. Throughput: MB (10^6 bytes) of job output (every line
but the worker's notes; the same bytes the baseline prints, plus the ``$ command`` echo) per second.

``--profile DIR``: after the measured runs, two more worker runs (not counted) under ``py-spy record
--threads --format raw`` (``.venv/bin/pip install py-spy``): one with ``--gil`` (only the thread holding
the GIL is sampled: where the worker's Python CPU goes, per thread and function), one with ``--idle``
(every thread at every sample: where the wall time of the threads that carry the log goes, waiting
included). Saved as DIR/worker-gil.folded and DIR/worker-wall.folded (collapsed stacks) and summarised.
``--keep`` keeps the temporary directory (worker, backend and Prefect logs, backend.db).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from flows.job_log import WORKER_PREFIX  # noqa: E402 - stdlib-only module: prefect is not imported here
from tests.support import WorkerProcess, free_port  # noqa: E402
from worker_api.prefect_server import LocalPrefectServer  # noqa: E402

IMAGE = os.environ.get("CICD_TEST_IMAGE", "cicd-busybox:latest")
FINAL = {"SUCCESS", "FAILED", "CANCELED"}
PREFECT_DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
LABEL_JOB = "cicd.job-execution-id"
LABEL_WORKER = "cicd.worker-id"
LABEL_BENCH = "cicd.bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1_000_000
MIB = 1024 * 1024


def job_command(lines: int) -> str:
    return f"seq -w 1 {lines} | sed 's/.*/line & of the fifty megabyte log, padded..../'"


def job_line(number: int, lines: int) -> str:
    return f"line {number:0{len(str(lines))}d} of the fifty megabyte log, padded...."


# -- small helpers ------------------------------------------------------------------------------------------


def epoch(text: str | None) -> float | None:
    """ISO text (naive = UTC, as the reference backend writes it) as epoch seconds."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, width: int = 9, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'n/a':>{width}}"


def wait_until(probe: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def proc_status(pid: int, key: str) -> int:
    """A number of ``/proc/PID/status``: VmHWM and VmRSS (in KiB), Threads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def _stat_fields(path: str) -> list[str]:
    text = Path(path).read_text()
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; comm may hold spaces


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (its threads included), in seconds."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU of every live process of a session (a server and the children it started)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(f"/proc/{entry.name}/stat")
            if int(fields[3]) == sid:
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


class Sampler:
    """Samples a process's VmRSS (KiB) every ``interval`` seconds on a thread, keeping the maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                self.peak_kib = max(self.peak_kib, proc_status(self.pid, "VmRSS"))
            if self._stop.wait(self.interval):
                return


# -- docker events ------------------------------------------------------------------------------------------


class EngineEvents:
    """A ``docker events`` child process streamed for the whole session (container lifecycle only).

    The stream is restarted from the last event seen when it ends (an engine restart by someone else ends
    it), and a run whose container is missing from the stream is looked up with a bounded
    ``docker events --since --until`` query.
    """

    ACTIONS = ("create", "start", "die", "destroy")

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._since = time.time()

    def _filters(self) -> list[str]:
        return ["--filter", "type=container",
                *[arg for action in self.ACTIONS for arg in ("--filter", f"event={action}")],
                "--format", "{{json .}}"]

    def start(self) -> EngineEvents:
        self._reader = threading.Thread(target=self._read, name="docker-events", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        while True:
            with self._lock:  # stop() sets the flag under the lock: no stream is started after it
                if self._stopping.is_set():
                    return
                process = self._process = subprocess.Popen(
                    ["docker", "events", "--since", f"{self._since:.6f}", *self._filters()],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                with contextlib.suppress(ValueError, KeyError):
                    event = json.loads(line)
                    with self._lock:
                        self._events.append(event)
                    self._since = max(self._since, event["timeNano"] / 1e9)
            process.wait()
            self._stopping.wait(0.5)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def container(self, label: str, value: str, since: float) -> dict[str, float]:
        """Epoch seconds of each lifecycle action of the (first) container with that label value."""
        time.sleep(0.3)  # let the stream catch up with the engine
        with self._lock:
            found = self._pick(self._events, label, value)
        if "create" in found and "destroy" in found:
            return found
        query = subprocess.run(["docker", "events", "--since", f"{since - 1:.6f}", "--until", f"{time.time():.6f}",
                                "--filter", f"label={label}={value}", *self._filters()],
                               capture_output=True, text=True, timeout=60)
        events = []
        for line in query.stdout.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return self._pick(events, label, value) or found

    @staticmethod
    def _pick(events: list[dict[str, Any]], label: str, value: str) -> dict[str, float]:
        found: dict[str, float] = {}
        chosen: str | None = None
        for event in events:
            actor = event.get("Actor") or {}
            if (actor.get("Attributes") or {}).get(label) != value:
                continue
            chosen = chosen or actor.get("ID")
            if actor.get("ID") == chosen:
                found.setdefault(event.get("Action", ""), event["timeNano"] / 1e9)
        return found


# -- set-up ----------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    backend: httpx.Client
    worker: httpx.Client
    prefect: httpx.Client
    worker_process: WorkerProcess
    db_path: Path
    backend_pid: int | None  # None when the backend runs in this process
    prefect_sid: int | None  # None when an external Prefect server is used
    events: EngineEvents
    worker_id: str
    bench_id: str
    workdir: Path

    @property
    def worker_pid(self) -> int:
        assert self.worker_process.process is not None
        return self.worker_process.process.pid


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
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=str(Path(__file__).resolve().parents[1]))

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"reference backend exited with {self.process.returncode}; "
                                   f"log: {self.log_path.read_text()[-2000:]}")
            try:
                return httpx.get(self.url + "/admin/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout, 0.1, f"the reference backend at {self.url}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _prefect_sid(server: LocalPrefectServer) -> int | None:
    process = getattr(server, "_process", None)  # started with start_new_session: its pid is the session id
    return process.pid if process is not None else None


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[Setup]:
    """Prefect server, reference backend, worker process, docker events; all stopped and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="cicd-bench-logs-"))
    worker_id = f"bench-logs-{uuid.uuid4().hex[:8]}"
    bench_id = worker_id
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "WORKER_PULL_POLICY": "never", "WORKER_ID": worker_id,
           "WORKER_STATE_DIR": str(workdir / "state")}
    env.update(dict(item.split("=", 1) for item in args.worker_env))
    with contextlib.ExitStack() as stack:
        stack.callback(_cleanup, workdir, worker_id, bench_id, args.keep)
        events = EngineEvents().start()
        stack.callback(events.stop)
        api_url = os.environ.get("PREFECT_API_URL")
        prefect_sid = None
        if not api_url:
            env["PREFECT_HOME"] = str(workdir / "prefect-home")
            os.environ.update(PREFECT_HOME=env["PREFECT_HOME"], PREFECT_SERVER_ANALYTICS_ENABLED="false")
            server = LocalPrefectServer(port=free_port(), log_path=workdir / "prefect-server.log")
            stack.callback(server.stop)
            print(f"starting a Prefect server on port {server.port} (PREFECT_HOME {env['PREFECT_HOME']}) ...",
                  flush=True)
            server.start(timeout=240)
            api_url, prefect_sid = server.api_url, _prefect_sid(server)
        else:
            print(f"using the Prefect server at PREFECT_API_URL={api_url}", flush=True)
        env["PREFECT_API_URL"] = api_url
        data_dir = workdir / "backend"
        data_dir.mkdir()
        backend_pid: int | None
        if args.backend == "subprocess":
            backend = BackendProcess(data_dir, workdir / "backend.log")
            stack.callback(backend.stop)
            backend.start()
            assert backend.process is not None
            backend_url, backend_api, backend_pid = backend.url, backend.api_url, backend.process.pid
        else:
            from reference_backend.server import BackendServer

            server_in = stack.enter_context(BackendServer(data_dir))
            backend_url, backend_api, backend_pid = server_in.url, server_in.api_url, None
        env["WORKER_BACKEND_URL"] = backend_api
        worker = WorkerProcess(env, workdir / "worker.log")
        stack.callback(worker.stop)
        worker.start(timeout=120)
        backend_http, worker_http, prefect_http = (stack.enter_context(httpx.Client(base_url=url, timeout=60))
                                                   for url in (backend_url, worker.url, api_url))
        yield Setup(backend_http, worker_http, prefect_http, worker, data_dir / "backend.db", backend_pid,
                    prefect_sid, events, worker_id, bench_id, workdir)


def _cleanup(workdir: Path, worker_id: str, bench_id: str, keep: bool) -> None:
    for label in (f"{LABEL_WORKER}={worker_id}", f"{LABEL_BENCH}={bench_id}"):
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                                   capture_output=True, text=True).stdout.split()
        if leftovers:
            print(f"removing {len(leftovers)} containers left behind ({label})", flush=True)
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label={LABEL_WORKER}={worker_id}"],
                             capture_output=True, text=True).stdout.split()
    if volumes:
        subprocess.run(["docker", "volume", "rm", "-f", *volumes], capture_output=True)
    if keep:
        print(f"kept {workdir} (worker.log, backend.log, prefect-server.log, backend/backend.db)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# -- the backend's records -----------------------------------------------------------------------------------


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


# -- one run of each kind ------------------------------------------------------------------------------------


@dataclass
class LogCheck:
    """What the chunks held, checked against the final status."""

    chunks: int = 0
    chunk_bytes: int = 0
    output_bytes: int = 0  # every line but the worker's notes
    job_lines: int = 0
    first_chunk_at: float | None = None
    last_line_at: float | None = None  # chunk holding the job's last output line
    last_chunk_at: float | None = None
    progress: list[tuple[int, float]] = field(default_factory=list)  # (bytes received so far, at), per chunk
    problems: list[str] = field(default_factory=list)


@dataclass
class WorkerSample:
    job_id: str
    sent: float  # epoch seconds, just before the POST
    ack_ms: float
    last_line_s: float  # POST -> the job's last line at the backend  <- the figure
    final_s: float  # POST -> final status at the backend
    check: LogCheck
    log_bytes: int
    hwm_before_kib: int
    hwm_after_kib: int
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    threads_before: int
    threads_after: int
    cpu: dict[str, float]  # party -> CPU seconds over the run
    marks: dict[str, float | None]  # milestone -> seconds after the POST


@dataclass
class DockerSample:
    wall_s: float
    max_rss_kib: int | None
    cpu_s: float | None
    marks: dict[str, float | None]


def new_job(setup: Setup, index: int, script: list[str]) -> tuple[str, dict[str, Any]]:
    spec = {"name": f"logs-{index}", "jobs": [{"name": "print", "dockerImage": IMAGE, "script": script}]}
    created = setup.backend.post("/admin/pipeline-runs", json=spec)
    created.raise_for_status()
    job_id = created.json()["jobs"]["print"]
    dto = setup.backend.get(f"/api/jobs/{job_id}")
    dto.raise_for_status()
    return job_id, dto.json()


def flow_run_done(setup: Setup, flow_run_id: str) -> bool:
    answer = setup.prefect.get(f"/flow_runs/{flow_run_id}")
    answer.raise_for_status()
    return ((answer.json().get("state") or {}).get("type")) in PREFECT_DONE


def check_log(db: BackendDB, job_id: str, final: dict[str, Any], lines: int, command: str) -> LogCheck:
    """Walk the stored chunks once: completeness against the final status, and the arrival times."""
    check = LogCheck()
    sha = hashlib.sha256()
    first_line: str | None = None
    last_output: str | None = None
    for seq, chunk_offset, chunk_lines, received_at in db.chunks(job_id):
        at = epoch(received_at)
        if seq != check.chunks:
            check.problems.append(f"chunk seq {seq} where {check.chunks} was expected")
        if chunk_offset != check.chunk_bytes:
            check.problems.append(f"chunk {seq} at offset {chunk_offset}, expected {check.chunk_bytes}")
        check.chunks += 1
        check.first_chunk_at = check.first_chunk_at if check.first_chunk_at is not None else at
        check.last_chunk_at = at
        first_line = first_line if first_line is not None or not chunk_lines else chunk_lines[0]
        for text in chunk_lines:
            data = text.encode("utf-8") + b"\n"
            sha.update(data)
            check.chunk_bytes += len(data)
            if not text.startswith(WORKER_PREFIX):
                check.output_bytes += len(data)
                check.job_lines += text.startswith("line ")
                last_output, check.last_line_at = text, at
        if at is not None:
            check.progress.append((check.chunk_bytes, at))
    if check.chunks:
        expected = {"chunk bytes == logBytes": (check.chunk_bytes, final.get("log_bytes")),
                    "sha256 of the chunk text == logSha256": (sha.hexdigest(), final.get("log_sha256")),
                    "job lines": (check.job_lines, lines),
                    "first line": (first_line, f"$ {command}"),
                    "last output line": (last_output, job_line(lines, lines))}
        check.problems.extend(f"{what}: got {got!r}, expected {want!r}"
                              for what, (got, want) in expected.items() if got != want)
    return check


def worker_run(setup: Setup, db: BackendDB, index: int, lines: int, poll: float, timeout: float,
               profile: tuple[Path, str] | None = None) -> WorkerSample:
    """POST one job, wait for its final status at the backend and its flow run's end; read what arrived."""
    command = job_command(lines)
    job_id, dto = new_job(setup, index, [command])
    pid = setup.worker_pid
    hwm_before, rss_before = proc_status(pid, "VmHWM"), proc_status(pid, "VmRSS")
    threads_before = proc_status(pid, "Threads")
    cpu_before = cpu_of(setup)
    spy = start_py_spy(pid, *profile) if profile else None
    try:
        with Sampler(pid) as sampler:
            sent, start = time.time(), time.perf_counter()
            answer = setup.worker.post("/api/job/execute", json=dto)
            ack_ms = (time.perf_counter() - start) * 1000
            if answer.status_code != 202:
                raise RuntimeError(f"worker answered {answer.status_code}: {answer.text}")

            def ended() -> bool:
                if setup.worker_process.process is not None and setup.worker_process.process.poll() is not None:
                    raise RuntimeError(f"the worker exited; see {setup.workdir / 'worker.log'}")
                return db.status(job_id) in FINAL

            wait_until(ended, timeout, poll, f"the final status of job {job_id}")
            flow_run_id = answer.json()["flowRunId"]
            wait_until(lambda: flow_run_done(setup, flow_run_id), 120, 0.1, f"the end of flow run {flow_run_id}")
    finally:
        if spy is not None:
            stop_py_spy(spy)
    hwm_after, rss_after = proc_status(pid, "VmHWM"), proc_status(pid, "VmRSS")
    threads_after = proc_status(pid, "Threads")
    cpu_after = cpu_of(setup)
    history = db.history(job_id)
    final = history[-1]
    statuses = [h["status"] for h in history]
    if statuses != ["RUNNING", "SUCCESS"]:
        raise RuntimeError(f"job {job_id} history {statuses}; see {setup.workdir / 'worker.log'}")
    violations = db.violations(job_id)
    check = check_log(db, job_id, final, lines, command)
    check.problems.extend(f"violation: {v}" for v in violations)
    final_at = epoch(final["received_at"])
    assert final_at is not None
    last_line_at = check.last_line_at if check.last_line_at is not None else final_at
    container = setup.events.container(LABEL_JOB, job_id, sent)
    running = next((h for h in history if h["status"] == "RUNNING"), {})

    def after(moment: float | None) -> float | None:
        return None if moment is None else moment - sent

    marks = {
        "RUNNING received": after(epoch(running.get("received_at"))),
        "container create": after(container.get("create")),
        "container start": after(container.get("start")),
        "first chunk received": after(check.first_chunk_at),
        **{f"{share}% of the log received": after(reached(check, share)) for share in PROGRESS_SHARES},
        "container die": after(container.get("die")),
        "last line received": after(last_line_at),
        "last chunk received": after(check.last_chunk_at),
        "final status received": after(final_at),
        "container destroy": after(container.get("destroy")),
    }
    return WorkerSample(job_id, sent, ack_ms, last_line_at - sent, final_at - sent, check, int(final["log_bytes"] or 0),
                        hwm_before, hwm_after, rss_before, max(sampler.peak_kib, rss_before), rss_after,
                        threads_before, threads_after,
                        {k: cpu_after[k] - cpu_before[k] for k in cpu_after}, marks)


PROGRESS_SHARES = (10, 25, 50, 75, 90)


def reached(check: LogCheck, share: int) -> float | None:
    """When the backend had received ``share`` percent of the log's bytes (the chunk that got it there)."""
    wanted = check.chunk_bytes * share / 100
    return next((at for done, at in check.progress if done >= wanted), None)


def cpu_of(setup: Setup) -> dict[str, float]:
    out = {"worker": cpu_seconds(setup.worker_pid)}
    if setup.backend_pid is not None:
        out["backend"] = cpu_seconds(setup.backend_pid)
    else:
        out["bench+backend (in-process)"] = cpu_seconds(os.getpid())
    if setup.prefect_sid is not None:
        out["prefect server"] = session_cpu_seconds(setup.prefect_sid)
    return out


def docker_run(setup: Setup, lines: int, timeout: float) -> DockerSample:
    """Wall time of the plain ``docker run`` CLI, its output thrown away; the CLI's peak RSS and CPU."""
    tag = uuid.uuid4().hex[:12]
    command = ["docker", "run", "--rm", "--network", "none", "--label", f"{LABEL_BENCH}={setup.bench_id}",
               "--label", f"cicd.bench-run={tag}", IMAGE, "sh", "-c", job_command(lines)]
    timer = Path("/usr/bin/time")
    report = setup.workdir / f"time-{tag}.txt"
    if timer.exists():
        command = [str(timer), "-v", "-o", str(report), *command]
    sent, start = time.time(), time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"docker run failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    max_rss = cpu = None
    if report.exists():
        text = report.read_text()
        report.unlink()
        if found := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
            max_rss = int(found.group(1))
        user = re.search(r"User time \(seconds\): ([\d.]+)", text)
        system = re.search(r"System time \(seconds\): ([\d.]+)", text)
        if user and system:
            cpu = float(user.group(1)) + float(system.group(1))
    container = setup.events.container("cicd.bench-run", tag, sent)
    marks = {f"container {a}": (container[a] - sent) if a in container else None for a in EngineEvents.ACTIONS}
    marks["docker CLI exited"] = wall
    return DockerSample(wall, max_rss, cpu, marks)


# -- py-spy ------------------------------------------------------------------------------------------------

PROFILE_MODES = {
    # which thread holds the GIL, where: the worker's Python CPU
    "gil": ["--gil"],
    # every thread at every sample, waiting included: where each thread's wall time goes
    "wall": ["--idle"],
}
GENERIC_FRAMES = ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run (threading.py)")
LOG_PATH_THREADS = ("logs-", "logship-", "outbox-sender", "flow_")


def start_py_spy(pid: int, out: Path, mode: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        found = shutil.which("py-spy")
        if found is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
        exe = Path(found)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "wb") as err:
        spy = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", "100", "--threads",
                                *PROFILE_MODES[mode], "--format", "raw", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    time.sleep(1.0)  # attached before the job starts
    if spy.poll() is not None:
        raise RuntimeError(f"py-spy exited at once: {out.with_suffix('.log').read_text()[-1000:]}")
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def _frame_name(frame: str) -> str:
    """``function (path/to/file.py:123)`` -> ``function (file.py)`` (package path kept for site-packages)."""
    found = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not found:
        return frame
    path = found.group(2)
    parts = Path(path).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else path
    return f"{found.group(1)} ({short})"


def _thread_label(frame: str) -> str:
    """``thread (12979): logs-print`` -> ``logs-print [12979]`` (names repeat: Prefect starts several threads
    of one name); ``thread (12979)`` when py-spy has no name."""
    found = re.match(r"thread \((\w+)\)(?:: (.*))?$", frame)
    if not found:
        return frame
    return f"{found.group(2)} [{found.group(1)}]" if found.group(2) else f"thread [{found.group(1)}]"


@dataclass
class Profile:
    total: int = 0
    per_thread: Counter[str] = field(default_factory=Counter)
    leaf: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    leaf_by_thread: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    inclusive_by_thread: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def read_profile(path: Path) -> Profile:
    profile = Profile()
    for raw in path.read_text().splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = _thread_label(frames[0])
        named = [_frame_name(f) for f in frames[1:]
                 if not f.startswith("process ") and not f.startswith(GENERIC_FRAMES)]
        profile.total += count
        profile.per_thread[thread] += count
        leaf = named[-1] if named else "(no Python frame)"
        profile.leaf[leaf] += count
        profile.leaf_by_thread[thread][leaf] += count
        for name in set(named):
            profile.inclusive[name] += count
            profile.inclusive_by_thread[thread][name] += count
    return profile


def _print_counter(counter: Counter[str], total: int, top: int, indent: str = "    ") -> None:
    for name, count in counter.most_common(top):
        print(f"{indent}{100 * count / total:5.1f}%  {name}")


def summarise_gil(path: Path, seconds: float, top: int = 20) -> None:
    """Where the worker's Python runs: samples of the GIL holder, per thread and per function."""
    if not path.exists():
        print(f"  (no profile at {path})")
        return
    profile = read_profile(path)
    if not profile.total:
        print("  (no samples)")
        return
    print(f"  GIL held in {profile.total} of ~{seconds * 100:.0f} samples (100 Hz over {seconds:.1f} s): the GIL was "
          f"busy ~{profile.total / (seconds * 100) * 100:.0f}% of the run")
    print("  GIL holder by thread:")
    _print_counter(profile.per_thread, profile.total, 8)
    print(f"  self (leaf frame) while holding the GIL, top {top}:")
    _print_counter(profile.leaf, profile.total, top)
    print(f"  inclusive while holding the GIL, top {top}:")
    _print_counter(profile.inclusive, profile.total, top)
    for thread, count in profile.per_thread.most_common(3):
        print(f"  within {thread} ({100 * count / profile.total:.1f}% of GIL samples), inclusive top 12:")
        _print_counter(profile.inclusive_by_thread[thread], count, 12, "      ")


def summarise_wall(path: Path, seconds: float) -> None:
    """Where the wall time of the threads that carry the log goes (waiting included)."""
    if not path.exists():
        print(f"  (no profile at {path})")
        return
    profile = read_profile(path)
    span = max(profile.per_thread.values(), default=0)
    print(f"  {span} samples of the longest-lived thread over {seconds + 1:.1f} s: py-spy sampled every thread at "
          f"~{span / (seconds + 1):.0f} Hz (it falls behind 100 Hz with many threads)")
    threads = [t for t in profile.per_thread if t.startswith(LOG_PATH_THREADS)][:8]
    for thread in sorted(threads, key=lambda t: -profile.per_thread[t]):
        count = profile.per_thread[thread]
        print(f"  {thread}: {count} samples ({100 * count / max(span, 1):.0f}% of the profiled span); "
              "leaf frame top 8:")
        _print_counter(profile.leaf_by_thread[thread], count, 8, "      ")
        print("    inclusive top 12:")
        _print_counter(profile.inclusive_by_thread[thread], count, 12, "      ")


def profile_runs(setup: Setup, db: BackendDB, args: argparse.Namespace) -> None:
    for number, mode in enumerate(PROFILE_MODES, start=1):
        out = args.profile / f"worker-{mode}.folded"
        print(f"\nprofile {number}/{len(PROFILE_MODES)}: one more worker run under py-spy record "
              f"{' '.join(PROFILE_MODES[mode])} (not counted) -> {out}", flush=True)
        sample = worker_run(setup, db, 100 + number, args.lines, args.poll_ms / 1000, args.timeout,
                            profile=(out, mode))
        print(f"  profiled run: last line {sample.last_line_s:.2f} s, final status {sample.final_s:.2f} s, "
              f"worker CPU {sample.cpu['worker']:.1f} s, "
              f"{'complete' if not sample.check.problems else 'INCOMPLETE'}")
        if mode == "gil":
            summarise_gil(out, sample.final_s)
        else:
            summarise_wall(out, sample.final_s)


# -- report ------------------------------------------------------------------------------------------------------


def print_runs(worker: list[WorkerSample], docker: list[DockerSample]) -> None:
    print("\nper run (s; MiB):")
    print(f"  {'run':>3} {'worker last line':>16} {'final status':>12} {'docker run':>10}  {'chunks':>6} "
          f"{'logBytes':>10} {'complete':>8}  {'VmHWM before':>12} {'after':>7} {'growth':>7}  "
          f"{'VmRSS before':>12} {'peak':>7} {'after':>7}  {'worker CPU':>10} {'threads':>9}")
    for i, (w, d) in enumerate(zip(worker, docker, strict=True), start=1):
        ok = "yes" if not w.check.problems else "NO"
        print(f"  {i:>3} {w.last_line_s:16.2f} {w.final_s:12.2f} {d.wall_s:10.2f}  {w.check.chunks:>6} "
              f"{w.log_bytes:>10} {ok:>8}  {w.hwm_before_kib / 1024:12.1f} {w.hwm_after_kib / 1024:7.1f} "
              f"{(w.hwm_after_kib - w.hwm_before_kib) / 1024:7.1f}  {w.rss_before_kib / 1024:12.1f} "
              f"{w.rss_peak_kib / 1024:7.1f} {w.rss_after_kib / 1024:7.1f}  {w.cpu['worker']:10.2f} "
              f"{w.threads_before:>4}->{w.threads_after:<4}")
        for problem in w.check.problems:
            print(f"      INCOMPLETE: {problem}")


def print_summary(worker: list[WorkerSample], docker: list[DockerSample], hwm_start_kib: int) -> None:
    n = len(worker)
    output_mb = worker[0].check.output_bytes / MB if worker[0].check.output_bytes else worker[0].log_bytes / MB
    w_med = median([w.last_line_s for w in worker]) or 0.0
    d_med = median([d.wall_s for d in docker]) or 0.0
    f_med = median([w.final_s for w in worker]) or 0.0
    print(f"\nmedians over {n} runs; job output {output_mb:.2f} MB (10^6 bytes, the worker's notes excluded; "
          f"logBytes {worker[0].log_bytes})")
    print(f"  {'':<58} {'seconds':>9} {'MB/s':>8}")
    print(f"  {'worker: POST /api/job/execute -> last line at the backend':<58} {w_med:9.2f} "
          f"{output_mb / w_med:8.2f}")
    print(f"  {'  (-> final status at the backend)':<58} {f_med:9.2f} {output_mb / f_med:8.2f}")
    print(f"  {'docker run --rm --network none ... > /dev/null':<58} {d_med:9.2f} {output_mb / d_med:8.2f}")
    print(f"  ratio time(worker)/time(docker): {w_med / d_med:.2f}x "
          f"(per run: {', '.join(f'{w.last_line_s / d.wall_s:.2f}x' for w, d in zip(worker, docker, strict=True))})")
    complete = sum(1 for w in worker if not w.check.problems)
    print(f"  completeness (seq, offsets, sum of chunk bytes == logBytes, sha256 == logSha256, "
          f"{worker[0].check.job_lines} job lines): {complete}/{n} runs complete")

    hwm_end = worker[-1].hwm_after_kib
    print("\nworker memory (cicd-worker serve process; MiB)")
    print(f"  VmHWM after the warm-up (before run 1) {hwm_start_kib / 1024:8.1f}")
    print(f"  VmHWM after the last run               {hwm_end / 1024:8.1f}   "
          f"growth {(hwm_end - hwm_start_kib) / 1024:.1f}")
    print(f"  per run, VmRSS peak - VmRSS before: median "
          f"{median([(w.rss_peak_kib - w.rss_before_kib) / 1024 for w in worker]):.1f}, max "
          f"{max((w.rss_peak_kib - w.rss_before_kib) / 1024 for w in worker):.1f}; VmRSS after - before: median "
          f"{median([(w.rss_after_kib - w.rss_before_kib) / 1024 for w in worker]):.1f}")
    rss = [d.max_rss_kib for d in docker if d.max_rss_kib is not None]
    if rss:
        print(f"  (docker CLI peak RSS, /usr/bin/time -v: median {median([r / 1024 for r in rss]):.1f})")

    print("\nCPU seconds per run (median)")
    for party in worker[0].cpu:
        used = statistics.median([w.cpu[party] for w in worker])
        print(f"  {party:<28} {used:7.2f}   ({used / w_med * 100:.0f}% of one CPU over the worker's time)")
    cli = [d.cpu_s for d in docker if d.cpu_s is not None]
    if cli:
        print(f"  {'docker CLI (baseline)':<28} {median(cli):7.2f}")


def phase(marks: list[dict[str, float | None]], start: str | None, end: str) -> float | None:
    """Median of ``end - start`` (``start`` None: the POST / the ``docker run`` start) over the runs that have both."""
    values = []
    for m in marks:
        at, since = m.get(end), (m.get(start) if start else 0.0)
        if at is not None and since is not None:
            values.append(at - since)
    return median(values)


def print_timeline(worker: list[WorkerSample], docker: list[DockerSample]) -> None:
    print("\ntimeline, median over runs (s after the POST / after `docker run` was started; engine times from "
          "`docker events`)")
    sides = (("worker", [w.marks for w in worker]), ("docker run", [d.marks for d in docker]))
    for side, marks in sides:
        rows = sorted(((key, phase(marks, None, key)) for key in marks[0]),
                      key=lambda row: (row[1] is None, row[1] or 0.0))
        print(f"  {side:<34} {'at':>8} {'step':>8}")
        previous = 0.0
        for key, at in rows:
            print(f"    {key:<32} {fmt(at, 8)} {fmt(None if at is None else at - previous, 8)}")
            previous = at if at is not None else previous
    w_marks, d_marks = sides[0][1], sides[1][1]
    print("  phases (s)                                            worker  docker run")
    for label, w_value, d_value in (
        ("POST / CLI start -> container start", phase(w_marks, None, "container start"),
         phase(d_marks, None, "container start")),
        ("container start -> die (the script, back-pressured by its reader)",
         phase(w_marks, "container start", "container die"), phase(d_marks, "container start", "container die")),
        ("container start -> last line at the backend", phase(w_marks, "container start", "last line received"),
         None),
        ("container die -> last line at the backend / CLI exit", phase(w_marks, "container die", "last line received"),
         phase(d_marks, "container die", "docker CLI exited")),
        ("last line -> final status at the backend", phase(w_marks, "last line received", "final status received"),
         None),
    ):
        print(f"    {label:<66} {fmt(w_value, 7)} {fmt(d_value, 10) if d_value is not None else ''}")


def versions() -> str:
    docker_version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                    capture_output=True, text=True).stdout.strip() or "?"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"python {platform.python_version()}, prefect {metadata.version('prefect')}, "
            f"docker engine {docker_version}, {os.cpu_count()} CPUs, load average {' '.join(load)}, "
            f"host {socket.gethostname()}")


def worker_config(setup: Setup) -> str:
    try:
        config = setup.worker.get("/api/worker/config").json()
    except (httpx.HTTPError, ValueError):
        return "?"
    keys = ("log_chunk_bytes", "log_chunk_interval_seconds", "log_tail_bytes", "prefect_log_max_bytes")
    return ", ".join(f"{key}={config.get(key)}" for key in keys)


# -- main --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each kind (default 3)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines the job prints (default 1,000,000)")
    parser.add_argument("--poll-ms", type=float, default=100.0,
                        help="how often the backend's records are read to learn that a run ended (not in the figure)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    parser.add_argument("--backend", choices=("subprocess", "in-process"), default="subprocess")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the worker process (repeatable)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="two more worker runs under py-spy (not counted); collapsed stacks saved in DIR")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, backend.db)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.lines < 1:
        parser.error("--runs and --lines must be at least 1")
    if any("=" not in item for item in args.worker_env):
        parser.error("--worker-env takes KEY=VALUE")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the set-up is torn down
    print(versions(), flush=True)
    print(f"job: {job_command(args.lines)}", flush=True)
    with environment(args) as setup:
        print(f"worker pid {setup.worker_pid}, backend "
              f"{'pid ' + str(setup.backend_pid) if setup.backend_pid else 'in this process'}; worker log settings: "
              f"{worker_config(setup)}"
              + (f"; extra worker env: {' '.join(shlex.quote(e) for e in args.worker_env)}" if args.worker_env
                 else ""), flush=True)
        db = BackendDB(setup.db_path)
        worker: list[WorkerSample] = []
        docker: list[DockerSample] = []
        try:
            warm = worker_run(setup, db, 0, 1000, args.poll_ms / 1000, args.timeout)
            if warm.check.problems:
                raise RuntimeError(f"warm-up log incomplete: {warm.check.problems}")
            docker_run(setup, 1000, args.timeout)
            hwm_start = proc_status(setup.worker_pid, "VmHWM")
            print(f"warm-up done (a 1,000-line job each); worker VmHWM {hwm_start / 1024:.1f} MiB; measuring "
                  f"{args.runs} interleaved pairs ...", flush=True)
            for index in range(args.runs):
                order = ("docker", "worker") if index % 2 else ("worker", "docker")
                for side in order:
                    if side == "worker":
                        worker.append(worker_run(setup, db, index + 1, args.lines, args.poll_ms / 1000,
                                                 args.timeout))
                        w = worker[-1]
                        print(f"  run {index + 1} worker: last line {w.last_line_s:.2f} s, final status "
                              f"{w.final_s:.2f} s, {w.check.chunks} chunks, "
                              f"{'complete' if not w.check.problems else 'INCOMPLETE'}, "
                              f"VmHWM {w.hwm_before_kib / 1024:.1f} -> {w.hwm_after_kib / 1024:.1f} MiB, "
                              f"worker CPU {w.cpu['worker']:.1f} s", flush=True)
                    else:
                        docker.append(docker_run(setup, args.lines, args.timeout))
                        print(f"  run {index + 1} docker run: {docker[-1].wall_s:.2f} s", flush=True)
            print_runs(worker, docker)
            print_summary(worker, docker, hwm_start)
            print_timeline(worker, docker)
            if args.profile:
                profile_runs(setup, db, args)
        finally:
            db.close()
    incomplete = sum(1 for w in worker if w.check.problems)
    print(f"\nload average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
          f"({os.cpu_count()} CPUs; other work on this host inflates every figure, the worker's more: it uses "
          "several processes)")
    print(f"{'OK' if not incomplete else 'FAIL'}: {len(worker) - incomplete}/{len(worker)} worker runs delivered "
          "the whole log")
    return 0 if not incomplete else 1


if __name__ == "__main__":
    raise SystemExit(main())
