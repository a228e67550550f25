"""Pipeline files (``cicd-worker run PIPELINE.yaml``): parse, validate, report every error with its line.

The format is described key by key in the README ("Pipeline files"). Reading the YAML safely (size, depth,
tags, encoding, ``<<`` merge keys) is :mod:`cli.pipeline_yaml`; the keys are checked here, matrices expanded by
:mod:`cli.pipeline_matrix`, the graph checked by :mod:`cli.pipeline_graph`. Validation never stops at the first
problem: every problem is collected with its line, at the key at fault (``pipeline.yaml:12:
stages[0].jobs[1].imgae: unknown key (did you mean 'image'?)``), before anything runs.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cli.pipeline_cache import check_cache
from cli.pipeline_checker import Checker
from cli.pipeline_graph import check_graph
from cli.pipeline_inputs import check_inputs
from cli.pipeline_matrix import Expansion, Matrix, check_parallel, expand
from cli.pipeline_services import check_services
from cli.pipeline_yaml import FileUnreadable, Problems, compose, read_text
from core.models import JobDTO

WHEN_VALUES = ("on_success", "on_failure", "always", "manual")
_TOP_KEYS = {"name", "stages", "variables", "env", "defaults"}
_STAGE_KEYS = {"name", "jobs"}
_DEFAULT_KEYS = {"image", "before_script", "after_script", "variables", "env", "timeout", "retries", "cache"}
_JOB_KEYS = {"name", "image", "script", "before_script", "after_script", "needs", "allow_failure", "artifacts",
             "working_dir", "variables", "env", "timeout", "retries", "when", "services", "cache", "inputs",
             "parallel"}
_CONTROL_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # control and format characters, line breaks, surrogates
_MAX_NAME_BYTES = 200  # a folder name: most file systems stop at 255 bytes
_DTO_FIELD_KEYS = {"docker_image": "image", "script": "script", "before_script": "before_script",
                   "after_script": "after_script", "env": "variables", "artifacts": "artifacts", "name": "name"}


@dataclass
class FileJob:
    """One job of a pipeline file, validated, its ``defaults`` applied."""

    name: str
    stage: str
    stage_order: int
    image: str
    script: list[str]
    needs: list[str] = field(default_factory=list)
    allow_failure: bool = False
    artifacts: list[str] = field(default_factory=list)
    working_dir: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    """The job's own variables over ``defaults.variables`` (the file's top-level ones are separate)."""
    timeout: int | None = None
    retries: int | None = None
    before_script: list[str] = field(default_factory=list)
    after_script: list[str] = field(default_factory=list)
    when: str = "on_success"
    services: list[dict[str, Any]] = field(default_factory=list)
    """The wire's ``ServiceDTO`` dicts (:mod:`cli.pipeline_services`)."""
    cache: dict[str, Any] | None = None
    """The wire's ``CacheDTO`` dict (:mod:`cli.pipeline_cache`)."""
    inputs: list[str] = field(default_factory=list)
    """Globs of the files whose content decides whether the job may be reused (:mod:`cli.pipeline_inputs`)."""
    line: int = 0
    need_lines: list[int] = field(default_factory=list)
    matrix: Matrix | None = None
    """The ``parallel`` key read; None once the job is expanded (:mod:`cli.pipeline_matrix`)."""
    expansion: Expansion | None = None
    """Set on each job a matrix made: which job's matrix, with which values."""

    @property
    def env(self) -> dict[str, str]:
        """The job's variables (``env`` is the older name of ``variables``)."""
        return self.variables

    def to_admin(self, variables: dict[str, str] | None = None) -> dict[str, Any]:
        """The job as the reference backend's ``POST /admin/pipeline-runs`` takes it, with ``variables`` (the
        run's, already merged with the job's) as its env."""
        env = self.variables if variables is None else variables
        return {"name": self.name, "dockerImage": self.image, "script": self.script, "stageOrder": self.stage_order,
                "needs": self.needs, "allowFailure": self.allow_failure, "artifacts": self.artifacts,
                "workingDir": self.working_dir, "env": env or None, "timeoutSeconds": self.timeout,
                "retries": self.retries, "beforeScript": self.before_script or None,
                "afterScript": self.after_script or None, "when": self.when,
                "services": self.services or None, "cache": self.cache, "inputs": self.inputs or None}


