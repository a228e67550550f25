"""The pipeline file language through the real CLI, no engine: keys, YAML reuse, errors, ``list``, ``--dry-run``.

``check``, ``list`` and ``run --dry-run`` run in-process (``cli.main.main``): they need no Prefect server,
Docker or backend. Standard input goes through a real ``cicd-worker`` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main

HEAD = "name: lang\nstages:\n  - name: s\n    jobs:\n"
JOB = "      - {name: %s, image: 'cicd-busybox:latest', script: ['true']%s}\n"


def cli(tmp_path: Path, text: str | bytes, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = tmp_path / "p.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    code = main([*args, str(path)] if args[0] != "run" else [args[0], str(path), *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err.replace(str(path), "p.yaml")


REUSE = """\
name: reuse
x-base: &base
  image: cicd-busybox:latest
  retries: 0
x-lines:
  setup: &setup ["echo setup"]
variables: {GREETING: hello}
defaults:
  before_script: *setup
  after_script: ["echo bye"]
  timeout: 60
  variables: {LEVEL: default}
stages:
  - name: build
    jobs:
      - <<: *base
        name: compile
        script: ["echo $GREETING"]
      - <<: *base
        name: deploy
        image: cicd-busybox:1
        when: manual
        script: ["true"]
  - name: test
    jobs:
      - <<: [*base]
        name: unit
        needs: [compile]
        env: {GREETING: hi}
        after_script: []
        script: ["echo $GREETING"]
      - {<<: *base, name: cleanup, when: always, allow_failure: true, script: ["true"], timeout: 5}
