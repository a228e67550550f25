"""``cicd-worker run`` on real files with the real engine: job selection, variables, before/after_script, when."""

from __future__ import annotations

from pathlib import Path

from tests.cli.test_local_run import cli

LANG = """\
name: lang
variables: {GREETING: file, API_TOKEN: from-the-file}
defaults:
  image: cicd-busybox:latest
  before_script: ["echo before-$GREETING"]
stages:
  - name: build
    jobs:
      - name: fails
        script: ["echo main", "false"]
        after_script: ["echo after-ran", "exit 9"]
      - name: vars
        script:
          - echo job=$CI_JOB_NAME stage=$CI_JOB_STAGE ci=$CI dir=$CI_PROJECT_DIR g=$GREETING t=$API_TOKEN e=$FROM_ENV
  - name: after
    jobs:
      - {name: on-fail, when: on_failure, script: ["echo cleanup-on-failure"]}
      - {name: normal, script: ["echo never"]}
      - {name: always, when: always, script: ["echo always-ran"]}
      - {name: deploy, when: manual, script: ["echo deployed"]}
"""


def _log(tmp_path: Path, job: str) -> str:
    return next((tmp_path / ".cicd" / "runs").iterdir()).joinpath("logs", f"{job}.log").read_text()


def test_after_script_when_variables_and_predefined(tmp_path: Path, docker_client) -> None:
    (tmp_path / "p.yaml").write_text(LANG)
    (tmp_path / "vars.env").write_text("FROM_ENV=dotenv\nAPI_TOKEN=token-from-env-file\n")
    result = cli("run", "p.yaml", "--var", "GREETING=cli", "--env-file", "vars.env", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "not run (manual, or needs a manual job): deploy" in result.stdout
    fails = _log(tmp_path, "fails")
    assert "before-cli\n" in fails and "main\n" in fails and "after-ran\n" in fails
    assert "exit code 1" in fails  # the script's status, not the after_script's 9
    assert "job=vars stage=build ci=true dir=/workspace g=cli t=[MASKED] e=dotenv" in _log(tmp_path, "vars")
    assert "token-from-env-file" not in result.stdout
    assert "cleanup-on-failure" in _log(tmp_path, "on-fail") and "always-ran" in _log(tmp_path, "always")
    assert "never" not in _log(tmp_path, "normal").replace("echo never", "")


def test_named_jobs_run_alone_or_with_their_needs(tmp_path: Path, docker_client) -> None:
    (tmp_path / "p.yaml").write_text(
        "name: pick\nstages:\n  - name: s\n    jobs:\n"
        "      - {name: make, image: 'cicd-busybox:latest', script: ['echo made > made.txt']}\n"
        "      - {name: ship, image: 'cicd-busybox:latest', when: manual, needs: [make], script: ['cat made.txt']}\n"
        "      - {name: other, image: 'cicd-busybox:latest', script: ['true']}\n")
    result = cli("run", "p.yaml", "ship", "--needs", "--concurrency", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "not run (not named): other" in result.stdout
    assert "made" in _log(tmp_path, "ship")
    missing = cli("run", "p.yaml", "shp", cwd=tmp_path, timeout=60)
    assert missing.returncode == 2 and "no job named 'shp' (did you mean 'ship'?)" in missing.stderr
