"""Wall time of whole pipelines through a real worker, against a plain scheduler measured in the same run.

Run from the repository root: ``.venv/bin/python -m bench.pipeline [--repeat N] [--concurrency C]
[--workloads fanout50,dag20,chain10]``. Targets (median worker wall / median baseline wall):
at most 1.1 on ``dag20``, 1.3 on ``chain10``, 2.0 on ``fanout50``. The end prints, per workload, the ratio against
its target with PASS or MISS (``bench.readings.verdict``) and the load average.

Workloads (image ``cicd-busybox:latest``):

- ``fanout50``: 50 independent jobs running ``true``;
- ``dag20``: 4 layers of 5 jobs running ``sleep 1``; job ``i`` of a layer after the first needs jobs ``i``
  and ``i+1 (mod 5)`` of the layer before;
- ``chain10``: 10 jobs in a chain, each ``sleep 0.5``.

Set-up, all torn down at the end (``bench.harness.environment``): a Prefect server on a free port with a
temporary ``PREFECT_HOME`` (or the server at ``PREFECT_API_URL`` when that is set), the reference backend in
this process, a real ``cicd-worker serve`` child process (``WORKER_PULL_POLICY=never``,
``WORKER_MAX_CONCURRENT_JOBS=C``) and a ``docker events`` stream read for the whole session (the engine keeps
only the last 256 events, fewer than one fanout run produces).

Worker run: create the pipeline run in the backend, POST ``/api/pipeline/execute`` and poll the backend's
admin API every ``--poll-ms`` (one job execution per request, the first one not yet seen final) until every
job is final. The wall time is the latest ``receivedAt`` of a final status minus the wall-clock time at
which the POST was sent (``receivedAt`` is taken by the backend, in this process, on the same clock), so the
polling period is not part of the figure. Before the next run the bench waits for the flow run to end in
Prefect. Every job must end ``SUCCESS`` with the history ``RUNNING, SUCCESS``.

Baseline run: a plain scheduler in this process that starts
``docker run --rm --network none cicd-busybox:latest sh -c '<script>'`` (one subprocess per job) as soon as
all the job's dependencies have exited, at most C at once. The command also carries
``--label cicd.bench-baseline=<session>``, only so that this bench's containers can be told apart from
those of anyone else using the same engine (other benches run unlabelled ``docker run`` too). One waiter
thread per subprocess puts its exit into a queue that the loop blocks on, so the loop reacts at once. Wall
time: first start to last exit.

Runs alternate worker/baseline (alternating which goes first); one small warm-up of each is not counted.
A run during which the Docker engine went away (the ``docker events`` stream ended: on a shared host,
resilience tests stop ``dockerd``) is discarded and redone once the engine is back, and the discarded runs are listed.

Breakdown, per workload: (1) the critical path of the median run of each side, walked back from the last
job to end through the dependency that ended last, with its time split into phases recorded on this host's
clock by the backend (``receivedAt``), the worker (``startTime`` of ``RUNNING`` = when its hook ran,
``completionTime`` of the final status = when the final hook built it), the Prefect server (each task run's
Pending, Running and Completed times, as the worker's task engine set them), the Docker engine (container
create/start/die/destroy events) and the baseline loop (start/exit of each ``docker run``); the phases add
up to the wall time. (2) Over all runs, the hand-off gap: a job's dependency ended (worker: final status
received; baseline: ``docker run`` exited) → the job started (worker: ``RUNNING`` received, and its
container created; baseline: ``docker run`` started, and its container created). (3) Slot turnover: a
container destroyed → the next container created, while jobs were waiting for a slot.
"""

from __future__ import annotations

import argparse
import functools
import json
import queue
import statistics
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import harness
from bench.readings import LIFECYCLE, EngineEvents, engine_up, epoch, load_average, verdict

RUN_TIMEOUT_SECONDS = 300.0
SETTLE_SECONDS = 0.5
ENGINE_WAIT_SECONDS = 180.0
ENGINE_LOSSES_ALLOWED = 3  # runs redone because the Docker engine went away during them

