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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cli.pipeline_file import PipelineFile, PipelineFileError, load_pipeline_file
from cli.prefect_api import flush_outbox, prefect_api
from core.settings import Settings

if TYPE_CHECKING:  # annotations only
    from flows.services import Services

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


def check(path: Path) -> int:
    """Validate only; print every problem. Exit 2 when the file is invalid."""
    try:
        pipeline = load_pipeline_file(path)
    except PipelineFileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(f"{path}: OK: pipeline {pipeline.name!r}, {len(pipeline.stages)} stages, {len(pipeline.jobs)} jobs")
    return EXIT_OK


def dry_run(pipeline: PipelineFile) -> int:
    """Print the plan: the order in which jobs can start, level by level. Nothing runs."""
    stage_of = {job.name: job.stage for job in pipeline.jobs}
    print(f"pipeline {pipeline.name!r}: {len(pipeline.jobs)} jobs")
    for number, level in enumerate(pipeline.plan_levels(), start=1):
        print(f"level {number}: " + ", ".join(f"{name} ({stage_of[name]})" for name in level))
    return EXIT_OK


def run(path: Path, settings: Settings, *, dry: bool = False, runs_dir: Path = Path(".cicd/runs")) -> int:
    """Validate, then run the pipeline file (or print its plan); exit 0 only if it succeeded.

    ``settings`` are the command's; the run's state (outbox, job records) goes under ``runs_dir/../state``
    unless ``WORKER_STATE_DIR`` is set, and the backend is the in-process reference backend.
    """
    try:
        pipeline = load_pipeline_file(path)
    except PipelineFileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    if dry:
        return dry_run(pipeline)
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
            return _run_with_backend(pipeline, run_dir, api_url, settings)
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


def _run_with_backend(pipeline: PipelineFile, run_dir: Path, api_url: str, settings: Settings) -> int:
    from flows.services import build_services, install
    from reference_backend.server import BackendServer

    with BackendServer(inside(run_dir, "backend")) as backend:
        # This command's services: the settings read once, with the in-process backend's address.
        services = install(build_services(settings.model_copy(update={"backend_url": backend.api_url})))
        created = httpx.post(f"{backend.url}/admin/pipeline-runs", timeout=30, json={
            "name": pipeline.name, "local": True, "jobs": [job.to_admin() for job in pipeline.jobs]})
        created.raise_for_status()
        pipeline_id = created.json()["pipelineExecutionId"]
        state = _execute(pipeline, pipeline_id, run_dir, services)
        flush_outbox(services)
        services.close()
        saved = _save_artifacts(backend.data_dir, created.json()["jobs"], inside(run_dir, "artifacts"))
    _summary(pipeline, pipeline_id, state, api_url, run_dir, saved, services)
    return EXIT_OK if state.is_completed() else EXIT_FAILED


def _execute(pipeline: PipelineFile, pipeline_id: str, run_dir: Path, services: Services) -> Any:
    from cli.progress import PipelineProgress
    from flows.pipeline_flow import PipelineStart, execute_pipeline, hand_over_pipeline

    _quiet_prefect_console()
    stages = {job.name: job.stage for job in pipeline.jobs}
    print(f"running pipeline {pipeline.name!r} ({len(pipeline.jobs)} jobs); output in {run_dir}", flush=True)
    with PipelineProgress(services.registry, pipeline_id, stages):
        named = execute_pipeline.with_options(flow_run_name=f"{pipeline.name} [{pipeline_id[:8]}]")
        # The seed is a host path: handed to the flow in this process, never a flow-run parameter.
        hand_over_pipeline(pipeline_id, PipelineStart(seed_directory=pipeline.path.resolve().parent))
        return named(pipeline_id, return_state=True)


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


def _summary(pipeline: PipelineFile, pipeline_id: str, state: Any, api_url: str, run_dir: Path, saved: int,
             services: Services) -> None:
    from rich.console import Console

    from cli.progress import PipelineProgress

    progress = PipelineProgress(services.registry, pipeline_id, {job.name: job.stage for job in pipeline.jobs})
    verdict = "SUCCEEDED" if state.is_completed() else "FAILED"
    if sys.stdout.isatty():
        Console().print(progress.table(title=f"pipeline {pipeline.name}: {verdict}"))
    else:
        for record in sorted(progress.records(), key=lambda r: r.name):
            print("final " + progress.line(record))
    flow_run_id = state.state_details.flow_run_id
    print(f"pipeline {pipeline.name}: {verdict} ({state.message})")
    print(f"Prefect UI: {api_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}")
    print(f"artifacts: {saved} file(s) in {run_dir / 'artifacts'}")


def _quiet_prefect_console() -> None:
    """Keep Prefect's console lines from tearing the live table; its API logs (the UI) are unaffected."""
    import logging

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if "Console" in type(handler).__name__:
                handler.setLevel(logging.WARNING)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-") or "pipeline"
