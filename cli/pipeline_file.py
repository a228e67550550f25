"""Pipeline files (``cicd-worker run PIPELINE.yaml``): parse, validate, report every error with its line.

Format, as CI/CD users of this system write it::

    name: demo
    stages:                       # ordered
      - name: build
        jobs:
          - name: compile
            image: cicd-busybox:latest
            script: ["echo hi"]
            needs: [other-job]    # optional; without it a job waits for every job of earlier stages
            allow_failure: false
            artifacts: ["dist/*"]
            working_dir: src
            env: {KEY: value}
            timeout: 600          # seconds
            retries: 1

Validation never stops at the first problem: every error is collected with the file, line and key
(``pipeline.yaml:12: stages[0].jobs[1].image: missing``) before anything runs.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.models import JobDTO
from flows.planning import JobNode, PlanningError, build_graph, levels

_TOP_KEYS = {"name", "stages"}
_STAGE_KEYS = {"name", "jobs"}
_CONTROL_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}  # control characters (newlines too), separators, surrogates
_MAX_NAME_BYTES = 200  # a folder name: most file systems stop at 255 bytes
_JOB_KEYS = {"name", "image", "script", "needs", "allow_failure", "artifacts", "working_dir", "env", "timeout",
             "retries"}


@dataclass
class FileJob:
    """One job of a pipeline file, validated."""

    name: str
    stage: str
    stage_order: int
    image: str
    script: list[str]
    needs: list[str] = field(default_factory=list)
    allow_failure: bool = False
    artifacts: list[str] = field(default_factory=list)
    working_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    retries: int | None = None
    line: int = 0

    def to_admin(self) -> dict[str, Any]:
        """The job as the reference backend's ``POST /admin/pipeline-runs`` takes it."""
        return {"name": self.name, "dockerImage": self.image, "script": self.script, "stageOrder": self.stage_order,
                "needs": self.needs, "allowFailure": self.allow_failure, "artifacts": self.artifacts,
                "workingDir": self.working_dir, "env": self.env or None, "timeoutSeconds": self.timeout,
                "retries": self.retries}


@dataclass
class PipelineFile:
    """A validated pipeline file."""

    path: Path
    name: str
    stages: list[str]
    jobs: list[FileJob]

    def plan_levels(self) -> list[list[str]]:
        """Job names level by level: the order in which jobs can start (for ``--dry-run``)."""
        graph = build_graph(_nodes(self.jobs))
        return levels(graph)


class PipelineFileError(ValueError):
    """Every problem found in a pipeline file, one ``file:line: key: message`` per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _nodes(jobs: list[FileJob]) -> list[JobNode]:
    return [JobNode(id=job.name, name=job.name, dependencies=tuple(job.needs), stage_order=job.stage_order)
            for job in jobs]


class _Checker:
    """Walks the YAML node tree (which keeps line numbers) and collects problems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def error(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.path}:{line}: {key}: {message}")

    def mapping(self, node: yaml.Node, key: str, allowed: set[str]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, key, "must be a mapping")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            if name not in allowed:
                self.error(key_node, f"{key}.{name}" if key else name,
                           f"unknown key (allowed: {', '.join(sorted(allowed))})")
            elif name in found:
                self.error(key_node, f"{key}.{name}" if key else name, "given twice")
            else:
                found[name] = value_node
        return found

    def string(self, fields: dict[str, yaml.Node], name: str, key: str, parent: yaml.Node,
               required: bool = True) -> str | None:
        node = fields.get(name)
        if node is None:
            if required:
                self.error(parent, f"{key}.{name}" if key else name, "missing")
            return None
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            self.error(node, f"{key}.{name}" if key else name, "must be a non-empty string")
            return None
        return str(node.value)

    def strings(self, fields: dict[str, yaml.Node], name: str, key: str) -> list[str]:
        node = fields.get(name)
        if node is None:
            return []
        if isinstance(node, yaml.ScalarNode) and name == "script":
            return [str(node.value)]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{key}.{name}", "must be a list of strings")
            return []
        for index, item in enumerate(node.value):
            if not isinstance(item, yaml.ScalarNode):
                self.error(item, f"{key}.{name}[{index}]", "must be a string (quote a line that contains ': ' "
                                                          "or starts with '{', '[' or '-')")
        return [str(item.value) for item in node.value if isinstance(item, yaml.ScalarNode)]

    def integer(self, fields: dict[str, yaml.Node], name: str, key: str, low: int, high: int) -> int | None:
        node = fields.get(name)
        if node is None:
            return None
        value = yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.error(node, f"{key}.{name}", f"must be a whole number from {low} to {high}")
            return None
        return value

    def boolean(self, fields: dict[str, yaml.Node], name: str, key: str) -> bool:
        node = fields.get(name)
        if node is None:
            return False
        value = yaml.safe_load(yaml.serialize(node)) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            self.error(node, f"{key}.{name}", "must be true or false")
            return False
        return value

    def env(self, fields: dict[str, yaml.Node], key: str) -> dict[str, str]:
        node = fields.get("env")
        if node is None:
            return {}
        if not isinstance(node, yaml.MappingNode) or not all(
                isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode) for k, v in node.value):
            self.error(node, f"{key}.env", "must map names to plain values")
            return {}
        return {str(k.value): str(v.value) for k, v in node.value}


