"""``cicd-worker run/check`` on pipeline files: examples, every kind of broken file, dry runs, plain output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support import REPO

EXAMPLES = sorted((REPO / "examples").glob("*/pipeline.yaml"))
PLAIN_LINE = re.compile(r"^(final )?\d\d:\d\d:\d\d job=\S+ stage=\S+ status=(PENDING|RUNNING|SUCCESS|FAILED|CANCELED) "
                        r"duration=(-|\d+(\.\d+)?)( exit=(-|-?\d+))?( \(allowed to fail\))?$")


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cicd-worker")
    env = {**os.environ, "WORKER_PULL_POLICY": "never", "WORKER_STATE_DIR": str(cwd / "state")}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.parent.name for path in EXAMPLES])
def test_example_runs_green_with_plain_output(example: Path, tmp_path: Path, docker_client) -> None:
    result = cli("run", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "SUCCEEDED" in result.stdout and "/runs/flow-run/" in result.stdout
    progress = [line for line in result.stdout.splitlines() if "job=" in line]
    assert progress and all(PLAIN_LINE.match(line) for line in progress), progress
    assert "\x1b[" not in result.stdout  # no terminal control codes when not on a terminal
    runs = list((tmp_path / ".cicd" / "runs").iterdir())
    assert len(runs) == 1 and any((runs[0] / "artifacts").rglob("*"))


def test_hello_project_passes_artifacts_and_records_the_allowed_failure(tmp_path: Path, docker_client) -> None:
    result = cli("run", str(REPO / "examples" / "hello-project" / "pipeline.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"final .* job=lint stage=build status=SUCCESS .* exit=1", result.stdout)
    artifacts = next((tmp_path / ".cicd" / "runs").iterdir()) / "artifacts"
    report = (artifacts / "package" / "dist" / "test-report.txt").read_text()
    assert "unit tests passed" in report and "hello, smoke" in report
    with tarfile.open(artifacts / "package" / "dist" / "hello.tar.gz") as archive:
        assert archive.getnames() == ["build/greet"]
    assert (artifacts / "compile" / "build" / "greet").read_text() == (
        REPO / "examples" / "hello-project" / "src" / "greet.sh").read_text()


def test_failing_pipeline_exits_1(tmp_path: Path, docker_client) -> None:
    path = tmp_path / "fails.yaml"
    path.write_text("name: fails\nstages:\n  - name: only\n    jobs:\n"
                    "      - {name: bad, image: 'cicd-busybox:latest', script: ['exit 3']}\n"
                    "      - {name: after, image: 'cicd-busybox:latest', script: ['true'], needs: [bad]}\n")
    result = cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and re.search(r"job=after .*status=CANCELED", result.stdout)


BROKEN = {
    "unknown-key": ("name: x\nstages:\n  - name: s\n    jobs:\n      - name: a\n        image: cicd-busybox:latest\n"
                    "        script: [true]\n        colour: red\n",
                    ["broken.yaml:8: stages[0].jobs[0].colour: unknown key"]),
    "missing-image": ("name: x\nstages:\n  - name: s\n    jobs:\n      - name: a\n        script: ['true']\n",
                      ["broken.yaml:5: stages[0].jobs[0].image: missing"]),
    "unknown-needs": ("name: x\nstages:\n  - name: s\n    jobs:\n      - name: a\n        image: cicd-busybox:latest\n"
                      "        script: ['true']\n        needs: [ghost]\n",
                      ["broken.yaml:8: a.needs: unknown job 'ghost'"]),
    "cycle": ("name: x\nstages:\n  - name: s\n    jobs:\n"
              "      - {name: a, image: 'cicd-busybox:latest', script: ['true'], needs: [b]}\n"
              "      - {name: b, image: 'cicd-busybox:latest', script: ['true'], needs: [a]}\n",
              ["broken.yaml:5: needs: dependency cycle: a -> b -> a"]),
    "yaml-syntax": ("name: x\nstages:\n  - name: s\n    jobs: [\n", ["broken.yaml:5: YAML syntax error"]),
    "several": ("name: x\nstages:\n  - name: s\n    jobs:\n      - name: a\n        image: 'Not Valid'\n"
                "        script: ['true']\n        timeout: -1\n",
                ["broken.yaml:6: stages[0].jobs[0].image: not a valid image reference: 'Not Valid'",
                 "broken.yaml:8: stages[0].jobs[0].timeout: must be a whole number from 1 to 604800"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
@pytest.mark.parametrize("command", ["check", "run"])
def test_broken_files_exit_2_with_file_line_and_key(kind: str, command: str, tmp_path: Path) -> None:
    text, expected = BROKEN[kind]
    (tmp_path / "broken.yaml").write_text(text)
    result = cli(command, "broken.yaml", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    for message in expected:
        assert any(line.startswith(message) for line in result.stderr.splitlines()), result.stderr
    assert not (tmp_path / ".cicd").exists()  # nothing ran


def test_dry_run_prints_the_plan(tmp_path: Path) -> None:
    result = cli("run", "--dry-run", str(REPO / "examples" / "hello-project" / "pipeline.yaml"), cwd=tmp_path,
                 timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("pipeline 'hello-project': 5 jobs\n"
                             "level 1:\n  compile (build), lint (build)\n"
                             "level 2:\n  unit (test; needs compile), smoke (test; needs compile)\n"
                             "level 3:\n  package (package)\n")
    assert not (tmp_path / ".cicd").exists()
