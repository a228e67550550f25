"""The ``inputs`` key of a pipeline job: the files whose content decides whether the job may be reused.

A list of globs relative to the pipeline file's folder (the project folder that seeds the workspace), with the
meaning of artifact patterns (``*``, ``?``, ``**``, a folder takes everything under it): non-empty, not
absolute, no ``..`` part, at most as many as a job may have artifact patterns. A job that declares them gets a
reuse key (:mod:`flows.reuse_keys`); one without them always runs.
"""

from __future__ import annotations

import yaml

from cli.pipeline_checker import Checker
from core.models import MAX_ARTIFACT_PATTERNS
from executors.artifact_patterns import pattern_problem


def check_inputs(checker: Checker, fields: dict[str, yaml.Node], key: str) -> list[str]:
    """The job's input globs, every problem recorded at its line."""
    node = fields.get("inputs")
    globs, lines = checker.strings_with_lines(fields, "inputs", key)
    if node is None:
        return []
    if isinstance(node, yaml.SequenceNode) and not node.value:
        checker.problems.at(node, f"{key}.inputs", "must list at least one glob (without the key the job always runs)")
    if len(globs) > MAX_ARTIFACT_PATTERNS:
        checker.problems.at(node, f"{key}.inputs", f"at most {MAX_ARTIFACT_PATTERNS} globs")
    for index, (glob, line) in enumerate(zip(globs, lines, strict=True)):
        if problem := pattern_problem(glob, "input", "the pipeline file's folder"):
            checker.problems.add(line, f"{key}.inputs[{index}]", problem)
    return globs

