"""Reuse of unchanged jobs: ``cicd-worker run`` of a 20-job pipeline cold, warm (nothing changed) and with one
input file changed.

Run from the repository root: ``.venv/bin/python -m bench.reuse [--repeat N] [--keep]``. Targets: the warm run's
median wall at most 10 % of the cold run's (both measured in this session), and at most 1.5 s for the whole
warm run (the ``cicd-worker run`` process, start to exit).

The pipeline (written to the session's temporary directory, image ``cicd-busybox:latest``): 4 stages of 5 jobs,
5 chains (job ``s<k>-c<i>`` needs ``s<k-1>-c<i>``), each job with ``inputs: [inputs/s<k>-c<i>.txt]``, running
``sleep 0.5`` and writing one small artifact. Each repetition uses a fresh ``WORKER_STATE_DIR`` (so the cold run
finds nothing), then runs: cold (every job runs), warm (every job reused), changed (``inputs/s1-c0.txt``
changed: the 4 jobs of chain 0 run, the other 16 are reused); the file is put back afterwards.

Set-up as ``bench.cli_run`` (``bench.harness.prefect_session``: one Prefect server kept up, the console script
as a child process with ``WORKER_PULL_POLICY=never``). A run counts only if it exits 0 with a ``final ...
status=SUCCESS`` line for each job and the expected number of them marked ``(cached)``. Besides the process's
wall time it prints where the time goes: the run's own time as its summary reports it (from the in-process
backend's start to the summary: the process's wall minus this is interpreter start, imports and settings) and
the execute-pipeline flow run's own time (Prefect's start and end times of the flow run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from bench import harness
from bench.readings import load_average, verdict

CLI = Path(sys.executable).with_name("cicd-worker")
RUN_TIMEOUT_SECONDS = 300.0
STAGES, CHAINS = 4, 5
WARM_RATIO_TARGET, WARM_SECONDS_TARGET = 0.10, 1.5
CHANGED_FILE = "inputs/s1-c0.txt"


def pipeline_text() -> str:
    """The 20-job pipeline file (JSON, which is YAML)."""
    stages = []
    for stage in range(1, STAGES + 1):
        jobs = []
        for chain in range(CHAINS):
            name = f"s{stage}-c{chain}"
            jobs.append({"name": name, "inputs": [f"inputs/{name}.txt"],
                         "script": ["sleep 0.5", "mkdir -p out", f"cat inputs/{name}.txt > out/{name}.txt"],
                         "artifacts": [f"out/{name}.txt"],
                         **({"needs": [f"s{stage - 1}-c{chain}"]} if stage > 1 else {"needs": []})})
        stages.append({"name": f"stage{stage}", "jobs": jobs})
    return json.dumps({"name": "reuse-bench", "defaults": {"image": harness.IMAGE}, "stages": stages}, indent=1)


def write_project(folder: Path) -> Path:
    (folder / "inputs").mkdir(parents=True, exist_ok=True)
    for stage in range(1, STAGES + 1):
        for chain in range(CHAINS):
            (folder / "inputs" / f"s{stage}-c{chain}.txt").write_text(f"input of s{stage}-c{chain}\n")
    path = folder / "pipeline.yaml"
    path.write_text(pipeline_text())
    return path


@dataclass
class Reading:
    """One ``cicd-worker run``: the process's wall, the run's own time (its summary), the flow run's time."""

    wall: float
    own: float
    flow: float | None


