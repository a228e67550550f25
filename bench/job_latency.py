"""Latency of one trivial job through a real worker, against plain ``docker run`` measured in the same run.

Run from the repository root: ``.venv/bin/python bench/job_latency.py [--runs N]``. Target: the worker's
median latency is at most 1.5x the median of ``docker run --rm --network none cicd-busybox:latest true``.

Set-up, all torn down at the end: a Prefect server on a free port with a temporary ``PREFECT_HOME`` (or
the server at ``PREFECT_API_URL`` when that is set), the reference backend in this process, and a real
``cicd-worker serve`` child process with ``WORKER_PULL_POLICY=never``.

One worker run: create a one-job pipeline run (script ``["true"]``) in the backend, fetch its
JobExecutionDTO with ``GET /api/jobs/{id}``, POST it straight to the worker's ``/api/job/execute`` (so the
backend's own push is not measured) and wait for the final status. The latency is the backend's
``receivedAt`` of the final status minus the wall-clock time at which the POST was sent. ``receivedAt``
is ``datetime.now(UTC)`` (naive, ISO text, microseconds) taken by ``Store.record_status`` as the status
request is handled, in this very process, so both ends read the same clock at microsecond precision. The
admin API is polled (``--poll-ms``) only to learn that the run ended: the polling period is not part of the
figure (the first time the final status was seen by polling is printed as a cross-check). Before the next
run the bench waits for the flow run to end in Prefect, so that runs do not overlap.

Baseline: the wall time of the ``docker run`` CLI, as many times, interleaved with the worker runs
(alternating which goes first) so that both share the machine's noise. Two warm-up runs of each are not
counted.

Breakdown: for the median worker run, a timeline built from what was recorded on this host's clock by the
backend (``receivedAt``, and the worker's own ``startTime``/``completionTime`` carried by the statuses), the
worker (``acceptedAt`` of ``GET /api/job/{id}``), the Prefect server (flow and task run timestamps) and the
Docker engine (container events), next to the median of each milestone over all runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from reference_backend.server import BackendServer  # noqa: E402
from tests.support import WorkerProcess, free_port  # noqa: E402
from worker_api.prefect_server import LocalPrefectServer  # noqa: E402

IMAGE = os.environ.get("CICD_TEST_IMAGE", "cicd-busybox:latest")
DOCKER_RUN = ["docker", "run", "--rm", "--network", "none", IMAGE, "true"]
TARGET_RATIO = 1.5
WARMUP = 2
FINAL = {"SUCCESS", "FAILED", "CANCELED"}
PREFECT_DONE = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT_SECONDS = 60.0


@dataclass
class WorkerSample:
    """One worker run: what the bench measured and what the parties recorded."""

    job_id: str
    flow_run_id: str
    sent: float  # epoch seconds, read just before the POST
    ack_ms: float  # POST sent -> 202 read (client, monotonic)
    seen_ms: float  # POST sent -> final status first seen by polling (client, monotonic)
    latency_ms: float  # POST sent -> backend receivedAt of the final status
    history: list[dict[str, Any]]
    view: dict[str, Any]  # the worker's GET /api/job/{id}
    marks: dict[str, float | None] = field(default_factory=dict)  # milestone -> ms after ``sent``


@dataclass
class Setup:
    """The running parts a measurement needs."""

    backend: httpx.Client
    worker: httpx.Client
    prefect: httpx.Client
    worker_id: str
    workdir: Path


def epoch(text: str | None) -> float | None:
    """ISO text (naive = UTC, as the reference backend writes it) as epoch seconds."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def ms_after(start: float, moment: float | None) -> float | None:
    return None if moment is None else (moment - start) * 1000.0


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def wait_until(probe: Callable[[], Any], interval: float, what: str) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {RUN_TIMEOUT_SECONDS:g} s waiting for {what}")


# -- one run of each kind ---------------------------------------------------------------------------------


def new_job(setup: Setup, index: int) -> tuple[str, dict[str, Any]]:
    """A fresh one-job pipeline run in the backend; its job execution id and JobExecutionDTO."""
    spec = {"name": f"latency-{index}", "jobs": [{"name": "noop", "dockerImage": IMAGE, "script": ["true"]}]}
    created = setup.backend.post("/admin/pipeline-runs", json=spec)
    created.raise_for_status()
    job_id = created.json()["jobs"]["noop"]
    dto = setup.backend.get(f"/api/jobs/{job_id}")
    dto.raise_for_status()
    return job_id, dto.json()


def flow_run_done(setup: Setup, flow_run_id: str) -> bool:
    answer = setup.prefect.get(f"/flow_runs/{flow_run_id}")
    answer.raise_for_status()
    state = answer.json().get("state") or {}
    return state.get("type") in PREFECT_DONE


