"""Reuse of unchanged jobs through the service: pipeline runs sent by the reference backend (no project folder),
real engine. A job's ``inputs`` are hashed in the workspace volume once the job fetching the sources (no inputs,
so no key of its own) wrote it: the same sources a second time reuse the build (no container, artifact uploaded
again, restored into the workspace for the job after it); other sources rerun it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests.support import Backend, WorkerProcess, final_log, statuses

JOBS = [
    {"name": "fetch", "script": ["mkdir -p src", 'echo "$CI_COMMIT_SHA" > src/a.txt']},  # no inputs: always runs
    {"name": "build", "needs": ["fetch"], "inputs": ["src/**"], "artifacts": ["out/b.txt"],
     "script": ["mkdir -p out", "cat src/a.txt > out/b.txt", "echo built >> out/b.txt"]},
    {"name": "use", "needs": ["build"], "script": ["cat out/b.txt"]},
]


def run_pipeline(backend: Backend, worker: WorkerProcess, docker_client: Any, commit: str) -> dict[str, Any]:
    """Create and execute a pipeline run; its records, the build's artifact, whether build's container started
    (docker events) and the Prefect task run states by job."""
    since = time.time() - 1
    run = backend.create_run(JOBS, commitHash=commit)
    answer = httpx.post(f"{worker.url}/api/pipeline/execute", json={"pipelineExecutionId": run["pipelineExecutionId"]},
                        timeout=60)
    assert answer.status_code == 202, answer.text
    records = {name: backend.wait_final(job_id, 90) for name, job_id in run["jobs"].items()}
    build_id = run["jobs"]["build"]
    wanted = {"type": "container", "event": "start", "label": f"cicd.job-execution-id={build_id}"}
    starts = sum(1 for _ in docker_client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                                                 filters=wanted))
    artifact = backend.http.get(f"/admin/job-executions/{build_id}/artifacts/out/b.txt")
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[answer.json()["flowRunId"]]))
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=flow_runs)
    states = {task_run.name: task_run.state.name for task_run in task_runs if task_run.state}
    return {"records": records, "build_starts": starts, "artifact": artifact, "states": states}


def test_a_pipeline_run_from_the_backend_reuses_a_job_whose_inputs_in_the_workspace_did_not_change(
        backend: Backend, worker: WorkerProcess, docker_client: Any) -> None:
    commit, other = uuid.uuid4().hex, uuid.uuid4().hex  # contents no other test of the session's worker wrote
    cold = run_pipeline(backend, worker, docker_client, commit)
    assert {name: statuses(record) for name, record in cold["records"].items()} == dict.fromkeys(
        ("fetch", "build", "use"), ["RUNNING", "SUCCESS"])
    assert cold["build_starts"] == 1

    warm = run_pipeline(backend, worker, docker_client, commit)
    build = warm["records"]["build"]
    assert statuses(build) == ["RUNNING", "SUCCESS"] and "reused: unchanged since run" in final_log(build)
    assert warm["build_starts"] == 0  # no container for it
    assert warm["states"] == {"fetch": "Completed", "build": "Cached", "use": "Completed"}
    assert warm["artifact"].status_code == 200 and warm["artifact"].text == f"{commit}\nbuilt\n"  # uploaded again
    assert f"{commit}\nbuilt" in final_log(warm["records"]["use"])  # restored into this run's workspace

    changed = run_pipeline(backend, worker, docker_client, other)  # the same jobs fetching other sources
    assert changed["build_starts"] == 1 and changed["states"]["build"] == "Completed"
    assert "reused" not in final_log(changed["records"]["build"])
    assert changed["artifact"].text == f"{other}\nbuilt\n"
