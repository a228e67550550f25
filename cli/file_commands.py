"""``cicd-worker check FILE``, ``list FILE [--json]``, ``run --dry-run``, and loading a file for ``run``.

None of these needs Prefect or a backend; ``list`` and ``--dry-run`` ask the Docker engine for image ids only when
jobs declare ``inputs`` (their reuse marks, :mod:`cli.reuse_view`). Exit codes: 0 fine, 2 the file (or a run
option) is invalid.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from cli.pipeline_file import PipelineFile, PipelineFileError, load_pipeline_file
from cli.pipeline_show import list_json, list_lines, output_width, plan_lines
from cli.reuse_view import mark_lines, marked_json
from cli.run_selection import Selection, SelectionError, prepare

EXIT_OK, EXIT_INVALID = 0, 2
Marks = Callable[[PipelineFile], dict[str, str]]
"""Reuse marks of the jobs (``cached`` / ``unknown``, by name): ``cli.reuse_view.marks_for``."""


def _load(path: Path) -> PipelineFile | None:
    try:
        return load_pipeline_file(path)
    except PipelineFileError as exc:
        print(exc, file=sys.stderr)
        return None


def check(path: Path) -> int:
    """Validate only (``-``: standard input); print every problem. Exit 2 when the file is invalid."""
    pipeline = _load(path)
    if pipeline is None:
        return EXIT_INVALID
    shown = "<stdin>" if str(path) == "-" else str(path)
    print(f"{shown}: OK: pipeline {pipeline.name!r}, {len(pipeline.stages)} stages, {len(pipeline.jobs)} jobs")
    return EXIT_OK


def list_jobs(path: Path, as_json: bool = False, marks: Marks | None = None) -> int:
    """Print every job in file order with its stage, needs, image, ``when`` and ``allow_failure``; with
    ``marks``, which ones ``run`` would reuse."""
    pipeline = _load(path)
    if pipeline is None:
        return EXIT_INVALID
    found = marks(pipeline) if marks else {}
    print(marked_json(list_json(pipeline), found) if as_json else "\n".join([*list_lines(pipeline),
                                                                          *mark_lines(pipeline, found)]))
    return EXIT_OK


def dry_run(pipeline: PipelineFile, marks: Marks | None = None) -> int:
    """Print the plan: the order in which jobs can start, level by level, in file order; with ``marks``, which
    jobs would be reused. Nothing runs."""
    print("\n".join([*plan_lines(pipeline, output_width()), *mark_lines(pipeline, marks(pipeline) if marks else {})]))
    return EXIT_OK


def load_for_run(path: Path, selection: Selection) -> PipelineFile | None:
    """The file validated and ``selection`` applied, or None after printing why not (exit 2)."""
    pipeline = _load(path)
    if pipeline is None:
        return None
    try:
        prepared = prepare(pipeline, selection)
    except SelectionError as exc:
        print(exc, file=sys.stderr)
        return None
    if prepared.left_out:
        reason = "not named" if selection.jobs else "manual, or needs a manual job"
        print(f"not run ({reason}): {', '.join(prepared.left_out)}", flush=True)
    return prepared.pipeline
