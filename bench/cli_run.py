"""Wall time of the real CLI, ``cicd-worker run FILE``, against ``docker run --rm`` and a plain DAG scheduler.

Run from the repository root: ``.venv/bin/python -m bench.cli_run [--repeat N] [--only single|dag20|fanout50]
[--concurrency C] [--keep]``. Targets (median CLI wall / median baseline wall, both measured in this run):
at most 3.0 on ``single``, 1.3 on ``dag20``, 1.3 on ``fanout50``. The end prints, per workload, the medians,
every run, the ratio, the load average and PASS or MISS (``bench.readings.verdict``).

Pipeline files, written to the temporary directory (image ``cicd-busybox:latest`` under ``defaults``; one
stage per level of the graph):

- ``single``: one job running ``true``;
- ``dag20`` and ``fanout50``: the jobs of ``bench.pipeline``'s workloads of those names (4 stages of 5 jobs
  running ``sleep 1``, each after two jobs of the stage before; 50 independent jobs running ``true``).

Set-up (``bench.harness.prefect_session``): a ``docker events`` stream and one Prefect server, started once
(or the server at ``PREFECT_API_URL`` when that is set) and kept up for every run, as a developer's local
server stays up. Each CLI run is the console script ``cicd-worker run --concurrency C FILE`` as a child
process, with its working directory a fresh folder under the temporary directory (it writes ``.cicd/runs``
there), ``PREFECT_API_URL`` of that server, ``WORKER_PULL_POLICY=never``, the session's ``WORKER_ID`` (the
clean-up removes its containers and volumes by label) and one ``WORKER_STATE_DIR`` for the session (fresh at
its start, then kept, as a developer's is). Its output is not a terminal (plain lines; saved to ``out.txt``
in its folder); a run counts only if it exits 0 with a ``final ... status=SUCCESS`` line for every job.
Wall time: process started -> process exited.

Baselines: ``single``: ``docker run --rm --network none cicd-busybox:latest true``; ``dag20``/``fanout50``:
``bench.pipeline.baseline_run``, the plain scheduler that starts each job's ``docker run`` once everything it
needs exited, at most C at once (C is also the CLI's ``--concurrency``; default the worker's default).

Runs alternate CLI/baseline (alternating which goes first); one warm-up single-job CLI run and one
``docker run`` come first and are not counted (the first run against a new server or state dir pays for
their set-up). Where the single job's time goes: after each of its CLI/baseline pairs, fresh processes
import, one stage more each, what ``cicd-worker run`` imports (``IMPORT_STAGES``); their medians are printed
against the whole run's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness, pipeline
from bench.readings import fmt, load_average, verdict
from core.settings import Settings

CLI = Path(sys.executable).with_name("cicd-worker")  # the console script installed with the project
RUN_TIMEOUT_SECONDS = 300.0
SETTLE_SECONDS = 0.5

Job = pipeline.Job
WORKLOADS: dict[str, Callable[[], list[Job]]] = {
    "single": lambda: [{"name": "noop", "script": ["true"], "needs": []}],
    "dag20": pipeline.dag,
    "fanout50": pipeline.fanout,
}
TARGETS = {"single": 3.0, "dag20": 1.3, "fanout50": 1.3}

# Fresh processes, each importing a little more of what `cicd-worker run` loads: the command line (every
# command), `run`'s own module, then the modules it loads lazily once the Prefect API is settled (Prefect,
# the flows and the in-process reference backend).
IMPORT_STAGES = [
    ("python -c pass", "pass"),
    ("import cli.main (every command)", "import cli.main"),
    ("+ cli.local_run (run's module, no Prefect)", "import cli.main, cli.local_run"),
    ("+ prefect", "import cli.main, cli.local_run, prefect"),
    ("+ flows.services, flows.pipeline_flow, reference_backend.server",
     "import cli.main, cli.local_run, prefect, flows.services, flows.pipeline_flow, reference_backend.server"),
    ("cicd-worker --version (console script, settings)", ""),
]


# -- pipeline files -----------------------------------------------------------------------------------------


def pipeline_text(name: str, jobs: list[Job]) -> str:
    """The pipeline file (JSON, which is YAML) of ``jobs``: one stage per level of the graph, needs kept."""
    level: dict[str, int] = {}
    for job in jobs:  # each job comes after what it needs, in bench.pipeline's workloads
        level[job["name"]] = 1 + max((level[need] for need in job["needs"]), default=-1)
    stages = [{"name": f"stage{depth + 1}",
               "jobs": [{"name": job["name"], "script": job["script"], **({"needs": job["needs"]} if job["needs"]
                                                                          else {})}
                        for job in jobs if level[job["name"]] == depth]}
              for depth in range(max(level.values()) + 1)]
    return json.dumps({"name": name, "defaults": {"image": harness.IMAGE}, "stages": stages}, indent=1) + "\n"


def write_files(folder: Path, names: list[str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in names:
        files[name] = folder / f"{name}.yml"
        files[name].write_text(pipeline_text(name, WORKLOADS[name]()))
    return files


# -- one run of each side -----------------------------------------------------------------------------------


@dataclass
class Runner:
    """What every run of this session needs: the session, the pipeline files and the concurrency."""

    session: harness.Session
    files: dict[str, Path]
    concurrency: int
    runs: int = 0

    def cli(self, name: str) -> float:
        """One ``cicd-worker run`` of the workload's file, in a fresh working directory: wall seconds."""
        self.runs += 1
        cwd = self.session.workdir / "runs" / f"{self.runs:03d}-{name}"
        cwd.mkdir(parents=True)
        command = [str(CLI), "run", "--concurrency", str(self.concurrency), str(self.files[name])]
        start = time.perf_counter()
        with open(cwd / "out.txt", "wb") as out:
            done = subprocess.run(command, cwd=cwd, env={**os.environ, **self.session.env}, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_SECONDS)
        wall = time.perf_counter() - start
        text = (cwd / "out.txt").read_text(errors="replace")
        finals = [line for line in text.splitlines() if line.startswith("final ")]
        succeeded = [line for line in finals if " status=SUCCESS " in line]
        if done.returncode != 0 or len(succeeded) != len(WORKLOADS[name]()):
            raise RuntimeError(f"cicd-worker run {name} exited {done.returncode} with {len(succeeded)} successful "
                               f"jobs; output ({cwd / 'out.txt'}):\n{text[-3000:]}")
        return wall

    def baseline(self, name: str) -> float:
        """The workload's baseline: ``docker run --rm ... true`` for one job, else the plain DAG scheduler."""
        if name == "single":
            command = harness.docker_run_command("true", labels={harness.LABEL_BENCH: self.session.worker_id})
            return harness.timed_run(command, RUN_TIMEOUT_SECONDS)[1]
        return pipeline.baseline_run(self.session.events, name, WORKLOADS[name](), self.concurrency).wall