Job = dict[str, Any]  # {"name", "script": [...], "needs": [...]}


# -- workloads ------------------------------------------------------------------------------------------------


def fanout(count: int = 50) -> list[Job]:
    return [{"name": f"f{i:02d}", "script": ["true"], "needs": []} for i in range(count)]


def dag(layers: int = 4, width: int = 5) -> list[Job]:
    jobs = []
    for layer in range(layers):
        for i in range(width):
            needs = [] if layer == 0 else [f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 1) % width}"]
            jobs.append({"name": f"L{layer}-{i}", "script": ["sleep 1"], "needs": needs})
    return jobs


def chain(length: int = 10) -> list[Job]:
    return [{"name": f"c{i}", "script": ["sleep 0.5"], "needs": [f"c{i - 1}"] if i else []} for i in range(length)]


WORKLOADS: dict[str, Callable[[], list[Job]]] = {"fanout50": fanout, "dag20": dag, "chain10": chain}
TARGETS = {"fanout50": 2.0, "dag20": 1.1, "chain10": 1.3}


# -- samples ------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One run of one side: per job, the named moments (epoch seconds) of its life."""

    side: str  # "worker" or "baseline"
    workload: str
    t0: float  # POST sent / first docker run started
    wall: float  # seconds
    needs: dict[str, list[str]]
    marks: dict[str, dict[str, float]] = field(default_factory=dict)  # job name -> moment -> epoch
    containers: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def end(self, name: str) -> float:
        return self.marks[name]["end"]


def ready_time(sample: Sample, name: str) -> float:
    """When the job could start: its last dependency's end (the run's start for a root)."""
    deps = sample.needs[name]
    return max(sample.end(dep) for dep in deps) if deps else sample.t0


# -- worker side --------------------------------------------------------------------------------------------


def worker_run(setup: harness.Setup, workload: str, jobs: list[Job], index: int, poll: float) -> Sample:
    run = setup.backend.create_run([{key: j[key] for key in ("name", "script", "needs")} for j in jobs],
                                   name=f"{workload}-{index}")
    ids: dict[str, str] = run["jobs"]
    sent, start = time.time(), time.perf_counter()
    answer = setup.worker.post("/api/pipeline/execute", json={"pipelineExecutionId": run["pipelineExecutionId"]})
    ack = time.perf_counter() - start
    if answer.status_code != 202:
        raise RuntimeError(f"worker answered {answer.status_code}: {answer.text}")
    pending = deque(ids.values())

    def all_final() -> bool:
        while pending:
            record = setup.backend.job(pending[0])
            if record["status"] not in harness.FINAL:
                return False
            pending.popleft()
        return True

    harness.wait_for(all_final, RUN_TIMEOUT_SECONDS, poll, f"the end of pipeline run {run['pipelineExecutionId']}")
    seen = time.perf_counter() - start
    flow_run_id = answer.json()["flowRunId"]
    harness.wait_for(lambda: harness.flow_run_done(setup, flow_run_id), RUN_TIMEOUT_SECONDS, 0.05,
                     f"the end of flow run {flow_run_id}")
    records = {name: setup.backend.job(job_id) for name, job_id in ids.items()}
    sample = worker_sample(workload, jobs, sent, records)
    sample.extra.update(ack=ack, seen=seen)
    flow_start = epoch(setup.prefect.get(f"/flow_runs/{flow_run_id}").json().get("start_time"))
    if flow_start is not None:
        sample.extra["flow running"] = flow_start - sent
    for name, moments in prefect_task_times(setup, flow_run_id, len(ids)).items():
        if name in sample.marks:
            sample.marks[name].update(moments)
    by_job = {c["attributes"].get(harness.LABEL_JOB): c for c in setup.events.containers(sent - 1, time.time())
              if c["attributes"].get(harness.LABEL_WORKER) == setup.worker_id}
    sample.containers = [by_job[job_id] for job_id in ids.values() if job_id in by_job]
    for name, job_id in ids.items():
        container = by_job.get(job_id, {})
        sample.marks[name].update({action: container[action] for action in LIFECYCLE if action in container})
    return sample


