"""Artifact patterns: their meaning, refusals, literal prefixes, and matching without backtracking."""

from __future__ import annotations

import time

import pytest

from executors.artifact_patterns import (
    MAX_ARTIFACT_PATTERN_CHARS,
    MAX_ARTIFACT_PATTERNS,
    archive_roots,
    parse_patterns,
)


def matches(pattern: str, path: str) -> bool:
    patterns, problems = parse_patterns([pattern])
    assert not problems
    return patterns[0].matches(path)


@pytest.mark.parametrize(("pattern", "path", "wanted"), [
    ("out/report.txt", "out/report.txt", True),
    ("out/report.txt", "out/report.txt.bak", False),
    ("*.txt", "a.txt", True),
    ("*.txt", "sub/a.txt", False),  # * stays within one part
    ("*.txt", ".hidden.txt", True),
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("build/**/*.jar", "build/x.jar", True),  # ** matches zero parts too
    ("build/**/*.jar", "build/a/b/c/x.jar", True),
    ("build/**/*.jar", "other/x.jar", False),
    ("**/x", "x", True),
    ("**/x", "a/b/x", True),
    ("**/x", "a/b/xy", False),
    ("dist", "dist/a/b.txt", True),  # a directory matches everything under it
    ("dist", "distro/a", False),
    ("out/*", "out/a/b", True),
    ("a**b", "aXXb", True),  # ** inside a part is *
    ("a**b", "a/b", False),
    ("./out//x", "out/x", True),
    (".", "anything/at/all", True),
    ("*a*b*c", "xxaxxbxxcxx", False),
    ("*a*b*c", "xxaxxbxxc", True),
    ("[ab]", "[ab]", True),  # no character classes
    ("[ab]", "a", False),
])
def test_pattern_meaning(pattern: str, path: str, wanted: bool) -> None:
    assert matches(pattern, path) is wanted


def test_refused_patterns_say_why() -> None:
    _, problems = parse_patterns(["", "/etc/passwd", "a/../../x", "x" * (MAX_ARTIFACT_PATTERN_CHARS + 1)])
    assert [p.split(" ")[0:2] for p in problems] == [["empty", "artifact"], ["artifact", "path"],
                                                    ["artifact", "path"], ["artifact", "pattern"]]
    assert "is absolute" in problems[1] and "leaves the working directory" in problems[2]
    assert f"at most {MAX_ARTIFACT_PATTERN_CHARS}" in problems[3]
    patterns, problems = parse_patterns(["a"] * (MAX_ARTIFACT_PATTERNS + 1))
    assert patterns == [] and problems == [f"{MAX_ARTIFACT_PATTERNS + 1} artifact patterns; at most "
                                           f"{MAX_ARTIFACT_PATTERNS} are allowed"]


def test_only_the_literal_prefixes_are_read_each_once() -> None:
    patterns, _ = parse_patterns(["build/**/*.jar", "build/libs/x.jar", "out/report.txt", "out/report.txt",
                                  "docs/*.md", "docs2/a"])
    assert archive_roots(patterns) == ["build", "docs", "docs2/a", "out/report.txt"]
    patterns, _ = parse_patterns(["build/*.jar", "*.txt"])
    assert archive_roots(patterns) == [""]


@pytest.mark.parametrize(("pattern", "path"), [
    ("**/" * 12 + "x", "/".join(["d"] * 30) + "/y"),  # 172 s with the old regex
    ("**/d/" * 8 + "x", "/".join(["d"] * 30) + "/y"),  # 0.7 s with pathspec
    ("*a" * 8 + "b", "a" * 60),  # 63 s with pathspec
    ("*a" * 500 + "b", "a" * 255),
    ("**/" + "a/" * 100 + "b", "/".join(["a"] * 1000)),  # the worst case: (pattern x path) part comparisons
    ("*?" * 400 + "b", "a" * 255),
])
def test_pathological_patterns_match_fast(pattern: str, path: str) -> None:
    patterns, problems = parse_patterns([pattern])
    assert not problems
    started = time.process_time()
    assert not patterns[0].matches(path)
    assert time.process_time() - started < 0.5
