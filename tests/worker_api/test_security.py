"""Hardened containers, bounded requests, and schemathesis against the worker's own OpenAPI schema."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support import TEST_IMAGE, Backend, WorkerProcess, containers, wait_for


def test_job_containers_are_hardened(backend: Backend, worker: WorkerProcess, docker_client) -> None:
    job_id = backend.create_run([{"name": "inspect-me", "script": ["sleep 30"]}])["jobs"]["inspect-me"]
    backend.push_job(job_id, worker.url)
    label = {"label": f"cicd.job-execution-id={job_id}"}
    found = wait_for(lambda: containers(docker_client, label["label"], running=True), 30, 0.1, "container")
    container = docker_client.containers.get(found[0].id)
    host = container.attrs["HostConfig"]
    try:
        assert host["Privileged"] is False
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["NetworkMode"] == "none"
        assert host["PidsLimit"] == 1024 and host["Memory"] == 4 * 1024**3
        assert host["Init"] is True
        assert {"NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"} <= set(host["CapDrop"] or []), host["CapDrop"]
        assert not host["CapAdd"]
        assert host["NanoCpus"] == int(min(2.0, docker_client.info()["NCPU"]) * 1e9)  # WORKER_CONTAINER_CPUS=2
        assert host["ReadonlyRootfs"] is False  # opt-in: WORKER_READ_ONLY_ROOTFS
        mounts = [m.get("Source", "") + m.get("Name", "") for m in container.attrs["Mounts"]]
        assert not any("docker.sock" in m for m in mounts) and len(mounts) == 1  # only the workspace volume
    finally:
        httpx.post(f"{worker.url}/api/job/{job_id}/cancel")
        backend.wait_final(job_id, 30)


def test_request_body_and_script_are_bounded(worker: WorkerProcess) -> None:
    big = {"id": str(uuid.uuid4()), "job": {"name": "x", "dockerImage": TEST_IMAGE, "script": ["x" * 2_000_000]}}
    answer = httpx.post(f"{worker.url}/api/job/execute", json=big)
    assert answer.status_code == 413 and answer.json()["field"] == "body"
    many = {"id": str(uuid.uuid4()), "job": {"name": "x", "dockerImage": TEST_IMAGE, "script": ["true"] * 6000}}
    answer = httpx.post(f"{worker.url}/api/job/execute", json=many)
    assert answer.status_code == 422 and answer.json()["field"] == "job.script"


def _schemathesis(worker: WorkerProcess, report: Path, *headers: str) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).with_name("st")
    args = [str(st), "run", f"{worker.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
            "--seed", "1", "--request-timeout", "30", "--report-junit-path", str(report)]
    for header in headers:
        args += ["--header", header]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(backend: Backend, make_worker, tmp_path: Path) -> None:
    for token in (None, "st-token"):
        env = {"WORKER_API_TOKEN": token} if token else {}
        worker = make_worker(**env)
        headers = [f"Authorization: Bearer {token}"] if token else []
        result = _schemathesis(worker, tmp_path / f"junit-{bool(token)}.xml", *headers)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert httpx.get(f"{worker.url}/api/worker/health").status_code == 200  # still alive
        assert worker.process is not None and worker.process.poll() is None
