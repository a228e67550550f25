"""Soak: many short jobs through a real worker at a fixed client concurrency, against plain ``docker run``.

Run from the repository root: ``.venv/bin/python -m bench.soak [--jobs N] [--concurrency C] [--database D]``
(defaults 200, 8 and ``both``; ``--jobs 40`` for a quick run). Targets: throughput worker/plain at least 0.85;
the slowest job (POST -> final status received) at most 5 s; no request answered 503 by the Prefect server;
what the worker holds after the jobs (containers and volumes with its label, its threads and open files) back
to the idle figure measured before them; every job's backend history exactly ``RUNNING, SUCCESS``.

Database (``--database sqlite|postgres|both``): the whole soak runs once per database behind its own Prefect
server: Prefect's embedded SQLite file (what ``make run`` uses), and PostgreSQL (``scripts/setup-postgres.sh``
installs and starts Debian's package when absent and makes a fresh database, dropped afterwards; the server
gets it as ``PREFECT_API_DATABASE_CONNECTION_URL``). ``both`` runs SQLite first and skips PostgreSQL, saying
why, when it cannot be set up here; the closing summary prints each run's figures side by side.

Set-up, all torn down at the end (``bench.harness.environment``): a Prefect server on a free port with
a temporary ``PREFECT_HOME`` and ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` (or the server at
``PREFECT_API_URL`` when that is set); the reference backend as a child process (``python -m
reference_backend``), so that the bench's own load does not distort it; a real ``cicd-worker serve`` child
process with ``WORKER_MAX_CONCURRENT_JOBS=C``, ``WORKER_MAX_QUEUED_JOBS=N+100`` (never a 429),
``WORKER_PULL_POLICY=never`` and ``WORKER_ID=bench-soak-<random>``; a ``docker events`` stream.

Jobs: N one-job pipeline runs (image ``cicd-busybox:latest``, script ``["true"]``) are created in the backend
and their JobExecutionDTOs fetched (``GET /api/jobs/{id}``) before the clock starts.

Worker phase: C client threads; each takes the next job, POSTs its DTO to ``/api/job/execute`` (202 expected),
waits for the job's final status at the backend, then takes the next. The wait reads the backend's SQLite
file every ``--poll-ms`` (read-only, WAL), not its HTTP API, so that polling costs the backend nothing.
Throughput: N / (latest ``receivedAt`` of a final status - first POST), both read on this host's wall clock
(the backend stamps ``receivedAt`` as it handles the request), so the polling period is not in the figure.
A job that has no final status after ``--job-timeout`` seconds, or whose POST fails (an error answer, or no
answer within that time), is reported and fails the verdict, but does not end the soak; the figure then counts
the jobs that ended. A POST whose connection fails at once (a keep-alive connection the worker closed) is sent
again once: the endpoint is idempotent per job execution id.

Baseline: C threads, each running ``docker run --rm --network none cicd-busybox:latest true`` (plus two
``--label``s that let the clean-up and the breakdown find the containers) one after another, N runs in all,
in two halves: one before the worker phase, one after it, so that both sides share the drift of a shared
host. Throughput: N / (wall of half 1 + wall of half 2), each wall from the first start to the last exit.

Idle figures: after one warm-up job (and one warm-up ``docker run``), once the worker is idle: every flow run
of the bench terminal in Prefect, the worker's outbox without pending items (its SQLite file, read-only), and
the worker's thread and fd counts unchanged for ``--settle`` seconds, polled every 0.1 s (the worker's API
is not called: a request would itself start threads). The same wait after the worker phase gives the end
figures: containers (``docker ps -a`` with label ``cicd.worker-id=<WORKER_ID>``), volumes with that label,
``Threads`` of ``/proc/PID/status`` and the count of ``/proc/PID/fd``. When threads or fds are still above
the idle figure, polling goes on for up to ``--linger`` seconds, to tell a pool that shrinks by itself from
what stays (the verdict uses the settled reading). With py-spy installed (``.venv/bin/pip install
py-spy``), ``py-spy dump`` names the worker's Python threads at each of these points.

Memory: the worker's peak RSS (``VmHWM`` of ``/proc/PID/status``; flows run in threads of that process),
and ``VmRSS``, threads and fds sampled every 0.5 s during the worker phase. CPU: seconds used during each
phase by the worker, the Prefect server, the backend, dockerd+containerd, the docker CLIs of the baseline,
this bench, and the host's busy time (``/proc/stat``), the rest being runc/shims, the kernel and other
users of the host.

Prefect server: during the worker phase a probe writes one Prefect variable a second and times it (the
server answers 503 when its SQLite database is locked, and Prefect's client then backs off 2, 4, 8 ... s);
the bench's own server runs with ``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true`` and the report counts the
requests it answered 503. A restart of the Docker engine during a phase (someone else's doing: the host may
be shared) is detected from dockerd's pid and flagged next to the figures.

Breakdown: per job, from the backend's records (``receivedAt``; the worker's ``startTime`` and
``completionTime``) and the engine's container events, means and medians of each step on both sides.

``--profile DIR``: after the measured phases, two more blocks of min(N, 100) jobs (not counted) under
``py-spy record --gil`` and ``--idle``, saved in DIR and summarised as ``bench.logs`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sqlite3
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import harness, postgres, readings
from bench.profiling import start_py_spy, stop_py_spy, summarise_gil, summarise_wall, thread_names
from bench.readings import CLK_TCK, LIFECYCLE, Monitor, epoch, median, p90, proc_status, processes, threads_and_fds

LABEL_RUN = "cicd.bench-run"
TARGET_RATIO = 0.85
TARGET_WORST_SECONDS = 5.0
DOCKER_RUN_TIMEOUT_SECONDS = 300.0
IDLE_TIMEOUT_SECONDS = 180.0
SAMPLE_SECONDS = 0.5
PROFILE_JOBS = 100
DAEMONS = ("dockerd", "containerd")
fmt = functools.partial(readings.fmt, digits=3)


# -- small helpers -------------------------------------------------------------------------------------------------


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _socket_peers(pid: int, ports: dict[int, str]) -> dict[str, str]:
    """Socket inode -> what it is: TCP by local/remote port (named by ``ports``), or unix."""
    peers: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                local, remote = int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16)
                if local in ports:
                    peers[cols[9]] = f"tcp, {ports[local]} (listening or accepted)"
                else:
                    peers[cols[9]] = f"tcp to {ports.get(remote, f'port {remote}')}"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
            cols = line.split()
            peers[cols[6]] = f"unix {cols[7]}" if len(cols) > 7 else "unix (unnamed: docker.sock clients, ...)"
    return peers


def fd_kinds(pid: int, ports: dict[int, str]) -> Counter[str]:
    """The worker's open files by kind: sockets by peer, pipes, anon inodes, files by directory."""
    peers = _socket_peers(pid, ports)
    kinds: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                kinds[peers.get(target[8:-1], "socket (other)")] += 1
            elif target.startswith(("pipe:", "anon_inode:")):
                kinds[target.split("[")[0].rstrip(":") if target.startswith("pipe") else target] += 1
            else:
                kinds[f"file in {os.path.dirname(target)}"] += 1
    return kinds


