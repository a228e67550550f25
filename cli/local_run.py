"""``cicd-worker run PIPELINE.yaml``: a pipeline file run on this machine with the service's own flows.

The reference backend starts in-process on a free loopback port (SQLite under the run's folder), the file
is loaded into it as a pipeline run, and the execute-pipeline flow runs it here, exactly as for a
backend's request. Output goes to ``.cicd/runs/<run>/`` (artifacts under ``artifacts/<job>/``).

Everything written on this machine stays under the run's folder: job names are single harmless path
components (checked with the file), and every path is resolved and checked again before it is written
(:func:`inside`). The workspace starts with the project's files (:mod:`executors.workspace_seed`), listed and
size-checked before anything starts.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console

from cli.console import JobOutput, printable, quiet_logging
from cli.file_commands import dry_run, load_for_run
from cli.pipeline_file import PipelineFile
from cli.prefect_api import flush_outbox, prefect_api
from cli.progress import PipelineProgress
from cli.reuse_view import explain_job, marks_for
from cli.run_selection import Selection
from cli.run_summary import RunOutcome, print_summary
from core.settings import Settings

if TYPE_CHECKING:  # annotations only
    from flows.services import Services


@dataclass(frozen=True)
class Show:
    """What ``run`` prints besides the jobs' output and the summary: Prefect's and the worker's INFO logging
    (``verbose``), the seconds since each job's start before each of its lines (``timestamps``)."""

    verbose: bool = False
    timestamps: bool = False


@dataclass(frozen=True)
class Reuse:
    """``run``'s reuse options: run every job (``no_cache``), or only explain one job's key (``explain``)."""

    no_cache: bool = False
    explain: str | None = None

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class UnsafePath(ValueError):
    """A path that would be written outside the folder it belongs in."""


def inside(root: Path, *parts: str) -> Path:
    """``root`` joined with ``parts``, resolved (links followed); raises :class:`UnsafePath` unless it stays
    under ``root`` (resolved too)."""
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise UnsafePath(f"refusing to write {'/'.join(parts)!r}: it resolves to {path}, outside {base}")
    return path


