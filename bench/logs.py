"""A job printing 50 MB of lines through a real worker, against plain ``docker run`` measured in the same run.

Run from the repository root: ``.venv/bin/python -m bench.logs [--runs N] [--lines N]``. It prints the
figures, the ratio to the baseline and a breakdown, the load average and PASS/MISS for the two targets
(median time ratio <= 1.3x, worker VmHWM growth over the runs <= 30 MiB); it fails only when a log arrives
incomplete (or a run fails).

The job (image ``cicd-busybox:latest``), 1,000,000 lines of 50 bytes + newline (``--lines`` changes it)::

    seq -w 1 1000000 | sed 's/.*/line & of the fifty megabyte log, padded..../'

Set-up, all torn down at the end (``bench.harness.environment``): a Prefect server on a free port with a
temporary ``PREFECT_HOME`` and ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` (or the server at
``PREFECT_API_URL`` when that is set); the reference backend as a child process, ``python -m
reference_backend`` (so that receiving 50 MB of chunks costs neither memory nor CPU in this process;
``--backend in-process`` runs ``BackendServer`` here instead); a real ``cicd-worker serve`` child process with
``WORKER_PULL_POLICY=never`` and the worker's default log settings (``--worker-env KEY=VALUE`` overrides one);
a ``docker events`` stream.

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
import functools
import hashlib
import os
import re
import shlex
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import harness, readings
from bench.profiling import PROFILE_MODES, start_py_spy, stop_py_spy, summarise_gil, summarise_wall
from bench.readings import LIFECYCLE, Monitor, epoch, median, proc_status
from flows.job_log import WORKER_PREFIX  # stdlib-only module: prefect is not imported here

MB = 1_000_000
fmt = functools.partial(readings.fmt, digits=2)


def job_command(lines: int) -> str:
    return f"seq -w 1 {lines} | sed 's/.*/line & of the fifty megabyte log, padded..../'"


def job_line(number: int, lines: int) -> str:
    return f"line {number:0{len(str(lines))}d} of the fifty megabyte log, padded...."


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


def check_log(db: harness.BackendDB, job_id: str, final: dict[str, Any], lines: int, command: str) -> LogCheck:
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


def worker_run(setup: harness.Setup, db: harness.BackendDB, index: int, lines: int, poll: float, timeout: float,
               profile: tuple[Path, str] | None = None) -> WorkerSample:
    """POST one job, wait for its final status at the backend and its flow run's end; read what arrived."""
    command = job_command(lines)
    job_id, dto = harness.new_job(setup, f"logs-{index}", "print", [command])
    pid = setup.worker_pid
    hwm_before, rss_before = proc_status(pid, "VmHWM"), proc_status(pid, "VmRSS")
    threads_before = proc_status(pid, "Threads")
    cpu_before = harness.cpu_of(setup)
    spy = start_py_spy(pid, *profile) if profile else None
    try:
        with Monitor(pid, 0.05) as monitor:
            sent, start = time.time(), time.perf_counter()
            answer = setup.worker.post("/api/job/execute", json=dto)
            ack_ms = (time.perf_counter() - start) * 1000
            if answer.status_code != 202:
                raise RuntimeError(f"worker answered {answer.status_code}: {answer.text}")

            def ended() -> bool:
                if setup.worker_process.process is not None and setup.worker_process.process.poll() is not None:
                    raise RuntimeError(f"the worker exited; see {setup.workdir / 'worker.log'}")
                return db.status(job_id) in harness.FINAL

            harness.wait_for(ended, timeout, poll, f"the final status of job {job_id}")
            flow_run_id = answer.json()["flowRunId"] or known_flow_run(setup, job_id)
            harness.wait_for(lambda: harness.flow_run_done(setup, flow_run_id), 120, 0.1,
                             f"the end of flow run {flow_run_id}")
    finally:
        if spy is not None:
            stop_py_spy(spy)
    hwm_after, rss_after = proc_status(pid, "VmHWM"), proc_status(pid, "VmRSS")
    threads_after = proc_status(pid, "Threads")
    cpu_after = harness.cpu_of(setup)
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
    container = setup.events.container(harness.LABEL_JOB, job_id, sent)
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
                        hwm_before, hwm_after, rss_before, max(monitor.rss_kib, rss_before), rss_after,
                        threads_before, threads_after,
                        {k: cpu_after[k] - cpu_before[k] for k in cpu_after}, marks)


