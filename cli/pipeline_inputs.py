"""The ``inputs`` key of a pipeline job: the files whose content decides whether the job may be reused (stub)."""

from __future__ import annotations

import yaml

from cli.pipeline_checker import Checker


def check_inputs(checker: Checker, fields: dict[str, yaml.Node], key: str) -> list[str]:
    """The job's input globs, every problem recorded at its line."""
    return checker.strings(fields, "inputs", key)