# -- measuring ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    cli: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    load: str = ""  # the load average when its last run ended
    imports: dict[str, list[float] | None] = field(default_factory=dict)  # IMPORT_STAGES label -> wall seconds

    @property
    def ratio(self) -> float:
        return statistics.median(self.cli) / statistics.median(self.baseline)


def measure(runner: Runner, names: list[str], repeat: int) -> list[Result]:
    start = time.perf_counter()
    runner.cli("single")
    runner.baseline("single")
    print(f"warm-up done (one single-job CLI run and one docker run, {time.perf_counter() - start:.1f} s)",
          flush=True)
    results = []
    for name in names:
        result = Result(name)
        for index in range(repeat):
            order = ("cli", "baseline") if index % 2 == 0 else ("baseline", "cli")
            for side in order:
                time.sleep(SETTLE_SECONDS)
                if side == "cli":
                    result.cli.append(runner.cli(name))
                else:
                    result.baseline.append(runner.baseline(name))
            if name == "single":  # in the same stretch of time as the runs they are compared with
                sample_imports(runner.session, result.imports)
            print(f"  {name} run {index + 1}/{repeat}: cicd-worker run {result.cli[-1]:.2f} s, baseline "
                  f"{result.baseline[-1]:.2f} s, load average {load_average()}", flush=True)
        result.load = load_average()
        results.append(result)
    return results