def known_flow_run(setup: harness.Setup, job_id: str) -> str:
    """The job's flow run id from the worker's view: the POST answers before the flow run exists when Prefect is
    slow (its record is written in the background)."""
    def flow_run() -> str | None:
        return setup.worker.get(f"/api/job/{job_id}").json().get("flowRunId")

    found: str = harness.wait_for(flow_run, 120, 0.1, f"the flow run of job {job_id}")
    return found


PROGRESS_SHARES = (10, 25, 50, 75, 90)


def reached(check: LogCheck, share: int) -> float | None:
    """When the backend had received ``share`` percent of the log's bytes (the chunk that got it there)."""
    wanted = check.chunk_bytes * share / 100
    return next((at for done, at in check.progress if done >= wanted), None)


def docker_run(setup: harness.Setup, lines: int, timeout: float) -> DockerSample:
    """Wall time of the plain ``docker run`` CLI, its output thrown away; the CLI's peak RSS and CPU."""
    tag = uuid.uuid4().hex[:12]
    command = harness.docker_run_command("sh", "-c", job_command(lines),
                                         labels={harness.LABEL_BENCH: setup.worker_id, "cicd.bench-run": tag})
    timer = Path("/usr/bin/time")
    report = setup.workdir / f"time-{tag}.txt"
    if timer.exists():
        command = [str(timer), "-v", "-o", str(report), *command]
    sent, wall = harness.timed_run(command, timeout)
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
    marks = {f"container {a}": (container[a] - sent) if a in container else None for a in LIFECYCLE}
    marks["docker CLI exited"] = wall
    return DockerSample(wall, max_rss, cpu, marks)


def profile_runs(setup: harness.Setup, db: harness.BackendDB, args: argparse.Namespace) -> None:
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


RATIO_TARGET = 1.3  # POST -> last line at the backend, against `docker run > /dev/null`
GROWTH_TARGET_MIB = 30.0  # the worker's VmHWM over the measured runs


def print_verdicts(worker: list[WorkerSample], docker: list[DockerSample], hwm_start_kib: int) -> None:
    w_med, d_med = median([w.last_line_s for w in worker]), median([d.wall_s for d in docker])
    ratio = w_med / d_med if w_med is not None and d_med else None
    print(f"\ntargets (load average now {readings.load_average()}; {os.cpu_count()} CPUs)")
    readings.verdict("  50 MB log, POST -> last line at the backend / docker run", ratio, RATIO_TARGET, "x")
    readings.verdict("  worker VmHWM growth over the runs", (worker[-1].hwm_after_kib - hwm_start_kib) / 1024,
                     GROWTH_TARGET_MIB, " MiB")


def worker_config(setup: harness.Setup) -> str:
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
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="two more worker runs under py-spy (not counted); collapsed stacks saved in DIR")
    harness.common_options(parser, worker_env=True)
    args = harness.parse(parser, argv)
    if args.runs < 1 or args.lines < 1:
        parser.error("--runs and --lines must be at least 1")
    print(f"job: {job_command(args.lines)}", flush=True)
    with harness.environment("logs", keep=args.keep, backend_in_process=args.backend == "in-process",
                             worker_env=args.worker_env) as setup:
        print(f"worker pid {setup.worker_pid}, backend "
              f"{'pid ' + str(setup.backend_pid) if setup.backend_pid else 'in this process'}; worker log settings: "
              f"{worker_config(setup)}"
              + (f"; extra worker env: {' '.join(shlex.quote(f'{k}={v}') for k, v in args.worker_env.items())}"
                 if args.worker_env else ""), flush=True)
        db = harness.BackendDB(setup.db_path)
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
            print_verdicts(worker, docker, hwm_start)
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