def labelled(kind: str, worker_id: str) -> int:
    """Containers (``ps -a``) or volumes carrying ``cicd.worker-id=<worker_id>``."""
    command = ["docker", "ps", "-aq"] if kind == "containers" else ["docker", "volume", "ls", "-q"]
    found = subprocess.run([*command, "--filter", f"label={harness.LABEL_WORKER}={worker_id}"],
                           capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {found.stderr.strip()}")
    return len(found.stdout.split())


# -- CPU accounting ------------------------------------------------------------------------------------------------


def host_busy_seconds() -> float:
    """CPU seconds the host spent not idle (all CPUs), from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # user..steal minus idle and iowait


def daemon_cpu_seconds() -> float:
    """dockerd + containerd, with the children they reaped."""
    return sum(sum(int(v) for v in fields[11:15]) / CLK_TCK for _, name, fields in processes() if name in DAEMONS)


def dockerd_pid() -> int:
    return next((pid for pid, name, _ in processes() if name == "dockerd"), 0)


ENGINE = "_engine"  # not CPU: dockerd's pid in a snapshot, 1.0 in a delta when the engine was restarted meanwhile
HOST = "host busy (all processes)"
DAEMON = "dockerd + containerd"


def cpu_snapshot(setup: harness.Setup) -> dict[str, float]:
    own = os.times()
    return {**harness.cpu_of(setup), DAEMON: daemon_cpu_seconds(),
            "docker CLIs (children of the bench)": own.children_user + own.children_system,
            "bench (this process)": own.user + own.system, HOST: host_busy_seconds(), ENGINE: float(dockerd_pid())}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    delta = {key: after[key] - before[key] for key in after}
    delta[ENGINE] = float(before[ENGINE] != after[ENGINE] or not after[ENGINE])
    return delta


# -- jobs ----------------------------------------------------------------------------------------------------------


def new_jobs(setup: harness.Setup, prefix: str, count: int, concurrency: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` one-job pipeline runs in the backend: (job execution id, JobExecutionDTO) each."""

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda index: harness.new_job(setup, f"{prefix}-{index}"), range(count)))


@dataclass
class JobSample:
    job_id: str
    flow_run_id: str
    sent: float  # epoch seconds, just before the POST
    ack_s: float  # POST -> 202 read
    seen_s: float  # POST -> final status first seen by polling (or given up)
    finished: bool = True  # False: no final status within the job timeout, or the POST failed
    error: str | None = None  # the POST's failure, if it failed
    reposted: bool = False  # the POST was sent twice (the first connection failed at once)
    history: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def at(self, status: str, key: str = "received_at") -> float | None:
        entry = next((h for h in self.history if h["status"] == status), None)
        return epoch(entry.get(key)) if entry else None

    @property
    def final_at(self) -> float | None:
        final = self.history and self.history[-1]["status"] in harness.FINAL
        return epoch(self.history[-1]["received_at"]) if final else None

    @property
    def statuses(self) -> list[str]:
        return [h["status"] for h in self.history]


def post_and_wait(setup: harness.Setup, db: harness.BackendDB, job_id: str, dto: dict[str, Any], poll: float,
                  timeout: float) -> JobSample:
    """POST one job and wait for its final status; a job without one after ``timeout`` s is given up on (it is
    reported, and fails the verdict) so that one lost job does not end the soak."""
    sent, start = time.time(), time.perf_counter()
    answer, error, reposted = post_job(setup, dto, timeout)
    ack = time.perf_counter() - start
    if answer is None or error is not None:
        print(f"  job {job_id}: {error}; going on", flush=True)
        return JobSample(job_id, "", sent, ack, ack, finished=False, error=error, reposted=reposted)
    flow_run_id = answer.json()["flowRunId"]
    deadline = start + timeout
    while db.status(job_id) not in harness.FINAL:
        process = setup.worker_process.process
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the worker exited; see {setup.workdir / 'worker.log'}")
        if time.perf_counter() > deadline:
            print(f"  job {job_id} (flow run {flow_run_id}) has no final status after {timeout:g} s; going on",
                  flush=True)
            return JobSample(job_id, flow_run_id, sent, ack, time.perf_counter() - start, finished=False,
                             reposted=reposted)
        time.sleep(poll)
    return JobSample(job_id, flow_run_id, sent, ack, time.perf_counter() - start, reposted=reposted)


