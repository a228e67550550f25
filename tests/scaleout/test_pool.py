"""Scale-out on one machine: the API in pool mode, two ``cicd-worker pool-worker`` processes on one pool.

A Prefect server of its own on PostgreSQL stands for the shared one, with basic auth as pool mode requires
(``PREFECT_SERVER_API_AUTH_STRING``); every process the test starts gets ``PREFECT_API_AUTH_STRING``.
Both pool workers use this machine's Docker engine and the session's WORKER_ID, so the session's leak check
covers their containers. Pool and global concurrency limit get names unique to the test run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import docker
import httpx
import pytest

from cli.prefect_server import LocalPrefectServer
from tests.conftest import ARTIFACT_DIR, WORKER_ID, worker_env
from tests.support import FINAL, Backend, WorkerProcess, free_port, statuses, wait_for

pytestmark = pytest.mark.slow
AUTH = f"cicd:{uuid.uuid4().hex}"
BASIC = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}

LIMIT = 2  # global concurrency limit: containers at once across both workers
JOBS = 10
FINAL_FLOW_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class PoolWorker:
    """``cicd-worker pool-worker`` as a child process in its own session."""

    def __init__(self, pool: str, name: str, env: dict[str, str], log_path: Path) -> None:
        self.pool, self.name, self.env, self.log_path = pool, name, env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PoolWorker:
        cli = Path(sys.executable).with_name("cicd-worker")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(cli), "pool-worker", "--pool", self.pool, "--limit", "3", "--name", self.name],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def stop(self) -> int | None:
        """SIGTERM (its jobs are canceled and reported), SIGKILL after 30 s; the exit code (None: killed)."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            return None


@dataclass
class ScaleOut:
    api: WorkerProcess
    workers: list[PoolWorker]
    prefect_api_url: str
    limit_name: str


def _as_client(api_url: str) -> AbstractContextManager[object]:
    """Prefect client settings of this test process pointed at the server with auth."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: AUTH})


def _subscribed(api_url: str, pool: str) -> int:
    """How many task workers the Prefect server has subscribed to the pool's job task."""
    from flows.pool_tasks import pool_task

    body = {"task_worker_filter": {"task_keys": [pool_task("job", pool).task_key]}}
    return len(httpx.post(f"{api_url}/task_workers/filter", json=body, headers=BASIC, timeout=10).json())


