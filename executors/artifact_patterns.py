"""Artifact patterns: what they mean, how they are checked, and where in the working directory to look.

A pattern is a path relative to the job's working directory, its parts separated by ``/``:

* ``*`` matches any run of characters within one part, ``?`` one character within one part;
* a part that is exactly ``**`` matches zero or more whole parts (``build/**/*.jar``); ``**`` inside a
  longer part (``a**b``) is the same as ``*``, as in ``.gitignore``;
* every other character matches itself (no character classes, no escapes);
* a pattern that matches a directory matches everything under it (``dist`` takes ``dist/a/b.txt``);
* ``.`` parts and repeated slashes are ignored (``./out//x`` is ``out/x``); ``.`` alone is the whole
  working directory.

Refused, with a message naming the pattern: an empty pattern, an absolute one, one with a ``..`` part,
more than ``MAX_ARTIFACT_PATTERNS`` patterns per job, a pattern longer than ``MAX_ARTIFACT_PATTERN_CHARS``.

Matching never backtracks: a pattern is split at its ``**`` parts into groups of parts, and at its ``*``
into literal pieces; the first group (piece) must sit at the start, the last at the end, and each one in
between is placed at its leftmost fit, which is always the best placement since a ``**`` (``*``) before
the next one can take up any gap. So one match costs at most (pattern length x path length) character
comparisons, whatever the pattern. (Regex-based matchers, the glob libraries included, backtrack: with
``pathspec`` the pattern ``*a*a*a*a*a*a*a*ab`` against a 60-character name took a minute.)

Each pattern also names the only place it can match: its longest literal prefix (``build/**/*.jar`` →
``build``; ``out/report.txt`` → that path; ``*.txt`` → the working directory itself, ``""``).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from core.models import MAX_ARTIFACT_PATTERN_CHARS, MAX_ARTIFACT_PATTERNS

__all__ = ["MAX_ARTIFACT_PATTERNS", "MAX_ARTIFACT_PATTERN_CHARS", "ArtifactPattern", "archive_roots",
           "parse_patterns"]

_WILD = ("*", "?")


@dataclass(frozen=True)
class ArtifactPattern:
    """One checked pattern: as written, its normalised parts and its literal prefix."""

    text: str
    parts: tuple[str, ...]
    prefix: str
    groups: tuple[tuple[str, ...], ...]
    """``parts`` split at each ``**``, with one more ``**`` at the end: "a directory matches everything under
    it" is then part of the same walk."""

    def matches(self, path: str) -> bool:
        """Whether ``path`` (relative to the working directory, ``/``-separated) matches or lies under a match."""
        if self.prefix and not (path == self.prefix or path.startswith(self.prefix + "/")):
            return False  # the quick test; the walk below would say the same
        return _match_groups(self.groups, path.split("/"))


def pattern_problem(text: str, what: str = "artifact", base: str = "the working directory") -> str | None:
    """Why one pattern is refused, or None (``what``/``base``: whose pattern, relative to what; job ``inputs``
    are such patterns too)."""
    if not text.strip():
        return f"empty {what} pattern"
    if len(text) > MAX_ARTIFACT_PATTERN_CHARS:
        return f"{what} pattern {text[:40]!r}... is {len(text)} characters; at most {MAX_ARTIFACT_PATTERN_CHARS}"
    if text.startswith("/"):
        return f"{what} path {text!r} is absolute: paths are relative to {base}"
    if ".." in text.split("/"):
        return f"{what} path {text!r} leaves {base} ('..')"
    return None


def parse_patterns(texts: tuple[str, ...] | list[str]) -> tuple[list[ArtifactPattern], list[str]]:
    """The usable patterns, and a message for each refused one (or one for too many patterns)."""
    if len(texts) > MAX_ARTIFACT_PATTERNS:
        return [], [f"{len(texts)} artifact patterns; at most {MAX_ARTIFACT_PATTERNS} are allowed"]
    patterns, problems = [], []
    for text in texts:
        problem = pattern_problem(text)
        if problem:
            problems.append(problem)
        else:
            patterns.append(_parse(text))
    return patterns, problems


def archive_roots(patterns: list[ArtifactPattern]) -> list[str]:
    """The prefixes to read, none inside another (``""``, the working directory, holds every other)."""
    roots: list[str] = []
    for prefix in sorted({p.prefix for p in patterns}):  # a prefix sorts right after its ancestors
        if not any(root == "" or prefix.startswith(root + "/") for root in roots):
            roots.append(prefix)
    return roots


def _parse(text: str) -> ArtifactPattern:
    normal = posixpath.normpath(text.strip())
    parts = () if normal == "." else tuple(normal.split("/"))
    literal = []
    for part in parts:
        if any(mark in part for mark in _WILD):
            break
        literal.append(part)
    groups: list[list[str]] = [[]]
    for part in parts + ("**",):
        if part == "**":
            groups.append([])
        else:
            groups[-1].append(part)
    return ArtifactPattern(text, parts, "/".join(literal), tuple(tuple(group) for group in groups))


def _match_groups(groups: tuple[tuple[str, ...], ...], names: list[str]) -> bool:
    """Groups of parts (separated by ``**``) against path parts: the rule of the module docstring."""
    first, *middle, last = groups
    end = len(names) - len(last)
    if end < len(first) or not _group_at(first, names, 0) or not _group_at(last, names, end):
        return False
    position = len(first)
    for group in middle:
        found = next((i for i in range(position, end - len(group) + 1) if _group_at(group, names, i)), -1)
        if found < 0:
            return False
        position = found + len(group)
    return True


def _group_at(group: tuple[str, ...], names: list[str], start: int) -> bool:
    return all(_match_part(part, names[start + i]) for i, part in enumerate(group))


def _match_part(pattern: str, name: str) -> bool:
    """One part: ``*`` and ``?`` within a name, by the piece rule of the module docstring."""
    if "*" not in pattern:
        return len(pattern) == len(name) and _piece_at(pattern, name, 0)
    first, *middle, last = pattern.split("*")
    end = len(name) - len(last)
    if end < len(first) or not _piece_at(first, name, 0) or not _piece_at(last, name, end):
        return False
    position = len(first)
    for piece in middle:
        found = _find_piece(piece, name, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _piece_at(piece: str, name: str, start: int) -> bool:
    if "?" not in piece:
        return name.startswith(piece, start)
    return start + len(piece) <= len(name) and all(c == "?" or c == name[start + i] for i, c in enumerate(piece))


def _find_piece(piece: str, name: str, start: int, end: int) -> int:
    """Leftmost place of ``piece`` in ``name[start:end]``, or -1."""
    if "?" not in piece:
        return name.find(piece, start, end)
    return next((i for i in range(start, end - len(piece) + 1) if _piece_at(piece, name, i)), -1)