def worker_run(setup: Setup, index: int, poll: float) -> WorkerSample:
    """POST one job to the worker, wait for its final status at the backend and for its flow run's end."""
    job_id, dto = new_job(setup, index)
    sent, start = time.time(), time.perf_counter()
    answer = setup.worker.post("/api/job/execute", json=dto)
    ack = time.perf_counter()
    if answer.status_code != 202:
        raise RuntimeError(f"worker answered {answer.status_code}: {answer.text}")

    def final() -> dict[str, Any] | None:
        record = setup.backend.get(f"/admin/job-executions/{job_id}").json()
        return record if record["status"] in FINAL else None

    record = wait_until(final, poll, f"the final status of job {job_id}")
    seen = time.perf_counter()
    if record["status"] != "SUCCESS" or record["violations"]:
        raise RuntimeError(f"job {job_id} ended {record['status']}: {json.dumps(record)[:2000]}")
    flow_run_id = answer.json()["flowRunId"]
    wait_until(lambda: flow_run_done(setup, flow_run_id), poll, f"the end of flow run {flow_run_id}")
    view = setup.worker.get(f"/api/job/{job_id}").json()
    received = epoch(record["history"][-1]["receivedAt"])
    assert received is not None
    return WorkerSample(job_id, flow_run_id, sent, (ack - start) * 1000, (seen - start) * 1000,
                        (received - sent) * 1000, record["history"], view)


