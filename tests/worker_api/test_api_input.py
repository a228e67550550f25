"""Bad input is refused naming the field, and nothing is run or reported; auth, config and health."""

from __future__ import annotations

import uuid

import httpx

from tests.support import TEST_IMAGE, Backend, WorkerProcess


def _payload(**job: object) -> dict:
    return {"id": str(uuid.uuid4()), "local": False, "startTime": [2025, 3, 5, 14, 30, 0], "_links": {},
            "job": {"name": "j", "dockerImage": TEST_IMAGE, "script": ["true"], **job}}


def test_missing_docker_image_is_refused_naming_the_field(backend: Backend, worker: WorkerProcess) -> None:
    job_id = backend.create_run([{"name": "bad"}])["jobs"]["bad"]
    body = backend.dto(job_id)
    del body["job"]["dockerImage"]
    answer = httpx.post(f"{worker.url}/api/job/execute", json=body)
    assert answer.status_code == 422
    assert answer.json()["field"] == "job.dockerImage"
    assert httpx.get(f"{worker.url}/api/job/{job_id}").status_code == 404
    assert backend.job(job_id)["history"] == []


def test_malformed_uuid_is_refused_naming_the_field(worker: WorkerProcess) -> None:
    body = _payload()
    body["id"] = "not-a-uuid"
    answer = httpx.post(f"{worker.url}/api/job/execute", json=body)
    assert answer.status_code == 422 and answer.json()["field"] == "id"
    body = _payload(dependencies=["zzz"])
    answer = httpx.post(f"{worker.url}/api/job/execute", json=body)
    assert answer.status_code == 422 and answer.json()["field"] == "job.dependencies.0"


def test_invalid_image_reference_and_bad_timestamp_are_refused(worker: WorkerProcess) -> None:
    answer = httpx.post(f"{worker.url}/api/job/execute", json=_payload(dockerImage="Not An Image"))
    assert answer.status_code == 422 and answer.json()["field"] == "job.dockerImage"
    body = _payload()
    body["startTime"] = [2025, 13]
    answer = httpx.post(f"{worker.url}/api/job/execute", json=body)
    assert answer.status_code == 422 and answer.json()["field"] == "startTime"


def test_unknown_job_view_and_cancel_are_404(worker: WorkerProcess) -> None:
    unknown = uuid.uuid4()
    assert httpx.get(f"{worker.url}/api/job/{unknown}").status_code == 404
    assert httpx.post(f"{worker.url}/api/job/{unknown}/cancel").status_code == 404


def test_config_shows_settings_without_secrets(make_worker) -> None:
    worker = make_worker(WORKER_API_TOKEN="s3cret-token", WORKER_MAX_RETRIES="5")
    assert httpx.get(f"{worker.url}/api/worker/config").status_code == 401
    answer = httpx.get(f"{worker.url}/api/worker/config", headers={"Authorization": "Bearer s3cret-token"})
    assert answer.status_code == 200
    config = answer.json()
    assert config["max_retries"] == 5 and config["pull_policy"] == "never" and config["apiTokenSet"] is True
    assert "s3cret-token" not in answer.text
    wrong = httpx.post(f"{worker.url}/api/job/execute", json=_payload(), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(f"{worker.url}/api/worker/health").status_code == 200  # health needs no token


def test_health_is_up_with_every_check(worker: WorkerProcess) -> None:
    report = httpx.get(f"{worker.url}/api/worker/health").json()
    assert report["status"] == "UP"
    assert {name: check["status"] for name, check in report["checks"].items()} == {
        "docker": "UP", "prefect": "UP", "backend": "UP", "outbox": "UP", "state": "UP"}
    assert report["checks"]["outbox"]["depth"] >= 0 and "oldestAgeSeconds" in report["checks"]["outbox"]


def test_health_is_503_when_docker_is_unreachable(make_worker, tmp_path) -> None:
    worker = make_worker(expect_healthy=False, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    answer = httpx.get(f"{worker.url}/api/worker/health")
    assert answer.status_code == 503
    report = answer.json()
    assert report["status"] == "DOWN" and report["checks"]["docker"]["status"] == "DOWN"
    assert report["checks"]["prefect"]["status"] == "UP"