def post_job(setup: harness.Setup, dto: dict[str, Any], timeout: float
             ) -> tuple[httpx.Response | None, str | None, bool]:
    """POST /api/job/execute: (answer, error, sent twice). A connection that fails at once (a keep-alive
    connection the worker closed) is retried once: the endpoint is idempotent per job execution id."""
    start = time.perf_counter()
    for attempt in (1, 2):
        try:
            answer = setup.worker.post("/api/job/execute", json=dto, timeout=timeout)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError) as exc:
            if attempt == 1 and time.perf_counter() - start < 1.0:
                continue
            return None, f"POST /api/job/execute failed after {time.perf_counter() - start:.1f} s: {exc!r}", attempt > 1
        except httpx.HTTPError as exc:
            return None, f"POST /api/job/execute failed after {time.perf_counter() - start:.1f} s: {exc!r}", attempt > 1
        # sent again: 200 with the same ids means the first POST did reach the worker
        if answer.status_code != 202 and not (attempt > 1 and answer.status_code == 200):
            return answer, f"worker answered {answer.status_code}: {answer.text[:300]}", attempt > 1
        return answer, None, attempt > 1
    raise AssertionError("unreachable")


def closed_loop(concurrency: int, count: int, one: Callable[[int, Any], Any], context: Callable[[], Any]
                ) -> tuple[list[Any], float]:
    """``concurrency`` threads calling ``one(index, ctx)`` for indexes 0..count-1, each taking the next when its
    previous call returned; results in index order and the wall time of the whole."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    lock = threading.Lock()
    taken = iter(range(count))

    def loop() -> None:
        ctx = context()
        try:
            while not errors:
                with lock:
                    index = next(taken, None)
                if index is None:
                    return
                results[index] = one(index, ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
        finally:
            with contextlib.suppress(Exception):
                ctx.close()

    threads = [threading.Thread(target=loop, name=f"client-{i}", daemon=True) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return results, wall


def worker_phase(setup: harness.Setup, jobs: list[tuple[str, dict[str, Any]]], concurrency: int, poll: float,
                 timeout: float) -> tuple[list[JobSample], float]:
    def one(index: int, db: harness.BackendDB) -> JobSample:
        return post_and_wait(setup, db, *jobs[index], poll, timeout)

    samples, wall = closed_loop(concurrency, len(jobs), one, lambda: harness.BackendDB(setup.db_path))
    db = harness.BackendDB(setup.db_path)
    try:
        for sample in samples:
            sample.history, sample.violations = db.history(sample.job_id), db.violations(sample.job_id)
    finally:
        db.close()
    return samples, wall


@dataclass
class RunSample:
    tag: str
    sent: float  # epoch seconds, just before the CLI started
    wall_s: float


class _NoContext:
    def close(self) -> None:
        pass


def docker_run(bench_id: str, tag: str) -> RunSample:
    command = harness.docker_run_command("true", labels={harness.LABEL_BENCH: bench_id, LABEL_RUN: tag})
    return RunSample(tag, *harness.timed_run(command, DOCKER_RUN_TIMEOUT_SECONDS))


def baseline_phase(setup: harness.Setup, first: int, count: int, concurrency: int) -> tuple[list[RunSample], float]:
    return closed_loop(concurrency, count, lambda index, _: docker_run(setup.worker_id, f"b{first + index}"),
                       _NoContext)


class PrefectProbe:
    """One small write to the Prefect API a second (a variable's value), timed: shows the server's stalls.

    The Prefect server on SQLite answers 503 when its database stays locked, and Prefect's client then
    backs off (2, 4, 8 ... s); a read would not see that (WAL readers are not blocked), a write does.
    """

    def __init__(self, api_url: str, interval: float = 1.0) -> None:
        self.http = httpx.Client(base_url=api_url, timeout=120)
        self.name = f"soak_probe_{uuid.uuid4().hex[:8]}"
        self.interval = interval
        self.samples: list[tuple[float, float, int]] = []  # (start, seconds, status; 0 on a transport error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prefect-probe", daemon=True)

    def __enter__(self) -> PrefectProbe:
        self.http.post("/variables/", json={"name": self.name, "value": 0}).raise_for_status()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(130)
        with contextlib.suppress(httpx.HTTPError):
            self.http.delete(f"/variables/name/{self.name}")
        self.http.close()

    def _loop(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            count += 1
            start = time.perf_counter()
            try:
                code = self.http.patch(f"/variables/name/{self.name}", json={"value": count}).status_code
            except httpx.HTTPError:
                code = 0
            self.samples.append((start, time.perf_counter() - start, code))

    def summary(self) -> str:
        if not self.samples:
            return "no probe"
        took = [seconds for _, seconds, _ in self.samples]
        bad = Counter(code for _, _, code in self.samples if code != 204)
        slow = [seconds for seconds in took if seconds > 1.0]
        return (f"{len(took)} writes: median {(median(took) or 0) * 1000:.0f} ms, p90 {(p90(took) or 0) * 1000:.0f} "
                f"ms, max {max(took):.2f} s; {len(slow)} took over 1 s ({sum(slow):.0f} s in all); answers other "
                f"than 204: {dict(bad) if bad else 'none'}")


# -- idle ----------------------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    containers: int
    volumes: int
    threads: int
    fds: int
    rss_kib: int
    hwm_kib: int
    waited_s: float
    settled: bool
    names: Counter[str] | None = None  # Python threads by name, from py-spy dump
    fd_kinds: Counter[str] = field(default_factory=Counter)


def known_ports(setup: harness.Setup) -> dict[int, str]:
    return {int(setup.prefect.base_url.port or 0): "the Prefect server",
            int(setup.backend.http.base_url.port or 0): "the backend", setup.worker_process.port: "the worker's API"}


def snapshot(setup: harness.Setup, counts: tuple[int, int], waited: float, settled: bool) -> Snapshot:
    pid = setup.worker_pid
    return Snapshot(labelled("containers", setup.worker_id), labelled("volumes", setup.worker_id), counts[0],
                    counts[1], proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM"), waited, settled,
                    thread_names(pid), fd_kinds(pid, known_ports(setup)))


def outbox_counts(state_dir: Path) -> tuple[int, int]:
    """(pending, dead) items of the worker's outbox, read from its SQLite file."""
    path = state_dir / "outbox" / "outbox.db"
    if not path.exists():
        return 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    finally:
        db.close()
    return int(rows.get("pending", 0)), int(rows.get("dead", 0))


def unfinished_flow_runs(setup: harness.Setup, flow_run_ids: list[str]) -> int | None:
    """Flow runs of these ids not yet in a terminal state (None when the Prefect API did not answer)."""
    ids = [i for i in flow_run_ids if i]  # a refused POST has no flow run
    if not ids:
        return 0
    body = {"flow_runs": {"id": {"any_": ids}, "state": {"type": {"not_any_": sorted(harness.PREFECT_DONE)}}}}
    try:
        answer = setup.prefect.post("/flow_runs/count", json=body)
        answer.raise_for_status()
    except httpx.HTTPError as exc:
        print(f"  Prefect API: {exc!r}; asking again", flush=True)
        return None
    return int(answer.json())


def wait_idle(setup: harness.Setup, flow_run_ids: list[str], settle: float) -> Snapshot:
    """Poll until the worker is idle (see the module docstring) and its thread/fd counts held for ``settle`` s."""
    pid, state_dir = setup.worker_pid, setup.workdir / "state"
    start = time.monotonic()
    flows_done = False
    last: tuple[int, int] | None = None
    stable_since: float | None = None
    while True:
        flows_done = flows_done or unfinished_flow_runs(setup, flow_run_ids) == 0
        busy = not flows_done or outbox_counts(state_dir)[0] > 0
        counts, now = threads_and_fds(pid), time.monotonic()
        if busy:
            stable_since = None
        elif counts != last or stable_since is None:
            stable_since = now
        last = counts
        settled = stable_since is not None and now - stable_since >= settle
        if settled or now - start > IDLE_TIMEOUT_SECONDS:
            return snapshot(setup, counts, now - start, settled)
        time.sleep(0.1)


def linger(setup: harness.Setup, idle: Snapshot, seconds: float) -> tuple[Snapshot, float | None]:
    """Keep polling until threads and fds are back to the idle figure or ``seconds`` passed; (snapshot, when)."""
    pid, start = setup.worker_pid, time.monotonic()
    while True:
        (threads, fds), now = threads_and_fds(pid), time.monotonic()
        back = threads <= idle.threads and fds <= idle.fds
        if back or now - start >= seconds:
            return snapshot(setup, (threads, fds), now - start, back), (now - start if back else None)
        time.sleep(0.25)


# -- breakdown -----------------------------------------------------------------------------------------------------


Marks = dict[str, float | None]


def worker_marks(samples: list[JobSample], containers: dict[str, dict[str, float]]) -> list[Marks]:
    marks = []
    for s in samples:
        engine = containers.get(s.job_id, {})
        points: dict[str, float | None] = {
            "RUNNING built (startTime)": s.at("RUNNING", "start_time"), "RUNNING received": s.at("RUNNING"),
            **{f"container {a}": engine.get(a) for a in LIFECYCLE},
            "final built (completionTime)": s.at(s.statuses[-1], "completion_time") if s.history else None,
            "final received": s.final_at}
        mark: Marks = {key: None if at is None else at - s.sent for key, at in points.items()}
        mark["POST answered 202"], mark["final seen by the client"] = s.ack_s, s.seen_s
        marks.append(mark)
    return marks


def baseline_marks(samples: list[RunSample], containers: dict[str, dict[str, float]]) -> list[Marks]:
    marks = []
    for s in samples:
        engine = containers.get(s.tag, {})
        mark: Marks = {f"container {a}": None if a not in engine else engine[a] - s.sent for a in LIFECYCLE}
        mark["docker CLI exited"] = s.wall_s
        marks.append(mark)
    return marks


def steps(marks: list[Marks], start: str | None, end: str) -> list[float]:
    out = []
    for m in marks:
        at, since = m.get(end), (m.get(start) if start else 0.0)
        if at is not None and since is not None:
            out.append(at - since)
    return out


WORKER_STEPS = [  # label, from (None: the POST), to
    ("POST -> 202 answered", None, "POST answered 202"),
    ("POST -> RUNNING built by the hook (startTime)", None, "RUNNING built (startTime)"),
    ("RUNNING built -> RUNNING received", "RUNNING built (startTime)", "RUNNING received"),
    ("POST -> container create", None, "container create"),
    ("container create -> start", "container create", "container start"),
    ("container start -> die", "container start", "container die"),
    ("container die -> destroy", "container die", "container destroy"),
    ("container destroy -> final built (completionTime)", "container destroy", "final built (completionTime)"),
    ("final built -> final received", "final built (completionTime)", "final received"),
    ("POST -> final received (latency)", None, "final received"),
    ("final received -> seen by the client (polling)", "final received", "final seen by the client"),
]
BASELINE_STEPS = [
    ("CLI start -> container create", None, "container create"),
    ("container create -> start", "container create", "container start"),
    ("container start -> die", "container start", "container die"),
    ("container die -> destroy", "container die", "container destroy"),
    ("container destroy -> CLI exit", "container destroy", "docker CLI exited"),
    ("CLI start -> CLI exit (latency)", None, "docker CLI exited"),
]


def print_steps(title: str, marks: list[Marks], rows: list[tuple[str, str | None, str]]) -> None:
    print(f"  {title:<52} {'mean':>8} {'median':>8} {'p90':>8} {'max':>8} {'n':>5}")
    for label, start, end in rows:
        values = steps(marks, start, end)
        print(f"    {label:<50} {fmt(mean(values), 8)} {fmt(median(values), 8)} {fmt(p90(values), 8)} "
              f"{fmt(max(values) if values else None, 8)} {len(values):>5}")


# -- report --------------------------------------------------------------------------------------------------------


@dataclass
class Results:
    jobs: int
    concurrency: int
    idle: Snapshot
    worker: list[JobSample]
    worker_wall: float
    worker_cpu: dict[str, float]
    halves: list[tuple[list[RunSample], float, dict[str, float]]]
    monitor: Monitor
    end: Snapshot
    lingered: Snapshot
    back_after: float | None
    outbox_dead: int
    prefect_probe: str
    prefect_503s: int | None = None  # requests the bench's Prefect server answered 503 (None: not its server)

    @property
    def worst(self) -> float | None:
        """The slowest job, POST -> final status received (None when a job got no final status)."""
        latencies = [s.final_at - s.sent for s in self.worker if s.final_at is not None]
        return max(latencies) if latencies and self.finished == self.jobs else None

    @property
    def worker_span(self) -> float:
        finals = [s.final_at for s in self.worker if s.finished and s.final_at is not None]
        return (max(finals) if finals else time.time()) - min(s.sent for s in self.worker)

    @property
    def finished(self) -> int:
        return sum(1 for s in self.worker if s.finished and s.final_at is not None)

    @property
    def worker_rate(self) -> float:
        return self.finished / self.worker_span

    @property
    def baseline_rate(self) -> float:
        return sum(len(runs) for runs, _, _ in self.halves) / sum(wall for _, wall, _ in self.halves)

    @property
    def ratio(self) -> float:
        return self.worker_rate / self.baseline_rate

    def engine_restarts(self) -> list[str]:
        """The phases during which dockerd was restarted (by someone else: this host is shared)."""
        phases = [("the worker phase", self.worker_cpu)]
        phases += [(f"plain half {i}", cpu) for i, (_, _, cpu) in enumerate(self.halves, start=1)]
        return [name for name, cpu in phases if cpu[ENGINE]]

    def bad_histories(self) -> list[JobSample]:
        return [s for s in self.worker if s.statuses != ["RUNNING", "SUCCESS"] or s.violations]


def print_throughput(r: Results) -> None:
    print(f"\nthroughput ({r.jobs} jobs `true`, client concurrency {r.concurrency})")
    if r.engine_restarts():
        print(f"  WARNING: the Docker engine was restarted during {', '.join(r.engine_restarts())} (not by this "
              "bench): those figures are disturbed")
    reposted = sum(1 for s in r.worker if s.reposted)
    if reposted:
        print(f"  {reposted} POSTs were sent again after the connection failed at once (a keep-alive connection "
              "closed by the worker)")
    if r.finished < r.jobs:
        print(f"  {r.jobs - r.finished} jobs reached no final status within the job timeout: the worker figure counts "
              f"the {r.finished} that did, and includes the time their clients spent waiting for the others")
    print(f"  worker: first POST -> last final status received   {r.worker_span:8.2f} s   {r.worker_rate:7.2f} jobs/s"
          f"   (client wall {r.worker_wall:.2f} s)")
    walls = sum(wall for _, wall, _ in r.halves)
    halves = ", ".join(f"half {i}: {len(runs)} in {wall:.2f} s = {len(runs) / wall:.2f}/s"
                       for i, (runs, wall, _) in enumerate(r.halves, start=1))
    print(f"  plain docker run (two halves, {halves})")
    print(f"  {'':<50} {walls:8.2f} s   {r.baseline_rate:7.2f} runs/s")
    print(f"  ratio worker/plain = {r.ratio:.2f}   (target >= {TARGET_RATIO})")
    w_lat = [s.final_at - s.sent for s in r.worker if s.final_at is not None]
    b_lat = [run.wall_s for runs, _, _ in r.halves for run in runs]
    for label, values in (("worker: POST -> final status received", w_lat), ("plain: docker run CLI wall", b_lat)):
        print(f"  latency per job, {label:<38} mean {fmt(mean(values), 6)} median {fmt(median(values), 6)} "
              f"p90 {fmt(p90(values), 6)} max {fmt(max(values) if values else None, 6)} s")
    cycle = [s.seen_s for s in r.worker]
    print(f"  (closed loop: throughput ~ concurrency / mean cycle; worker client cycle mean {fmt(mean(cycle), 0)} s "
          f"-> {r.concurrency / (mean(cycle) or 1):.2f}/s, plain {fmt(mean(b_lat), 0)} s -> "
          f"{r.concurrency / (mean(b_lat) or 1):.2f}/s)")


def print_cpu(r: Results) -> None:
    phases = [("worker phase", r.worker_wall, r.worker_cpu)]
    phases += [(f"plain half {i}", wall, cpu) for i, (_, wall, cpu) in enumerate(r.halves, start=1)]
    print(f"\nCPU seconds per phase ({os.cpu_count()} CPUs on this host; per job in brackets, ms)")
    print(f"  {'':<40}" + "".join(f"{name:>24}" for name, _, _ in phases))
    counts = [r.jobs] + [len(runs) for runs, _, _ in r.halves]
    for party in (p for p in r.worker_cpu if p != ENGINE):
        cells = "".join(f"{'(engine restarted)':>24}" if party == DAEMON and cpu[ENGINE] else
                        f" {cpu[party]:10.1f} ({cpu[party] / n * 1000:7.1f} ms)"
                        for (_, _, cpu), n in zip(phases, counts, strict=True))
        print(f"  {party:<40}{cells}")
    others = [cpu[HOST] - sum(v for k, v in cpu.items()
                              if k not in (HOST, ENGINE) and not (k == DAEMON and cpu[ENGINE]))
              for _, _, cpu in phases]
    print(f"  {'rest (runc, shims, kernel, other users)':<40}" + "".join(
        f" {value:10.1f} ({value / n * 1000:7.1f} ms)" for value, n in zip(others, counts, strict=True)))
    print(f"  {'wall / host CPU busy':<40}" + "".join(
        f" {wall:9.1f} s {cpu[HOST] / (wall * (os.cpu_count() or 1)) * 100:4.0f}% busy"
        for _, wall, cpu in phases))


def print_resources(r: Results) -> None:
    print("\nworker process (cicd-worker serve)")
    print(f"  peak RSS (VmHWM): {r.end.hwm_kib / 1024:.1f} MiB at the end; {r.idle.hwm_kib / 1024:.1f} MiB when idle "
          f"before the jobs; during the jobs VmRSS max {r.monitor.rss_kib / 1024:.1f} MiB, threads max "
          f"{r.monitor.threads}, open files max {r.monitor.fds}")
    print(f"  idle reading before the jobs: after {r.idle.waited_s:.1f} s "
          f"({'settled' if r.idle.settled else 'NOT settled'}); after the jobs: after {r.end.waited_s:.1f} s "
          f"({'settled' if r.end.settled else 'NOT settled'}); then "
          + (f"back to the idle thread/fd figures {r.back_after:.1f} s later" if r.back_after is not None
             else f"still above the idle thread/fd figures after {r.lingered.waited_s:.1f} s more"))
    print(f"  {'':<42} {'idle before':>12} {'after jobs':>12} {'+linger':>9}")
    rows = [("containers with label cicd.worker-id", "containers"), ("volumes with that label", "volumes"),
            ("threads (/proc/PID/status Threads)", "threads"), ("open files (/proc/PID/fd)", "fds")]
    for label, key in rows:
        print(f"  {label:<42} {getattr(r.idle, key):>12} {getattr(r.end, key):>12} {getattr(r.lingered, key):>9}")
    print(f"  {'VmRSS (MiB)':<42} {r.idle.rss_kib / 1024:12.1f} {r.end.rss_kib / 1024:12.1f} "
          f"{r.lingered.rss_kib / 1024:9.1f}")
    print(f"  outbox items kept aside as dead: {r.outbox_dead}")
    print_changes("Python threads by name (py-spy dump)", r.idle.names, r.end.names, r.lingered.names)
    print_changes("open files by kind", r.idle.fd_kinds, r.end.fd_kinds, r.lingered.fd_kinds)


def print_changes(title: str, idle: Counter[str] | None, end: Counter[str] | None,
                  lingered: Counter[str] | None) -> None:
    """The names whose count differs from the idle reading, at the three readings."""
    if idle is None or end is None:
        print(f"  {title}: not available (py-spy not installed)")
        return
    lingered = lingered or Counter()
    changed = [n for n in sorted(set(idle) | set(end) | set(lingered)) if end[n] != idle[n] or lingered[n] != idle[n]]
    print(f"  {title}: {sum(idle.values())} idle before, {sum(end.values())} after the jobs, "
          f"{sum(lingered.values())} +linger; {'those whose count changed:' if changed else 'no count changed'}")
    for name in changed:
        print(f"    {name:<66} {idle[name]:>5} {end[name]:>5} {lingered[name]:>5}")


def flow_run_state(setup: harness.Setup, flow_run_id: str) -> str:
    try:
        state = setup.prefect.get(f"/flow_runs/{flow_run_id}").json().get("state") or {}
    except (httpx.HTTPError, ValueError) as exc:
        return f"? ({exc})"
    return f"{state.get('type')} {str(state.get('message') or '')[:240]!r}"


def prefect_503s(setup: harness.Setup) -> int | None:
    """How many requests the bench's own Prefect server answered 503 (it logs each retryable error)."""
    path = setup.workdir / "prefect-server.log"
    if setup.prefect_sid is None or not path.exists():
        return None
    return path.read_text(errors="replace").count("Encountered retryable exception in request")


def prefect_retryable_errors(setup: harness.Setup) -> str | None:
    """What the bench's own Prefect server logged as retryable (answered 503), by exception."""
    count = prefect_503s(setup)
    if count is None:
        return None
    text = (setup.workdir / "prefect-server.log").read_text(errors="replace")
    causes = Counter(line.strip()[:110] for line in text.splitlines()
                     if re.match(r"(sqlalchemy\.exc|asyncio|TimeoutError)\S*(: |$)", line.strip()))
    return f"{count} requests answered 503 (retryable), for: " + (
        "; ".join(cause for cause, _ in causes.most_common(3)) or "(no exception found in the log)")


def print_histories(setup: harness.Setup, r: Results) -> None:
    bad = r.bad_histories()
    print(f"\nbackend histories: {r.jobs - len(bad)}/{r.jobs} exactly RUNNING, SUCCESS with no contract violation")
    for s in bad[:10]:
        if s.error:
            print(f"  job {s.job_id}: {s.error}; history {s.statuses or '(none)'}")
            continue
        print(f"  job {s.job_id}: history {s.statuses or '(none)'}, violations {s.violations}; its Prefect flow run "
              f"{s.flow_run_id}: {flow_run_state(setup, s.flow_run_id)}")
    log = (setup.workdir / "worker.log").read_text(errors="replace")
    print(f"  worker log: {log.count('Encountered exception during execution')} flow runs ended on an exception, "
          f"{log.count('503 Service Unavailable')} mentions of '503 Service Unavailable' (the Prefect server), "
          f"{log.count('LOST STATUS')} of 'LOST STATUS'")


def verdict(r: Results) -> bool:
    worst = "n/a" if r.worst is None else f"{r.worst:.1f} s"
    checks = {
        f"ratio {r.ratio:.2f} >= {TARGET_RATIO}": r.ratio >= TARGET_RATIO,
        f"worst job {worst} <= {TARGET_WORST_SECONDS:g} s": r.worst is not None and r.worst <= TARGET_WORST_SECONDS,
        f"Prefect 503s {r.prefect_503s} == 0": r.prefect_503s == 0,
        f"containers {r.end.containers} <= {r.idle.containers}": r.end.containers <= r.idle.containers,
        f"volumes {r.end.volumes} <= {r.idle.volumes}": r.end.volumes <= r.idle.volumes,
        f"threads {r.end.threads} <= {r.idle.threads}": r.end.threads <= r.idle.threads,
        f"open files {r.end.fds} <= {r.idle.fds}": r.end.fds <= r.idle.fds,
        f"histories {r.jobs - len(r.bad_histories())}/{r.jobs} RUNNING,SUCCESS": not r.bad_histories(),
    }
    ok = all(checks.values())
    failed = [name for name, good in checks.items() if not good]
    disturbed = r.engine_restarts()
    print(f"\nVERDICT: {'PASS' if ok else 'FAIL'}: " + "; ".join(
        f"{name} {'ok' if good else 'MISSED'}" for name, good in checks.items())
        + (f"  (missed: {len(failed)})" if failed else "")
        + (f"  [disturbed: the Docker engine was restarted during {', '.join(disturbed)}]" if disturbed else ""))
    return ok


def report(setup: harness.Setup, r: Results) -> None:
    print_throughput(r)
    containers_w = setup.events.by_label(harness.LABEL_JOB)
    containers_b = setup.events.by_label(LABEL_RUN)
    print("\nwhere the time per job goes (s; worker: after the POST; engine times from `docker events`)")
    print_steps("worker", worker_marks(r.worker, containers_w), WORKER_STEPS)
    print_steps("plain docker run", baseline_marks([run for runs, _, _ in r.halves for run in runs], containers_b),
                BASELINE_STEPS)
    print(f"\nPrefect server responsiveness during the worker phase (PATCH of a variable, 1/s): {r.prefect_probe}")
    if (errors := prefect_retryable_errors(setup)) is not None:
        print(f"  the Prefect server's log, whole session: {errors}")
    print_cpu(r)
    print_resources(r)
    print_histories(setup, r)


# -- main ----------------------------------------------------------------------------------------------------------


def warm_up(setup: harness.Setup, args: argparse.Namespace) -> tuple[Snapshot, list[str]]:
    job = new_jobs(setup, "soak-warm-up", 1, 1)
    db = harness.BackendDB(setup.db_path)
    try:
        sample = post_and_wait(setup, db, *job[0], args.poll_ms / 1000, args.job_timeout)
        statuses = [h["status"] for h in db.history(sample.job_id)]
    finally:
        db.close()
    if statuses != ["RUNNING", "SUCCESS"]:
        raise RuntimeError(f"warm-up job history {statuses}; see {setup.workdir / 'worker.log'}")
    docker_run(setup.worker_id, "warm-up")
    idle = wait_idle(setup, [sample.flow_run_id], args.settle)
    print(f"warm-up done (one job, one docker run); idle after {idle.waited_s:.1f} s: containers {idle.containers}, "
          f"volumes {idle.volumes}, threads {idle.threads}, open files {idle.fds}, VmRSS {idle.rss_kib / 1024:.1f} "
          f"MiB, VmHWM {idle.hwm_kib / 1024:.1f} MiB", flush=True)
    return idle, [sample.flow_run_id]


def timed_baseline(setup: harness.Setup, first: int, count: int, concurrency: int, name: str
                   ) -> tuple[list[RunSample], float, dict[str, float]]:
    before = cpu_snapshot(setup)
    runs, wall = baseline_phase(setup, first, count, concurrency)
    cpu = cpu_delta(before, cpu_snapshot(setup))
    print(f"{name}: {count} docker runs in {wall:.2f} s = {count / wall:.2f} runs/s", flush=True)
    return runs, wall, cpu


def measure(setup: harness.Setup, args: argparse.Namespace) -> Results:
    idle, flow_runs = warm_up(setup, args)
    jobs = new_jobs(setup, "soak", args.jobs, args.concurrency)
    print(f"{len(jobs)} jobs created in the backend; plain half 1 ...", flush=True)
    first_half = args.jobs // 2
    halves = [timed_baseline(setup, 0, first_half, args.concurrency, "plain half 1")]
    print("worker phase ...", flush=True)
    before = cpu_snapshot(setup)
    with Monitor(setup.worker_pid, SAMPLE_SECONDS) as monitor, PrefectProbe(str(setup.prefect.base_url)) as probe:
        samples, wall = worker_phase(setup, jobs, args.concurrency, args.poll_ms / 1000, args.job_timeout)
    worker_cpu = cpu_delta(before, cpu_snapshot(setup))
    print(f"worker phase: {len(samples)} jobs final in {wall:.2f} s (client wall); waiting for the worker to be "
          "idle ...", flush=True)
    end = wait_idle(setup, flow_runs + [s.flow_run_id for s in samples], args.settle)
    lingered, back_after = linger(setup, idle, args.linger)
    dead = outbox_counts(setup.workdir / "state")[1]
    halves.append(timed_baseline(setup, first_half, args.jobs - first_half, args.concurrency, "plain half 2"))
    return Results(args.jobs, args.concurrency, idle, samples, wall, worker_cpu, halves, monitor, end, lingered,
                   back_after, dead, probe.summary())


def profile(setup: harness.Setup, args: argparse.Namespace) -> None:
    count = min(args.jobs, PROFILE_JOBS)
    for mode in ("gil", "wall"):
        jobs = new_jobs(setup, f"soak-profile-{mode}", count, args.concurrency)
        out = args.profile / f"soak-worker-{mode}.folded"
        print(f"\nprofile ({mode}): {count} more jobs at concurrency {args.concurrency} under py-spy record "
              f"(not counted) -> {out}", flush=True)
        spy = start_py_spy(setup.worker_pid, out, mode)
        try:
            samples, wall = worker_phase(setup, jobs, args.concurrency, args.poll_ms / 1000, args.job_timeout)
        finally:
            stop_py_spy(spy)
        print(f"  {len(samples)} jobs in {wall:.2f} s = {len(samples) / wall:.2f} jobs/s under the profiler")
        (summarise_gil if mode == "gil" else summarise_wall)(out, wall)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200,
                        help="jobs through the worker, and plain runs (default 200; 40 for a quick run)")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both",
                        help="the Prefect server's database; both: one soak on each (default)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="client threads on each side, and WORKER_MAX_CONCURRENT_JOBS (default 8)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="how often a client reads the backend's records for its job's final status")
    parser.add_argument("--job-timeout", type=float, default=120.0,
                        help="seconds a job may take to reach a final status before it is given up on (default 120)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds the idle worker's thread/fd counts must hold still (default 2)")
    parser.add_argument("--linger", type=float, default=30.0,
                        help="seconds more to watch threads/fds come back to the idle figure (default 30)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="afterwards, two more blocks of jobs under py-spy record; stacks saved in DIR")
    harness.common_options(parser)
    args = harness.parse(parser, argv)
    if args.jobs < 2 or args.concurrency < 1:
        parser.error("--jobs must be at least 2 and --concurrency at least 1")
    return args


def soak(args: argparse.Namespace, database: str, url: str | None) -> tuple[Results, bool]:
    """One whole soak with the Prefect server on ``database`` (``url``: PostgreSQL's; None: SQLite); its results
    and whether every check of :func:`verdict` passed."""
    worker_env = {"WORKER_MAX_CONCURRENT_JOBS": str(args.concurrency), "WORKER_MAX_QUEUED_JOBS": str(args.jobs + 100)}
    # the Prefect server logs each request it answers 503 (a retryable database error): counted in the report
    prefect_env = {"PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true", **({postgres.URL_SETTING: url} if url else {})}
    with harness.environment(f"soak-{database}", keep=args.keep, worker_env=worker_env, prefect_env=prefect_env,
                             limits=httpx.Limits(max_connections=4 * args.concurrency)) as setup:
        print(f"\n=== soak on {database}: {args.jobs} jobs (script `true`, image {harness.IMAGE}) at client "
              f"concurrency {args.concurrency}; worker pid {setup.worker_pid} with "
              f"WORKER_MAX_CONCURRENT_JOBS={args.concurrency}, "
              f"WORKER_MAX_QUEUED_JOBS={args.jobs + 100}, WORKER_PULL_POLICY=never, WORKER_ID={setup.worker_id}; "
              f"backend pid {setup.backend_pid}; load average {readings.load_average()}", flush=True)
        results = measure(setup, args)
        results.prefect_503s = prefect_503s(setup)
        report(setup, results)
        if args.profile:
            profile(setup, args)
        ok = verdict(results)
    return results, ok


def summary(runs: dict[str, Results]) -> bool:
    """Each database's figures side by side, and PASS/MISS per target of the issue."""
    print(f"\nsummary (load average now {readings.load_average()})")
    print(f"  {'database':<10} {'worker jobs/s':>14} {'plain runs/s':>13} {'ratio':>6} {'worst job s':>12} {'503s':>5}")
    for name, r in runs.items():
        print(f"  {name:<10} {r.worker_rate:14.2f} {r.baseline_rate:13.2f} {r.ratio:6.2f} {fmt(r.worst, 12)} "
              f"{r.prefect_503s if r.prefect_503s is not None else 'n/a':>5}")
    lines = []
    for name, r in runs.items():
        lines += [readings.verdict(f"{name}: throughput worker/plain", r.ratio, TARGET_RATIO, higher_is_better=True),
                  readings.verdict(f"{name}: worst job POST -> final", r.worst, TARGET_WORST_SECONDS, " s"),
                  readings.verdict(f"{name}: Prefect 503s", None if r.prefect_503s is None else float(r.prefect_503s),
                                   0)]
    if len(runs) == 2:
        sqlite, pg = runs["sqlite"], runs["postgres"]
        print(f"  postgres/sqlite throughput: {pg.worker_rate / sqlite.worker_rate:.2f}x")
    return all(line.endswith("PASS") for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[str, Results] = {}
    passed = []
    if args.database in ("sqlite", "both"):
        runs["sqlite"], ok = soak(args, "sqlite", None)
        passed.append(ok)
    if args.database in ("postgres", "both"):
        with postgres.database("prefect_soak") as url:
            if url is not None:
                runs["postgres"], ok = soak(args, "postgres", url)
                passed.append(ok)
            elif args.database == "postgres":
                return 2
    return 0 if summary(runs) and all(passed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
