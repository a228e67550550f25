"""Service containers beside a job (``JobSpec.services``) on the real engine, their start-up sweep, and the
pipeline file's ``services`` key.

A job reaches a busybox ``httpd`` by alias on an internal network of its own; afterwards no container and no
network of the job is left, whatever the outcome.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from cli.pipeline_file import PipelineFileError, load_pipeline_file
from core.errors import ImageUnavailable
from core.models import ServiceDTO
from core.settings import Settings
from executors.base import ServiceSpec
from executors.docker_executor import LABEL_JOB, LABEL_WORKER, DockerExecutor
from executors.dummy import DummyExecutor
from executors.job_services import (
    LABEL_SERVICE,
    LABEL_SERVICE_OF,
    NETWORK_OPTIONS,
    JobServices,
    ServiceFailed,
    default_alias,
    service_specs,
)
from flows.recovery import RecoveryMasks, recover
from flows.services import build_services
from tests.conftest import WORKER_ID
from tests.executors.test_docker_executor import MISSING_IMAGE, Run, make_spec
from tests.support import TEST_IMAGE, Backend, wait_for

HTTPD = ServiceSpec(TEST_IMAGE, "web", ("httpd", "-f", "-vv", "-p", "8080", "-h", "/etc"))
FETCH = "for i in 1 2 3 4 5; do wget -q -O - http://web:8080/hostname && break; sleep 0.3; done"


@pytest.fixture(scope="module")
def executor(docker_client: docker.DockerClient) -> DockerExecutor:
    return DockerExecutor(WORKER_ID, max_containers=4, stop_grace_seconds=2)


def left_of(client: docker.DockerClient, job_execution_id: str) -> tuple[list[Any], list[Any]]:
    """The containers (the job's and its services') and networks of one job execution still on the engine."""
    containers = [*client.containers.list(all=True, filters={"label": f"{LABEL_JOB}={job_execution_id}"}),
                  *client.containers.list(all=True, filters={"label": f"{LABEL_SERVICE_OF}={job_execution_id}"})]
    return containers, client.networks.list(filters={"label": f"{LABEL_JOB}={job_execution_id}"})


def test_job_reaches_its_service_by_alias_and_nothing_is_left(executor: DockerExecutor,
                                                               docker_client: docker.DockerClient) -> None:
    run = Run(make_spec(FETCH, services=(HTTPD,))).execute(executor)
    assert run.outcome().succeeded, run.lines
    assert "web" in run.lines  # the service's host name, served by it
    assert not any(line.startswith("[web] ") for line in run.lines)  # a success gets no service output
    assert left_of(docker_client, run.spec.job_execution_id) == ([], [])


def test_failed_job_gets_each_service_output_prefixed_with_its_alias(executor: DockerExecutor,
                                                                     docker_client: docker.DockerClient) -> None:
    quiet = ServiceSpec(TEST_IMAGE, "echoer", ("sh", "-c", "echo ready for $WHO; exec sleep 60"), {"WHO": "tests"})
    run = Run(make_spec(FETCH, "exit 3", services=(HTTPD, quiet))).execute(executor)
    assert run.outcome().exit_code == 3
    assert any(line.startswith("[web] ") and "/hostname" in line for line in run.lines), run.lines
    assert "[echoer] ready for tests" in run.lines
    assert left_of(docker_client, run.spec.job_execution_id) == ([], [])


def test_missing_service_image_fails_naming_the_service(executor: DockerExecutor,
                                                        docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("true", services=(HTTPD, ServiceSpec(MISSING_IMAGE, "db")))).execute(executor)
    assert isinstance(run.error, ImageUnavailable)
    assert "service 'db'" in str(run.error) and MISSING_IMAGE in str(run.error)
    assert left_of(docker_client, run.spec.job_execution_id) == ([], [])


def test_service_exiting_at_once_fails_the_job_with_its_output(executor: DockerExecutor,
                                                               docker_client: docker.DockerClient) -> None:
    broken = ServiceSpec(TEST_IMAGE, "db", ("sh", "-c", "echo bad config; exit 4"))
    run = Run(make_spec("echo never runs", services=(broken,))).execute(executor)
    assert isinstance(run.error, ServiceFailed)
    assert "service 'db'" in str(run.error) and "code 4" in str(run.error)
    assert "[db] bad config" in run.lines and "$ echo never runs" not in run.lines
    assert left_of(docker_client, run.spec.job_execution_id) == ([], [])


def test_canceled_job_removes_its_services_and_network(executor: DockerExecutor,
                                                       docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("echo started", "sleep 60", services=(HTTPD,)))
    thread = run.in_thread(executor)
    wait_for(lambda: "started" in run.lines, 30, 0.05, "the job to start")
    containers, networks = left_of(docker_client, run.spec.job_execution_id)
    service = next(c for c in containers if c.labels.get(LABEL_SERVICE) == "web")
    assert LABEL_JOB not in service.labels and service.labels[LABEL_WORKER] == WORKER_ID  # never taken for a job
    network = networks[0].attrs
    assert network["Internal"] and network["Options"] == NETWORK_OPTIONS  # no route out, no host address
    run.cancel.set()
    thread.join(30)
    assert run.outcome().canceled
    assert left_of(docker_client, run.spec.job_execution_id) == ([], [])


def test_two_services_under_one_alias_are_refused_before_any_engine_call(executor: DockerExecutor) -> None:
    run = Run(make_spec("true", services=(HTTPD, ServiceSpec(TEST_IMAGE, "web")))).execute(executor)
    assert isinstance(run.error, ServiceFailed) and "'web'" in str(run.error)


def test_leftover_services_and_networks_are_found_and_swept(docker_client: docker.DockerClient,
                                                            backend: Backend, tmp_path: Path) -> None:
    """What a crash leaves (a started service, its network) is listed apart from jobs and swept at start-up."""
    worker_id = f"{WORKER_ID}-crashed"
    crashed = DockerExecutor(worker_id, stop_grace_seconds=1)
    spec = make_spec("true", services=(HTTPD,))
    left = JobServices(crashed, spec, {LABEL_WORKER: worker_id},
                       {LABEL_WORKER: worker_id, LABEL_JOB: spec.job_execution_id}, None)
    try:
        assert left.start(threading.Event())
        [leftover] = crashed.leftover_containers()
        assert leftover.job_execution_id is None and leftover.service_of == spec.job_execution_id
        assert [n.name for n in crashed.leftover_networks()] == [left.network]
        assert crashed.leftover_networks()[0].job_execution_id == spec.job_execution_id
        settings = Settings(backend_url=backend.api_url, state_dir=tmp_path / "state", worker_id=worker_id)
        services = build_services(settings, executor=crashed)
        try:
            assert recover(crashed, services.outbox, services.inflight, 4096,
                           RecoveryMasks(services.backend, settings)) == 0  # a service is no job
        finally:
            services.close()
        assert crashed.leftover_containers() == [] and crashed.leftover_networks() == []
    finally:
        left.remove()


def test_recovery_removes_the_services_and_network_of_a_cut_off_job_without_sweeping(backend: Backend,
                                                                                       tmp_path: Path) -> None:
    """A pool flow process (no sweep) still removes what its own cut-off job's services left."""
    job_id = backend.create_run([{"name": "cut"}])["jobs"]["cut"]
    settings = Settings(backend_url=backend.api_url, state_dir=tmp_path / "state")
    executor = DummyExecutor(settings.worker_id)
    job = executor.leave(job_id, "step one\n")
    service = executor.leave(None, "db log\n", service_of=job_id)
    other = executor.leave(None, service_of=str(uuid.uuid4()))  # another process's job: left alone
    executor.networks.update({"cicd-job-cut": job_id, "cicd-job-other": "someone-else"})
    services = build_services(settings, executor=executor)
    try:
        services.inflight.add(uuid.UUID(job_id), None, "cut")
        assert recover(executor, services.outbox, services.inflight, 4096,
                       RecoveryMasks(services.backend, settings), sweep=False) == 1
    finally:
        services.close()
    assert executor.calls_to("remove_container") == [job, service]
    assert executor.calls_to("captured_output") == [job]  # the service's output is not the job's log
    assert executor.calls_to("remove_network") == ["cicd-job-cut"]
    assert [c.container_id for c in executor.leftover_containers()] == [other]


