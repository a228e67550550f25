"""Matrix jobs (``parallel: {matrix: [...]}``): expansion, ``needs`` on the matrix job, selection, ``list``,
``--dry-run``, every refused form at its line, and one real run on the engine.

All but the last test run in-process (``cli.main.main``) and need no Prefect server, Docker or backend.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from cli.main import main
from cli.pipeline_file import load_pipeline_file
from cli.pipeline_matrix import MAX_COMBINATIONS, MAX_MATRIX_JOBS
from cli.run_selection import Selection, prepare
from tests.cli.test_local_run import cli as run_cli
from tests.cli.test_pipeline_language import cli
from tests.support import REPO

MATRIX = """\
name: mx
defaults: {image: cicd-busybox:latest}
variables: {TOP: top, VAR: top}
stages:
  - name: build
    jobs:
      - name: build
        variables: {VAR: job, KEEP: kept}
        parallel:
          matrix:
            - {VAR: [a, b]}
            - VAR: c
              OTHER: [x, y]
        script: ["echo $VAR $OTHER"]
      - name: one
        needs: ["build [a]"]
        script: ["true"]
  - name: test
    jobs:
      - {name: all, needs: [build], script: ["true"]}
      - {name: later, script: ["true"]}
"""
NAMES = ["build [a]", "build [b]", "build [c, x]", "build [c, y]"]


def test_each_combination_is_a_job_with_its_values_and_needs_on_the_matrix_job_mean_all(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(MATRIX)
    pipeline = load_pipeline_file(tmp_path / "p.yaml")
    jobs = {job.name: job for job in pipeline.jobs}
    assert [job.name for job in pipeline.jobs] == [*NAMES, "one", "all", "later"]
    assert pipeline.job_variables(jobs["build [c, y]"]) == {"TOP": "top", "VAR": "c", "KEEP": "kept", "OTHER": "y"}
    assert pipeline.job_variables(jobs["build [a]"]) == {"TOP": "top", "VAR": "a", "KEEP": "kept"}
    assert jobs["all"].needs == NAMES and jobs["one"].needs == ["build [a]"]
    expansion = jobs["build [c, x]"].expansion
    assert expansion is not None and (expansion.of, expansion.index, expansion.total) == ("build", 3, 4)
    assert all(jobs[name].stage == "build" and jobs[name].script == ["echo $VAR $OTHER"] for name in NAMES)


def test_single_values_numbers_and_key_order(tmp_path: Path) -> None:
    text = MATRIX.replace("- {VAR: [a, b]}", "- {PY: 3.10, N: [1, 2]}").replace('"build [a]"', '"build [3.10, 2]"')
    (tmp_path / "p.yaml").write_text(text)
    names = [job.name for job in load_pipeline_file(tmp_path / "p.yaml").jobs]
    assert names[:4] == ["build [3.10, 1]", "build [3.10, 2]", "build [c, x]", "build [c, y]"]


def test_matrix_values_win_and_node_index_is_set(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(MATRIX)
    pipeline = load_pipeline_file(tmp_path / "p.yaml")
    prepared = prepare(pipeline, Selection(variables=("VAR=cli", "KEEP=cli")))
    job = next(job for job in prepared.pipeline.jobs if job.name == "build [b]")
    assert job.variables["VAR"] == "b" and job.variables["KEEP"] == "cli"  # the name says VAR=b
    assert (job.variables["CI_NODE_INDEX"], job.variables["CI_NODE_TOTAL"]) == ("2", "4")
    assert "CI_NODE_INDEX" not in next(job for job in prepared.pipeline.jobs if job.name == "one").variables


def test_check_list_and_json_show_the_expansions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, MATRIX, "check", capsys=capsys)
    assert code == 0 and "2 stages, 7 jobs" in out
    code, out, _ = cli(tmp_path, MATRIX, "list", capsys=capsys)
    assert code == 0
    assert out == """\
