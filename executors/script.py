"""Turns a job's script lines into one ``/bin/sh`` program that stops at the first failing line."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

FAILED_LINE_MARK = "[cicd] script line"
AFTER_SCRIPT_MARK = "[cicd] running after_script"
AFTER_FAILED_MARK = "[cicd] after_script line"


def _checked_lines(lines: Sequence[str], mark: str) -> list[str]:
    """Each line echoed as ``$ line``, run, and its exit status checked right after it."""
    parts: list[str] = []
    for number, line in enumerate(lines, start=1):
        parts.append(f"printf '%s\\n' {shlex.quote('$ ' + line)}")
        parts.append(line)
        parts.append(
            '__cicd_rc=$?; if [ "$__cicd_rc" -ne 0 ]; then '
            f'printf "%s\\n" "{mark} {number} failed with exit code $__cicd_rc" >&2; '
            'exit "$__cicd_rc"; fi'
        )
    return parts


def build_shell_script(lines: Sequence[str], after: Sequence[str] = ()) -> str:
    """One shell program running ``lines`` in order, in one shell (so ``cd`` and variables carry over).

    Each line is echoed as ``$ line`` first, like GitLab does, and its exit status is checked right
    after it: ``set -e`` is not used because it is silently disabled inside ``if``/``&&`` contexts.

    ``after`` (a job's ``after_script``) runs once the script ended, whatever its outcome, in the same
    container, and the program still exits with the script's status: as in GitLab, a failing after_script
    changes nothing. The script then runs in a subshell (so its ``exit`` ends only the script) and the
    after_script in another, starting again from the working directory without the script's variables, as
    GitLab runs it in a fresh shell.
    """
    # One stream: stdout and stderr go through separate pipes that the engine copies independently,
    # which reorders lines; merged at the source, the log reads in the order things happened.
    if not lines:
        return ""
    main = _checked_lines(lines, FAILED_LINE_MARK)
    if not after:
        return "\n".join(["exec 2>&1", *main]) + "\n"
    parts = ["exec 2>&1", "(", *main, ")", "__cicd_main_rc=$?",
             f"printf '%s\\n' {shlex.quote(AFTER_SCRIPT_MARK)}",
             "(", *_checked_lines(after, AFTER_FAILED_MARK), ")",
             'exit "$__cicd_main_rc"']
    return "\n".join(parts) + "\n"
