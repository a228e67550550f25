"""What ``list``, ``run --dry-run`` and ``run --explain JOB`` say about reuse, computed without running anything.

The keys are computed here as the pipeline flow computes them when the file runs (:mod:`flows.reuse_keys`):
the job as the backend will hand it over, the image's id from the engine (the only engine call; when the
engine does not answer, a job's mark is ``unknown``), its input files hashed in the pipeline file's folder,
the keys of the jobs it waits for. A job is marked ``cached`` when the reuse store of the run's state dir
(``.cicd/state`` unless ``WORKER_STATE_DIR`` is set, as for ``run``) holds a result for its current key.
No Prefect import: these commands stay fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cli.pipeline_file import FileJob, PipelineFile
from cli.pipeline_graph import nodes
from cli.run_selection import Selection, SelectionError, prepare
from core.errors import WorkerError
from core.models import JobDTO
from core.settings import Settings
from executors.docker_executor import DockerExecutor
from flows.planning import build_graph, levels, upstream
from flows.reuse_keys import InputFiles, KeyedJob, explain, keyed
from flows.reuse_store import ReuseStore

CACHED, UNKNOWN = "cached", "unknown"
RUNS_DIR = Path(".cicd/runs")  # ``run``'s default
_ENGINE_DOWN = "engine down"


def state_dir(settings: Settings, runs_dir: Path = RUNS_DIR) -> Path:
    """Where ``cicd-worker run`` keeps its state: ``WORKER_STATE_DIR`` when set, else beside the runs folder."""
    return settings.state_dir if "WORKER_STATE_DIR" in os.environ else runs_dir.parent / "state"


def wire_job(job: FileJob) -> JobDTO:
    """The job as the backend hands it to the worker (what the key is computed from in the flow)."""
    return JobDTO.model_validate({name: value for name, value in job.to_admin().items() if value is not None})


def current_keys(pipeline: PipelineFile, settings: Settings) -> dict[str, KeyedJob | str | None]:
    """Each job's current key; None for a job without one (no ``inputs``, or a job it needs has none), ``engine
    down`` when its image's id could not be read."""
    executor = DockerExecutor(settings.worker_id, docker_timeout_seconds=5.0)
    files = InputFiles(pipeline.path.resolve().parent, settings.seed_max_bytes)
    graph = build_graph(nodes(pipeline.jobs))
    by_name = {job.name: job for job in pipeline.jobs}
    images: dict[str, str | None] = {}
    keys: dict[str, KeyedJob | str | None] = {}
    for level in levels(graph):
        for name in level:
            needs = upstream(graph, name)
            upstream_keys = [keys.get(dep) for dep in needs]
            job = by_name[name]
            if not job.inputs or any(not isinstance(key, KeyedJob) for key in upstream_keys):
                down = any(key == _ENGINE_DOWN for key in upstream_keys)
                keys[name] = _ENGINE_DOWN if job.inputs and down else None
                continue
            if job.image not in images:
                try:
                    images[job.image] = executor.image_id(job.image)
                except WorkerError:
                    images[job.image] = _ENGINE_DOWN
            image_id = images[job.image]
            if image_id is None or image_id == _ENGINE_DOWN:
                keys[name] = image_id
                continue
            upstream_of = {dep: key.key for dep, key in zip(needs, upstream_keys, strict=True)
                           if isinstance(key, KeyedJob)}
            keys[name] = keyed(wire_job(job), image_id, files.matching(job.inputs), upstream_of)
    return keys


def reuse_marks(pipeline: PipelineFile, settings: Settings, runs_dir: Path = RUNS_DIR) -> dict[str, str]:
    """``cached`` for each job whose current key has a stored result, ``unknown`` when the engine is down."""
    if not any(job.inputs for job in pipeline.jobs):
        return {}
    store = ReuseStore(state_dir(settings, runs_dir))
    marks = {}
    for name, key in current_keys(pipeline, settings).items():
        if key == _ENGINE_DOWN:
            marks[name] = UNKNOWN
        elif isinstance(key, KeyedJob) and store.usable(key.key):
            marks[name] = CACHED
    return marks


def explain_job(pipeline: PipelineFile, settings: Settings, name: str, runs_dir: Path = RUNS_DIR) -> list[str]:
    """Why ``name``'s key is what it is now compared with its last successful run."""
    job = next((job for job in pipeline.jobs if job.name == name), None)
    if job is None:
        return [f"no job {name!r} in {pipeline.path} (run --explain with one of: "
                f"{', '.join(job.name for job in pipeline.jobs)})"]
    if not job.inputs:
        return [f"job {name!r} declares no inputs: it is never reused, it always runs"]
    current = current_keys(pipeline, settings)[name]
    if current == _ENGINE_DOWN:
        return [f"job {name!r}: key unknown: the Docker engine does not answer (the image's id is part of the key)"]
    if not isinstance(current, KeyedJob):
        return [f"job {name!r} has no key: its image is not here, or a job it waits for has no inputs "
                "(it always runs)"]
    store = ReuseStore(state_dir(settings, runs_dir))
    last = store.last(name)
    lines = [f"job {name!r}: key {current.key[:12]}"]
    if last is None:
        return [*lines, "no successful run of it recorded here: it will run"]
    origin = last.get("origin", {})
    lines.append(f"last successful run: {origin.get('pipelineExecutionId')} of {origin.get('time')} "
                 f"(key {str(last.get('key'))[:12]})")
    if last.get("key") == current.key:
        verdict = "it will be reused" if store.usable(current.key) else "but its result is gone: it will run"
        return [*lines, f"unchanged since then: {verdict}"]
    return [*lines, "changed since then:", *(f"  {line}" for line in explain(last.get("components", {}),
                                                                              current.components))]


def mark_lines(pipeline: PipelineFile, marks: dict[str, str]) -> list[str]:
    """The lines ``list`` and ``--dry-run`` end with: the jobs ``run`` would reuse, those whose key is unknown."""
    lines = []
    for mark, meaning in ((CACHED, "a result exists for the current key: `run` reuses it"),
                          (UNKNOWN, "reuse unknown: the Docker engine does not answer")):
        names = [job.name for job in pipeline.jobs if marks.get(job.name) == mark]
        if names:
            lines.append(f"{mark} ({meaning}): {', '.join(names)}")
    return lines


def marked_json(text: str, marks: dict[str, str]) -> str:
    """``list --json``'s list with ``"reuse": "cached" | "unknown"`` on the jobs that have a mark."""
    jobs = json.loads(text)
    for job in jobs:
        if job["name"] in marks:
            job["reuse"] = marks[job["name"]]
    return json.dumps(jobs, indent=2)


def marks_for(settings: Settings, as_run: bool = False,
              runs_dir: Path = RUNS_DIR) -> Callable[[PipelineFile], dict[str, str]]:
    """:func:`reuse_marks` under these settings, for ``--dry-run`` (``as_run``: the pipeline as it will run) and
    ``list`` (the file as ``run FILE`` would run it: its variables completed the same way); none for standard
    input (no project folder)."""
    def marks(pipeline: PipelineFile) -> dict[str, str]:
        if str(pipeline.path) == "-":
            return {}
        try:
            return reuse_marks(pipeline if as_run else prepare(pipeline, Selection()).pipeline, settings, runs_dir)
        except (SelectionError, OSError, ValueError):  # no marks rather than no listing
            return {}
    return marks
