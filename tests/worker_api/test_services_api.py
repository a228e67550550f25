"""A JobDTO with ``services`` through the service: reference backend → worker API → flow → job and service
containers on the job's own network → status and log back."""

from __future__ import annotations

from tests.support import Backend, WorkerProcess, containers, final_log, statuses
from tests.worker_api.test_execute_job import run_one


def test_job_with_a_service_reaches_it_by_alias_and_leaves_nothing(backend: Backend, worker: WorkerProcess,
                                                                   docker_client) -> None:
    service = {"image": "cicd-busybox:latest", "alias": "web", "variables": {"GREETING": "hello-from-web"},
               "command": ["sh", "-c", "echo $GREETING > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]}
    record = run_one(backend, worker, services=[service], script=[
        "for i in 1 2 3 4 5; do wget -q -O - http://web:8080/index.html && break; sleep 0.3; done"])
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)
    assert "hello-from-web" in final_log(record)
    assert not containers(docker_client, f"cicd.service-of={record['id']}")
    assert not docker_client.networks.list(filters={"label": f"cicd.job-execution-id={record['id']}"})