@dataclass
class Runner:
    session: harness.Session
    pipeline: Path
    runs: int = 0
    readings: dict[str, list[Reading]] = field(default_factory=dict)

    def run(self, kind: str, state_dir: Path, cached: int) -> Reading:
        """One run in a fresh working directory; checks that every job succeeded and ``cached`` were reused."""
        self.runs += 1
        cwd = self.session.workdir / "runs" / f"{self.runs:03d}-{kind}"
        cwd.mkdir(parents=True)
        env = {**os.environ, **self.session.env, "WORKER_STATE_DIR": str(state_dir)}
        start = time.perf_counter()
        with open(cwd / "out.txt", "wb") as out:
            done = subprocess.run([str(CLI), "run", str(self.pipeline)], cwd=cwd, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_SECONDS)
        wall = time.perf_counter() - start
        text = (cwd / "out.txt").read_text(errors="replace")
        finals = [line for line in text.splitlines() if line.startswith("final ") and " status=SUCCESS " in line]
        reused = [line for line in finals if line.endswith("(cached)")]
        if done.returncode != 0 or len(finals) != STAGES * CHAINS or len(reused) != cached:
            raise RuntimeError(f"{kind} run exited {done.returncode}: {len(finals)} successes, {len(reused)} "
                               f"cached (expected {cached}); output {cwd / 'out.txt'}:\n{text[-3000:]}")
        own = re.search(r"SUCCEEDED in ([0-9.]+)s", text)
        reading = Reading(wall, float(own[1]) if own else wall, self._flow_seconds(text))
        self.readings.setdefault(kind, []).append(reading)
        return reading

    def _flow_seconds(self, text: str) -> float | None:
        found = re.search(r"runs/flow-run/([0-9a-f-]{36})", text)
        if not found:
            return None
        answer = httpx.get(f"{self.session.env['PREFECT_API_URL']}/flow_runs/{found[1]}", timeout=30)
        run = answer.json()
        if not run.get("start_time") or not run.get("end_time"):
            return None
        return (datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(run["start_time"])).total_seconds()


def measure(runner: Runner, repeat: int) -> None:
    changed = runner.pipeline.parent / CHANGED_FILE
    original = changed.read_text()
    for index in range(repeat):
        state_dir = runner.session.workdir / f"state-{index}"
        cold = runner.run("cold", state_dir, cached=0)
        warm = runner.run("warm", state_dir, cached=STAGES * CHAINS)
        changed.write_text(f"{original}changed {index}\n")
        try:
            one = runner.run("changed", state_dir, cached=STAGES * CHAINS - STAGES)
        finally:
            changed.write_text(original)
        print(f"  repetition {index + 1}/{repeat}: cold {cold.wall:.2f} s, warm {warm.wall:.2f} s, one input changed "
              f"{one.wall:.2f} s (load average {load_average()})", flush=True)


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def report(runner: Runner) -> bool:
    print("\ncicd-worker run of the 20-job pipeline (medians, s): process wall | the run's own time (summary) | "
          "the flow run (Prefect)")
    medians = {}
    for kind in ("cold", "warm", "changed"):
        readings = runner.readings[kind]
        medians[kind] = statistics.median(reading.wall for reading in readings)
        own = statistics.median(reading.own for reading in readings)
        flow = _median([reading.flow for reading in readings])
        print(f"  {kind:<8} {medians[kind]:7.2f} | {own:7.2f} | {flow if flow is None else round(flow, 2)!s:>7}   "
              f"runs: {' '.join(f'{reading.wall:.2f}' for reading in readings)}")
    warm_own = statistics.median(reading.own for reading in runner.readings["warm"])
    print(f"  warm run: {medians['warm'] - warm_own:.2f} s before the run's own clock starts (interpreter, imports "
          "of Prefect and the flows, settings, Prefect server check)")
    print(f"\nload average {load_average()}")
    ratio = verdict("warm / cold median wall", medians["warm"] / medians["cold"], WARM_RATIO_TARGET)
    whole = verdict("warm run, whole cicd-worker run command (median wall)", medians["warm"], WARM_SECONDS_TARGET,
                    " s")
    verdict("warm run, the run's own time (summary; for information)", warm_own, WARM_SECONDS_TARGET, " s")
    flows = [_median([reading.flow for reading in runner.readings[kind]]) for kind in ("warm", "cold")]
    if flows[0] is not None and flows[1]:
        verdict("warm / cold flow run time (Prefect's; for information)", flows[0] / flows[1], WARM_RATIO_TARGET)
    return ratio.endswith("PASS") and whole.endswith("PASS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of cold, warm, changed (default 3)")
    harness.common_options(parser)
    args = harness.parse(parser, argv)
    print(f"20-job pipeline, {args.repeat} repetitions of cold / warm / one input changed; CLI {CLI}", flush=True)
    with harness.prefect_session("reuse", keep=args.keep) as session:
        runner = Runner(session, write_project(session.workdir / "project"))
        measure(runner, args.repeat)
    return 0 if report(runner) else 1


if __name__ == "__main__":
    raise SystemExit(main())
