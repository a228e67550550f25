"""Scale-out on one machine: the API in pool mode, two ``prefect worker`` processes on one work pool.

A Prefect server of its own stands for the shared one, with basic auth as pool mode requires
(``PREFECT_SERVER_API_AUTH_STRING``); every process the test starts gets ``PREFECT_API_AUTH_STRING``.
Both workers use this machine's Docker engine and the session's WORKER_ID, so the session's leak check
covers their containers. Pool, deployments and global concurrency limit get names unique to the test run.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
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

from tests.conftest import ARTIFACT_DIR, WORKER_ID, worker_env
from tests.support import FINAL, REPO, Backend, WorkerProcess, prefect_server_with_auth, statuses, wait_for

pytestmark = pytest.mark.slow
AUTH = f"cicd:{uuid.uuid4().hex}"
BASIC = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}

LIMIT = 2  # global concurrency limit: containers at once across both workers
JOBS = 10
FINAL_FLOW_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class PrefectWorker:
    """``prefect worker start`` as a child process in its own session."""

    def __init__(self, pool: str, name: str, env: dict[str, str], log_path: Path) -> None:
        self.pool, self.name, self.env, self.log_path = pool, name, env, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrefectWorker:
        prefect = Path(sys.executable).with_name("prefect")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(prefect), "worker", "start", "--pool", self.pool, "--type", "process", "--limit", "3",
                 "--name", self.name], stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def stop(self) -> None:
        """SIGTERM twice: an idle worker ignores the first one for half a minute or more.

        See docs/prefect-behaviours.md, "Process workers and signals".
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            os.killpg(process.pid, sig)
            try:
                process.wait(10)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass
class ScaleOut:
    api: WorkerProcess
    workers: list[PrefectWorker]
    prefect_api_url: str


def _as_client(api_url: str) -> AbstractContextManager[object]:
    """Prefect client settings of this test process pointed at the server with auth."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: AUTH})


def _prefect_objects(pool: str, deployment: str, limit_name: str) -> None:
    """Delete what ``deploy_all`` made."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for flow_name in ("execute-job", "execute-pipeline"):
            client.delete_deployment(client.read_deployment_by_name(f"{flow_name}/{deployment}").id)
        client.delete_work_pool(pool)
        client.delete_global_concurrency_limit_by_name(limit_name)


def _online(pool: str, names: set[str]) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return names <= {w.name for w in workers if w.status is not None and w.status.value == "ONLINE"}


@pytest.fixture(scope="module")
def prefect_api_url() -> Iterator[str]:
    """A Prefect server demanding basic auth, as the multi-host set-up requires."""
    with prefect_server_with_auth(AUTH, ARTIFACT_DIR / "prefect-server-pool.log") as api_url:
        yield api_url


