"""What ``run --dry-run`` and ``list`` print: jobs in file order, wrapped to the terminal's width."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable

from cli.pipeline_file import FileJob, PipelineFile
from cli.pipeline_graph import nodes
from cli.pipeline_matrix import Expansion, shown_needs
from flows.planning import build_graph, levels

_PLAIN_WIDTH = 80


def output_width() -> int:
    """The terminal's width, or 80 when standard output is not a terminal."""
    try:
        return max(40, os.get_terminal_size(sys.stdout.fileno()).columns) if sys.stdout.isatty() else _PLAIN_WIDTH
    except (OSError, ValueError):
        return _PLAIN_WIDTH


def wrap(items: Iterable[str], width: int, indent: str = "  ") -> list[str]:
    """``items`` joined with ``, `` into lines of at most ``width`` characters, never breaking an item."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(line) + 2 + len(item) + 1 > width:  # room for the comma that may follow
            lines.append(line + ",")
            line = ""
        line = f"{line}, {item}" if line else indent + item
    if line:
        lines.append(line)
    return lines


def _expansions(pipeline: PipelineFile) -> dict[str, Expansion | None]:
    return {job.name: job.expansion for job in pipeline.jobs}


def _label(job: FileJob, expansions: dict[str, Expansion | None]) -> str:
    details = [job.stage]
    if job.needs:
        details.append("needs " + " ".join(shown_needs(job.needs, expansions)))
    if job.when != "on_success":
        details.append(f"when {job.when}")
    return f"{job.name} ({'; '.join(details)})"


def plan_lines(pipeline: PipelineFile, width: int) -> list[str]:
    """The plan: one block per level (the jobs that can start together), jobs in file order."""
    position = {job.name: index for index, job in enumerate(pipeline.jobs)}
    by_name = {job.name: job for job in pipeline.jobs}
    expansions = _expansions(pipeline)
    lines = [f"pipeline {pipeline.name!r}: {len(pipeline.jobs)} jobs"]
    for number, level in enumerate(levels(build_graph(nodes(pipeline.jobs))), start=1):
        lines.append(f"level {number}:")
        ordered = sorted(level, key=position.__getitem__)
        lines.extend(wrap((_label(by_name[name], expansions) for name in ordered), width))
    return lines


def list_lines(pipeline: PipelineFile) -> list[str]:
    """One row per job in file order: name, stage, needs, image, when, allow_failure (aligned columns); and the
    matrix values of each job a matrix made, when there are such jobs (a matrix job's name in ``needs`` stands
    for all its jobs)."""
    expansions = _expansions(pipeline)
    matrix = any(expansions.values())
    rows = [("JOB", "STAGE", "NEEDS", "IMAGE", "WHEN", "ALLOW_FAILURE", *(("MATRIX",) if matrix else ()))]
    rows += [(job.name, job.stage, ",".join(shown_needs(job.needs, expansions)) or "-", job.image, job.when,
              "true" if job.allow_failure else "false", *((_values(job.expansion),) if matrix else ()))
             for job in pipeline.jobs]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
            for row in rows]


def _values(expansion: Expansion | None) -> str:
    return " ".join(f"{name}={value}" for name, value in expansion.variables.items()) if expansion else "-"


def list_json(pipeline: PipelineFile) -> str:
    """The jobs as a JSON list, in file order (``needs`` empty: the job waits for every earlier stage; every
    job named, a matrix's expansions too). A job a matrix made has ``matrix``: the job and its values."""
    return json.dumps([{"name": job.name, "stage": job.stage, "needs": job.needs, "image": job.image,
                        "when": job.when, "allow_failure": job.allow_failure,
                        **({"matrix": {"job": job.expansion.of, "variables": job.expansion.variables}}
                           if job.expansion else {})} for job in pipeline.jobs], indent=2)
