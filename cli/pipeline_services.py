"""The ``services`` key of a pipeline job: service containers beside the job, reached by alias.

::

    services:
      - image: postgres:16                        # required (a plain string is short for this)
        alias: db                                 # optional: derived from the image (postgres)
        command: ["postgres", "-c", "fsync=off"]  # optional: a list, the command and its arguments
        variables: {POSTGRES_PASSWORD: x}         # optional (``env`` accepted too)

At most ``MAX_SERVICES``; two services under one alias, or an alias that is not a host name, are refused.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from cli.pipeline_checker import Checker
from core.models import ServiceDTO
from executors.job_services import default_alias, valid_alias

MAX_SERVICES = 10
_SERVICE_KEYS = {"image", "alias", "command", "variables", "env"}


def check_services(checker: Checker, fields: dict[str, yaml.Node], key: str) -> list[dict[str, Any]]:
    """The job's services as the wire's ``ServiceDTO`` dicts (camelCase), every problem recorded at its line."""
    node = fields.get("services")
    if node is None:
        return []
    full = f"{key}.services"
    if not isinstance(node, yaml.SequenceNode):
        checker.problems.at(node, full, "must be a list of services (each a mapping with at least an image)")
        return []
    if len(node.value) > MAX_SERVICES:
        checker.problems.at(node, full, f"at most {MAX_SERVICES} services per job ({len(node.value)} given)")
        return []
    services: list[dict[str, Any]] = []
    aliases: dict[str, int] = {}
    for index, item in enumerate(node.value):
        service = _check_service(checker, item, f"{full}[{index}]")
        if service is None:
            continue
        alias = service.get("alias") or default_alias(service["image"])
        if alias in aliases:
            checker.problems.at(item, f"{full}[{index}]", f"alias {alias!r} is already the one of "
                                f"{full}[{aliases[alias]}]: give each service its own alias")
        aliases.setdefault(alias, index)
        services.append(service)
    return services


def _check_service(checker: Checker, node: yaml.Node, key: str) -> dict[str, Any] | None:
    """One service as a wire dict; None when it is unusable (the problems are recorded)."""
    fields: dict[str, yaml.Node] | None = {"image": node}  # ``- postgres:16``: the image alone
    if not isinstance(node, yaml.ScalarNode):
        fields = checker.mapping(node, key, _SERVICE_KEYS)
    if fields is None:
        return None
    image = checker.string(fields, "image", key, node)
    alias = checker.string(fields, "alias", key, node, required=False)
    if alias is not None and not valid_alias(alias):
        checker.problems.at(fields["alias"], f"{key}.alias", f"{alias!r} is not a valid host name (lower-case "
                            "letters, digits and inner hyphens, at most 63)")
        return None
    service: dict[str, Any] = {"image": image, "alias": alias, "command": checker.strings(fields, "command", key)
                               or None, "env": checker.variables(fields, key) or None}
    if image is None:
        return None
    try:
        ServiceDTO.model_validate(service)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "image"
            where = fields.get(name) or fields.get("variables") or node
            checker.problems.at(where, f"{key}.{name}", str(error["msg"]).removeprefix("Value error, "))
        return None
    return {name: value for name, value in service.items() if value is not None}