@dataclass
class PipelineFile:
    """A validated pipeline file."""

    path: Path
    name: str
    stages: list[str]
    jobs: list[FileJob]
    variables: dict[str, str] = field(default_factory=dict)
    """The file's top-level ``variables``."""
    commit_sha: str | None = None
    """``HEAD`` of the git checkout the file is in (set for a run)."""

    def job_variables(self, job: FileJob) -> dict[str, str]:
        """The variables of ``job``: the top-level ones under its own (and its defaults')."""
        return {**self.variables, **job.variables}


class PipelineFileError(ValueError):
    """Every problem found in a pipeline file, one ``file:line: key: message`` per line (sorted, capped)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def name_problem(name: str, what: str = "job name") -> str | None:
    """Why ``name`` cannot be a job (or stage) name, or None. A local run writes each job's artifacts to a folder
    named after the job (``artifacts/<job>/``), and names are printed at the start of output lines, so a name
    must be one harmless path component without control characters."""
    if "/" in name or "\\" in name or ".." in name or name == ".":
        return f"invalid {what} {name!r}: no '/', '\\', '..' (a job name is a folder name of a local run)"
    if any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in name):
        return f"invalid {what} {name!r}: no control characters or line breaks"
    if len(name.encode()) > _MAX_NAME_BYTES:
        return f"invalid {what}: longer than {_MAX_NAME_BYTES} bytes"
    return None


@dataclass
class _Defaults:
    image: str | None = None
    before_script: list[str] = field(default_factory=list)
    after_script: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    retries: int | None = None
    cache: dict[str, Any] | None = None


def _check_defaults(checker: Checker, top: dict[str, yaml.Node]) -> _Defaults:
    node = top.get("defaults")
    if node is None:
        return _Defaults()
    fields = checker.mapping(node, "defaults", _DEFAULT_KEYS)
    if fields is None:
        return _Defaults()
    return _Defaults(
        image=checker.string(fields, "image", "defaults", node, required=False),
        before_script=checker.strings(fields, "before_script", "defaults"),
        after_script=checker.strings(fields, "after_script", "defaults"),
        variables=checker.variables(fields, "defaults"),
        timeout=checker.integer(fields, "timeout", "defaults", 1, 7 * 24 * 3600),
        retries=checker.integer(fields, "retries", "defaults", 0, 20),
        cache=check_cache(checker, fields, "defaults"))


def _check_script(checker: Checker, fields: dict[str, yaml.Node], key: str, node: yaml.Node) -> list[str]:
    if "script" not in fields:
        checker.problems.at(node, f"{key}.script", "missing")
        return []
    script = checker.strings(fields, "script", key)
    if not any(line.strip() for line in script) and not isinstance(fields["script"], yaml.MappingNode):
        checker.problems.at(fields["script"], f"{key}.script", "must hold at least one command")
    return script


def _check_job(checker: Checker, node: yaml.Node, key: str, stage: str, order: int,
               defaults: _Defaults) -> FileJob | None:
    fields = checker.mapping(node, key, _JOB_KEYS)
    if fields is None:
        return None
    name = checker.string(fields, "name", key, node)
    if name is not None and (problem := name_problem(name)):
        checker.problems.at(fields["name"], f"{key}.name", problem)
    image = checker.string(fields, "image", key, node, required=defaults.image is None) or defaults.image
    needs, need_lines = checker.strings_with_lines(fields, "needs", key)
    job = FileJob(
        name=name or "", stage=stage, stage_order=order, image=image or "",
        script=_check_script(checker, fields, key, node), needs=needs, need_lines=need_lines,
        allow_failure=checker.boolean(fields, "allow_failure", key),
        artifacts=checker.strings(fields, "artifacts", key),
        working_dir=checker.string(fields, "working_dir", key, node, required=False),
        variables={**defaults.variables, **checker.variables(fields, key)},
        timeout=checker.integer(fields, "timeout", key, 1, 7 * 24 * 3600) or defaults.timeout,
        retries=_first(checker.integer(fields, "retries", key, 0, 20), defaults.retries),
        before_script=checker.strings(fields, "before_script", key) if "before_script" in fields
        else defaults.before_script,
        after_script=checker.strings(fields, "after_script", key) if "after_script" in fields
        else defaults.after_script,
        when=checker.choice(fields, "when", key, WHEN_VALUES) or "on_success",
        services=check_services(checker, fields, key),
        cache=check_cache(checker, fields, key) if "cache" in fields else defaults.cache,
        inputs=check_inputs(checker, fields, key), matrix=check_parallel(checker, fields, key),
        line=fields.get("name", node).start_mark.line + 1)
    _check_dto(checker, job, fields, key, node)
    return job if name else None  # kept even when other keys are wrong, so that graph errors show too


def _first(value: int | None, default: int | None) -> int | None:
    return value if value is not None else default


def _check_dto(checker: Checker, job: FileJob, fields: dict[str, yaml.Node], key: str, node: yaml.Node) -> None:
    """What the wire model would refuse (image reference, sizes, NUL characters), at the key's line."""
    if not job.image or not job.name:
        return
    try:
        JobDTO(name=job.name, docker_image=job.image, script=job.script, before_script=job.before_script,
               after_script=job.after_script, env=job.variables, artifacts=job.artifacts)
    except ValidationError as exc:
        for error in exc.errors():
            field_name = str(error["loc"][0]) if error["loc"] else ""
            if field_name == "name":  # name_problem said it already, at the name's line
                continue
            yaml_key = _DTO_FIELD_KEYS.get(field_name, field_name)
            where = fields.get(yaml_key) or fields.get("env") or node
            message = str(error["msg"]).removeprefix("Value error, ")
            checker.problems.at(where, f"{key}.{yaml_key}", message)