def job_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a job name, or None. A local run writes each job's artifacts to a folder named
    after the job (``artifacts/<job>/``), so a name must be one harmless path component."""
    if "/" in name or "\\" in name or ".." in name or name == ".":
        return f"invalid job name {name!r}: no '/', '\\', '..' (a job name is a folder name of a local run)"
    if any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in name):
        return f"invalid job name {name!r}: no control characters or line breaks"
    if len(name.encode()) > _MAX_NAME_BYTES:
        return f"invalid job name: longer than {_MAX_NAME_BYTES} bytes"
    return None


def _check_job(checker: _Checker, node: yaml.Node, key: str, stage: str, order: int) -> FileJob | None:
    fields = checker.mapping(node, key, _JOB_KEYS)
    if fields is None:
        return None
    name = checker.string(fields, "name", key, node)
    if name is not None and (problem := job_name_problem(name)):
        checker.error(fields["name"], f"{key}.name", problem)
    image = checker.string(fields, "image", key, node)
    if image is not None:
        try:
            JobDTO(name="x", docker_image=image)
        except ValidationError:
            checker.error(fields["image"], f"{key}.image", f"not a valid image reference: {image!r}")
            image = None
    if "script" not in fields:
        checker.error(node, f"{key}.script", "missing")
    job = FileJob(
        name=name or "", stage=stage, stage_order=order, image=image or "",
        script=checker.strings(fields, "script", key), needs=checker.strings(fields, "needs", key),
        allow_failure=checker.boolean(fields, "allow_failure", key),
        artifacts=checker.strings(fields, "artifacts", key),
        working_dir=checker.string(fields, "working_dir", key, node, required=False),
        env=checker.env(fields, key), timeout=checker.integer(fields, "timeout", key, 1, 7 * 24 * 3600),
        retries=checker.integer(fields, "retries", key, 0, 20), line=node.start_mark.line + 1)
    return job if name else None  # kept even when other keys are wrong, so that graph errors show too


def _check_stages(checker: _Checker, top: dict[str, yaml.Node], root: yaml.Node) -> tuple[list[str], list[FileJob]]:
    node = top.get("stages")
    if node is None:
        checker.error(root, "stages", "missing")
        return [], []
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        checker.error(node, "stages", "must be a non-empty list of stages")
        return [], []
    stages, jobs = [], []
    for index, stage_node in enumerate(node.value):
        key = f"stages[{index}]"
        fields = checker.mapping(stage_node, key, _STAGE_KEYS)
        if fields is None:
            continue
        stage = checker.string(fields, "name", key, stage_node) or f"stage-{index}"
        stages.append(stage)
        jobs_node = fields.get("jobs")
        if not isinstance(jobs_node, yaml.SequenceNode) or not jobs_node.value:
            checker.error(jobs_node or stage_node, f"{key}.jobs", "must be a non-empty list of jobs")
            continue
        for job_index, job_node in enumerate(jobs_node.value):
            job = _check_job(checker, job_node, f"{key}.jobs[{job_index}]", stage, index)
            if job is not None:
                jobs.append(job)
    return stages, jobs


def _check_graph(checker: _Checker, jobs: list[FileJob]) -> None:
    """Duplicate names, unknown or self ``needs``, cycles — named by job, at the job's line."""
    by_name: dict[str, FileJob] = {}
    for job in jobs:
        if job.name in by_name:
            checker.problems.append(f"{checker.path}:{job.line}: {job.name}: job name used twice "
                                    f"(first at line {by_name[job.name].line})")
        by_name.setdefault(job.name, job)
    for job in jobs:
        for need in job.needs:
            if need == job.name:
                checker.problems.append(f"{checker.path}:{job.line}: {job.name}.needs: a job cannot need itself")
            elif need not in by_name:
                checker.problems.append(f"{checker.path}:{job.line}: {job.name}.needs: unknown job {need!r}")
    # Cycles are looked for among what is left, so that they show together with the errors above.
    known = [FileJob(**{**vars(job), "needs": [n for n in job.needs if n in by_name and n != job.name]})
             for job in by_name.values()]
    try:
        build_graph(_nodes(known))
    except PlanningError as exc:
        line = by_name[exc.jobs[0]].line if exc.jobs and exc.jobs[0] in by_name else 1
        checker.problems.extend(f"{checker.path}:{line}: needs: {problem}" for problem in exc.problems)


def load_pipeline_file(path: Path) -> PipelineFile:
    """Parse and validate; raises :class:`PipelineFileError` listing every problem found."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PipelineFileError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise PipelineFileError([f"{where}: YAML syntax error: {exc.problem or exc}"]) from exc
    checker = _Checker(path)
    if root is None:
        raise PipelineFileError([f"{path}:1: the file is empty"])
    top = checker.mapping(root, "", _TOP_KEYS) or {}
    name = checker.string(top, "name", "", root) or path.stem
    stages, jobs = _check_stages(checker, top, root)
    _check_graph(checker, jobs)
    if checker.problems:
        raise PipelineFileError(checker.problems)
    return PipelineFile(path=path, name=name, stages=stages, jobs=jobs)
