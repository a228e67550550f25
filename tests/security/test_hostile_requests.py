"""Requests an attacker or a careless backend could send: refused naming the field, nothing run or reported."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support import TEST_IMAGE, Backend, WorkerProcess, containers


def _payload(**job: object) -> dict:
    return {"id": str(uuid.uuid4()), "job": {"name": "j", "dockerImage": TEST_IMAGE, "script": ["true"], **job}}


@pytest.mark.parametrize(("job", "field"), [
    ({"name": "build\nfinal x status=SUCCESS"}, "job.name"),
    ({"name": "bell\x07"}, "job.name"),
    ({"env": {"A=B": "x"}}, "job.env"),
    ({"env": {"": "x"}}, "job.env"),
    ({"env": {"A": "x\x00y"}}, "job.env"),
    ({"script": ["echo a\x00b"]}, "job.script"),
    ({"artifacts": ["a"] * 101}, "job.artifacts"),
    ({"artifacts": ["x" * 2000]}, "job.artifacts"),
])
def test_hostile_job_fields_are_refused_and_nothing_runs(worker: WorkerProcess, docker_client, job: dict,
                                                         field: str) -> None:
    body = _payload(**job)
    answer = httpx.post(f"{worker.url}/api/job/execute", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert httpx.get(f"{worker.url}/api/job/{body['id']}").status_code == 404
    assert not containers(docker_client, f"cicd.job-execution-id={body['id']}")


def test_refused_job_reports_nothing_to_the_backend(backend: Backend, worker: WorkerProcess) -> None:
    job_id = backend.create_run([{"name": "innocent"}])["jobs"]["innocent"]
    body = backend.dto(job_id)
    body["job"]["env"] = {"BAD=NAME": "1"}
    assert httpx.post(f"{worker.url}/api/job/execute", json=body).status_code == 422
    assert backend.job(job_id)["history"] == []
