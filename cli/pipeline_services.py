"""The ``services`` key of a pipeline job: service containers beside the job (stub: filled in by issue 13)."""

from __future__ import annotations

from typing import Any

import yaml

from cli.pipeline_checker import Checker


def check_services(checker: Checker, fields: dict[str, yaml.Node], key: str) -> list[dict[str, Any]]:
    """The job's services as the wire's ``ServiceDTO`` dicts (camelCase), every problem recorded at its line."""
    return []