"""


def test_anchors_merge_keys_defaults_and_x_keys(tmp_path: Path) -> None:
    from cli.pipeline_file import load_pipeline_file

    (tmp_path / "p.yaml").write_text(REUSE)
    pipeline = load_pipeline_file(tmp_path / "p.yaml")
    jobs = {job.name: job for job in pipeline.jobs}
    assert [job.name for job in pipeline.jobs] == ["compile", "deploy", "unit", "cleanup"]
    assert jobs["deploy"].image == "cicd-busybox:1" and jobs["compile"].image == "cicd-busybox:latest"
    assert jobs["compile"].before_script == ["echo setup"] and jobs["compile"].after_script == ["echo bye"]
    assert jobs["unit"].after_script == []  # the job's own key replaces the default
    assert jobs["compile"].timeout == 60 and jobs["cleanup"].timeout == 5
    assert pipeline.job_variables(jobs["unit"]) == {"GREETING": "hi", "LEVEL": "default"}
    assert pipeline.job_variables(jobs["compile"]) == {"GREETING": "hello", "LEVEL": "default"}
    assert jobs["deploy"].when == "manual" and jobs["cleanup"].when == "always"


def test_list_shows_every_job_in_file_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, REUSE, "list", capsys=capsys)
    assert code == 0
    assert out.splitlines() == [
        "JOB      STAGE  NEEDS    IMAGE                WHEN        ALLOW_FAILURE",
        "compile  build  -        cicd-busybox:latest  on_success  false",
        "deploy   build  -        cicd-busybox:1       manual      false",
        "unit     test   compile  cicd-busybox:latest  on_success  false",
        "cleanup  test   -        cicd-busybox:latest  always      true"]
    code, out, _ = cli(tmp_path, REUSE, "list", "--json", capsys=capsys)
    assert code == 0
    assert json.loads(out)[2] == {"name": "unit", "stage": "test", "needs": ["compile"],
                                  "image": "cicd-busybox:latest", "when": "on_success", "allow_failure": False}


def test_dry_run_leaves_manual_jobs_out_unless_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, REUSE, "run", "--dry-run", capsys=capsys)
    assert code == 0
    assert out.splitlines() == ["not run (manual, or needs a manual job): deploy", "pipeline 'reuse': 3 jobs",
                                "level 1:", "  compile (build)",
                                "level 2:", "  unit (test; needs compile), cleanup (test; when always)"]
    code, out, _ = cli(tmp_path, REUSE, "run", "deploy", "unit", "--dry-run", capsys=capsys)
    assert code == 0 and "not run (not named): compile, cleanup" in out
    # unit's need is not in the run: it follows the stage rule among the jobs that run
    assert "level 1:\n  deploy (build)\nlevel 2:\n  unit (test)\n" in out
    code, out, _ = cli(tmp_path, REUSE, "run", "unit", "--needs", "--dry-run", capsys=capsys)
    assert code == 0 and "level 2:\n  unit (test; needs compile)" in out and "deploy" not in out.split("\n", 1)[1]


def test_job_names_may_follow_the_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, REUSE, "run", "--needs", "--dry-run", "unit", capsys=capsys)
    assert code == 0 and "level 2:\n  unit (test; needs compile)" in out and "deploy" not in out.split("\n", 1)[1]
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, as for any unknown option
        cli(tmp_path, REUSE, "run", "--dry-run", "unit", "--bogus", capsys=capsys)
    assert exited.value.code == 2 and "unrecognized arguments: unit --bogus" in capsys.readouterr().err


def test_the_pipeline_name_defaults_to_the_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(tmp_path, REUSE.replace("name: reuse\n", "", 1), "check", capsys=capsys)
    assert code == 0 and "pipeline 'p'" in out


def test_an_unknown_job_name_exits_2_with_a_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(tmp_path, REUSE, "run", "complie", "--dry-run", capsys=capsys)
    assert code == 2 and err.strip() == "p.yaml: no job named 'complie' (did you mean 'compile'?)"


def test_dry_run_of_2000_jobs_is_in_file_order_and_wrapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = HEAD + "".join(JOB % (f"f{index}", "") for index in range(2000))
    code, out, _ = cli(tmp_path, text, "run", "--dry-run", capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    names = [name.strip(" ,").removesuffix(" (s)") for line in lines[2:] for name in line.split(", ")]
    assert names == [f"f{index}" for index in range(2000)]


BAD = {
    "non-utf8": (b"name: x\nstages:\n  - name: \xff\n", ["p.yaml:3: not UTF-8 text (byte 0xff)"]),
    "bad-int-tag": (HEAD + "      - {name: a, image: 'cicd-busybox:latest', script: ['true'],\n"
                    "         timeout: !!int \"abc\"}\n",
                    ["p.yaml:6: stages[0].jobs[0].timeout: must be a whole number from 1 to 604800"]),
    "python-tag": (HEAD + JOB % ("a", ", artifacts: !!python/object/apply:os.system ['id']"),
                   ["p.yaml:5: unsupported tag 'tag:yaml.org,2002:python/object/apply:os.system'"]),
    "huge-int": (HEAD + JOB % ("a", ", retries: " + "9" * 5000),
                 ["p.yaml:5: stages[0].jobs[0].retries: must be a whole number from 0 to 20"]),
    "deep": ("name: x\nstages: " + "[" * 10000 + "]" * 10000 + "\n", ["p.yaml:2: "]),
    "empty-script": (HEAD + "      - {name: a, image: 'cicd-busybox:latest', script: []}\n",
                     ["p.yaml:5: stages[0].jobs[0].script: must hold at least one command"]),
    "duplicate-stage": (HEAD + JOB % ("a", "") + "  - name: s\n    jobs:\n" + JOB % ("b", ""),
                        ["p.yaml:6: stages[1].name: stage name 's' used twice (first as stages[0])"]),
    "duplicate-job": (HEAD + JOB % ("a", "") + JOB % ("a", ""),
                      ["p.yaml:6: a: job name used twice (first at line 5)"]),
    "newline-name": (HEAD + JOB % ('"a\\nfinal job=a status=SUCCESS"', ""),
                     ["p.yaml:5: stages[0].jobs[0].name: invalid job name 'a\\nfinal job=a status=SUCCESS': "
                      "no control characters or line breaks"]),
    "misspelt": (HEAD + "      - name: lint\n        imgae: cicd-busybox:latest\n        script: ['true']\n"
                 "      - name: test\n        image: cicd-busybox:latest\n        script: ['true']\n"
                 "        needs:\n          - lnt\n",
                 ["p.yaml:5: stages[0].jobs[0].image: missing",
                  "p.yaml:6: stages[0].jobs[0].imgae: unknown key (did you mean 'image'?)",
                  "p.yaml:12: test.needs: unknown job 'lnt' (did you mean 'lint'?)"]),
    "bad-when": (HEAD + JOB % ("a", ", when: allways"),
                 ["p.yaml:5: stages[0].jobs[0].when: 'allways' is not one of on_success, on_failure, always, "
                  "manual (did you mean 'always'?)"]),
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("command", ["check", "run", "list"])
def test_invalid_files_exit_2_with_sorted_lines(kind: str, command: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD[kind]
    code, out, err = cli(tmp_path, text, command, capsys=capsys)
    assert code == 2, out + err
    lines = err.splitlines()
    assert len(lines) == len(expected), err
    assert all(line.startswith(start) for line, start in zip(lines, expected, strict=True)), err
    assert "Traceback" not in err and not (tmp_path / ".cicd").exists()


def test_errors_are_capped_at_50_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = HEAD + "".join(JOB % (f"j{index}", ", needs: [ghost], colour: red") for index in range(2000))
    code, _, err = cli(tmp_path, text, "check", capsys=capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 51 and lines[-1] == "p.yaml: ... and 3950 more problems"
    numbers = [int(line.split(":")[1]) for line in lines[:-1]]
    assert numbers == sorted(numbers)


def test_a_problem_met_twice_is_shown_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The same stage object twice (an alias): its job's problem is found once per use, shown once.
    text = ("name: x\nstages:\n  - &stage\n    name: s\n    jobs:\n"
            "      - {name: a, image: 'cicd-busybox:latest', script: ['true'], timeout: 0}\n  - *stage\n")
    code, _, err = cli(tmp_path, text, "check", capsys=capsys)
    lines = err.splitlines()
    assert code == 2 and lines.count("p.yaml:6: stages[0].jobs[0].timeout: must be a whole number from 1 to "
                                     "604800") == 1, err


def test_check_reads_standard_input(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("cicd-worker")
    good = subprocess.run([str(exe), "check", "-"], input=REUSE, capture_output=True, text=True, timeout=60,
                          env=os.environ)
    assert good.returncode == 0 and good.stdout.startswith("<stdin>: OK: pipeline 'reuse', 2 stages, 4 jobs")
    bad = subprocess.run([str(exe), "check", "-"], input=HEAD + JOB % ("a", ", colour: red"), capture_output=True,
                         text=True, timeout=60, env=os.environ)
    assert bad.returncode == 2 and bad.stderr.startswith("<stdin>:5: stages[0].jobs[0].colour: unknown key")
