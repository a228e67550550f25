"""Turns a job's script lines into one ``/bin/sh`` program that stops at the first failing line."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

FAILED_LINE_MARK = "[cicd] script line"


def build_shell_script(lines: Sequence[str]) -> str:
    """One shell program running ``lines`` in order, in one shell (so ``cd`` and variables carry over).

    Each line is echoed as ``$ line`` first, like GitLab does, and its exit status is checked right
    after it: ``set -e`` is not used because it is silently disabled inside ``if``/``&&`` contexts.
    """
    # One stream: stdout and stderr go through separate pipes that the engine copies independently,
    # which reorders lines; merged at the source, the log reads in the order things happened.
    if not lines:
        return ""
    parts: list[str] = ["exec 2>&1"]
    for number, line in enumerate(lines, start=1):
        parts.append(f"printf '%s\\n' {shlex.quote('$ ' + line)}")
        parts.append(line)
        parts.append(
            '__cicd_rc=$?; if [ "$__cicd_rc" -ne 0 ]; then '
            f'printf "%s\\n" "{FAILED_LINE_MARK} {number} failed with exit code $__cicd_rc" >&2; '
            'exit "$__cicd_rc"; fi'
        )
    return "\n".join(parts) + "\n"
