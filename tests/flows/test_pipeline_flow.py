"""Whole pipelines as one flow, end to end: reference backend → worker → real containers → statuses."""

from __future__ import annotations

import os
import time

import docker
import httpx

from tests.conftest import WORKER_ID
from tests.support import FINAL, Backend, WorkerProcess, containers, final_log, statuses, wait_for

# busybox has no nanosecond `date`; the kernel's uptime is shared by all containers and has 10 ms steps.
STAMP = "echo {tag} $(cut -d' ' -f1 /proc/uptime)"


def timed(seconds: float) -> list[str]:
    return [STAMP.format(tag="start"), f"sleep {seconds}", STAMP.format(tag="end")]


def stamps(record: dict) -> tuple[float, float]:
    found = {}
    for line in final_log(record).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("start", "end"):
            found[parts[0]] = float(parts[1])
    return found["start"], found["end"]


def run_pipeline(backend: Backend, worker: WorkerProcess, jobs: list[dict], timeout: float = 90) -> dict:
    run = backend.create_run(jobs)
    answer = httpx.post(f"{worker.url}/api/pipeline/execute",
                        json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=60)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["pipelineExecutionId"] == run["pipelineExecutionId"]
    for job_id in run["jobs"].values():
        backend.wait_final(job_id, timeout)
    records = {name: backend.job(job_id) for name, job_id in run["jobs"].items()}
    return {"run": run, "flowRunId": body["flowRunId"], "records": records}


def flow_run_state(flow_run_id: str) -> str:
    def state() -> str | None:
        data = httpx.get(f"{os.environ['PREFECT_API_URL']}/flow_runs/{flow_run_id}").json()
        kind = data["state"]["type"]
        return kind if kind in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED") else None
    return wait_for(state, 30, 0.2, f"final state of flow run {flow_run_id}")


DIAMOND = [
    {"name": "A", "script": ["echo A"]},
    {"name": "B", "script": timed(2), "needs": ["A"]},
    {"name": "C", "script": timed(2), "needs": ["A"]},
    {"name": "D", "script": timed(0), "needs": ["B", "C"]},
]


def test_diamond_runs_branches_in_parallel_and_joins(backend: Backend, worker: WorkerProcess) -> None:
    result = run_pipeline(backend, worker, DIAMOND)
    records = result["records"]
    assert {name: statuses(rec) for name, rec in records.items()} == {
        name: ["RUNNING", "SUCCESS"] for name in "ABCD"}
    (b_start, b_end), (c_start, c_end), (d_start, _) = (stamps(records[n]) for n in "BCD")
    assert b_start < c_end and c_start < b_end, "B and C did not overlap"
    assert d_start >= max(b_end, c_end)
    assert flow_run_state(result["flowRunId"]) == "COMPLETED"


def test_failing_branch_cancels_downstream_but_not_the_other_branch(backend: Backend, worker: WorkerProcess) -> None:
    jobs = [dict(job) for job in DIAMOND]
    jobs[1] = {"name": "B", "script": ["echo B", "exit 4"], "needs": ["A"]}
    result = run_pipeline(backend, worker, jobs)
    records = result["records"]
    assert statuses(records["B"]) == ["RUNNING", "FAILED"]
    assert statuses(records["C"]) == ["RUNNING", "SUCCESS"]
    assert statuses(records["D"]) == ["CANCELED"]
    assert "upstream job 'B'" in final_log(records["D"]) and "start" not in final_log(records["D"])
    assert flow_run_state(result["flowRunId"]) == "FAILED"


def test_allowed_failure_lets_downstream_run(backend: Backend, worker: WorkerProcess) -> None:
    jobs = [dict(job) for job in DIAMOND]
    jobs[1] = {"name": "B", "script": ["exit 4"], "needs": ["A"], "allowFailure": True}
    result = run_pipeline(backend, worker, jobs)
    assert {name: statuses(rec)[-1] for name, rec in result["records"].items()} == dict.fromkeys("ABCD", "SUCCESS")
    assert "failure allowed" in final_log(result["records"]["B"])
    assert flow_run_state(result["flowRunId"]) == "COMPLETED"


