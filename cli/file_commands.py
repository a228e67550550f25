"""``cicd-worker check FILE``, ``list FILE [--json]``, ``run --dry-run``, and loading a file for ``run``.

None of these needs Prefect, Docker or a backend. Exit codes: 0 fine, 2 the file (or a run option) is invalid.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cli.pipeline_file import PipelineFile, PipelineFileError, load_pipeline_file
from cli.pipeline_show import list_json, list_lines, output_width, plan_lines
from cli.run_selection import Selection, SelectionError, prepare

EXIT_OK, EXIT_INVALID = 0, 2


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


def list_jobs(path: Path, as_json: bool = False) -> int:
    """Print every job in file order with its stage, needs, image, ``when`` and ``allow_failure``."""
    pipeline = _load(path)
    if pipeline is None:
        return EXIT_INVALID
    print(list_json(pipeline) if as_json else "\n".join(list_lines(pipeline)))
    return EXIT_OK


def dry_run(pipeline: PipelineFile) -> int:
    """Print the plan: the order in which jobs can start, level by level, in file order. Nothing runs."""
    print("\n".join(plan_lines(pipeline, output_width())))
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