def prefect_task_times(setup: harness.Setup, flow_run_id: str, count: int) -> dict[str, dict[str, float]]:
    """Per task run (named after its job): Pending, Running and final state times, as the worker set them.

    The worker's task engine creates task runs locally and reports their states as events, which the
    server records a moment later: wait (a little) until every task run has its end time.
    """
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}

    def complete() -> list[dict[str, Any]] | None:
        runs = setup.prefect.post("/task_runs/filter", json=body).json()
        return runs if len(runs) >= count and all(r.get("end_time") for r in runs) else None

    try:
        runs = harness.wait_for(complete, 10.0, 0.1, "Prefect task runs")
    except AssertionError:
        runs = setup.prefect.post("/task_runs/filter", json=body).json()
    times: dict[str, dict[str, float]] = {}
    for run in runs:
        moments = {"pending": epoch(run.get("expected_start_time")), "task running": epoch(run.get("start_time")),
                   "task done": epoch(run.get("end_time"))}
        times[run["name"]] = {key: value for key, value in moments.items() if value is not None}
    return times


def worker_sample(workload: str, jobs: list[Job], sent: float, records: dict[str, dict[str, Any]]) -> Sample:
    needs = {j["name"]: list(j["needs"]) for j in jobs}
    marks: dict[str, dict[str, float]] = {}
    for name, record in records.items():
        history = record["history"]
        seen = [h["status"] for i, h in enumerate(history) if i == 0 or history[i - 1]["status"] != h["status"]]
        if seen != ["RUNNING", "SUCCESS"] or record["violations"]:  # (a repeated update is allowed: at least once)
            raise RuntimeError(f"job {name} of {workload} did not run cleanly: {json.dumps(record)[:2000]}")
        running = next(h for h in history if h["status"] == "RUNNING")
        final = next(h for h in history if h["status"] == "SUCCESS")
        moments = {"hook": epoch(running.get("startTime")), "running": epoch(running["receivedAt"]),
                   "built": epoch(final.get("completionTime")), "end": epoch(final["receivedAt"])}
        marks[name] = {key: value for key, value in moments.items() if value is not None}
    wall = max(m["end"] for m in marks.values()) - sent
    return Sample("worker", workload, sent, wall, needs, marks)


# -- baseline side ------------------------------------------------------------------------------------------


BASELINE_LABEL = "cicd.bench-baseline"
BASELINE_SESSION = uuid.uuid4().hex[:12]


def baseline_command(script: list[str]) -> list[str]:
    # The label only tells this bench's containers apart from others on a shared engine (it costs nothing).
    return harness.docker_run_command("sh", "-c", "\n".join(script), labels={BASELINE_LABEL: BASELINE_SESSION})


