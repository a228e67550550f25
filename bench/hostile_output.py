"""Hostile job output through a real worker, against plain ``docker run`` of the same job in the same run.

Run from the repository root: ``.venv/bin/python -m bench.hostile_output [--runs N] [--only NAME]``.

Jobs (image ``cicd-busybox:latest``):

- ``line64``: 64 MiB printed without a newline (``head -c 67108864 /dev/zero | tr '\\0' a``).
- ``files300k``: 300,000 empty files left in ``junk/`` and one artifact, ``dist/app.bin`` (100 kB), with
  the pattern ``dist/*.bin``: only ``dist`` is read from the container.
- ``files300k-scan``: the same job with the pattern ``**/app.bin``: the whole working directory is read
  (300,000 tar entries streamed through the worker).
- ``glob``: a 30-level directory tree with a file at every level and the pattern ``**/`` x 12 + ``x`` (172 s
  with the old regex matcher on one path).

For each, one worker run (POST of the job execution to ``/api/job/execute``, until its final status is at
the backend and its Prefect flow run has ended) and one ``docker run --rm --network none IMAGE sh -c
'<the job's lines>' > /dev/null``, alternating which goes first. Printed: wall times and their ratio,
the worker process's CPU seconds (user + system from ``/proc/PID/stat``) over the run, its peak memory
growth (``VmHWM`` of ``/proc/PID/status``, reset before each run by writing 5 to ``/proc/PID/clear_refs``)
and the load average. Targets: worker wall time at most 1.3x the baseline's, memory growth at most
50 MiB; each line says PASS or MISS. The set-up (Prefect server, reference backend as a child process,
``cicd-worker serve`` child process, clean-up by label) is ``bench.harness.environment``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from bench.readings import cpu_seconds, proc_status

MAX_RATIO, MAX_GROWTH_MIB = 1.3, 50.0
_FILL = ("(mkdir junk && cd junk && for d in 0 1 2 3 4 5; do mkdir $d; (cd $d && seq 50000 | xargs touch) & done;"
         " wait)")
_DEEP = "/".join(["d"] * 30)


@dataclass(frozen=True)
class Scenario:
    name: str
    script: tuple[str, ...]
    artifacts: tuple[str, ...] = ()
    expect_artifacts: tuple[str, ...] = ()


SCENARIOS = (
    Scenario("line64", ("head -c 67108864 /dev/zero | tr '\\0' a",)),
    Scenario("files300k", (_FILL, "mkdir -p dist && head -c 100000 /dev/urandom > dist/app.bin"),
             ("dist/*.bin",), ("dist/app.bin",)),
    Scenario("files300k-scan", (_FILL, "mkdir -p dist && head -c 100000 /dev/urandom > dist/app.bin"),
             ("**/app.bin",), ("dist/app.bin",)),
    Scenario("glob", (f"mkdir -p {_DEEP} && (cd {_DEEP} && for i in $(seq 30); do touch y$i; cd ..; done)",
                      "echo found > x"), ("**/" * 12 + "x",), ("x",)),
)


@dataclass
class Sample:
    wall_s: float
    cpu_s: float = 0.0
    growth_mib: float = 0.0


def worker_run(setup: harness.Setup, db: harness.BackendDB, scenario: Scenario, timeout: float) -> Sample:
    """POST the job to the worker; wait for its final status and its flow run's end."""
    job_id, dto = harness.new_job(setup, f"hostile-{scenario.name}", "job", scenario.script,
                                  artifacts=list(scenario.artifacts))
    pid = setup.worker_pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak is this run's
    hwm_before, cpu_before = proc_status(pid, "VmHWM"), cpu_seconds(pid)
    start = time.perf_counter()
    answer = setup.worker.post("/api/job/execute", json=dto)
    if answer.status_code != 202:
        raise RuntimeError(f"worker answered {answer.status_code}: {answer.text}")
    harness.wait_for(lambda: db.status(job_id) in harness.FINAL, timeout, 0.1, f"the final status of job {job_id}")
    wall = time.perf_counter() - start
    flow_run_id = answer.json()["flowRunId"]
    harness.wait_for(lambda: harness.flow_run_done(setup, flow_run_id), 120, 0.1, f"the end of flow run {flow_run_id}")
    sample = Sample(wall, cpu_seconds(pid) - cpu_before, (proc_status(pid, "VmHWM") - hwm_before) / 1024)
    _check(setup, db, job_id, scenario)
    return sample


def _check(setup: harness.Setup, db: harness.BackendDB, job_id: str, scenario: Scenario) -> None:
    history = [h["status"] for h in db.history(job_id)]
    if history != ["RUNNING", "SUCCESS"]:
        raise RuntimeError(f"job {job_id} history {history}; see {setup.workdir / 'worker.log'}")
    report = setup.backend.http.get(f"/admin/job-executions/{job_id}", timeout=120).json()
    names = tuple(a["name"] for a in report["artifacts"])
    if names != scenario.expect_artifacts:
        raise RuntimeError(f"job {job_id} artifacts {names}, expected {scenario.expect_artifacts}")


def docker_run(setup: harness.Setup, scenario: Scenario, timeout: float) -> Sample:
    """Wall time of the plain ``docker run`` CLI, its output thrown away."""
    command = harness.docker_run_command("sh", "-ec", "\n".join(scenario.script),
                                         labels={harness.LABEL_BENCH: setup.worker_id},
                                         options=("--workdir", "/workspace"))
    return Sample(harness.timed_run(command, timeout)[1])


def report(name: str, worker: list[Sample], docker: list[Sample]) -> bool:
    """One line per scenario (the worst worker run against the mean baseline); True when both targets hold."""
    base = sum(s.wall_s for s in docker) / len(docker)
    wall = max(s.wall_s for s in worker)
    cpu = max(s.cpu_s for s in worker)
    growth = max(s.growth_mib for s in worker)
    ratio = wall / base
    ok = ratio <= MAX_RATIO and growth <= MAX_GROWTH_MIB
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{name:<15} worker {wall:7.2f} s  docker run {base:7.2f} s  ratio {ratio:5.2f} (<= {MAX_RATIO})  "
          f"worker CPU {cpu:6.2f} s  memory growth {growth:6.1f} MiB (<= {MAX_GROWTH_MIB:g})  load {load}  "
          f"{'PASS' if ok else 'MISS'}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="measured pairs of each scenario (default 1)")
    parser.add_argument("--only", action="append", choices=[s.name for s in SCENARIOS], help="run only these")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    harness.common_options(parser, worker_env=True)
    args = harness.parse(parser, argv)
    results = []
    with harness.environment("hostile", keep=args.keep, worker_env=args.worker_env) as setup:
        db = harness.BackendDB(setup.db_path)
        try:
            docker_run(setup, Scenario("warm-up", ("true",)), args.timeout)
            worker_run(setup, db, Scenario("warm-up", ("true",)), args.timeout)
            for scenario in SCENARIOS:
                if args.only and scenario.name not in args.only:
                    continue
                worker, docker = [], []
                for index in range(args.runs):
                    for side in (("docker", "worker") if index % 2 else ("worker", "docker")):
                        if side == "worker":
                            worker.append(worker_run(setup, db, scenario, args.timeout))
                        else:
                            docker.append(docker_run(setup, scenario, args.timeout))
                results.append(report(scenario.name, worker, docker))
        finally:
            db.close()
    print(f"{sum(results)}/{len(results)} scenarios within the targets; {os.cpu_count()} CPUs: other work on "
          "this host inflates every figure")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
