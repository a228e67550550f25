"""Typed reads of a pipeline file's YAML nodes, each problem recorded at the line of the key at fault."""

from __future__ import annotations

import yaml
from yaml.constructor import SafeConstructor

from cli.pipeline_yaml import Problems, did_you_mean

_CORE = "tag:yaml.org,2002:"
_MAX_NUMBER_CHARS = 32  # longer digit strings are refused before int() sees them


def _scalar_value(node: yaml.ScalarNode) -> object:
    """The value of a scalar under its (resolved or explicit) tag; raises on nonsense like ``!!int "abc"``."""
    if node.tag == _CORE + "int":
        return SafeConstructor().construct_yaml_int(node)
    if node.tag == _CORE + "bool":
        return SafeConstructor().construct_yaml_bool(node)
    return node.value


class Checker:
    """Reads mappings, strings, lists and numbers out of nodes; never raises, records problems instead."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def mapping(self, node: yaml.Node, key: str, allowed: set[str],
                ignore_prefix: str | None = None) -> dict[str, yaml.Node] | None:
        """``node``'s keys and values; unknown keys (with a suggestion) and repeated ones are problems."""
        if not isinstance(node, yaml.MappingNode):
            self.problems.at(node, key or "(top level)", "must be a mapping")
            return None
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.at(key_node, key or "(top level)", "a key must be a plain name")
                continue
            name = str(key_node.value)
            full = f"{key}.{name}" if key else name
            if ignore_prefix and name.startswith(ignore_prefix):
                continue
            if name not in allowed:
                self.problems.at(key_node, full, "unknown key" + (did_you_mean(name, allowed) or
                                                                  f" (allowed: {', '.join(sorted(allowed))})"))
            elif name in found:
                self.problems.at(key_node, full, "given twice")
            else:
                found[name] = value_node
        return found

    def string(self, fields: dict[str, yaml.Node], name: str, key: str, parent: yaml.Node,
               required: bool = True) -> str | None:
        node = fields.get(name)
        full = f"{key}.{name}" if key else name
        if node is None:
            if required:
                self.problems.at(parent, full, "missing")
            return None
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            self.problems.at(node, full, "must be a non-empty string")
            return None
        return str(node.value)

    def strings(self, fields: dict[str, yaml.Node], name: str, key: str) -> list[str]:
        return self.strings_with_lines(fields, name, key)[0]

    def strings_with_lines(self, fields: dict[str, yaml.Node], name: str, key: str) -> tuple[list[str], list[int]]:
        """A list of strings (a single string for the script keys) and the line of each."""
        node = fields.get(name)
        if node is None:
            return [], []
        if isinstance(node, yaml.ScalarNode) and name.endswith("script"):
            return [str(node.value)], [node.start_mark.line + 1]
        if not isinstance(node, yaml.SequenceNode):
            self.problems.at(node, f"{key}.{name}", "must be a list of strings")
            return [], []
        values, lines = [], []
        for index, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode):
                values.append(str(item.value))
                lines.append(item.start_mark.line + 1)
            else:
                self.problems.at(item, f"{key}.{name}[{index}]", "must be a string (quote a line that contains "
                                                                 "': ' or starts with '{', '[' or '-')")
        return values, lines

    def integer(self, fields: dict[str, yaml.Node], name: str, key: str, low: int, high: int) -> int | None:
        node = fields.get(name)
        if node is None:
            return None
        value = self._value(node)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            self.problems.at(node, f"{key}.{name}", f"must be a whole number from {low} to {high}")
            return None
        return value

    def boolean(self, fields: dict[str, yaml.Node], name: str, key: str) -> bool:
        node = fields.get(name)
        if node is None:
            return False
        value = self._value(node)
        if not isinstance(value, bool):
            self.problems.at(node, f"{key}.{name}", "must be true or false")
            return False
        return value

    def choice(self, fields: dict[str, yaml.Node], name: str, key: str, allowed: tuple[str, ...]) -> str | None:
        node = fields.get(name)
        if node is None:
            return None
        value = node.value if isinstance(node, yaml.ScalarNode) else None
        if value not in allowed:
            shown = repr(value) if isinstance(value, str) else "this"
            hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
            self.problems.at(node, f"{key}.{name}", f"{shown} is not one of {', '.join(allowed)}{hint}")
            return None
        return str(value)

    def variables(self, fields: dict[str, yaml.Node], key: str) -> dict[str, str]:
        """``variables`` (or its older name ``env``): names to plain values (numbers and booleans as written)."""
        if "variables" in fields and "env" in fields:
            self.problems.at(fields["env"], f"{key}.env" if key else "env",
                             "give either variables or env (its older name), not both")
        name = "variables" if "variables" in fields else "env"
        node = fields.get(name)
        full = f"{key}.{name}" if key else name
        if node is None:
            return {}
        if not isinstance(node, yaml.MappingNode) or not all(
                isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode) for k, v in node.value):
            self.problems.at(node, full, "must map names to plain values")
            return {}
        found: dict[str, str] = {}
        for k, v in node.value:
            variable = str(k.value)
            if not variable or "=" in variable:
                self.problems.at(k, f"{full}.{variable}", "a variable name cannot be empty or hold '='")
            found[variable] = "" if v.tag == _CORE + "null" else str(v.value)
        return found

    @staticmethod
    def _value(node: yaml.Node) -> object:
        if not isinstance(node, yaml.ScalarNode) or len(str(node.value)) > _MAX_NUMBER_CHARS:
            return None
        try:
            return _scalar_value(node)
        except Exception:  # noqa: BLE001 - any nonsense under an explicit tag is the file's problem, reported
            return None