JOB           STAGE  NEEDS      IMAGE                WHEN        ALLOW_FAILURE  MATRIX
build [a]     build  -          cicd-busybox:latest  on_success  false          VAR=a
build [b]     build  -          cicd-busybox:latest  on_success  false          VAR=b
build [c, x]  build  -          cicd-busybox:latest  on_success  false          VAR=c OTHER=x
build [c, y]  build  -          cicd-busybox:latest  on_success  false          VAR=c OTHER=y
one           build  build [a]  cicd-busybox:latest  on_success  false          -
all           test   build      cicd-busybox:latest  on_success  false          -
later         test   -          cicd-busybox:latest  on_success  false          -
"""
    code, out, _ = cli(tmp_path, MATRIX, "list", "--json", capsys=capsys)
    listed = json.loads(out)
    assert code == 0 and listed[2]["matrix"] == {"job": "build", "variables": {"VAR": "c", "OTHER": "x"}}
    assert listed[5]["needs"] == NAMES and "matrix" not in listed[5]


def test_dry_run_plans_the_expansions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, MATRIX, "run", "--dry-run", capsys=capsys)
    assert code == 0
    assert out.splitlines() == ["pipeline 'mx': 7 jobs", "level 1:",
                                "  build [a] (build), build [b] (build), build [c, x] (build),",
                                "  build [c, y] (build)",
                                "level 2:", "  one (build; needs build [a]), all (test; needs build)",
                                "level 3:", "  later (test)"]


@pytest.mark.parametrize(("named", "needs", "expected"), [
    (("build [b]",), False, ["build [b]"]),
    (("build",), False, NAMES),
    (("one",), True, ["build [a]", "one"]),
    (("all",), True, [*NAMES, "all"]),
    (("all", "build [c, x]"), False, ["build [c, x]", "all"]),
])
def test_selection_by_expansion_or_matrix_job(named: tuple[str, ...], needs: bool, expected: list[str],
                                              tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(MATRIX)
    prepared = prepare(load_pipeline_file(tmp_path / "p.yaml"), Selection(jobs=named, needs=needs))
    assert [job.name for job in prepared.pipeline.jobs] == expected
    all_job = [job for job in prepared.pipeline.jobs if job.name == "all"]
    assert all(job.needs == [name for name in NAMES if name in expected] for job in all_job)


def test_a_named_expansion_runs_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, MATRIX, "run", "build [c, y]", "--dry-run", capsys=capsys)
    assert code == 0
    assert out.splitlines() == ["not run (not named): build [a], build [b], build [c, x], one, all, later",
                                "pipeline 'mx': 1 jobs", "level 1:", "  build [c, y] (build)"]


def test_an_unknown_selection_suggests_the_matrix_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(tmp_path, MATRIX, "run", "biuld", "--dry-run", capsys=capsys)
    assert code == 2 and err.strip() == "p.yaml: no job named 'biuld' (did you mean 'build'?)"
    code, _, err = cli(tmp_path, MATRIX, "run", "build [d]", "--dry-run", capsys=capsys)
    assert code == 2 and err.startswith("p.yaml: no job named 'build [d]' (did you mean 'build [")


def _job(parallel: str, name: str = "m", extra: str = "") -> str:
    return f"      - {{name: '{name}', script: ['true'], parallel: {parallel}{extra}}}\n"


HEAD = "name: bad\ndefaults: {image: cicd-busybox:latest}\nstages:\n  - name: s\n    jobs:\n"
K = "stages[0].jobs[0].parallel"
REFUSED = {
    "number": (_job("3"), f"6: {K}: 'parallel: N' (N copies of a job) is not supported"),
    "not-a-mapping": (_job("[x]"), f"6: {K}: must be a mapping"),
    "no-matrix": (_job("{}"), f"6: {K}.matrix: missing"),
    "unknown-key": (_job("{matrix: [{V: [a]}], colour: 1}"), f"6: {K}.colour: unknown key"),
    "empty-matrix": (_job("{matrix: []}"), f"6: {K}.matrix: must be a non-empty list"),
    "matrix-not-a-list": (_job("{matrix: {V: [a]}}"), f"6: {K}.matrix: must be a non-empty list"),
    "entry-not-a-mapping": (_job("{matrix: [[a]]}"), f"6: {K}.matrix[0]: must be a non-empty mapping"),
    "empty-entry": (_job("{matrix: [{}]}"), f"6: {K}.matrix[0]: must be a non-empty mapping"),
    "empty-values": (_job("{matrix: [{V: []}]}"), f"6: {K}.matrix[0].V: must be a value or a non-empty list"),
    "nested-value": (_job("{matrix: [{V: [[a]]}]}"), f"6: {K}.matrix[0].V[0]: must be a plain value"),
    "mapping-value": (_job("{matrix: [{V: {a: 1}}]}"), f"6: {K}.matrix[0].V: must be a value or a non-empty"),
    "equals-in-name": (_job("{matrix: [{'A=B': [a]}]}"), f"6: {K}.matrix[0].A=B: a variable name must be"),
    "name-twice": (_job("{matrix: [{V: [a], V: [b]}]}"), f"6: {K}.matrix[0].V: given twice"),
    "slash-in-value": (_job("{matrix: [{V: [a/b]}]}"), f"6: {K}: invalid job name 'm [a/b]': no '/'"),
    "control-in-value": (_job('{matrix: [{V: "a\\tb"}]}'), f"6: {K}: invalid job name 'm [a\\tb]': no control"),
    "too-long": (_job("{matrix: [{V: [" + "x" * 200 + "]}]}"), f"6: {K}: invalid job name: longer than 200"),
    "same-job-twice": (_job("{matrix: [{V: [a]}, {W: [a]}]}"), f"6: {K}: makes the job 'm [a]' twice"),
    "taken-by-a-job": (_job("{matrix: [{V: [x]}]}") + "      - {name: 'm [x]', script: ['true']}\n",
                       f"6: {K}: makes the job 'm [x]', a name already taken at line 7"),
    "matrix-name-twice": (_job("{matrix: [{V: [x]}]}") + "      - {name: m, script: ['true']}\n",
                          "7: m: job name used twice (first at line 6)"),
    "needs-itself": (_job("{matrix: [{V: [x]}]}", extra=", needs: [m]"), "6: m.needs: a job cannot need itself"),
    "unknown-expansion": ("      - {name: a, script: ['true'], needs: ['m [z]']}\n" + _job("{matrix: [{V: [x]}]}"),
                          "6: a.needs: unknown job 'm [z]' (did you mean 'm [x]'?)"),
    "too-many": (_job("{matrix: [{A: [1,2,3,4,5,6,7,8,9,10], B: [1,2,3,4,5,6,7,8,9,10], C: [1,2,3]}]}"),
                 f"6: {K}.matrix: makes 300 jobs, more than {MAX_COMBINATIONS}"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
@pytest.mark.parametrize("command", ["check", "list", "run"])
def test_refused_matrices_exit_2_at_their_line(kind: str, command: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = REFUSED[kind]
    code, out, err = cli(tmp_path, HEAD + text, command, *(["--dry-run"] if command == "run" else []),
                          capsys=capsys)
    assert code == 2 and not out, out
    assert any(line.startswith(f"p.yaml:{expected}") for line in err.splitlines()), err
    assert "Traceback" not in err


def test_a_file_cannot_make_more_than_the_cap_of_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every matrix under its own cap, together over the file's: refused before the jobs are made, quickly."""
    values = ", ".join(str(index) for index in range(MAX_COMBINATIONS // 2))
    per_job = "{matrix: [{A: [" + values + "], B: [1, 2]}]}"
    count = MAX_MATRIX_JOBS // MAX_COMBINATIONS + 1
    text = HEAD + "".join(_job(per_job, name=f"m{index}") for index in range(count))
    started = time.monotonic()
    code, _, err = cli(tmp_path, text, "check", capsys=capsys)
    assert code == 2 and f"p.yaml:{5 + count}: stages[0].jobs[{count - 1}].parallel: the file's matrices make " \
                         f"more than {MAX_MATRIX_JOBS} jobs" in err
    assert time.monotonic() - started < 10


def test_a_matrix_run_waits_for_every_expansion(tmp_path: Path, docker_client) -> None:
    """A 2×2 matrix on the engine: each job echoes its values; the job that needs the matrix job starts after all
    four succeeded and sees the files each of them left in the shared workspace."""
    (tmp_path / "p.yaml").write_text(
        "name: mx\ndefaults: {image: 'cicd-busybox:latest'}\nstages:\n  - name: build\n    jobs:\n"
        "      - name: build\n        parallel: {matrix: [{OS: [alpine, debian], ARCH: [amd64, arm64]}]}\n"
        "        script: ['echo os=$OS arch=$ARCH node=$CI_NODE_INDEX/$CI_NODE_TOTAL', 'touch done-$OS-$ARCH']\n"
        "      - {name: gather, needs: [build], script: ['ls done-* | wc -l']}\n")
    result = run_cli("run", "p.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    names = [f"build [{os}, {arch}]" for os in ("alpine", "debian") for arch in ("amd64", "arm64")]
    succeeded = [next(index for index, line in enumerate(lines) if f"job={name} stage=build status=SUCCESS" in line)
                 for name in names]
    gather_started = next(index for index, line in enumerate(lines) if "job=gather stage=build status=RUNNING" in line)
    assert max(succeeded) < gather_started, result.stdout
    assert "all 5 jobs succeeded" in result.stdout
    logs = next((tmp_path / ".cicd" / "runs").iterdir()) / "logs"
    assert re.search(r"^\s*4$", (logs / "gather.log").read_text(), flags=re.MULTILINE)
    for index, name in enumerate(names, start=1):
        os_name, arch = name[7:-1].split(", ")
        assert f"os={os_name} arch={arch} node={index}/4\n" in (logs / f"build-{os_name}-{arch}.log").read_text()


def test_the_example_is_valid_and_makes_five_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json", str(REPO / "examples" / "matrix.yaml")]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [job["name"] for job in listed] == ["test [world, plain]", "test [world, loud]", "test [CI, plain]",
                                               "test [CI, loud]", "test [matrix, plain]", "collect"]
    assert listed[-1]["needs"] == [job["name"] for job in listed[:5]]
