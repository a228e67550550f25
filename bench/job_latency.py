"""Latency of one trivial job through a real worker, against plain ``docker run`` measured in the same run.

Run from the repository root: ``.venv/bin/python -m bench.job_latency [--runs N]``. Target: the worker's
median latency is at most 1.2x the median of ``docker run --rm --network none cicd-busybox:latest true``.

Set-up, all torn down at the end (``bench.harness.environment``): a Prefect server on a free port with a
temporary ``PREFECT_HOME`` (or the server at ``PREFECT_API_URL`` when that is set), the reference backend in
this process, a real ``cicd-worker serve`` child process with ``WORKER_PULL_POLICY=never`` and a ``docker
events`` stream.

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
Docker engine (container events, from the ``docker events`` stream), next to the median of each
milestone over all runs; then the phases of both kinds of run side by side (a baseline run's container is
the one unlabelled container of the image created while its CLI ran).

All the figures are wall-clock on a shared machine: the load average is printed at the start and the end,
and the ratio, measured on interleaved runs, is the figure to trust when the machine is busy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import harness
from bench.readings import epoch, fmt, load_average, p90, verdict

DOCKER_RUN = harness.docker_run_command("true")
TARGET_RATIO = 1.2  # issue 11: the container starts at once, Prefect's writes go in the background
WARMUP = 2
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


def ms_after(start: float, moment: float | None) -> float | None:
    return None if moment is None else (moment - start) * 1000.0


# -- one run of each kind ---------------------------------------------------------------------------------


def worker_run(setup: harness.Setup, index: int, poll: float) -> WorkerSample:
    """POST one job to the worker, wait for its final status at the backend and for its flow run's end."""
    job_id, dto = harness.new_job(setup, f"latency-{index}")
    sent, start = time.time(), time.perf_counter()
    answer = setup.worker.post("/api/job/execute", json=dto)
    ack = time.perf_counter()
    if answer.status_code != 202:
        raise RuntimeError(f"worker answered {answer.status_code}: {answer.text}")

    def final() -> dict[str, Any] | None:
        record = setup.backend.job(job_id)
        return record if record["status"] in harness.FINAL else None

    record = harness.wait_for(final, RUN_TIMEOUT_SECONDS, poll, f"the final status of job {job_id}")
    seen = time.perf_counter()
    if record["status"] != "SUCCESS" or record["violations"]:
        raise RuntimeError(f"job {job_id} ended {record['status']}: {json.dumps(record)[:2000]}")
    flow_run_id = answer.json()["flowRunId"]
    harness.wait_for(lambda: harness.flow_run_done(setup, flow_run_id), RUN_TIMEOUT_SECONDS, poll,
                     f"the end of flow run {flow_run_id}")
    view = setup.worker.get(f"/api/job/{job_id}").json()
    received = epoch(record["history"][-1]["receivedAt"])
    assert received is not None
    return WorkerSample(job_id, flow_run_id, sent, (ack - start) * 1000, (seen - start) * 1000,
                        (received - sent) * 1000, record["history"], view)


@dataclass
class DockerSample:
    """One baseline ``docker run``: when it started (epoch) and how long the CLI took."""

    sent: float
    ms: float
    marks: dict[str, float | None] = field(default_factory=dict)  # container event -> ms after ``sent``


def docker_run() -> DockerSample:
    """Wall time of the plain ``docker run`` CLI."""
    sent, wall = harness.timed_run(DOCKER_RUN, 60)
    return DockerSample(sent, wall * 1000)


# -- breakdown ----------------------------------------------------------------------------------------------

CONTAINER_ACTIONS = ("create", "attach", "start", "die", "destroy")


def prefect_times(setup: harness.Setup, flow_run_id: str) -> dict[str, float | None]:
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
OFF_PATH = ("ack", "seen", "flow end")  # printed in the timeline but not part of the chain of steps


def fill_marks(setup: harness.Setup, sample: WorkerSample, containers: list[dict[str, Any]]) -> None:
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
    container = next((c for c in containers if c["attributes"].get(harness.LABEL_JOB) == sample.job_id), {})
    times.update({action: container.get(action) for action in CONTAINER_ACTIONS})
    sample.marks = {key: ms_after(sample.sent, value) for key, value in times.items()}
    sample.marks["ack"], sample.marks["seen"] = sample.ack_ms, sample.seen_ms


def fill_docker_marks(samples: list[DockerSample], containers: list[dict[str, Any]]) -> None:
    """Container events of each baseline run: the one unlabelled container of the image created meanwhile."""
    plain = [c for c in containers if harness.LABEL_WORKER not in c["attributes"]
             and c["attributes"].get("image") == harness.IMAGE and "create" in c]
    for sample in samples:
        end = sample.sent + sample.ms / 1000
        inside = [c for c in plain if sample.sent <= c["create"] <= end]
        if len(inside) == 1:
            sample.marks = {a: ms_after(sample.sent, inside[0].get(a)) for a in CONTAINER_ACTIONS}
        sample.marks["exit"] = sample.ms


def median_of(samples: list[Any], key: str) -> float | None:
    values = [s.marks[key] for s in samples if s.marks.get(key) is not None]
    return statistics.median(values) if values else None


def phase(samples: list[Any], start: str, end: str) -> float | None:
    """Median over runs of ``end - start`` (ms); ``start`` "sent" is the run's own start."""
    values = [s.marks[end] - (0.0 if start == "sent" else s.marks[start]) for s in samples
              if (start == "sent" or s.marks.get(start) is not None) and s.marks.get(end) is not None]
    return statistics.median(values) if values else None


