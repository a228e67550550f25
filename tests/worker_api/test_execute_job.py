"""One job end to end: reference backend → worker API → Prefect flow → real container → status back."""

from __future__ import annotations

import os
import time
import uuid

import httpx

from tests.support import Backend, WorkerProcess, containers, final_log, flow_run_id_of, statuses, wait_for


def run_one(backend: Backend, worker: WorkerProcess, timeout: float = 60.0, **job: object) -> dict:
    run = backend.create_run([{"name": "job", **job}])
    job_id = run["jobs"]["job"]
    answer = backend.push_job(job_id, worker.url).json()
    assert answer["statusCode"] == 202, answer
    assert answer["body"]["jobExecutionId"] == job_id
    uuid.UUID(flow_run_id_of(worker.url, job_id, answer["body"]))
    return backend.wait_final(job_id, timeout)


def test_success_reports_running_then_success_with_output(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, script=["echo hello from $(uname -s)", "echo to-stderr >&2"])
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    final = record["history"][-1]
    assert "hello from Linux" in final["logs"] and "to-stderr" in final["logs"]
    assert final["exitCode"] == 0 and final["attempt"] == 1
    assert final["logBytes"] == len(final["logs"].encode()) and len(final["logSha256"]) == 64
    assert record["violations"] == []


def test_failing_line_stops_script_and_exit_code_is_in_log(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, script=["echo first", "sh -c 'exit 7'", "echo never-printed"])
    assert statuses(record) == ["RUNNING", "FAILED"]
    log = final_log(record)
    assert "first" in log and "never-printed" not in log.replace("$ echo never-printed", "")
    assert "script line 2 failed with exit code 7" in log
    assert "job failed: script failed with exit code 7" in log
    assert record["history"][-1]["exitCode"] == 7
    assert record["history"][-1]["attempt"] == 1  # a script failure is not retried by default


def test_allow_failure_is_reported_success_and_says_so(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, script=["false"], allowFailure=True)
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    assert "failure allowed" in final_log(record)
    assert record["history"][-1]["exitCode"] == 1
    # In Prefect, visibly not a plain success (the record is written in the background: poll).
    flow_run_id = httpx.get(f"{worker.url}/api/job/{record['id']}").json()["flowRunId"]

    def state() -> tuple[str, str] | None:
        data = httpx.get(f"{os.environ['PREFECT_API_URL']}/flow_runs/{flow_run_id}").json()["state"]
        return (data["name"], data["message"]) if data["type"] == "COMPLETED" else None

    assert wait_for(state, 30, 0.2, "the flow run Completed") == ("AllowedFailure", "allowed to fail: exit 1")


def test_missing_image_fails_fast_naming_the_image(backend: Backend, worker: WorkerProcess) -> None:
    started = time.monotonic()
    record = run_one(backend, worker, dockerImage="no-such-image:9.9", timeout=30)
    assert time.monotonic() - started < 15
    assert statuses(record)[-1] == "FAILED"
    assert "no-such-image:9.9" in final_log(record)
    assert record["history"][-1]["attempt"] == 1  # never retried: waiting does not make an image appear


def test_timeout_stops_the_container(backend: Backend, worker: WorkerProcess, docker_client) -> None:
    started = time.monotonic()
    record = run_one(backend, worker, script=["echo started", "sleep 60"], timeoutSeconds=2, timeout=30)
    assert time.monotonic() - started < 20
    assert statuses(record) == ["RUNNING", "FAILED"]
    assert "timed out after 2 s" in final_log(record)
    job_id = record["id"]
    assert not containers(docker_client, f"cicd.job-execution-id={job_id}")


def test_same_execute_twice_runs_once(backend: Backend, worker: WorkerProcess) -> None:
    job_id = backend.create_run([{"name": "once", "script": ["echo ran-once"]}])["jobs"]["once"]
    first = backend.push_job(job_id, worker.url).json()
    second = backend.push_job(job_id, worker.url).json()
    assert (first["statusCode"], second["statusCode"]) == (202, 200)
    named = {first["body"]["flowRunId"], second["body"]["flowRunId"]} - {None}  # null while Prefect is slow
    assert len(named) <= 1, (first, second)
    record = backend.wait_final(job_id)
    third = backend.push_job(job_id, worker.url).json()
    assert third["statusCode"] == 200
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    assert statuses(backend.job(job_id)) == ["RUNNING", "SUCCESS"]
    flow_run_id = flow_run_id_of(worker.url, job_id, first["body"])
    view = httpx.get(f"{worker.url}/api/job/{job_id}").json()
    assert view["status"] == "SUCCESS" and view["flowRunId"] == flow_run_id and named <= {flow_run_id}


def test_failed_dependency_cancels_without_running(backend: Backend, worker: WorkerProcess, docker_client) -> None:
    run = backend.create_run([
        {"name": "build", "script": ["exit 3"]},
        {"name": "deploy", "script": ["echo deploying"], "needs": ["build"]},
    ])
    build, deploy = run["jobs"]["build"], run["jobs"]["deploy"]
    assert backend.push_job(deploy, worker.url).json()["statusCode"] == 202
    assert backend.push_job(build, worker.url).json()["statusCode"] == 202
    assert statuses(backend.wait_final(build)) == ["RUNNING", "FAILED"]
    record = backend.wait_final(deploy)
    assert statuses(record) == ["CANCELED"]
    assert build in final_log(record) and "deploying" not in final_log(record).replace("echo deploying", "")


def test_successful_dependency_lets_the_job_run_after_it(backend: Backend, worker: WorkerProcess) -> None:
    run = backend.create_run([
        {"name": "first", "script": ["sleep 1"]},
        {"name": "second", "script": ["echo second"], "needs": ["first"]},
    ])
    backend.push_job(run["jobs"]["second"], worker.url)
    backend.push_job(run["jobs"]["first"], worker.url)
    first, second = backend.wait_final(run["jobs"]["first"]), backend.wait_final(run["jobs"]["second"])
    assert statuses(second) == ["RUNNING", "SUCCESS"]
    assert second["history"][0]["receivedAt"] >= first["history"][-1]["receivedAt"]
