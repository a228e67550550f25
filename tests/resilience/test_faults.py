"""Nothing lost under faults: a flaky and briefly absent backend, a killed worker, a restarted engine."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.flows.test_live_logs import assert_chunks_complete
from tests.flows.test_pipeline_flow import flow_run_state
from tests.support import REPO, Backend, containers, final_log, flow_run_id_of, wait_for

pytestmark = pytest.mark.slow


def squashed(record: dict) -> list[str]:
    """Statuses with repeats of the same update folded (delivery is at least once)."""
    out: list[str] = []
    for entry in record["history"]:
        if not out or out[-1] != entry["status"]:
            out.append(entry["status"])
    return out


def test_pipeline_survives_flaky_backend_and_outage(backend: Backend, make_worker) -> None:
    worker = make_worker(WORKER_MAX_CONCURRENT_JOBS="4", WORKER_BACKEND_RETRY_SECONDS="120")
    jobs = [{"name": f"s{stage}-j{i}", "stageOrder": stage, "artifacts": [f"out-s{stage}-j{i}.txt"],
             "script": [f"for n in $(seq 1 20); do echo s{stage}-j{i} line $n; done",
                        f"echo content of s{stage}-j{i} > out-s{stage}-j{i}.txt", "sleep 0.5"]}
            for stage in range(4) for i in range(5)]
    jobs[-1]["script"] = ["echo s3-j4 line 1", "exit 2"]
    jobs[-1]["artifacts"] = []
    run = backend.create_run(jobs, name="flaky")
    backend.http.post("/admin/faults", json={"failRate": 0.3, "seed": 7}).raise_for_status()
    try:
        answer = httpx.post(f"{worker.url}/api/pipeline/execute",
                            json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=120)
        assert answer.status_code == 202, answer.text
        wait_for(lambda: any(backend.job(j)["history"] for j in run["jobs"].values()), 60, 0.2, "first status")
        backend.http.post("/admin/faults", json={"failRate": 0.3, "downForSeconds": 10, "seed": 7}).raise_for_status()
        records = {name: backend.wait_final(job_id, 240) for name, job_id in run["jobs"].items()}
    finally:
        backend.http.delete("/admin/faults")
    records = {name: wait_for(lambda j=job_id: (r := backend.job(j))["history"][-1]["status"] == r["status"] and r,
                              60, 0.2, "settled") for name, job_id in run["jobs"].items()}
    for name, record in records.items():
        expected = "FAILED" if name == "s3-j4" else "SUCCESS"
        assert squashed(record) == ["RUNNING", expected], (name, squashed(record))
        assert record["violations"] == [], (name, record["violations"])
        if expected == "SUCCESS":
            log = final_log(record)
            assert all(f"{name} line {n}\n" in log for n in range(1, 21)), name
            assert_chunks_complete(record)
            content = f"content of {name}\n".encode()
            assert [(a["name"], a["sha256"]) for a in record["artifacts"]] == [
                (f"out-{name}.txt", hashlib.sha256(content).hexdigest())]
    health = httpx.get(f"{worker.url}/api/worker/health").json()
    wait_for(lambda: httpx.get(f"{worker.url}/api/worker/health").json()["checks"]["outbox"]["depth"] == 0,
             60, 0.5, f"outbox drained ({health['checks']['outbox']})")


def test_killed_worker_reports_cut_off_job_after_restart(backend: Backend, make_worker, docker_client,
                                                         tmp_path: Path) -> None:
    state = str(tmp_path / "kill-state")
    first = make_worker(WORKER_STATE_DIR=state)
    script = ["echo before-kill", "while true; do echo tick; sleep 0.2; done"]
    job_id = backend.create_run([{"name": "victim", "script": script}])["jobs"]["victim"]
    backend.push_job(job_id, first.url)
    label = {"label": f"cicd.job-execution-id={job_id}"}
    wait_for(lambda: containers(docker_client, label["label"], running=True), 30, 0.1, "container")
    wait_for(lambda: backend.job(job_id)["logChunks"], 30, 0.1, "first live chunk")
    flow_run_id = flow_run_id_of(first.url, job_id, {})
    # The backend goes away, so that what the worker says next stays undelivered in its outbox.
    backend.http.post("/admin/faults", json={"failRate": 0.0, "downForSeconds": 8}).raise_for_status()
    try:
        wait_for(lambda: httpx.get(f"{first.url}/api/worker/health").json()["checks"]["outbox"]["depth"] > 0,
                 30, 0.1, "undelivered items in the outbox")
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        second = make_worker(WORKER_STATE_DIR=state)
        record = backend.wait_final(job_id, 60)
    finally:
        backend.http.delete("/admin/faults")
    assert squashed(record) == ["RUNNING", "FAILED"]
    log = final_log(record)
    assert "before-kill" in log and "tick" in log and "worker restarted while the job was running" in log
    chunks = record["logChunks"]
    assert len(chunks) >= 2 and [c["seq"] for c in chunks] == list(range(len(chunks)))  # undelivered ones arrived
    assert not containers(docker_client, label["label"])
    assert flow_run_state(flow_run_id) == "CRASHED"
    assert httpx.get(f"{second.url}/api/worker/health").status_code == 200


def _restart_engine() -> None:
    subprocess.run(["pkill", "-TERM", "-x", "dockerd"], check=False)
    wait_for(lambda: subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode != 0,
             60, 0.2, "dockerd stopped")
    subprocess.run(["bash", str(REPO / "scripts" / "setup-docker.sh")], check=True, timeout=120,
                   capture_output=True)


def test_engine_restart_fails_the_attempt_and_the_retry_succeeds(backend: Backend, make_worker,
                                                                docker_client) -> None:
    worker = make_worker(WORKER_MAX_RETRIES="6", WORKER_RETRY_DELAY_SECONDS="3")
    job_id = backend.create_run([{"name": "survivor", "script": ["echo attempt", "sleep 4", "echo finished"]}])[
        "jobs"]["survivor"]
    backend.push_job(job_id, worker.url)
    label = {"label": f"cicd.job-execution-id={job_id}"}
    wait_for(lambda: containers(docker_client, label["label"], running=True), 30, 0.1, "container")
    _restart_engine()
    record = backend.wait_final(job_id, 120)
    assert squashed(record)[-1] == "SUCCESS", final_log(record)
    assert record["history"][-1]["attempt"] >= 2
    assert "infrastructure failure" in final_log(record) and "finished" in final_log(record)
    wait_for(lambda: httpx.get(f"{worker.url}/api/worker/health").status_code == 200, 30, 0.5, "health back")
    wait_for(lambda: not containers(docker_client, label["label"]), 30, 0.5, "containers removed")
