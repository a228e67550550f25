"""What ``cicd-worker run FILE [JOB ...]`` runs: the jobs chosen, their variables, the commit.

* No job named: every job but the ``manual`` ones and the jobs that need one (through ``needs``).
* Jobs named: only those (``manual`` ones included, run as ``on_success``); with ``--needs`` also every job
  they wait for, transitively (their ``needs``, or every job of the earlier stages for a job without
  ``needs``). A need left out of the run is dropped: the job then starts without it. A job with a matrix is
  named by its own name (all its jobs) or by the name of one of them (``"build [a]"``).
* Variables, later ones winning: the predefined ``CI_JOB_STAGE``, ``CI_COMMIT_REF_NAME`` and, for a job a matrix
  made, ``CI_NODE_INDEX`` and ``CI_NODE_TOTAL`` (the others are set by the worker for both doors), the file's
  top-level ``variables``, ``defaults.variables``, the job's ``variables``, the ``--env-file`` entries, the
  ``--var`` options, and last the matrix's values (the job's name says them). Values of variables whose names
  match the worker's secret patterns are masked in every log, as in the service.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from dotenv import dotenv_values

from cli.pipeline_file import FileJob, PipelineFile
from cli.pipeline_graph import nodes
from cli.pipeline_yaml import did_you_mean
from flows.planning import build_graph

_GIT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class Selection:
    """The ``run`` options that choose jobs and set variables."""

    jobs: tuple[str, ...] = ()
    needs: bool = False
    variables: tuple[str, ...] = ()
    """``KEY=VALUE`` strings (``--var``)."""
    env_file: Path | None = None


class SelectionError(ValueError):
    """A job name that is not in the file, a ``--var`` without ``=``, an unreadable ``--env-file``."""


@dataclass
class Prepared:
    """The pipeline as it will run (chosen jobs, each with its final variables, the file's top-level ones
    merged in; the commit) and the names of the jobs left out."""

    pipeline: PipelineFile
    left_out: list[str]


def prepare(pipeline: PipelineFile, selection: Selection) -> Prepared:
    """Apply ``selection`` to ``pipeline``; raises :class:`SelectionError`."""
    overrides = _overrides(selection)
    chosen = _chosen(pipeline, selection)
    sha, ref = git_commit(pipeline.path)
    jobs = []
    for job in pipeline.jobs:
        if job.name not in chosen:
            continue
        variables = {**_predefined(job, ref), **pipeline.job_variables(job), **overrides,
                     **(job.expansion.variables if job.expansion else {})}
        when = "on_success" if job.when == "manual" else job.when
        jobs.append(dataclasses.replace(job, needs=[need for need in job.needs if need in chosen],
                                        variables=variables, when=when))
    left_out = [job.name for job in pipeline.jobs if job.name not in chosen]
    if not jobs:
        raise SelectionError(f"{pipeline.path}: nothing to run: every job is manual or needs one (name a job "
                             f"to run it)")
    return Prepared(dataclasses.replace(pipeline, jobs=jobs, variables={}, commit_sha=sha), left_out)


def _predefined(job: FileJob, ref: str | None) -> dict[str, str]:
    predefined = {"CI_JOB_STAGE": job.stage, **({"CI_COMMIT_REF_NAME": ref} if ref else {})}
    if job.expansion is not None:  # GitLab's names for a job's place in its matrix
        predefined.update(CI_NODE_INDEX=str(job.expansion.index), CI_NODE_TOTAL=str(job.expansion.total))
    return predefined


def _named(pipeline: PipelineFile, selection: Selection) -> list[str]:
    """The jobs named on the command line, a matrix job's name standing for all its jobs."""
    names = [job.name for job in pipeline.jobs]
    matrices: dict[str, list[str]] = {}
    for job in pipeline.jobs:
        if job.expansion is not None:
            matrices.setdefault(job.expansion.of, []).append(job.name)
    unknown = [name for name in selection.jobs if name not in names and name not in matrices]
    if unknown:
        choices = [*names, *matrices]
        raise SelectionError("\n".join(f"{pipeline.path}: no job named {name!r}{did_you_mean(name, choices)}"
                                       for name in unknown))
    return [expanded for name in selection.jobs for expanded in matrices.get(name, [name])]


def _chosen(pipeline: PipelineFile, selection: Selection) -> set[str]:
    named = _named(pipeline, selection)
    graph = build_graph(nodes(pipeline.jobs))
    if named:
        chosen = set(named)
        if selection.needs:
            for name in named:
                chosen.update(node for node in nx.ancestors(graph, name) if isinstance(node, str))
        return chosen
    names = [job.name for job in pipeline.jobs]
    manual = {job.name for job in pipeline.jobs if job.when == "manual"}
    return set(names) - _needing(pipeline.jobs, manual)


def _needing(jobs: list[FileJob], blocked: set[str]) -> set[str]:
    """Jobs that name a blocked job in their ``needs``, followed to a fixed point."""
    found = set(blocked)
    changed = True
    while changed:
        changed = False
        for job in jobs:
            if job.name not in found and any(need in found for need in job.needs):
                found.add(job.name)
                changed = True
    return found


def _overrides(selection: Selection) -> dict[str, str]:
    variables: dict[str, str] = {}
    if selection.env_file is not None:
        if not selection.env_file.is_file():
            raise SelectionError(f"--env-file {selection.env_file}: no such file")
        try:
            entries = dotenv_values(selection.env_file, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SelectionError(f"--env-file {selection.env_file}: cannot read: {exc}") from None
        variables.update({name: value or "" for name, value in entries.items()})
    for item in selection.variables:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SelectionError(f"--var {item!r}: expected KEY=VALUE")
        variables[name] = value
    for name, value in variables.items():
        if "\0" in name or "\0" in value:
            raise SelectionError(f"variable {name[:40]!r}: NUL characters are not allowed")
    return variables


def git_commit(path: Path) -> tuple[str | None, str | None]:
    """The commit (``HEAD``) and branch name of the git checkout holding ``path``; None for each not known."""
    if str(path) == "-":
        return None, None
    folder = path.resolve().parent
    sha = _git(folder, "rev-parse", "--verify", "-q", "HEAD")
    ref = _git(folder, "symbolic-ref", "--short", "-q", "HEAD") if sha else None
    return sha, ref


def _git(folder: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                timeout=_GIT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = result.stdout.strip()
    return text if result.returncode == 0 and text else None