def baseline_run(events: EngineEvents, workload: str, jobs: list[Job], concurrency: int) -> Sample:
    """Start each job's ``docker run`` once all its dependencies exited, at most ``concurrency`` at once."""
    needs = {j["name"]: list(j["needs"]) for j in jobs}
    scripts = {j["name"]: j["script"] for j in jobs}
    dependents: dict[str, list[str]] = {name: [] for name in needs}
    for name, deps in needs.items():
        for dep in deps:
            dependents[dep].append(name)
    waiting = {name: set(deps) for name, deps in needs.items()}
    ready = deque(name for name in needs if not waiting[name])
    exits: queue.SimpleQueue[tuple[str, int, float, str]] = queue.SimpleQueue()
    marks: dict[str, dict[str, float]] = {name: {} for name in needs}
    running = ended = 0
    t0 = time.time()
    while ended < len(needs):
        while ready and running < concurrency:
            name = ready.popleft()
            marks[name]["popen"] = time.time()
            process = subprocess.Popen(baseline_command(scripts[name]), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
            threading.Thread(target=_reap, args=(name, process, exits), daemon=True).start()
            running += 1
        name, code, at, err = exits.get(timeout=RUN_TIMEOUT_SECONDS)
        if code != 0:
            raise RuntimeError(f"baseline job {name} of {workload} exited {code}: {err}")
        marks[name]["end"] = at
        running, ended = running - 1, ended + 1
        for dependent in dependents[name]:
            waiting[dependent].discard(name)
            if not waiting[dependent]:
                ready.append(dependent)
    wall = max(m["end"] for m in marks.values()) - t0
    sample = Sample("baseline", workload, t0, wall, needs, marks)
    attach_baseline_containers(sample, events.containers(t0 - 0.1, time.time()))
    return sample


def _reap(name: str, process: subprocess.Popen[str], exits: queue.SimpleQueue[tuple[str, int, float, str]]) -> None:
    _, err = process.communicate()
    exits.put((name, process.returncode, time.time(), err))


def attach_baseline_containers(sample: Sample, containers: list[dict[str, Any]]) -> None:
    """Pair the run's containers (this session's baseline label) with its jobs.

    ``docker run --rm`` exits a few ms after its container is destroyed, so jobs are taken in the order they
    exited, and each gets the container destroyed last before its exit among those created after it
    started; jobs that ran the same script at the same time may swap containers, which changes no figure
    much.
    """
    mine = [c for c in containers if c["attributes"].get(BASELINE_LABEL) == BASELINE_SESSION]
    sample.containers = mine
    free = [c for c in mine if "destroy" in c]
    for name in sorted(sample.marks, key=sample.end):
        marks = sample.marks[name]
        fits = [c for c in free if c["create"] >= marks["popen"] and c["destroy"] <= marks["end"]]
        if fits:
            chosen = max(fits, key=lambda c: c["destroy"])
            free.remove(chosen)
            marks.update({a: chosen[a] for a in LIFECYCLE if a in chosen})


# -- analysis -----------------------------------------------------------------------------------------------

# Moments of one job, in the order they happen; a phase is the step from one present moment to the next.
SEQUENCE = {
    "worker": [("ready", "ready"), ("pending", "prefect: task run created (Pending)"),
               ("task running", "prefect: task run Running"), ("hook", "RUNNING hook ran (worker startTime)"),
               ("running", "RUNNING received by the backend"), ("create", "container create"),
               ("start", "container start"), ("die", "container die"), ("destroy", "container destroy"),
               ("task done", "prefect: task run Completed"), ("built", "final status built (worker completionTime)"),
               ("end", "final status received")],
    "baseline": [("ready", "ready"), ("popen", "docker run started"), ("create", "container create"),
                 ("start", "container start"), ("die", "container die"), ("destroy", "container destroy"),
                 ("end", "docker run exited")],
}


def critical_path(sample: Sample) -> list[str]:
    """From the job that ended last back to a root, always through the dependency that ended last."""
    name = max(sample.marks, key=sample.end)
    path = [name]
    while sample.needs[name]:
        name = max(sample.needs[name], key=sample.end)
        path.append(name)
    return path[::-1]


def phases(sample: Sample, name: str) -> list[tuple[str, float]]:
    """(label "a -> b", seconds) for each step between the present moments of one job."""
    moments = {**sample.marks[name], "ready": ready_time(sample, name)}
    present = [(key, label) for key, label in SEQUENCE[sample.side] if key in moments]
    return [(f"{a_label} -> {b_label}", moments[b] - moments[a])
            for (a, a_label), (b, b_label) in zip(present, present[1:], strict=False)]


def path_breakdown(sample: Sample) -> tuple[list[str], dict[str, float]]:
    totals: dict[str, float] = {}
    path = critical_path(sample)
    for name in path:
        for label, seconds in phases(sample, name):
            totals[label] = totals.get(label, 0.0) + seconds
    return path, totals


def handoffs(samples: list[Sample], moment: str, source: str = "end") -> list[float]:
    """Over all jobs with dependencies: the last dependency's ``source`` -> ``moment`` of the job (seconds)."""
    gaps = []
    for s in samples:
        for name, marks in s.marks.items():
            deps = [s.marks[dep].get(source) for dep in s.needs[name]]
            if deps and moment in marks and None not in deps:
                gaps.append(marks[moment] - max(d for d in deps if d is not None))
    return gaps


def turnovers(sample: Sample, concurrency: int) -> list[float]:
    """Container destroyed -> next container created, for creates made while every slot had been busy."""
    containers = [c for c in sample.containers if "create" in c and "destroy" in c]
    creates = sorted(c["create"] for c in containers)
    destroys = sorted(c["destroy"] for c in containers)
    gaps = []
    for created in creates[concurrency:]:
        before = [d for d in destroys if d <= created]
        if before:
            gaps.append(created - before[-1])
    return gaps


def lifetimes(samples: list[Sample], a: str, b: str) -> list[float]:
    return [m[b] - m[a] for s in samples for m in s.marks.values() if a in m and b in m]


def peak_containers(sample: Sample) -> int:
    """Most containers in existence at once (create -> destroy, which is what holds a slot)."""
    whole = [c for c in sample.containers if "create" in c and "destroy" in c]
    changes = sorted([(c["destroy"], -1) for c in whole] + [(c["create"], 1) for c in whole])
    peak = now = 0
    for _, step in changes:
        now += step
        peak = max(peak, now)
    return peak


# -- report -------------------------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    worker: list[Sample]
    baseline: list[Sample]

    @property
    def ratio(self) -> float:
        return statistics.median(s.wall for s in self.worker) / statistics.median(s.wall for s in self.baseline)

    @property
    def ok(self) -> bool:
        return self.ratio <= TARGETS[self.workload]


def median_sample(samples: list[Sample]) -> Sample:
    return sorted(samples, key=lambda s: s.wall)[(len(samples) - 1) // 2]


def print_summary(results: list[Result], concurrency: int, repeat: int) -> None:
    print(f"\npipeline wall time, C={concurrency}, {repeat} runs each (s): POST execute -> last final status "
          "received (worker); first docker run started -> last exited (baseline)")
    print(f"  {'workload':<10} {'worker med':>10} {'baseline med':>12} {'ratio':>7} {'target':>7}   "
          f"{'worker runs':<24} {'baseline runs':<24}")
    for r in results:
        runs_w = " ".join(f"{s.wall:.2f}" for s in r.worker)
        runs_b = " ".join(f"{s.wall:.2f}" for s in r.baseline)
        print(f"  {r.workload:<10} {statistics.median(s.wall for s in r.worker):10.2f} "
              f"{statistics.median(s.wall for s in r.baseline):12.2f} {r.ratio:7.2f} "
              f"{'<= ' + format(TARGETS[r.workload], '.1f'):>7} {'ok' if r.ok else 'MISS':>4}   "
              f"{runs_w:<24} {runs_b:<24}")


def print_path(sample: Sample) -> None:
    path, totals = path_breakdown(sample)
    shown = " > ".join(path) if len(path) <= 10 else f"{' > '.join(path[:3])} > ... > {path[-1]}"
    print(f"  {sample.side} median run ({sample.wall:.2f} s), critical path of {len(path)} jobs: {shown}")
    print(f"    {'phase (summed over the path)':<74} {'ms':>9} {'ms/job':>8}")
    for label, seconds in totals.items():
        print(f"    {label:<74} {seconds * 1000:9.1f} {seconds * 1000 / len(path):8.1f}")
    print(f"    {'total (= wall time)':<74} {sum(totals.values()) * 1000:9.1f}")


def print_stats(label: str, values: list[float]) -> None:
    if not values:
        print(f"    {label:<70} {'n/a':>8}")
        return
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    print(f"    {label:<70} {statistics.median(ms):8.1f} {p90:8.1f} {ms[0]:8.1f} {ms[-1]:8.1f} {len(ms):5d}")


def print_workload(result: Result, concurrency: int) -> None:
    print(f"\n== {result.workload}: worker {statistics.median(s.wall for s in result.worker):.2f} s, baseline "
          f"{statistics.median(s.wall for s in result.baseline):.2f} s, ratio {result.ratio:.2f} "
          f"(target <= {TARGETS[result.workload]})")
    print_path(median_sample(result.worker))
    print_path(median_sample(result.baseline))
    w, b = result.worker, result.baseline
    print(f"  over all runs (ms) {'':<51} {'median':>8} {'p90':>8} {'min':>8} {'max':>8} {'n':>5}")
    print_stats("worker: POST -> answered 202", [s.extra["ack"] for s in w])
    print_stats("worker: POST -> pipeline flow run Running (prefect)",
                [s.extra["flow running"] for s in w if "flow running" in s.extra])
    print_stats("worker: POST -> first task run Pending (prefect)",
                [min(m["pending"] for m in s.marks.values() if "pending" in m) - s.t0 for s in w
                 if any("pending" in m for m in s.marks.values())])
    print_stats("worker: POST -> first RUNNING received", [min(m["running"] for m in s.marks.values()) - s.t0
                                                            for s in w])
    print_stats("worker: POST -> first container create", [min(m["create"] for m in s.marks.values()
                                                                if "create" in m) - s.t0 for s in w])
    print_stats("baseline: first docker run started -> first container create",
                [min(m["create"] for m in s.marks.values() if "create" in m) - s.t0 for s in b])
    print_stats("worker hand-off: dependency's task run Completed -> task run Pending",
                handoffs(w, "pending", "task done"))
    print_stats("worker hand-off: dependency's task run Completed -> task run Running",
                handoffs(w, "task running", "task done"))
    print_stats("worker hand-off: dependency's final received -> task run Pending", handoffs(w, "pending"))
    print_stats("worker hand-off: dependency's final received -> task run Running", handoffs(w, "task running"))
    print_stats("worker hand-off: dependency's final received -> RUNNING hook", handoffs(w, "hook"))
    print_stats("worker hand-off: dependency's final received -> RUNNING received", handoffs(w, "running"))
    print_stats("worker hand-off: dependency's final received -> container create", handoffs(w, "create"))
    print_stats("baseline hand-off: dependency's docker run exited -> docker run started", handoffs(b, "popen"))
    print_stats("baseline hand-off: dependency's docker run exited -> container create", handoffs(b, "create"))
    print_stats("worker: container destroy -> final status received", lifetimes(w, "destroy", "end"))
    print_stats("baseline: container destroy -> docker run exited", lifetimes(b, "destroy", "end"))
    print_stats("worker: container create -> destroy", lifetimes(w, "create", "destroy"))
    print_stats("baseline: container create -> destroy", lifetimes(b, "create", "destroy"))
    print_stats("worker slot turnover: container destroy -> next create (slots full)",
                [g for s in w for g in turnovers(s, concurrency)])
    print_stats("baseline slot turnover: container destroy -> next create (slots full)",
                [g for s in b for g in turnovers(s, concurrency)])
    peaks_w, peaks_b = [peak_containers(s) for s in w], [peak_containers(s) for s in b]
    print(f"    peak containers at once (create -> destroy) per run: worker {peaks_w}, baseline {peaks_b} "
          f"(limit {concurrency})")


def print_verdict(results: list[Result]) -> bool:
    print(f"\nload average {load_average()}")
    for r in results:
        verdict(f"{r.workload}: worker/baseline median wall ratio ({len(r.worker)} runs each)", r.ratio,
                TARGETS[r.workload], "x")
    return all(r.ok for r in results)


# -- main ----------------------------------------------------------------------------------------------------


def run_once(setup: harness.Setup, what: str, action: Callable[[], Sample], discarded: list[str]) -> Sample:
    """One run; redone when the Docker engine went away during it (this host is shared: tests stop it).

    Such a run cannot be measured (its containers were killed, jobs retried, events lost); it is counted
    in ``discarded`` and reported, never kept.
    """
    for _ in range(ENGINE_LOSSES_ALLOWED + 1):
        breaks = setup.events.breaks
        try:
            sample = action()
        except (RuntimeError, AssertionError, subprocess.SubprocessError) as exc:
            if setup.events.breaks == breaks:
                raise
            problem = str(exc).splitlines()[0][:120]
        else:
            if setup.events.breaks == breaks:
                return sample
            problem = "it ended, but its engine events are incomplete"
        discarded.append(what)
        print(f"  {what} discarded, the Docker engine went away during it: {problem}; waiting for it to come "
              "back ...", flush=True)
        harness.wait_for(engine_up, ENGINE_WAIT_SECONDS, 1.0, "the Docker engine to come back")
        time.sleep(3.0)  # for the events stream to resume
    raise RuntimeError(f"the Docker engine went away more than {ENGINE_LOSSES_ALLOWED} times")


def measure(setup: harness.Setup, names: list[str], concurrency: int, repeat: int, poll: float, discarded: list[str]
            ) -> list[Result]:
    warm = chain(2)
    run_once(setup, "worker warm-up", lambda: worker_run(setup, "warm-up", warm, 0, poll), discarded)
    run_once(setup, "baseline warm-up", lambda: baseline_run(setup.events, "warm-up", warm, concurrency), discarded)
    print("warm-up done (a 2-job chain on each side)", flush=True)
    results = []
    for workload in names:
        jobs = WORKLOADS[workload]()
        result = Result(workload, [], [])
        for index in range(repeat):
            order = ("worker", "baseline") if index % 2 == 0 else ("baseline", "worker")
            for side in order:
                time.sleep(SETTLE_SECONDS)
                what = f"{workload} {side} run {index + 1}"
                action = (functools.partial(worker_run, setup, workload, jobs, index, poll) if side == "worker"
                          else functools.partial(baseline_run, setup.events, workload, jobs, concurrency))
                samples = result.worker if side == "worker" else result.baseline
                samples.append(run_once(setup, what, action, discarded))
            print(f"  {workload} run {index + 1}/{repeat}: worker {result.worker[-1].wall:.2f} s, "
                  f"baseline {result.baseline[-1].wall:.2f} s", flush=True)
        results.append(result)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="WORKER_MAX_CONCURRENT_JOBS, and the baseline's limit (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each workload on each side (default 3)")
    parser.add_argument("--poll-ms", type=float, default=20.0,
                        help="how often the backend is polled for the end of a run (not part of the figure)")
    harness.common_options(parser)
    args = harness.parse(parser, argv)
    args.names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in args.names if name not in WORKLOADS]
    if unknown or not args.names:
        parser.error(f"unknown workloads {unknown}; choose among {', '.join(WORKLOADS)}")
    if args.concurrency < 1 or args.repeat < 1:
        parser.error("--concurrency and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"workloads {', '.join(args.names)}; concurrency {args.concurrency}; {args.repeat} runs each", flush=True)
    discarded: list[str] = []
    with harness.environment("pipeline", keep=args.keep, backend_in_process=True,
                             worker_env={"WORKER_MAX_CONCURRENT_JOBS": str(args.concurrency)}) as setup:
        results = measure(setup, args.names, args.concurrency, args.repeat, args.poll_ms / 1000, discarded)
    if discarded:
        print(f"\nnote: {len(discarded)} runs redone because the Docker engine went away during them: "
              f"{', '.join(discarded)}")
    print_summary(results, args.concurrency, args.repeat)
    for result in results:
        print_workload(result, args.concurrency)
    return 0 if print_verdict(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