def print_timeline(samples: list[WorkerSample], chosen: WorkerSample) -> None:
    print(f"\nbreakdown of the median worker run (job {chosen.job_id[:8]}, {chosen.latency_ms:.1f} ms), "
          "ms after the POST was sent:")
    print(f"  {'milestone':<46} {'this run':>9} {'step':>9}   {'median of all runs':>18}")
    known = sorted((chosen.marks[key] or 0.0, key, label) for key, label in MILESTONES
                   if chosen.marks.get(key) is not None)
    previous = 0.0
    for at, key, label in known:
        step = f"{'':>9}" if key in OFF_PATH else fmt(at - previous)
        previous = previous if key in OFF_PATH else at
        print(f"  {label:<46} {fmt(at)} {step}   {fmt(median_of(samples, key), 18)}")
    for key, label in MILESTONES:
        if chosen.marks.get(key) is None:
            print(f"  {label:<46} {fmt(None)}")


def print_phases(samples: list[WorkerSample], baseline: list[DockerSample]) -> None:
    """Worker and baseline side by side, from the same kind of record (container events)."""
    rows = [
        ("start -> container create", "sent", "create"),
        ("container create -> start", "create", "start"),
        ("container start -> die (the script)", "start", "die"),
        ("container die -> destroy", "die", "destroy"),
    ]
    print(f"\nphases, median over all runs (ms) {'worker':>27} {'docker run':>11}")
    print(f"  {'POST -> RUNNING received by the backend':<50} {fmt(median_of(samples, 'running received'))}")
    print(f"  {'RUNNING received -> final received':<50} "
          f"{fmt(phase(samples, 'running received', 'final received'))}")
    for label, start, end in rows:
        print(f"  {label:<50} {fmt(phase(samples, start, end))} {fmt(phase(baseline, start, end), 11)}")
    print(f"  {'container destroy -> final received / CLI exit':<50} "
          f"{fmt(phase(samples, 'destroy', 'final received'))} {fmt(phase(baseline, 'destroy', 'exit'), 11)}")
    print(f"  {'engine total, container create -> destroy':<50} {fmt(phase(samples, 'create', 'destroy'))} "
          f"{fmt(phase(baseline, 'create', 'destroy'), 11)}")


# -- main ----------------------------------------------------------------------------------------------------


def measure(setup: harness.Setup, runs: int, poll: float) -> tuple[list[WorkerSample], list[DockerSample]]:
    """Warm-ups, then ``runs`` interleaved pairs (alternating which goes first)."""
    for index in range(WARMUP):
        worker_run(setup, -1 - index, poll)
        docker_run()
    print(f"warm-up done ({WARMUP} runs of each); measuring {runs} interleaved pairs ...", flush=True)
    samples: list[WorkerSample] = []
    baseline: list[DockerSample] = []
    for index in range(runs):
        if index % 2:
            baseline.append(docker_run())
            samples.append(worker_run(setup, index, poll))
        else:
            samples.append(worker_run(setup, index, poll))
            baseline.append(docker_run())
    return samples, baseline


def print_figures(samples: list[WorkerSample], baseline: list[DockerSample]) -> float:
    """Medians, p90s and the ratio; returns the ratio of the medians."""
    worker_ms, docker_ms = [s.latency_ms for s in samples], [b.ms for b in baseline]
    ratio = statistics.median(worker_ms) / statistics.median(docker_ms)
    print(f"\njob latency, script [\"true\"], image {harness.IMAGE}, {len(samples)} runs each (ms)"
          f"{'median':>11} {'p90':>9} {'min':>9} {'max':>9}")
    rows = [("worker: POST execute -> final status received", worker_ms),
            ("docker run --rm --network none ... true", docker_ms),
            ("(worker: final status first seen by polling)", [s.seen_ms for s in samples]),
            ("(worker: POST answered 202)", [s.ack_ms for s in samples])]
    for label, values in rows:
        print(f"  {label:<61}{statistics.median(values):9.1f} {fmt(p90(values))} "
              f"{min(values):9.1f} {max(values):9.1f}")
    print(f"  ratio worker/docker: median {ratio:.2f}x, p90 {(p90(worker_ms) or 0.0) / (p90(docker_ms) or 1.0):.2f}x "
          f"(target: median ratio <= {TARGET_RATIO}x)")
    return ratio


def report(setup: harness.Setup, samples: list[WorkerSample], baseline: list[DockerSample],
           containers: list[dict[str, Any]]) -> bool:
    """Print the figures and the breakdown and the verdict; True when the ratio meets the target."""
    ratio = print_figures(samples, baseline)
    for sample in samples:
        fill_marks(setup, sample, containers)
    fill_docker_marks(baseline, containers)
    chosen = sorted(samples, key=lambda s: s.latency_ms)[(len(samples) - 1) // 2]
    print_timeline(samples, chosen)
    print_phases(samples, baseline)
    worker_med, docker_med = statistics.median(s.latency_ms for s in samples), statistics.median(b.ms for b in baseline)
    ok = ratio <= TARGET_RATIO
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"\nnote: load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: other work shares this "
              "machine; absolute figures are inflated, the ratio of interleaved runs less so")
    print(f"\nworker median {worker_med:.1f} ms, docker run median {docker_med:.1f} ms, load average {load_average()}")
    verdict("one job, POST -> final status, vs docker run", ratio, TARGET_RATIO, "x")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each kind (default 20, min 2)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="how often the backend is polled for the end of a run (not part of the figure)")
    harness.common_options(parser)
    args = harness.parse(parser, argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    with harness.environment("latency", keep=args.keep, backend_in_process=True) as setup:
        samples, baseline = measure(setup, args.runs, args.poll_ms / 1000)
        ok = report(setup, samples, baseline, setup.events.containers())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