def docker_run() -> float:
    """Wall time of the plain ``docker run`` CLI, in ms."""
    start = time.perf_counter()
    subprocess.run(DOCKER_RUN, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return (time.perf_counter() - start) * 1000


# -- breakdown ----------------------------------------------------------------------------------------------


def container_events(since: float, until: float) -> dict[str, dict[str, Any]]:
    """Container events of the window, by container id: first time of each action, and the labels."""
    out = subprocess.run(
        ["docker", "events", "--since", f"{since:.6f}", "--until", f"{until:.6f}",
         "--filter", "type=container", "--format", "{{json .}}"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    containers: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        event = json.loads(line)
        actor = event.get("Actor") or {}
        entry = containers.setdefault(actor.get("ID", ""), {"attributes": actor.get("Attributes") or {}})
        entry.setdefault(event.get("Action", ""), event["timeNano"] / 1e9)
    return containers


def prefect_times(setup: Setup, flow_run_id: str) -> dict[str, float | None]:
    """Epoch times the Prefect server holds for the flow run and its (single) task run."""
    flow_run = setup.prefect.get(f"/flow_runs/{flow_run_id}").json()
    tasks = setup.prefect.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    task = tasks[0] if tasks else {}
    return {"flow created": epoch(flow_run.get("created")), "flow start": epoch(flow_run.get("start_time")),
            "flow end": epoch(flow_run.get("end_time")), "task start": epoch(task.get("start_time")),
            "task end": epoch(task.get("end_time"))}


MILESTONES = [  # key, label
    ("ack", "POST answered 202 (bench client)"),
    ("accepted", "worker: job accepted (acceptedAt)"),
    ("flow created", "prefect: flow run created"),
    ("flow start", "prefect: flow run Running"),
    ("task start", "prefect: task run Running"),
    ("running hook", "worker: RUNNING hook (startTime)"),
    ("running received", "backend: RUNNING received"),
    ("create", "docker: container create"),
    ("attach", "docker: container attach"),
    ("start", "docker: container start"),
    ("die", "docker: container die"),
    ("destroy", "docker: container destroy"),
    ("task end", "prefect: task run end"),
    ("final built", "worker: final status built (completionTime)"),
    ("final received", "backend: final status received  <- latency"),
    ("seen", "bench: final status first seen by polling"),
    ("flow end", "prefect: flow run end"),
]


def fill_marks(setup: Setup, sample: WorkerSample, events: dict[str, dict[str, Any]]) -> None:
    """Every milestone of one run as ms after the POST was sent (None when unknown)."""
    running = next((h for h in sample.history if h["status"] == "RUNNING"), {})
    last = sample.history[-1]
    times: dict[str, float | None] = {
        "accepted": epoch(sample.view.get("acceptedAt")),
        "running hook": epoch(running.get("startTime")),
        "running received": epoch(running.get("receivedAt")),
        "final built": epoch(last.get("completionTime")),
        "final received": epoch(last.get("receivedAt")),
    }
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, IndexError):
        times.update(prefect_times(setup, sample.flow_run_id))
    container = next((c for c in events.values()
                      if c["attributes"].get("cicd.job-execution-id") == sample.job_id), {})
    times.update({action: container.get(action) for action in ("create", "attach", "start", "die", "destroy")})
    sample.marks = {key: ms_after(sample.sent, value) for key, value in times.items()}
    sample.marks["ack"], sample.marks["seen"] = sample.ack_ms, sample.seen_ms


def fmt(value: float | None, width: int = 9) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'n/a':>{width}}"


def median_of(samples: list[WorkerSample], key: str) -> float | None:
    values = [s.marks[key] for s in samples if s.marks.get(key) is not None]
    return statistics.median(values) if values else None  # type: ignore[type-var]


def print_timeline(samples: list[WorkerSample], chosen: WorkerSample) -> None:
    print(f"\nbreakdown of the median worker run (job {chosen.job_id[:8]}, {chosen.latency_ms:.1f} ms); "
          "ms after the POST was sent:")
    print(f"  {'milestone':<46} {'this run':>9} {'step':>9}   {'median of all runs':>9}")
    known = [(k, label) for k, label in MILESTONES if chosen.marks.get(k) is not None]
    unknown = [(k, label) for k, label in MILESTONES if chosen.marks.get(k) is None]
    previous = 0.0
    for key, label in sorted(known, key=lambda item: chosen.marks[item[0]] or 0.0):
        at = chosen.marks[key] or 0.0
        step = "" if key in ("ack", "seen", "flow end") else fmt(at - previous)
        if not step:
            step = f"{'':>9}"
        else:
            previous = at
        print(f"  {label:<46} {fmt(at)} {step}   {fmt(median_of(samples, key))}")
    for _, label in unknown:
        print(f"  {label:<46} {fmt(None)}")


def phase(samples: list[WorkerSample], start: str, end: str) -> float | None:
    values = [s.marks[end] - s.marks[start] for s in samples  # type: ignore[operator]
              if s.marks.get(start) is not None and s.marks.get(end) is not None]
    return statistics.median(values) if values else None


def baseline_engine_phases(events: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Median create->start, start->die, die->destroy (ms) of the baseline containers (no worker label)."""
    runs = [c for c in events.values()
            if "cicd.worker-id" not in c["attributes"] and c["attributes"].get("image") == IMAGE
            and all(a in c for a in ("create", "start", "die", "destroy"))]
    if not runs:
        return {}
    return {f"{a}->{b}": statistics.median([(c[b] - c[a]) * 1000 for c in runs])
            for a, b in (("create", "start"), ("start", "die"), ("die", "destroy"), ("create", "destroy"))}


def print_phases(samples: list[WorkerSample], events: dict[str, dict[str, Any]], docker_ms: list[float]) -> None:
    base = baseline_engine_phases(events)
    rows = [
        ("POST -> RUNNING received by the backend", median_of(samples, "running received"), None),
        ("RUNNING received -> final received", phase(samples, "running received", "final received"), None),
        ("POST -> container create (API, Prefect, hooks)", median_of(samples, "create"), None),
        ("container create -> start", phase(samples, "create", "start"), base.get("create->start")),
        ("container start -> die (the script)", phase(samples, "start", "die"), base.get("start->die")),
        ("container die -> destroy", phase(samples, "die", "destroy"), base.get("die->destroy")),
        ("container destroy -> final received", phase(samples, "destroy", "final received"), None),
    ]
    print(f"\nphases, median over all runs (ms) {'worker':>24} {'docker run':>12}")
    for label, worker_value, base_value in rows:
        print(f"  {label:<48} {fmt(worker_value)} {fmt(base_value, 12) if base_value is not None else ''}")
    engine = base.get("create->destroy")
    if engine is not None:
        print(f"  docker run: CLI wall time {statistics.median(docker_ms):.1f}, of which engine create->destroy "
              f"{engine:.1f}; worker engine create->destroy {fmt(phase(samples, 'create', 'destroy'), 0)}")


# -- set-up ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(keep: bool) -> Iterator[Setup]:
    """Prefect server, reference backend and worker process; everything stopped and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="cicd-bench-"))
    worker_id = f"bench-worker-{uuid.uuid4().hex[:8]}"
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "WORKER_PULL_POLICY": "never", "WORKER_ID": worker_id,
           "WORKER_STATE_DIR": str(workdir / "state")}
    with contextlib.ExitStack() as stack:
        stack.callback(_cleanup, workdir, worker_id, keep)
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            env["PREFECT_HOME"] = str(workdir / "prefect-home")
            os.environ.update(PREFECT_HOME=env["PREFECT_HOME"], PREFECT_SERVER_ANALYTICS_ENABLED="false")
            server = LocalPrefectServer(port=free_port(), log_path=workdir / "prefect-server.log")
            stack.callback(server.stop)
            print(f"starting a Prefect server on port {server.port} (PREFECT_HOME {env['PREFECT_HOME']}) ...",
                  flush=True)
            server.start(timeout=240)
            api_url = server.api_url
        else:
            print(f"using the Prefect server at PREFECT_API_URL={api_url}", flush=True)
        env["PREFECT_API_URL"] = api_url
        backend = stack.enter_context(BackendServer(workdir / "backend"))
        env["WORKER_BACKEND_URL"] = backend.api_url
        worker = WorkerProcess(env, workdir / "worker.log")
        stack.callback(worker.stop)
        worker.start(timeout=120)
        backend_http, worker_http, prefect_http = (stack.enter_context(httpx.Client(base_url=url, timeout=30))
                                                   for url in (backend.url, worker.url, api_url))
        yield Setup(backend_http, worker_http, prefect_http, worker_id=worker_id, workdir=workdir)


