"""Cancel from the worker API and from Prefect stops the container and reports CANCELED."""

from __future__ import annotations

import os
import time

import httpx

from tests.flows.test_pipeline_flow import flow_run_state
from tests.support import Backend, WorkerProcess, containers, final_log, flow_run_id_of, statuses, wait_for


def _running_container(docker_client, job_id: str) -> bool:
    return bool(containers(docker_client, f"cicd.job-execution-id={job_id}", running=True))


def _start_long_job(backend: Backend, worker: WorkerProcess, docker_client) -> str:
    job_id = backend.create_run([{"name": "long", "script": ["echo started", "sleep 120"]}])["jobs"]["long"]
    assert backend.push_job(job_id, worker.url).json()["statusCode"] == 202
    wait_for(lambda: _running_container(docker_client, job_id), 30, 0.1, "the job's container running")
    return job_id


def _assert_canceled_quickly(backend: Backend, docker_client, job_id: str, started: float) -> dict:
    record = backend.wait_final(job_id, 30)
    assert time.monotonic() - started < 10, "cancel took too long"
    assert statuses(record) == ["RUNNING", "CANCELED"]
    assert "started" in final_log(record)
    wait_for(lambda: not containers(docker_client, f"cicd.job-execution-id={job_id}"),
             15, 0.1, "the container removed")
    return record


def test_cancel_through_the_api_stops_the_container(backend: Backend, worker: WorkerProcess, docker_client) -> None:
    job_id = _start_long_job(backend, worker, docker_client)
    started = time.monotonic()
    assert httpx.post(f"{worker.url}/api/job/{job_id}/cancel").status_code == 202
    assert httpx.post(f"{worker.url}/api/job/{job_id}/cancel").status_code == 202  # idempotent
    _assert_canceled_quickly(backend, docker_client, job_id, started)
    after = httpx.post(f"{worker.url}/api/job/{job_id}/cancel")  # after exit: still fine, nothing changes
    assert after.status_code == 202 and after.json()["status"] == "CANCELED"
    assert statuses(backend.job(job_id)) == ["RUNNING", "CANCELED"]


def test_cancel_from_prefect_stops_the_container(backend: Backend, worker: WorkerProcess, docker_client) -> None:
    job_id = _start_long_job(backend, worker, docker_client)
    flow_run_id = flow_run_id_of(worker.url, job_id, {})
    started = time.monotonic()
    answer = httpx.post(f"{os.environ['PREFECT_API_URL']}/flow_runs/{flow_run_id}/set_state",
                        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
    assert answer.status_code in (200, 201), answer.text
    _assert_canceled_quickly(backend, docker_client, job_id, started)
    assert flow_run_state(flow_run_id) == "CANCELLED"


def test_cancel_before_start_reports_canceled_without_running(backend: Backend, worker: WorkerProcess) -> None:
    run = backend.create_run([{"name": "blocker", "script": ["sleep 120"]},
                              {"name": "waiter", "script": ["echo ran"], "needs": ["blocker"]}])
    waiter = run["jobs"]["waiter"]
    backend.push_job(waiter, worker.url)
    wait_for(lambda: httpx.get(f"{worker.url}/api/job/{waiter}").status_code == 200, 10, 0.1, "waiter known")
    assert httpx.post(f"{worker.url}/api/job/{waiter}/cancel").status_code == 202
    record = backend.wait_final(waiter, 30)
    assert statuses(record) == ["CANCELED"] and "ran\n" not in final_log(record)


def test_canceled_job_in_a_pipeline_cancels_its_dependents(backend: Backend, worker: WorkerProcess,
                                                            docker_client) -> None:
    run = backend.create_run([{"name": "slow", "script": ["sleep 120"]},
                              {"name": "after", "script": ["echo after"], "needs": ["slow"]},
                              {"name": "other", "script": ["echo other"]}])
    answer = httpx.post(f"{worker.url}/api/pipeline/execute", json={"pipelineExecutionId": run["pipelineExecutionId"]})
    assert answer.status_code == 202
    slow = run["jobs"]["slow"]
    wait_for(lambda: _running_container(docker_client, slow), 30, 0.1, "slow job running")
    assert httpx.post(f"{worker.url}/api/job/{slow}/cancel").status_code == 202
    assert statuses(backend.wait_final(slow, 30)) == ["RUNNING", "CANCELED"]
    after = backend.wait_final(run["jobs"]["after"], 30)
    assert statuses(after) == ["CANCELED"] and "upstream job 'slow'" in final_log(after)
    assert statuses(backend.wait_final(run["jobs"]["other"], 30)) == ["RUNNING", "SUCCESS"]
    assert flow_run_state(answer.json()["flowRunId"]) == "FAILED"