def _check_stages(checker: Checker, top: dict[str, yaml.Node], root: yaml.Node,
                  defaults: _Defaults) -> tuple[list[str], list[FileJob]]:
    node = top.get("stages")
    if node is None:
        checker.problems.at(root, "stages", "missing")
        return [], []
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        checker.problems.at(node, "stages", "must be a non-empty list of stages")
        return [], []
    stages: list[str] = []
    jobs: list[FileJob] = []
    for index, stage_node in enumerate(node.value):
        key = f"stages[{index}]"
        fields = checker.mapping(stage_node, key, _STAGE_KEYS)
        if fields is None:
            continue
        stage = checker.string(fields, "name", key, stage_node) or f"stage-{index}"
        if "name" in fields and (problem := name_problem(stage, "stage name")):
            checker.problems.at(fields["name"], f"{key}.name", problem)
        elif stage in stages:
            checker.problems.at(fields.get("name"), f"{key}.name",
                                f"stage name {stage!r} used twice (first as stages[{stages.index(stage)}])")
        stages.append(stage)
        jobs_node = fields.get("jobs")
        if not isinstance(jobs_node, yaml.SequenceNode) or not jobs_node.value:
            checker.problems.at(jobs_node or stage_node, f"{key}.jobs", "must be a non-empty list of jobs")
            continue
        for job_index, job_node in enumerate(jobs_node.value):
            job = _check_job(checker, job_node, f"{key}.jobs[{job_index}]", stage, index, defaults)
            if job is not None:
                jobs.append(job)
    return stages, jobs


def _expanded(job: FileJob, name: str, expansion: Expansion) -> FileJob:
    """One job of ``job``'s matrix: its name, and the matrix's values over its variables."""
    return dataclasses.replace(job, name=name, variables={**job.variables, **expansion.variables}, matrix=None,
                               expansion=expansion)


def load_pipeline_file(path: Path) -> PipelineFile:
    """Parse and validate (``-``: standard input); raises :class:`PipelineFileError` listing every problem."""
    problems = Problems(path)
    try:
        root = compose(read_text(path, problems), problems)
    except FileUnreadable as exc:
        raise PipelineFileError(exc.problems.lines()) from None
    if root is None:
        problems.add(1, "", "the file is empty")
        raise PipelineFileError(problems.lines())
    checker = Checker(problems)
    top = checker.mapping(root, "", _TOP_KEYS, ignore_prefix="x-") or {}
    name = checker.string(top, "name", "", root, required=False) or path.stem
    if "name" in top and (problem := name_problem(name, "pipeline name")):
        problems.at(top["name"], "name", problem)
    variables = checker.variables(top, "")
    stages, jobs = _check_stages(checker, top, root, _check_defaults(checker, top))
    jobs = expand(problems, jobs, name_problem, _expanded)
    check_graph(problems, jobs)
    if problems.found:
        raise PipelineFileError(problems.lines())
    return PipelineFile(path=path, name=name, stages=stages, jobs=jobs, variables=variables)
