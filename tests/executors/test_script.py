"""build_shell_script, without Docker: each line is echoed exactly, run in one shell, checked right after.

The structural tests are pure; the behaviour tests run the program with the local ``/bin/sh`` (the same
POSIX shell language the job's image runs it with), which needs no engine.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest

from executors.script import FAILED_LINE_MARK, build_shell_script

TRICKY_LINES = [
    "echo 'single quoted $HOME'",
    'echo "double \\"quoted\\" $HOME"',
    "echo it\\'s",
    "echo \"100% of `echo backticks` and $((1 + 2))\"",
    "printf '%s|%s\\n' a b",
    'echo "a multi-line\nstring"',
    "cat <<'EOF'\nhere $HOME\ndoc\nEOF",
    "echo back\\\\slash",
    "",
]


def run_sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/home/ci"}, cwd="/")


@pytest.mark.parametrize("line", TRICKY_LINES)
def test_echo_of_each_line_quotes_it_exactly(line: str) -> None:
    script = build_shell_script([line])
    assert script.startswith("exec 2>&1\n"), "stderr is merged into stdout at the source, to keep line order"
    echo, _, rest = script.removeprefix("exec 2>&1\n").partition("\n" + line + "\n")
    assert rest, "the line itself follows its echo verbatim"
    assert shlex.split(echo) == ["printf", "%s\\n", "$ " + line]


def test_lines_with_quotes_dollars_and_newlines_are_echoed_then_run() -> None:
    result = run_sh(build_shell_script(TRICKY_LINES))
    assert result.returncode == 0, result.stdout
    expected_output = [
        "single quoted $HOME",
        'double "quoted" /home/ci',
        "it's",
        "100% of backticks and 3",
        "a|b",
        "a multi-line\nstring",
        "here $HOME\ndoc",
        "back\\slash",
        "",
    ]
    expected = "".join(f"$ {line}\n{output}\n" if output else f"$ {line}\n"
                       for line, output in zip(TRICKY_LINES, expected_output, strict=True))
    assert result.stdout == expected
    assert result.stderr == ""


def test_first_failing_line_stops_the_program_with_its_exit_code() -> None:
    result = run_sh(build_shell_script(["echo before", "sh -c 'exit 4'", "echo after"]))
    assert result.returncode == 4
    assert result.stdout == f"$ echo before\nbefore\n$ sh -c 'exit 4'\n{FAILED_LINE_MARK} 2 failed with exit code 4\n"
    assert result.stderr == ""


def test_failure_is_caught_where_set_e_would_ignore_it() -> None:
    # `set -e` does not stop at a failing `&&` list; the explicit check after each line does.
    result = run_sh(build_shell_script(["false && true", "echo after"]))
    assert result.returncode == 1
    assert "after\n" not in result.stdout
    assert f"{FAILED_LINE_MARK} 1 failed with exit code 1" in result.stdout


def test_lines_share_one_shell() -> None:
    result = run_sh(build_shell_script(["cd /tmp", "X='a b'", 'echo "$X in $(pwd)"']))
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "a b in /tmp"


def test_empty_script_succeeds_silently() -> None:
    script = build_shell_script([])
    assert script.strip() == ""
    result = run_sh(script)
    assert (result.returncode, result.stdout, result.stdout) == (0, "", "")


def test_after_script_runs_after_a_failure_and_keeps_the_scripts_status() -> None:
    result = run_sh(build_shell_script(["cd /tmp", "X=set", "sh -c 'exit 4'"], ["echo after $X", "pwd", "exit 9"]))
    assert result.returncode == 4
    assert result.stdout.endswith("[cicd] running after_script\n$ echo after $X\nafter\n$ pwd\n/\n$ exit 9\n")


def test_after_script_runs_after_success_too() -> None:
    result = run_sh(build_shell_script(["echo main"], ["echo after"]))
    assert result.returncode == 0 and result.stdout.endswith("main\n[cicd] running after_script\n$ echo after\nafter\n")