def sample_imports(session: harness.Session, walls: dict[str, list[float] | None]) -> None:
    """One fresh process per stage of ``IMPORT_STAGES``, its wall seconds added to ``walls[label]``; a stage
    that fails is reported once and is None from then on."""
    for label, code in IMPORT_STAGES:
        seen = walls.setdefault(label, [])
        if seen is None:
            continue
        command = [sys.executable, "-c", code] if code else [str(CLI), "--version"]
        start = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, **session.env}, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            print(f"  {label}: failed, left out: {done.stderr.strip()[-500:]}", flush=True)
            walls[label] = None
        else:
            seen.append(time.perf_counter() - start)


# -- report -------------------------------------------------------------------------------------------------


def print_results(results: list[Result], concurrency: int) -> None:
    print(f"\ncicd-worker run wall time (process start -> exit) vs baseline, --concurrency {concurrency} (s)")
    print(f"  {'workload':<9} {'cli med':>8} {'base med':>9} {'ratio':>6} {'target':>7}   {'load avg':<15} "
          "cli runs | baseline runs")
    for r in results:
        runs = " ".join(f"{wall:.2f}" for wall in r.cli) + " | " + " ".join(f"{wall:.2f}" for wall in r.baseline)
        print(f"  {r.workload:<9} {statistics.median(r.cli):8.2f} {statistics.median(r.baseline):9.2f} "
              f"{r.ratio:6.2f} {'<= ' + format(TARGETS[r.workload], '.1f'):>7}   {r.load:<15} {runs}")


def print_imports(single: Result) -> None:
    whole = statistics.median(single.cli)
    print(f"\nwhere the single job's {whole:.2f} s go (median wall of fresh processes, run between the single-job "
          "runs, s):")
    for label, _ in IMPORT_STAGES:
        walls = single.imports.get(label)
        print(f"  {label:<68} {fmt(statistics.median(walls) if walls else None, 6, 2)}")
    heaviest = single.imports.get(IMPORT_STAGES[-2][0])
    if heaviest:
        print(f"  {'whole cicd-worker run minus those imports: set-up, the job, teardown':<68} "
              f"{whole - statistics.median(heaviest):6.2f}")
    print(f"  {'(docker run --rm ... true, for comparison)':<68} {statistics.median(single.baseline):6.2f}")


def print_verdicts(results: list[Result]) -> bool:
    print(f"\nload average {load_average()}")
    met = True
    for r in results:
        line = verdict(f"{r.workload}: cicd-worker run / baseline median wall ratio ({len(r.cli)} runs each, load "
                       f"average {r.load})", r.ratio, TARGETS[r.workload], "x")
        met = met and line.endswith("PASS")
    return met


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each workload on each side (default 5)")
    parser.add_argument("--only", choices=list(WORKLOADS), help="one workload (default: all)")
    default_concurrency = Settings.model_fields["max_concurrent_jobs"].default
    parser.add_argument("--concurrency", type=int, default=default_concurrency,
                        help=f"the CLI's --concurrency and the baseline's limit (default {default_concurrency}, "
                             "the worker's default)")
    harness.common_options(parser)
    args = harness.parse(parser, argv)
    if args.repeat < 1 or args.concurrency < 1:
        parser.error("--repeat and --concurrency must be at least 1")
    args.names = [args.only] if args.only else list(WORKLOADS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"workloads {', '.join(args.names)}; {args.repeat} runs each; --concurrency {args.concurrency}; "
          f"CLI {CLI}", flush=True)
    with harness.prefect_session("cli_run", keep=args.keep) as session:
        runner = Runner(session, write_files(session.workdir / "project", list(WORKLOADS)), args.concurrency)
        results = measure(runner, args.names, args.repeat)
    print_results(results, args.concurrency)
    for result in results:
        if result.workload == "single":
            print_imports(result)
    return 0 if print_verdicts(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