def test_stage_order_without_dependencies(backend: Backend, worker: WorkerProcess) -> None:
    result = run_pipeline(backend, worker, [
        {"name": "build-1", "script": timed(1), "stageOrder": 0},
        {"name": "build-2", "script": timed(1.5), "stageOrder": 0},
        {"name": "test", "script": timed(0), "stageOrder": 1},
    ])
    records = result["records"]
    assert all(statuses(rec) == ["RUNNING", "SUCCESS"] for rec in records.values())
    test_start, _ = stamps(records["test"])
    assert test_start >= max(stamps(records["build-1"])[1], stamps(records["build-2"])[1])


def _refused(backend: Backend, worker: WorkerProcess, jobs: list[dict], docker_client) -> dict:
    before = len(containers(docker_client, f"cicd.worker-id={WORKER_ID}"))
    run = backend.create_run(jobs)
    answer = httpx.post(f"{worker.url}/api/pipeline/execute",
                        json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=60)
    assert answer.status_code == 422, answer.text
    for job_id in run["jobs"].values():
        record = backend.job(job_id)
        assert statuses(record) == ["FAILED"], record
        assert "pipeline refused" in final_log(record)
    assert len(containers(docker_client, f"cicd.worker-id={WORKER_ID}")) == before
    return answer.json()


def test_cycle_is_refused_and_nothing_runs(backend: Backend, worker: WorkerProcess, docker_client) -> None:
    body = _refused(backend, worker, [
        {"name": "x", "needs": ["z"]}, {"name": "y", "needs": ["x"]}, {"name": "z", "needs": ["y"]},
    ], docker_client)
    assert "cycle: x -> y -> z -> x" in body["error"]
    assert len(body["jobs"]) == 3


def test_unknown_dependency_is_refused_and_nothing_runs(backend: Backend, worker: WorkerProcess,
                                                       docker_client) -> None:
    body = _refused(backend, worker, [
        {"name": "ok"}, {"name": "orphan", "rawDependencies": ["00000000-0000-0000-0000-000000000042"]},
    ], docker_client)
    assert "00000000-0000-0000-0000-000000000042" in body["error"] and "orphan" in body["error"]


def test_same_pipeline_twice_starts_nothing_new(backend: Backend, worker: WorkerProcess) -> None:
    run = backend.create_run([{"name": "only", "script": ["sleep 1"]}])
    body = {"pipelineExecutionId": run["pipelineExecutionId"]}
    first = httpx.post(f"{worker.url}/api/pipeline/execute", json=body, timeout=60)
    second = httpx.post(f"{worker.url}/api/pipeline/execute", json=body, timeout=60)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["flowRunId"] == second.json()["flowRunId"]
    record = backend.wait_final(run["jobs"]["only"])
    assert statuses(record) == ["RUNNING", "SUCCESS"]


def test_concurrency_limit_holds_across_two_pipelines(backend: Backend, make_worker,
                                                      docker_client: docker.DockerClient) -> None:
    worker = make_worker(WORKER_MAX_CONCURRENT_JOBS="2")
    runs = [backend.create_run([{"name": f"j{i}", "script": ["sleep 1.5"]} for i in range(4)]) for _ in range(2)]
    for run in runs:
        answer = httpx.post(f"{worker.url}/api/pipeline/execute",
                            json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=60)
        assert answer.status_code == 202
    job_ids = [job_id for run in runs for job_id in run["jobs"].values()]
    peak = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = containers(docker_client, f"cicd.worker-id={WORKER_ID}", running=True)
        peak = max(peak, len(running))
        if all(backend.job(job_id)["status"] in FINAL for job_id in job_ids):
            break
        time.sleep(0.05)
    assert all(statuses(backend.job(job_id)) == ["RUNNING", "SUCCESS"] for job_id in job_ids)
    assert peak == 2, f"peak of running containers was {peak}, limit 2"