def test_wire_services_become_specs_with_derived_aliases() -> None:
    specs = service_specs([ServiceDTO.model_validate({"image": "registry.local:5000/team/my_db:16",
                                                      "variables": {"A": "1"}}),
                           ServiceDTO(image="redis@sha256:" + "a" * 64, alias="cache", command=["redis-server"])])
    assert [(s.alias, s.command, s.env) for s in specs] == [("my-db", (), {"A": "1"}),
                                                            ("cache", ("redis-server",), {})]
    assert default_alias("postgres:16") == "postgres" and default_alias("___") == "service"


def _problems(tmp_path: Path, services_yaml: str) -> list[str]:
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages:\n  - name: test\n    jobs:\n      - name: job\n        image: busybox\n"
                    "        script: [true]\n        services:\n" + services_yaml)
    with pytest.raises(PipelineFileError) as caught:
        load_pipeline_file(path)
    return str(caught.value).splitlines()


def test_pipeline_file_services_are_read_into_the_wire_form(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages:\n  - name: test\n    jobs:\n      - name: job\n        image: busybox\n"
                    "        script: [true]\n        services:\n          - postgres:16\n"
                    "          - {image: busybox, alias: web, command: [httpd, -f], env: {PORT: 80}}\n")
    [job] = load_pipeline_file(path).jobs
    assert job.services == [{"image": "postgres:16"},
                            {"image": "busybox", "alias": "web", "command": ["httpd", "-f"], "env": {"PORT": "80"}}]


@pytest.mark.parametrize(("services_yaml", "expected"), [
    ("          - alias: db\n", ":8: stages[0].jobs[0].services[0].image: missing"),
    ("          - {image: busybox, alias: Web_1}\n", ":8: stages[0].jobs[0].services[0].alias: 'Web_1' is not a "
                                                      "valid host name"),
    ("          - busybox\n          - {image: 'x/busybox:2'}\n",
     ":9: stages[0].jobs[0].services[1]: alias 'busybox' is already the one of stages[0].jobs[0].services[0]"),
    ("          - {image: busybox, command: httpd -f}\n", ":8: stages[0].jobs[0].services[0].command: must be a list"),
    ("          - {image: 'bad image!'}\n", ":8: stages[0].jobs[0].services[0].image: not a valid image reference"),
    ("          - {image: busybox, port: 80}\n", ":8: stages[0].jobs[0].services[0].port: unknown key"),
    ("".join(f"          - {{image: busybox, alias: s{i}}}\n" for i in range(11)),
     ":8: stages[0].jobs[0].services: at most 10 services per job (11 given)"),
])
def test_pipeline_file_services_errors_name_the_line(tmp_path: Path, services_yaml: str, expected: str) -> None:
    problems = _problems(tmp_path, services_yaml)
    assert any(expected in problem for problem in problems), problems