@pytest.fixture(scope="module")
def prefect_api_url(postgres_url: str) -> Iterator[str]:
    """A Prefect server on PostgreSQL demanding basic auth, as the multi-host set-up requires."""
    server = LocalPrefectServer(port=free_port(), log_path=ARTIFACT_DIR / "prefect-server-pool.log",
                                env={"PREFECT_SERVER_API_AUTH_STRING": AUTH}, database_url=postgres_url)
    try:
        server.start(timeout=240)
        yield server.api_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scaleout(backend: Backend, docker_client: docker.DockerClient, prefect_api_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    tmp_path = tmp_path_factory.mktemp("scaleout")
    tag = uuid.uuid4().hex[:8]
    pool, limit_name = f"cicd-test-pool-{tag}", f"cicd-test-containers-{tag}"
    assert httpx.post(f"{prefect_api_url}/flow_runs/count", json={}, timeout=10).status_code == 401
    common = {**worker_env(backend), "PREFECT_API_URL": prefect_api_url, "PREFECT_API_AUTH_STRING": AUTH,
              "WORKER_CONCURRENCY_LIMIT_NAME": limit_name}
    # The API creates the global limit at start-up; the pool workers wait for it at their first job.
    api = WorkerProcess({**common, "WORKER_DISPATCH": "pool", "WORKER_WORK_POOL": pool,
                         "WORKER_MAX_CONCURRENT_JOBS": str(LIMIT), "WORKER_STATE_DIR": str(tmp_path / "state-api")},
                        ARTIFACT_DIR / "worker-pool-api.log")
    workers = [PoolWorker(pool, f"w{i}-{tag}", {
        **os.environ, **common, "WORKER_ID": WORKER_ID, "WORKER_PULL_POLICY": "never",
        "WORKER_STATE_DIR": str(tmp_path / f"state-w{i}")}, ARTIFACT_DIR / f"pool-worker-{i}.log").start()
        for i in range(2)]
    try:
        api.start()
        wait_for(lambda: _subscribed(prefect_api_url, pool) == 2, 120, 0.5, "both pool workers subscribed")
        yield ScaleOut(api, workers, prefect_api_url, limit_name)
    finally:
        api.stop()
        codes = [worker.stop() for worker in workers]
        assert codes == [0, 0], f"pool workers' exit codes on SIGTERM: {codes}"
        with _as_client(prefect_api_url):
            _delete_limit(limit_name)


def _delete_limit(limit_name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(limit_name)


class ContainerStarts:
    """Job execution id -> pool worker label of each container started while this is open, read from a live
    stream of the engine's events: polling misses a 2 s container on a loaded machine, and a query of past
    events misses some on a busy engine (it keeps only its last 256 events)."""

    def __init__(self, docker_client: docker.DockerClient, labels: list[str]) -> None:
        self.workers: dict[str, str] = {}
        self._stream = docker_client.events(decode=True, filters={"type": "container", "event": "start",
                                                                  "label": labels})
        self._thread = threading.Thread(target=self._read, name="container-starts", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream is closed under the reader at the end
            for event in self._stream:
                attributes = event.get("Actor", {}).get("Attributes", {})
                if "cicd.job-execution-id" in attributes:
                    self.workers[attributes["cicd.job-execution-id"]] = attributes.get("cicd.prefect-worker", "?")

    def close(self) -> None:
        self._stream.close()
        self._thread.join(5)


def _watch(docker_client: docker.DockerClient, backend: Backend, labels: list[str], job_ids: list[str],
           timeout: float) -> int:
    """Until every job is final: the peak of running containers."""
    peak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = docker_client.containers.list(filters={"label": labels, "status": "running"}, ignore_removed=True)
        peak = max(peak, len(running))
        if all(backend.job(job_id)["status"] in FINAL for job_id in job_ids):
            return peak
        time.sleep(0.1)
    raise AssertionError(f"not all {len(job_ids)} jobs final after {timeout:g} s")


def _submit(backend: Backend, api_url: str, job_ids: list[str]) -> tuple[dict[str, tuple[datetime, str]], list[float]]:
    """Push each job through the backend to the API: (202 time, flow run id) per job, and each push's seconds."""
    submitted, push_seconds = {}, []
    for job_id in job_ids:
        pushed = time.monotonic()
        answer = backend.push_job(job_id, api_url).json()
        push_seconds.append(round(time.monotonic() - pushed, 2))
        assert answer["statusCode"] == 202, answer
        submitted[job_id] = (datetime.now().astimezone(), answer["body"]["flowRunId"])
    return submitted, push_seconds


def _final_flow_run(prefect_api_url: str, flow_run_id: str) -> dict:
    def final() -> dict | None:
        data = httpx.get(f"{prefect_api_url}/flow_runs/{flow_run_id}", headers=BASIC, timeout=10).json()
        return data if data["state"]["type"] in FINAL_FLOW_STATES else None
    return wait_for(final, 30, 0.5, f"flow run {flow_run_id} final")


def test_ten_jobs_over_two_pool_workers_within_the_global_limit(scaleout: ScaleOut, backend: Backend,
                                                                docker_client: docker.DockerClient) -> None:
    began = time.monotonic()
    run = backend.create_run([{"name": f"j{i}", "script": ["sleep 2"]} for i in range(JOBS)])
    job_ids = list(run["jobs"].values())
    labels = [f"cicd.worker-id={WORKER_ID}", f"cicd.pipeline-execution-id={run['pipelineExecutionId']}"]
    starts = ContainerStarts(docker_client, labels)
    try:
        submitted, push_seconds = _submit(backend, scaleout.api.url, job_ids)
        again = backend.push_job(job_ids[0], scaleout.api.url).json()
        assert again["statusCode"] == 200 and again["body"]["flowRunId"] == submitted[job_ids[0]][1]
        peak = _watch(docker_client, backend, labels, job_ids, timeout=150)
        wait_for(lambda: len(starts.workers) >= JOBS, 10, 0.1, f"start events of the {JOBS} containers")
    finally:
        starts.close()
    worker_of = starts.workers
    records = {job_id: backend.job(job_id) for job_id in job_ids}
    assert {job_id: statuses(rec) for job_id, rec in records.items()} == dict.fromkeys(job_ids, ["RUNNING", "SUCCESS"])
    assert all(rec["violations"] == [] for rec in records.values())
    assert peak == LIMIT, f"peak of running containers was {peak}, global limit {LIMIT}"
    flow_runs = {job_id: _final_flow_run(scaleout.prefect_api_url, flow_run_id)
                 for job_id, (_, flow_run_id) in submitted.items()}
    assert {job_id: fr["state"]["type"] for job_id, fr in flow_runs.items()} == dict.fromkeys(job_ids, "COMPLETED")
    assert set(worker_of) == set(job_ids), f"containers seen for {len(worker_of)} of {len(job_ids)} jobs"
    per_worker = {w.name: sum(1 for n in worker_of.values() if n == w.name) for w in scaleout.workers}
    assert sum(per_worker.values()) == JOBS, f"containers not labelled with a pool worker: {worker_of}"
    assert all(per_worker.values()), f"a worker took no job: {per_worker}"
    view = httpx.get(f"{scaleout.api.url}/api/job/{job_ids[0]}", timeout=10).json()
    assert view["status"] == "SUCCESS" and view["flowRunId"] == submitted[job_ids[0]][1]

    to_running = sorted((datetime.fromisoformat(records[j]["history"][0]["startTime"]) - at).total_seconds()
                        for j, (at, _) in submitted.items())
    report = {"pushSeconds": push_seconds, "allDoneSeconds": round(time.monotonic() - began, 1),
              "submitToRunningSeconds": [round(s, 2) for s in to_running], "peakContainers": peak,
              "jobsPerWorker": per_worker}
    (ARTIFACT_DIR / "scaleout-timings.json").write_text(json.dumps(report, indent=1))
    # The first LIMIT jobs start at once; the others also wait for a container slot (jobs of 2 s, LIMIT at once).
    first = to_running[:LIMIT]
    print(f"\nscale-out: {report}\nsubmission -> RUNNING, first {LIMIT} jobs (no wait for a slot): median "
          f"{statistics.median(first):.2f} s, max {max(first):.2f} s (target <= 2 s); all {JOBS}: median "
          f"{statistics.median(to_running):.2f} s, max {max(to_running):.2f} s")


def test_cancel_in_pool_mode_after_the_flow_started(scaleout: ScaleOut, backend: Backend,
                                                    docker_client: docker.DockerClient) -> None:
    long_id = backend.create_run([{"name": "long", "script": ["echo started", "sleep 120"]}])["jobs"]["long"]
    api = scaleout.api.url
    assert backend.push_job(long_id, api).json()["statusCode"] == 202
    wait_for(lambda: backend.job(long_id)["status"] == "RUNNING", 60, 0.2, "long job RUNNING")
    wait_for(lambda: docker_client.containers.list(filters={"label": f"cicd.job-execution-id={long_id}"}), 30, 0.2,
             "its container running")
    assert httpx.get(f"{api}/api/job/{long_id}", timeout=10).json()["status"] == "RUNNING"
    asked = time.monotonic()
    assert httpx.post(f"{api}/api/job/{long_id}/cancel", timeout=30).status_code == 202
    record = backend.wait_final(long_id, 45)
    stopped_after = time.monotonic() - asked
    assert statuses(record) == ["RUNNING", "CANCELED"], record
    assert not docker_client.containers.list(all=True, filters={"label": f"cicd.job-execution-id={long_id}"})
    assert backend.job(long_id)["violations"] == []
    wait_for(lambda: httpx.get(f"{api}/api/job/{long_id}", timeout=10).json()["status"] == "CANCELED", 60, 0.5,
             "flow run Cancelled in Prefect")
    print(f"\nscale-out cancel: running job reported CANCELED {stopped_after:.1f} s after the request")


def test_cancel_before_start_is_reported_once_and_never_run(scaleout: ScaleOut, backend: Backend,
                                                            docker_client: docker.DockerClient,
                                                            tmp_path: Path) -> None:
    """A pool with no worker yet: the API cancels the queued run and reports it; a worker arriving later skips it.
    That worker then takes a long job and is stopped (SIGTERM) under it: the job is canceled and reported once."""
    pool = f"cicd-test-idle-{uuid.uuid4().hex[:8]}"
    common = {**worker_env(backend), "PREFECT_API_URL": scaleout.prefect_api_url, "PREFECT_API_AUTH_STRING": AUTH,
              "WORKER_CONCURRENCY_LIMIT_NAME": scaleout.limit_name}
    api = WorkerProcess({**common, "WORKER_DISPATCH": "pool", "WORKER_WORK_POOL": pool,
                         "WORKER_MAX_CONCURRENT_JOBS": str(LIMIT), "WORKER_STATE_DIR": str(tmp_path / "api")},
                        ARTIFACT_DIR / "worker-pool-api-idle.log")
    late = PoolWorker(pool, "late", {**os.environ, **common, "WORKER_ID": WORKER_ID, "WORKER_PULL_POLICY": "never",
                                     "WORKER_STATE_DIR": str(tmp_path / "late")}, ARTIFACT_DIR / "pool-worker-late.log")
    jobs = backend.create_run([{"name": "queued", "script": ["echo never-run"]},
                               {"name": "long", "script": ["sleep 120"]}])["jobs"]
    queued_id, long_id = jobs["queued"], jobs["long"]
    try:
        api.start()
        answer = backend.push_job(queued_id, api.url).json()
        assert answer["statusCode"] == 202
        canceled = httpx.post(f"{api.url}/api/job/{queued_id}/cancel", timeout=30)
        assert canceled.status_code == 202 and canceled.json()["cancelRequested"], canceled.text
        assert statuses(backend.wait_final(queued_id, 30)) == ["CANCELED"]
        late.start()
        wait_for(lambda: _subscribed(scaleout.prefect_api_url, pool) == 1, 60, 0.5, "the late pool worker subscribed")
        wait_for(lambda: "is already Cancelled: not run" in late.log_path.read_text(), 30, 0.2,
                 "the late worker took the queued task run and skipped it")
        assert backend.push_job(long_id, api.url).json()["statusCode"] == 202
        wait_for(lambda: docker_client.containers.list(filters={"label": f"cicd.job-execution-id={long_id}"}), 60,
                 0.2, "the long job's container running on the late worker")
        assert late.stop() == 0
    finally:
        api.stop()
        late.stop()
    assert statuses(backend.job(queued_id)) == ["CANCELED"] and backend.job(queued_id)["violations"] == []
    assert statuses(backend.job(long_id)) == ["RUNNING", "CANCELED"] and backend.job(long_id)["violations"] == []
    for job_id in (queued_id, long_id):
        assert not docker_client.containers.list(all=True, filters={"label": f"cicd.job-execution-id={job_id}"})


def test_pipeline_in_pool_mode_runs_in_dependency_order(scaleout: ScaleOut, backend: Backend) -> None:
    run = backend.create_run([
        {"name": "build", "script": ["echo built > out.txt"]},
        {"name": "test", "script": ["cat out.txt"], "needs": ["build"]},
        {"name": "lint", "script": ["exit 3"], "needs": ["build"]},
        {"name": "deploy", "script": ["echo never"], "needs": ["test", "lint"]},
    ])
    answer = httpx.post(f"{scaleout.api.url}/api/pipeline/execute",
                        json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=60)
    assert answer.status_code == 202, answer.text
    records = {name: backend.wait_final(job_id, 120) for name, job_id in run["jobs"].items()}
    assert {name: statuses(rec) for name, rec in records.items()} == {
        "build": ["RUNNING", "SUCCESS"], "test": ["RUNNING", "SUCCESS"], "lint": ["RUNNING", "FAILED"],
        "deploy": ["CANCELED"]}
    assert "built" in records["test"]["history"][-1]["logs"]  # the pipeline's workspace volume is shared
    assert _final_flow_run(scaleout.prefect_api_url, answer.json()["flowRunId"])["state"]["type"] == "FAILED"
