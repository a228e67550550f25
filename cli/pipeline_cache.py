"""The ``cache`` key of a pipeline job: folders kept across runs under a key (stub: filled in by issue 13)."""

from __future__ import annotations

from typing import Any

import yaml

from cli.pipeline_checker import Checker


def check_cache(checker: Checker, fields: dict[str, yaml.Node], key: str) -> dict[str, Any] | None:
    """The job's cache as the wire's ``CacheDTO`` dict (camelCase), every problem recorded at its line."""
    return None
