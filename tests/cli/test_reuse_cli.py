"""``cicd-worker run`` reusing unchanged jobs, with the real engine and real files: a second run of an unchanged
pipeline starts no container and restores the artifacts; a changed input reruns only the jobs downstream of
it (which find the reused jobs' outputs in the workspace); ``--explain`` names the changed file; ``--no-cache``
runs everything; ``list`` marks the jobs it would reuse; Prefect shows the reused task runs ``Cached``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from cli.pipeline_file import PipelineFileError, load_pipeline_file
from tests.support import TEST_IMAGE

PIPELINE = f"""
name: reuse-test
stages:
  - name: prepare
    jobs:
      - name: names
        image: {TEST_IMAGE}
        inputs: [src/names.txt]
        script: [mkdir -p out, sort src/names.txt > out/names.txt]
        artifacts: [out/names.txt]
      - name: other
        image: {TEST_IMAGE}
        needs: []
        inputs: [src/other.txt]
        script: [cat src/other.txt]
  - name: build
    jobs:
      - name: greet
        image: {TEST_IMAGE}
        needs: [names]
        inputs: [src/greeting.txt]
        script:
          - 'while read -r n; do echo "$(cat src/greeting.txt), $n"; done < out/names.txt > out/greetings.txt'
          - test -s out/greetings.txt
        artifacts: [out/greetings.txt]
"""


def cli(project: Path, worker_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKER_PULL_POLICY": "never", "WORKER_STATE_DIR": str(project / ".state"),
           "WORKER_ID": worker_id}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=project, capture_output=True, text=True,
                          timeout=300, env={**env, "PYTHONPATH": str(Path(__file__).parents[2])})


def started(docker_client: Any, worker_id: str, since: float) -> int:
    """Containers of this worker id started since ``since`` (docker events)."""
    wanted = {"type": "container", "event": "start", "label": f"cicd.worker-id={worker_id}"}
    events = docker_client.events(since=int(since), until=int(time.time()) + 1, decode=True, filters=wanted)
    return sum(1 for _ in events)


def run(project: Path, worker_id: str, docker_client: Any, *args: str) -> tuple[str, int, dict[str, str]]:
    """Run the pipeline; (its output, containers started, Prefect task run state names by job)."""
    since = time.time() - 1
    done = cli(project, worker_id, "run", "pipeline.yaml", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id = re.search(r"runs/flow-run/([0-9a-f-]{36})", done.stdout)
    assert flow_run_id, done.stdout
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id[1]])))
    states = {task_run.name: task_run.state.name for task_run in task_runs if task_run.state}
    return done.stdout, started(docker_client, worker_id, since), states


def newest_run(project: Path) -> Path:
    return max((project / ".cicd" / "runs").iterdir(), key=lambda path: path.stat().st_mtime)


@pytest.mark.slow
def test_unchanged_jobs_are_reused_and_a_changed_input_reruns_only_its_downstream(tmp_path: Path,
                                                                                  docker_client: Any) -> None:
    project, worker_id = tmp_path / "project", f"reuse-test-{uuid.uuid4().hex[:8]}"
    (project / "src").mkdir(parents=True)
    (project / "pipeline.yaml").write_text(PIPELINE)
    (project / "src" / "names.txt").write_text("grace\nada\n")
    (project / "src" / "greeting.txt").write_text("hello")
    (project / "src" / "other.txt").write_text("other")

    _, cold, states = run(project, worker_id, docker_client)
    assert cold == 3 and set(states.values()) == {"Completed"}

    output, warm, states = run(project, worker_id, docker_client)
    assert warm == 0, output  # nothing ran
    assert states == {"names": "Cached", "other": "Cached", "greet": "Cached"}
    assert re.search(r"job=greet .*status=SUCCESS.*\(cached\)", output), output
    assert (newest_run(project) / "artifacts" / "greet" / "out" / "greetings.txt").read_text() == \
        "hello, ada\nhello, grace\n"
    assert "reused: unchanged since run" in (newest_run(project) / "logs" / "greet.log").read_text()

    listed = cli(project, worker_id, "list", "pipeline.yaml")
    assert "cached (a result exists for the current key: `run` reuses it): names, other, greet" in listed.stdout

    (project / "src" / "greeting.txt").write_text("hi")
    explained = cli(project, worker_id, "run", "pipeline.yaml", "--explain", "greet")
    assert "file src/greeting.txt: changed" in explained.stdout, explained.stdout + explained.stderr

    output, changed, states = run(project, worker_id, docker_client)
    assert changed == 1 and states == {"names": "Cached", "other": "Cached", "greet": "Completed"}
    # greet ran, on the names file restored into the workspace from the reused job
    assert (newest_run(project) / "artifacts" / "greet" / "out" / "greetings.txt").read_text() == \
        "hi, ada\nhi, grace\n"

    _, forced, states = run(project, worker_id, docker_client, "--no-cache")
    assert forced == 3 and set(states.values()) == {"Completed"}


def test_inputs_are_checked_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"""stages:
  - name: s
    jobs:
      - name: a
        image: {TEST_IMAGE}
        script: ["true"]
        inputs:
          - ../outside
          - /abs
      - name: b
        image: {TEST_IMAGE}
        script: ["true"]
        inputs: []
""")
    with pytest.raises(PipelineFileError) as refused:
        load_pipeline_file(path)
    assert refused.value.problems == [
        f"{path}:8: stages[0].jobs[0].inputs[0]: input path '../outside' leaves the pipeline file's folder ('..')",
        f"{path}:9: stages[0].jobs[0].inputs[1]: input path '/abs' is absolute: paths are relative to the pipeline "
        "file's folder",
        f"{path}:13: stages[0].jobs[1].inputs: must list at least one glob (without the key the job always runs)"]
