"""The job graph of a pipeline file: repeated names, unknown or self ``needs``, cycles, each at its line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cli.pipeline_yaml import Problems, did_you_mean
from flows.planning import JobNode, PlanningError, build_graph


class FileJob(Protocol):
    """What the graph needs of a job of the file (``cli.pipeline_file.FileJob``, which imports this module)."""

    name: str
    needs: list[str]
    need_lines: list[int]
    line: int
    stage_order: int
    when: str


def nodes(jobs: Sequence[FileJob]) -> list[JobNode]:
    """The planner's view of the jobs (ids are the names)."""
    return [JobNode(id=job.name, name=job.name, dependencies=tuple(job.needs), stage_order=job.stage_order,
                    when=job.when) for job in jobs]


def _shown(name: str) -> str:
    return name if name.isprintable() else repr(name)


def check_graph(problems: Problems, jobs: Sequence[FileJob]) -> None:
    """Record every graph problem: a need at its own line, with a suggestion for a misspelt job name."""
    by_name: dict[str, FileJob] = {}
    for job in jobs:
        if job.name in by_name:
            problems.add(job.line, _shown(job.name), f"job name used twice (first at line {by_name[job.name].line})")
        by_name.setdefault(job.name, job)
    known: list[JobNode] = []
    names = tuple(by_name)
    for job in by_name.values():
        kept = []
        for need, line in zip(job.needs, job.need_lines, strict=True):
            if need == job.name:
                problems.add(line, f"{_shown(job.name)}.needs", "a job cannot need itself")
            elif need not in by_name:
                problems.add(line, f"{_shown(job.name)}.needs", f"unknown job {need!r}{did_you_mean(need, names)}")
            else:
                kept.append(need)
        known.append(JobNode(id=job.name, name=job.name, dependencies=tuple(dict.fromkeys(kept)),
                             stage_order=job.stage_order))
    # Cycles are looked for among what is left, so that they show together with the errors above.
    try:
        build_graph(known)
    except PlanningError as exc:
        line = by_name[exc.jobs[0]].line if exc.jobs and exc.jobs[0] in by_name else 1
        for problem in exc.problems:
            problems.add(line, "needs", problem)