@pytest.fixture(scope="module")
def scaleout(backend: Backend, docker_client: docker.DockerClient, prefect_api_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    from worker_api.deploy import deploy_all

    tmp_path = tmp_path_factory.mktemp("scaleout")
    tag = uuid.uuid4().hex[:8]
    pool, deployment, limit_name = f"cicd-test-pool-{tag}", f"test-{tag}", f"cicd-test-containers-{tag}"
    assert httpx.post(f"{prefect_api_url}/flow_runs/count", json={}, timeout=10).status_code == 401
    with _as_client(prefect_api_url):
        deploy_all(pool, deployment, limit_name, LIMIT, REPO)
    # the limit's name reaches the flow processes from the API (job variables)
    common = {**worker_env(backend), "PREFECT_API_URL": prefect_api_url, "PREFECT_API_AUTH_STRING": AUTH}
    workers = [PrefectWorker(pool, f"w{i}-{tag}", {
        **os.environ, **common, "PREFECT_WORKER_QUERY_SECONDS": "2", "CICD_WORKER_HOME": str(REPO),
        "WORKER_ID": WORKER_ID, "WORKER_PULL_POLICY": "never", "WORKER_STATE_DIR": str(tmp_path / f"state-w{i}"),
    }, ARTIFACT_DIR / f"prefect-worker-{i}.log").start() for i in range(2)]
    api = WorkerProcess({**common, "WORKER_DISPATCH": "pool", "WORKER_WORK_POOL": pool,
                         "WORKER_DEPLOYMENT_NAME": deployment, "WORKER_CONCURRENCY_LIMIT_NAME": limit_name,
                         "WORKER_MAX_CONCURRENT_JOBS": str(LIMIT), "WORKER_STATE_DIR": str(tmp_path / "state-api")},
                        ARTIFACT_DIR / "worker-pool-api.log")
    try:
        api.start()
        with _as_client(prefect_api_url):
            wait_for(lambda: _online(pool, {w.name for w in workers}), 150, 1, "both prefect workers online")
        yield ScaleOut(api, workers, prefect_api_url)
    finally:
        api.stop()
        for worker in workers:
            worker.stop()
        with _as_client(prefect_api_url):
            _prefect_objects(pool, deployment, limit_name)


def _watch(docker_client: docker.DockerClient, backend: Backend, run_id: str, job_ids: list[str],
           timeout: float, since: int) -> tuple[int, dict[str, str]]:
    """Until every job is final: the peak of running containers and the Prefect worker of each job."""
    peak = 0
    labels = [f"cicd.worker-id={WORKER_ID}", f"cicd.pipeline-execution-id={run_id}"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = docker_client.containers.list(filters={"label": labels, "status": "running"}, ignore_removed=True)
        peak = max(peak, len(running))
        if all(backend.job(job_id)["status"] in FINAL for job_id in job_ids):
            return peak, _workers_of_started_containers(docker_client, labels, since)
        time.sleep(0.1)
    raise AssertionError(f"not all {len(job_ids)} jobs final after {timeout:g} s")


def _workers_of_started_containers(docker_client: docker.DockerClient, labels: list[str], since: int
                                   ) -> dict[str, str]:
    """Job execution id -> Prefect worker label of every container started since ``since``, from the engine's
    events (polling alone misses a 2 s container when the machine is loaded)."""
    events = docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "event": "start", "label": labels})
    attributes = [event.get("Actor", {}).get("Attributes", {}) for event in events]
    return {a["cicd.job-execution-id"]: a.get("cicd.prefect-worker", "?") for a in attributes
            if "cicd.job-execution-id" in a}


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
    began, since = time.monotonic(), int(time.time()) - 1  # since: containers may start before the watch does
    run = backend.create_run([{"name": f"j{i}", "script": ["sleep 2"]} for i in range(JOBS)])
    job_ids = list(run["jobs"].values())
    submitted, push_seconds = _submit(backend, scaleout.api.url, job_ids)
    again = backend.push_job(job_ids[0], scaleout.api.url).json()
    assert again["statusCode"] == 200 and again["body"]["flowRunId"] == submitted[job_ids[0]][1]

    peak, worker_of = _watch(docker_client, backend, run["pipelineExecutionId"], job_ids, timeout=150, since=since)
    records = {job_id: backend.job(job_id) for job_id in job_ids}
    assert {job_id: statuses(rec) for job_id, rec in records.items()} == dict.fromkeys(job_ids, ["RUNNING", "SUCCESS"])
    assert all(rec["violations"] == [] for rec in records.values())
    assert peak == LIMIT, f"peak of running containers was {peak}, global limit {LIMIT}"
    flow_runs = {job_id: _final_flow_run(scaleout.prefect_api_url, flow_run_id)
                 for job_id, (_, flow_run_id) in submitted.items()}
    assert {job_id: fr["state"]["type"] for job_id, fr in flow_runs.items()} == dict.fromkeys(job_ids, "COMPLETED")
    ran_on = {job_id: fr["labels"]["prefect.worker.name"] for job_id, fr in flow_runs.items()}
    assert ran_on == worker_of, "the container labels disagree with Prefect on which worker ran a job"
    per_worker = {w.name: sum(1 for n in ran_on.values() if n == w.name) for w in scaleout.workers}
    assert all(per_worker.values()), f"a worker took no job: {per_worker}"
    view = httpx.get(f"{scaleout.api.url}/api/job/{job_ids[0]}", timeout=10).json()
    assert view["status"] == "SUCCESS" and view["flowRunId"] == submitted[job_ids[0]][1]

    to_running = sorted((datetime.fromisoformat(records[j]["history"][0]["startTime"]) - at).total_seconds()
                        for j, (at, _) in submitted.items())
    report = {"pushSeconds": push_seconds, "allDoneSeconds": round(time.monotonic() - began, 1),
              "submitToRunningSeconds": [round(s, 1) for s in to_running], "peakContainers": peak,
              "jobsPerWorker": per_worker}
    (ARTIFACT_DIR / "scaleout-timings.json").write_text(json.dumps(report, indent=1))
    print(f"\nscale-out: {report}")


def test_cancel_in_pool_mode_before_and_after_the_flow_starts(scaleout: ScaleOut, backend: Backend,
                                                              docker_client: docker.DockerClient) -> None:
    run = backend.create_run([{"name": "long", "script": ["echo started", "sleep 120"]},
                              {"name": "queued", "script": ["echo never-run"]}])
    long_id, queued_id = run["jobs"]["long"], run["jobs"]["queued"]
    api = scaleout.api.url
    assert backend.push_job(long_id, api).json()["statusCode"] == 202
    assert backend.push_job(queued_id, api).json()["statusCode"] == 202
    canceled = httpx.post(f"{api}/api/job/{queued_id}/cancel", timeout=30)  # still Scheduled (or just Pending)
    assert canceled.status_code == 202 and canceled.json()["cancelRequested"], canceled.text
    assert statuses(backend.wait_final(queued_id, 30)) == ["CANCELED"]

    wait_for(lambda: backend.job(long_id)["status"] == "RUNNING", 120, 0.5, "long job RUNNING")
    assert httpx.get(f"{api}/api/job/{long_id}", timeout=10).json()["status"] == "RUNNING"
    asked = time.monotonic()
    assert httpx.post(f"{api}/api/job/{long_id}/cancel", timeout=30).status_code == 202
    record = backend.wait_final(long_id, 45)
    stopped_after = time.monotonic() - asked
    assert statuses(record) == ["RUNNING", "CANCELED"], record
    assert not docker_client.containers.list(all=True, filters={"label": f"cicd.job-execution-id={long_id}"})
    for job_id in (long_id, queued_id):
        assert backend.job(job_id)["violations"] == []
        wait_for(lambda j=job_id: httpx.get(f"{api}/api/job/{j}", timeout=10).json()["status"] == "CANCELED", 60, 1,
                 f"flow run of {job_id} Cancelled in Prefect")
    print(f"\nscale-out cancel: running job reported CANCELED {stopped_after:.1f} s after the request")


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
