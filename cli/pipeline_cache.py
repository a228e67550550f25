"""The ``cache`` key of a pipeline job (or of ``defaults``): folders kept on this machine across runs under a key.

::

    cache:
      key: deps-$CI_JOB_NAME        # a string (the job's variables are expanded), or
      # key: {files: [package-lock.json]}   # a hash of these files' content as the job starts (1 to 20)
      paths: [node_modules/]        # relative to the working dir, at least one
      policy: pull-push             # pull-push (default), pull (restore only) or push (save only)

``key`` defaults to ``default``. What the worker does with it: :mod:`executors.job_cache`.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import yaml

from cli.pipeline_checker import Checker
from executors.cache_store import path_problem

POLICIES = ("pull-push", "pull", "push")
MAX_KEY_CHARS = 250
MAX_KEY_FILES = 20
MAX_PATHS = 50
_CACHE_KEYS = {"key", "paths", "policy"}
_KEY_FILES_KEYS = {"files"}


def check_cache(checker: Checker, fields: dict[str, yaml.Node], key: str) -> dict[str, Any] | None:
    """The job's cache as the wire's ``CacheDTO`` dict (camelCase), every problem recorded at its line; None when
    it has none or it is wrong."""
    node = fields.get("cache")
    if node is None:
        return None
    full = f"{key}.cache"
    cache = checker.mapping(node, full, _CACHE_KEYS)
    if cache is None:
        return None
    before = len(checker.problems.found)
    found = {"key": _key(checker, cache, full),
             "paths": _paths(checker, cache, "paths", full, node, MAX_PATHS),
             "policy": checker.choice(cache, "policy", full, POLICIES) or "pull-push"}
    return found if len(checker.problems.found) == before else None


def _key(checker: Checker, cache: dict[str, yaml.Node], full: str) -> str | dict[str, list[str]]:
    node = cache.get("key")
    if node is None:
        return "default"
    if isinstance(node, yaml.MappingNode):
        files = checker.mapping(node, f"{full}.key", _KEY_FILES_KEYS)
        if files is None:
            return "default"
        return {"files": _paths(checker, files, "files", f"{full}.key", node, MAX_KEY_FILES)}
    text = str(node.value) if isinstance(node, yaml.ScalarNode) else ""
    if not text.strip() or len(text) > MAX_KEY_CHARS or any(unicodedata.category(char).startswith("C")
                                                            for char in text):
        checker.problems.at(node, f"{full}.key", f"must be a string of 1 to {MAX_KEY_CHARS} characters without "
                            "control characters, or {files: [FILE, ...]}")
    return text


def _paths(checker: Checker, fields: dict[str, yaml.Node], name: str, key: str, parent: yaml.Node,
           most: int) -> list[str]:
    """A list of 1 to ``most`` relative paths inside the working dir."""
    node = fields.get(name)
    if node is None:
        checker.problems.at(parent, f"{key}.{name}", "missing")
        return []
    paths, lines = checker.strings_with_lines(fields, name, key)
    if not isinstance(node, yaml.SequenceNode):
        return []
    if not 1 <= len(node.value) <= most:
        checker.problems.at(node, f"{key}.{name}", f"must list 1 to {most} paths")
    for index, (path, item) in enumerate(zip(paths, lines, strict=True)):
        if problem := path_problem(path):
            checker.problems.add(item, f"{key}.{name}[{index}]", f"{path!r}: {problem}")
    return paths