def _cleanup(workdir: Path, worker_id: str, keep: bool) -> None:
    leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=cicd.worker-id={worker_id}"],
                               capture_output=True, text=True).stdout.split()
    if leftovers:
        print(f"removing {len(leftovers)} containers left behind by the worker", flush=True)
        subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)
    if keep:
        print(f"kept {workdir} (worker.log, prefect-server.log, backend/)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def versions() -> str:
    docker_version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                    capture_output=True, text=True).stdout.strip() or "?"
    return (f"python {platform.python_version()}, prefect {metadata.version('prefect')}, "
            f"docker engine {docker_version}, {os.cpu_count()} CPUs")


# -- main ----------------------------------------------------------------------------------------------------


def measure(setup: Setup, runs: int, poll: float) -> tuple[list[WorkerSample], list[float], float, float]:
    """Warm-ups, then ``runs`` interleaved pairs; returns samples, baseline ms and the time window."""
    for index in range(WARMUP):
        worker_run(setup, -1 - index, poll)
        docker_run()
    print(f"warm-up done ({WARMUP} runs of each); measuring {runs} interleaved pairs ...", flush=True)
    since = time.time() - 1.0
    samples: list[WorkerSample] = []
    docker_ms: list[float] = []
    for index in range(runs):
        if index % 2:
            docker_ms.append(docker_run())
            samples.append(worker_run(setup, index, poll))
        else:
            samples.append(worker_run(setup, index, poll))
            docker_ms.append(docker_run())
    return samples, docker_ms, since, time.time() + 1.0


def report(setup: Setup, samples: list[WorkerSample], docker_ms: list[float], window: tuple[float, float]) -> bool:
    """Print the figures and the breakdown; True when the ratio meets the target."""
    worker_ms = [s.latency_ms for s in samples]
    worker_med, docker_med = statistics.median(worker_ms), statistics.median(docker_ms)
    ratio = worker_med / docker_med
    n = len(samples)
    print(f"\njob latency, script [\"true\"], image {IMAGE}, {n} runs each (ms)"
          f"{'median':>12} {'p90':>9} {'min':>9} {'max':>9}")
    for label, values in (("worker: POST execute -> final status received", worker_ms),
                          ("docker run --rm --network none ... true", docker_ms)):
        print(f"  {label:<62}{statistics.median(values):9.1f} {p90(values):9.1f} "
              f"{min(values):9.1f} {max(values):9.1f}")
    print(f"  {'(worker, final status first seen by polling)':<62}"
          f"{statistics.median([s.seen_ms for s in samples]):9.1f} {p90([s.seen_ms for s in samples]):9.1f}")
    print(f"  {'(worker, POST answered 202)':<62}"
          f"{statistics.median([s.ack_ms for s in samples]):9.1f} {p90([s.ack_ms for s in samples]):9.1f}")
    print(f"  ratio worker/docker: median {ratio:.2f}x, p90 {p90(worker_ms) / p90(docker_ms):.2f}x "
          f"(target median <= {TARGET_RATIO}x)")

    events: dict[str, dict[str, Any]] = {}
    try:
        events = container_events(*window)
    except (subprocess.SubprocessError, ValueError) as exc:
        print(f"(no Docker events: {exc})")
    for sample in samples:
        fill_marks(setup, sample, events)
    chosen = sorted(samples, key=lambda s: s.latency_ms)[(n - 1) // 2]
    print_timeline(samples, chosen)
    print_phases(samples, events, docker_ms)
    ok = ratio <= TARGET_RATIO
    print(f"\nVERDICT: {'PASS' if ok else 'FAIL'}: worker median {worker_med:.1f} ms is {ratio:.2f}x the "
          f"docker run median {docker_med:.1f} ms ({'within' if ok else 'above'} the {TARGET_RATIO}x target)")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each kind (default 20, min 2)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="how often the backend is polled for the end of a run (not part of the figure)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the worker and Prefect logs")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the set-up is torn down
    print(versions(), flush=True)
    with environment(args.keep) as setup:
        samples, docker_ms, since, until = measure(setup, args.runs, args.poll_ms / 1000)
        ok = report(setup, samples, docker_ms, (since, until))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
