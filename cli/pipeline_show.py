"""What ``run --dry-run`` and ``list`` print: jobs in file order, wrapped to the terminal's width."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable

from cli.pipeline_file import FileJob, PipelineFile
from cli.pipeline_graph import nodes
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


def _label(job: FileJob) -> str:
    details = [job.stage]
    if job.needs:
        details.append("needs " + " ".join(job.needs))
    if job.when != "on_success":
        details.append(f"when {job.when}")
    return f"{job.name} ({'; '.join(details)})"


def plan_lines(pipeline: PipelineFile, width: int) -> list[str]:
    """The plan: one block per level (the jobs that can start together), jobs in file order."""
    position = {job.name: index for index, job in enumerate(pipeline.jobs)}
    by_name = {job.name: job for job in pipeline.jobs}
    lines = [f"pipeline {pipeline.name!r}: {len(pipeline.jobs)} jobs"]
    for number, level in enumerate(levels(build_graph(nodes(pipeline.jobs))), start=1):
        lines.append(f"level {number}:")
        lines.extend(wrap((_label(by_name[name]) for name in sorted(level, key=position.__getitem__)), width))
    return lines


def list_lines(pipeline: PipelineFile) -> list[str]:
    """One row per job in file order: name, stage, needs, image, when, allow_failure (aligned columns)."""
    rows = [("JOB", "STAGE", "NEEDS", "IMAGE", "WHEN", "ALLOW_FAILURE")]
    rows += [(job.name, job.stage, ",".join(job.needs) or "-", job.image, job.when,
              "true" if job.allow_failure else "false") for job in pipeline.jobs]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
            for row in rows]


def list_json(pipeline: PipelineFile) -> str:
    """The jobs as a JSON list, in file order (``needs`` empty: the job waits for every earlier stage)."""
    return json.dumps([{"name": job.name, "stage": job.stage, "needs": job.needs, "image": job.image,
                        "when": job.when, "allow_failure": job.allow_failure} for job in pipeline.jobs], indent=2)
