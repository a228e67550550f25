"""Reading a pipeline file into a YAML node tree safely, and collecting problems with their lines.

Every input may be hostile: the file is size-bound, decoded as UTF-8 (a bad byte is reported at its line),
its nesting depth is measured on the parser's event stream (iterative) before the recursive composer sees
it, only the standard tags are accepted, and ``<<`` merge keys are resolved here (the node tree keeps line
numbers, which the constructed Python objects would lose). Aliases share their anchor's node, so a job or a
list reused with ``*name`` is read once per use, bounded by the file's size.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64  # a pipeline file needs about 8 levels
MAX_SHOWN = 50
STDIN = Path("-")
_CORE = "tag:yaml.org,2002:"
_STANDARD_TAGS = {_CORE + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge",
                                            "timestamp", "value")}
MERGE_TAG = _CORE + "merge"
# libyaml's parser when PyYAML was built with it: several times faster on large files. Its composer recurses,
# which is why the depth is measured first, on the (iterative) event stream.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    return _suggestion(word, tuple(choices))


@functools.lru_cache(maxsize=256)
def _suggestion(word: str, choices: tuple[str, ...]) -> str:
    # Cached: a file that names the same unknown job 2,000 times compares it with every job name once.
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Problems:
    """Problems of one file, each at a line: shown sorted by line, duplicates merged, at most 50."""

    path: Path
    found: list[tuple[int, str]] = field(default_factory=list)

    @property
    def shown_path(self) -> str:
        return "<stdin>" if self.path == STDIN else str(self.path)

    def add(self, line: int, key: str, message: str) -> None:
        self.found.append((line, f"{key}: {message}" if key else message))

    def at(self, node: yaml.Node | None, key: str, message: str) -> None:
        self.add(node.start_mark.line + 1 if node is not None else 1, key, message)

    def lines(self) -> list[str]:
        first = {item: index for index, item in reversed(list(enumerate(self.found)))}  # duplicates merged
        ordered = sorted(first, key=lambda item: (item[0], first[item]))
        shown = [f"{self.shown_path}:{line}: {text}" for line, text in ordered[:MAX_SHOWN]]
        if len(ordered) > MAX_SHOWN:
            shown.append(f"{self.shown_path}: ... and {len(ordered) - MAX_SHOWN} more problems")
        return shown


class FileUnreadable(ValueError):
    """The file cannot become a node tree; ``problems`` says where and why."""

    def __init__(self, problems: Problems) -> None:
        super().__init__("\n".join(problems.lines()))
        self.problems = problems


def read_text(path: Path, problems: Problems) -> str:
    """The file (standard input for ``-``) as text; raises :class:`FileUnreadable`."""
    try:
        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1) if path == STDIN else _read_bounded(path)
    except OSError as exc:
        problems.add(1, "", f"cannot read: {exc.strerror or exc}")
        raise FileUnreadable(problems) from exc
    if len(data) > MAX_FILE_BYTES:
        problems.add(1, "", f"the file is larger than {MAX_FILE_BYTES} bytes")
        raise FileUnreadable(problems)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(data[:exc.start].count(b"\n") + 1, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
        raise FileUnreadable(problems) from None


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(MAX_FILE_BYTES + 1)


def compose(text: str, problems: Problems) -> yaml.Node | None:
    """The node tree of ``text`` (None when empty), merge keys resolved; raises :class:`FileUnreadable`."""
    try:
        _check_depth(text, problems)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        problems.add(mark.line + 1 if mark else 1, "", f"YAML syntax error: {exc.problem or exc}")
        raise FileUnreadable(problems) from None
    except yaml.YAMLError as exc:  # the reader's own errors (a control character) carry a position only
        position = getattr(exc, "position", 0) or 0
        problems.add(text[:position].count("\n") + 1, "", f"YAML error: {exc}".splitlines()[0])
        raise FileUnreadable(problems) from None
    if root is not None:
        _check_tags_and_merge(root, problems)
    return root


def _check_depth(text: str, problems: Problems) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 1
                problems.add(line, "", f"nested more than {MAX_DEPTH} levels deep")
                raise FileUnreadable(problems)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_tags_and_merge(root: yaml.Node, problems: Problems) -> None:
    """Refuse non-standard tags (``!!python/...``, custom ``!tags``) and resolve ``<<`` in every mapping."""
    for node in _nodes(root):
        if node.tag not in _STANDARD_TAGS:
            problems.at(node, "", f"unsupported tag {node.tag!r}")
    merged: dict[int, list[tuple[yaml.Node, yaml.Node]]] = {}
    for node in _mappings(root):
        node.value = _merged_pairs(node, problems, merged)


def _nodes(root: yaml.Node) -> list[yaml.Node]:
    """Every node under ``root`` once (an alias is the same node object as its anchor)."""
    found: list[yaml.Node] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        if isinstance(node, yaml.MappingNode):
            stack.extend(value for pair in node.value for value in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return found


def _mappings(root: yaml.Node) -> list[yaml.MappingNode]:
    return [node for node in _nodes(root) if isinstance(node, yaml.MappingNode)]


def _merged_pairs(node: yaml.MappingNode, problems: Problems,
                  memo: dict[int, list[tuple[yaml.Node, yaml.Node]]]) -> list[tuple[yaml.Node, yaml.Node]]:
    """``node``'s pairs with its ``<<`` sources' pairs added where it has no key of their name (own keys win,
    then earlier sources, as YAML's merge key type says). Memoised: a source merged many times costs once."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = node.value  # a source that merges itself ends here
    own = [(key, value) for key, value in node.value if key.tag != MERGE_TAG]
    names = {str(key.value) for key, _ in own if isinstance(key, yaml.ScalarNode)}
    pairs = list(own)
    for key, value in node.value:
        if key.tag != MERGE_TAG:
            continue
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                problems.at(source, "<<", "a merge key takes a mapping or a list of mappings")
                continue
            for source_key, source_value in _merged_pairs(source, problems, memo):
                name = str(source_key.value)
                if name not in names:
                    names.add(name)
                    pairs.append((source_key, source_value))
    memo[id(node)] = pairs
    return pairs
