"""Graceful shutdown and back-pressure under a burst of requests."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import FINAL, Backend, containers, statuses, wait_for

pytestmark = pytest.mark.slow


def test_sigterm_lets_running_jobs_finish_and_refuses_new_ones(backend: Backend, make_worker) -> None:
    worker = make_worker(WORKER_SHUTDOWN_GRACE_SECONDS="60")
    run = backend.create_run([{"name": "finishing", "script": ["sleep 3", "echo done"]}, {"name": "late"}])
    job_id = run["jobs"]["finishing"]
    backend.push_job(job_id, worker.url)
    wait_for(lambda: backend.job(job_id)["status"] == "RUNNING", 30, 0.1, "job running")
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    late = wait_for(lambda: (r := backend.push_job(run["jobs"]["late"], worker.url).json())["statusCode"] == 503 and r,
                    10, 0.1, "503 while draining")
    assert "shutting down" in str(late["body"])
    record = backend.wait_final(job_id, 30)
    assert statuses(record) == ["RUNNING", "SUCCESS"] and "done" in record["history"][-1]["logs"]
    assert worker.process.wait(60) == 0
    assert backend.job(run["jobs"]["late"])["history"] == []


def test_sigterm_cancels_jobs_still_running_after_the_grace_period(backend: Backend, make_worker,
                                                                  docker_client) -> None:
    worker = make_worker(WORKER_SHUTDOWN_GRACE_SECONDS="1")
    job_id = backend.create_run([{"name": "endless", "script": ["sleep 300"]}])["jobs"]["endless"]
    backend.push_job(job_id, worker.url)
    wait_for(lambda: backend.job(job_id)["status"] == "RUNNING", 30, 0.1, "job running")
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(60) == 0
    assert statuses(backend.job(job_id)) == ["RUNNING", "CANCELED"]  # delivered before the process exited
    assert not containers(docker_client, f"cicd.job-execution-id={job_id}")


def test_burst_of_300_executes_is_accepted_or_429_and_each_accepted_runs_once(backend: Backend, make_worker) -> None:
    worker = make_worker(WORKER_MAX_QUEUED_JOBS="20", WORKER_MAX_CONCURRENT_JOBS="4")
    run = backend.create_run([{"name": f"b{i}", "script": ["true"]} for i in range(300)], name="burst")
    dtos = [backend.dto(job_id) for job_id in run["jobs"].values()]
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64)) as client, \
            ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(lambda dto: client.post(f"{worker.url}/api/job/execute", json=dto), dtos))
    codes = [answer.status_code for answer in answers]
    assert set(codes) <= {202, 429}, sorted(set(codes))
    accepted = [dto["id"] for dto, code in zip(dtos, codes, strict=True) if code == 202]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert 20 <= len(accepted) < 300 and refused and all(a.headers.get("retry-after") for a in refused)
    for job_id in accepted:
        assert statuses(backend.wait_final(job_id, 240)) == ["RUNNING", "SUCCESS"]
    untouched = [dto["id"] for dto, code in zip(dtos, codes, strict=True) if code == 429]
    assert all(backend.job(job_id)["history"] == [] for job_id in untouched)
    assert all(backend.job(job_id)["status"] in FINAL for job_id in accepted)