def run(path: Path, settings: Settings, *, dry: bool = False, runs_dir: Path = Path(".cicd/runs"),
        show: Show | None = None, selection: Selection | None = None, reuse: Reuse | None = None) -> int:
    """Validate, then run the pipeline file (or print its plan); exit 0 only if it succeeded.

    ``settings`` are the command's; the run's state (outbox, job records) goes under ``runs_dir/../state``
    unless ``WORKER_STATE_DIR`` is set, and the backend is the in-process reference backend. ``show``: what
    to print besides the jobs' output and the summary. ``selection``: the jobs to run and the variables
    (:mod:`cli.run_selection`). ``reuse``: ``--no-cache`` and ``--explain`` (:mod:`cli.reuse_view`).
    """
    pipeline = load_for_run(path, selection or Selection())
    if pipeline is None:
        return EXIT_INVALID
    reuse = reuse or Reuse()
    if reuse.explain is not None:
        print("\n".join(explain_job(pipeline, settings, reuse.explain, runs_dir)))
        return EXIT_OK
    if dry:
        return dry_run(pipeline, marks_for(settings, as_run=True, runs_dir=runs_dir))
    if "WORKER_STATE_DIR" not in os.environ:
        settings = settings.model_copy(update={"state_dir": runs_dir.parent / "state"})
    problem = _seed_problem(pipeline, settings)
    if problem:
        print(problem, file=sys.stderr)
        return EXIT_INVALID

    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        run_dir = inside(runs_dir, f"{_slug(pipeline.name)}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.mkdir(exist_ok=True)
        with prefect_api(settings.state_dir, keep_server=True) as api_url:
            return _run_with_backend(pipeline, run_dir, api_url, settings, show or Show(), reuse)
    except UnsafePath as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _seed_problem(pipeline: PipelineFile, settings: Settings) -> str | None:
    """Why the project's files cannot seed the workspace (over ``WORKER_SEED_MAX_BYTES``), before anything runs."""
    from executors.workspace_seed import SeedTooLarge, plan_seed

    try:
        plan_seed(pipeline.path.resolve().parent, settings.seed_max_bytes)
    except SeedTooLarge as exc:
        return f"{pipeline.path}: {exc}"
    return None


def _run_with_backend(pipeline: PipelineFile, run_dir: Path, api_url: str, settings: Settings, show: Show,
                      reuse: Reuse) -> int:
    from flows.services import build_services, install
    from reference_backend.server import BackendServer

    started = time.monotonic()
    quiet_logging(show.verbose)
    screen = Console(highlight=False) if sys.stdout.isatty() else None
    output = JobOutput([job.name for job in pipeline.jobs], _log_paths(inside(run_dir, "logs")), screen,
                       timestamps=show.timestamps)
    with BackendServer(inside(run_dir, "backend")) as backend:
        # This command's services: the settings read once, with the in-process backend's address.
        services = build_services(settings.model_copy(update={"backend_url": backend.api_url}))
        services.line_listener = output.listener
        install(services)
        created = httpx.post(f"{backend.url}/admin/pipeline-runs", timeout=30, json={
            "name": pipeline.name, "local": True, "commitHash": pipeline.commit_sha,
            "jobs": [job.to_admin() for job in pipeline.jobs]})
        created.raise_for_status()
        pipeline_id = created.json()["pipelineExecutionId"]
        progress = _progress(pipeline, pipeline_id, services, output)
        state = _execute(pipeline, pipeline_id, run_dir, progress, output, reuse)
        flush_outbox(services)
        services.close()
        output.close()
        saved = _save_artifacts(backend.data_dir, created.json()["jobs"], inside(run_dir, "artifacts"))
    ui_link = f"{api_url.removesuffix('/api')}/runs/flow-run/{state.state_details.flow_run_id}"
    print_summary(pipeline, progress, output, RunOutcome(state.is_completed(), str(state.message),
                                                         time.monotonic() - started, run_dir, ui_link, saved), screen)
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def _progress(pipeline: PipelineFile, pipeline_id: str, services: Services, output: JobOutput) -> PipelineProgress:
    return PipelineProgress(services.registry, pipeline_id, {job.name: job.stage for job in pipeline.jobs},
                            order=[job.name for job in pipeline.jobs], console=output.console, emit=output.emit,
                            compact=True)


def _execute(pipeline: PipelineFile, pipeline_id: str, run_dir: Path, progress: PipelineProgress,
             output: JobOutput, reuse: Reuse) -> Any:
    from flows.pipeline_flow import PipelineStart, execute_pipeline, hand_over_pipeline
    from flows.prefect_writes import without_heartbeats

    output.emit(f"running pipeline {printable(pipeline.name)!r} ({len(pipeline.jobs)} jobs); output in {run_dir}")
    with progress:
        named = execute_pipeline.with_options(flow_run_name=f"{pipeline.name} [{pipeline_id[:8]}]")
        # The seed is a host path: handed to the flow in this process, never a flow-run parameter.
        hand_over_pipeline(pipeline_id, PipelineStart(seed_directory=pipeline.path.resolve().parent,
                                                      reuse=not reuse.no_cache))
        with without_heartbeats():
            return named(pipeline_id, return_state=True)


def _log_paths(logs_dir: Path) -> Callable[[str], Path]:
    """``logs/<job>.log`` for each job name, slugged (a second name with the same slug gets ``-2``, ...)."""
    taken: dict[str, str] = {}

    def path(name: str) -> Path:
        if name not in taken:
            slug, number = _slug(name), 1
            while (slug if number == 1 else f"{slug}-{number}") in taken.values():
                number += 1
            taken[name] = slug if number == 1 else f"{slug}-{number}"
        return inside(logs_dir, f"{taken[name]}.log")

    return path


def _save_artifacts(data_dir: Path, jobs: dict[str, str], target: Path) -> int:
    """Copy what the backend received to ``artifacts/<job name>/<path>``; returns the file count.

    Only regular files are copied (links are not followed), each to a path checked to stay under ``target``.
    """
    count = 0
    for name, job_execution_id in jobs.items():
        source = data_dir / "artifacts" / job_execution_id
        if not source.is_dir():
            continue
        job_dir = inside(target, name)
        for path in sorted(source.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            destination = inside(job_dir, path.relative_to(source).as_posix())
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
            count += 1
    return count


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-") or "pipeline"
