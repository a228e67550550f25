"""Shared test helpers (also the benchmarks' own, through bench/harness.py): polling with a deadline, free ports,
a worker process, a Prefect server demanding auth, a failing client call, backend admin calls."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from cli.prefect_server import LocalPrefectServer, stop_group
from core.backend_client import BackendClient

T = TypeVar("T")
E = TypeVar("E", bound=Exception)
TEST_IMAGE = os.environ.get("CICD_TEST_IMAGE", "cicd-busybox:latest")
FINAL = {"SUCCESS", "FAILED", "CANCELED"}
REPO = Path(__file__).resolve().parent.parent


def wait_for(probe: Callable[[], T | Literal[False] | None], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    """``cicd-worker serve`` as a real child process on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, expect_healthy: bool = True, timeout: float = 90.0) -> WorkerProcess:
        exe = Path(sys.executable).with_name("cicd-worker")
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        wanted = {200} if expect_healthy else {200, 503}
        wait_for(lambda: self._health_status() in wanted, timeout, 0.3, f"worker at {self.url} ({self.log_path})")
        return self

    def _health_status(self) -> int | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}; log: {self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/api/worker/health", timeout=5).status_code
        except httpx.HTTPError:
            return None

    def stop(self) -> None:
        stop_group(self.process, 20)


@contextlib.contextmanager
def prefect_server_with_auth(auth: str, log_path: Path) -> Iterator[str]:
    """A real Prefect server on a free port demanding basic auth ``auth`` (``user:password``); its API URL."""
    server = LocalPrefectServer(port=free_port(), log_path=log_path, env={"PREFECT_SERVER_API_AUTH_STRING": auth})
    try:
        server.start(timeout=240)
        yield server.api_url
    finally:
        server.stop()


def raised(kind: type[E], client: BackendClient, call: Callable[[BackendClient], object]) -> tuple[E, float]:
    """Make ``call`` on ``client``, which must raise ``kind``; close the client; the error and the seconds taken."""
    began = time.monotonic()
    try:
        call(client)
    except kind as error:
        return error, time.monotonic() - began
    finally:
        client.close()
    raise AssertionError(f"no {kind.__name__} raised")


class Backend:
    """Admin-side calls to the reference backend that tests (and benchmarks) make.

    ``client`` options go to the ``httpx.Client`` (default: a 30 s timeout).
    """

    def __init__(self, url: str, **client: Any) -> None:
        self.url = url
        self.api_url = url + "/api"
        self.http = httpx.Client(base_url=url, **{"timeout": 30, **client})

    def create_run(self, jobs: list[dict[str, Any]], name: str = "test-pipeline", **extra: Any) -> dict[str, Any]:
        jobs = [{"dockerImage": TEST_IMAGE, "script": ["true"], **job} for job in jobs]
        response = self.http.post("/admin/pipeline-runs", json={"name": name, "jobs": jobs, **extra})
        response.raise_for_status()
        return response.json()

    def push_job(self, job_execution_id: str, worker_url: str, token: str | None = None) -> httpx.Response:
        body = {"workerUrl": worker_url, **({"token": token} if token else {})}
        answer = self.http.post(f"/admin/job-executions/{job_execution_id}/push", json=body)
        answer.raise_for_status()
        return answer

    def job(self, job_execution_id: str) -> dict[str, Any]:
        response = self.http.get(f"/admin/job-executions/{job_execution_id}")
        response.raise_for_status()
        return response.json()

    def wait_final(self, job_execution_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_for(lambda: (rec := self.job(job_execution_id))["status"] in FINAL and rec,
                        timeout, 0.1, f"final status of job {job_execution_id}")

    def dto(self, job_execution_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/jobs/{job_execution_id}")
        response.raise_for_status()
        return response.json()


def statuses(record: dict[str, Any]) -> list[str]:
    return [entry["status"] for entry in record["history"]]


def final_log(record: dict[str, Any]) -> str:
    return str(record["history"][-1].get("logs") or "")


def containers(docker_client: Any, label: str, running: bool = False) -> list[Any]:
    """Containers with ``label`` (``key=value``); sparse, so one removed while listing is no error."""
    filters: dict[str, Any] = {"label": label, **({"status": "running"} if running else {})}
    return list(docker_client.containers.list(all=not running, sparse=True, filters=filters))


def flow_run_id_of(worker_url: str, job_id: str, answer_body: dict[str, Any]) -> str:
    """The job's flow run id: in the execute answer when Prefect wrote it within WORKER_FLOW_RUN_ID_WAIT_SECONDS
    (null under load), else in the worker's view of the job once written."""
    return answer_body.get("flowRunId") or wait_for(
        lambda: httpx.get(f"{worker_url}/api/job/{job_id}", timeout=10).json().get("flowRunId"), 30, 0.2,
        "the job's flow run id")
