"""Session fixtures: one real Prefect server, the reference backend over HTTP, a real worker process.

The Prefect server is started in ``pytest_configure``, before any test module imports prefect, because
Prefect reads ``PREFECT_API_URL`` when it is imported. It starts in the background (~15-20 s) while the modules
that need no Prefect server run first; every other test waits for its health before it starts.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from tests.support import REPO, TEST_IMAGE, Backend, WorkerProcess, free_port, wait_for

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cicd-tests-"))
ARTIFACT_DIR = REPO / "test-artifacts"
WORKER_ID = f"test-worker-{uuid.uuid4().hex[:8]}"
_server = None


def pytest_configure(config: pytest.Config) -> None:
    global _server
    os.environ.setdefault("PREFECT_HOME", str(_SESSION_DIR / "prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["WORKER_ID"] = WORKER_ID
    os.environ["WORKER_PULL_POLICY"] = "never"  # no registry here: a pull must never be attempted
    os.environ["WORKER_STATE_DIR"] = str(_SESSION_DIR / "state")
    if os.environ.get("PREFECT_API_URL"):  # given, or launched by the xdist controller this worker came from
        return
    from cli.prefect_server import LocalPrefectServer

    ARTIFACT_DIR.mkdir(exist_ok=True)
    _server = LocalPrefectServer(port=free_port(), log_path=ARTIFACT_DIR / "prefect-server.log")
    _server.launch()
    os.environ["PREFECT_API_URL"] = _server.api_url


_ENGINE_FIXTURES = {"docker_client", "worker", "make_worker"}
_ENGINE_MODULES = {"test_docker_executor.py", "test_local_run.py"}  # they drive the engine without a fixture
# Tests that restart or kill the engine or a worker under load, or count on the machine's time for themselves
# (scale-out limits, bursts): ``make test`` runs them alone, after the rest has run on two xdist workers.
_SERIAL_PACKAGES = {"resilience", "scaleout"}


# Modules none of whose tests talk to a Prefect server (checked by running them with PREFECT_API_URL pointing at
# a closed port): they run first, while the session's server starts.
_PREFECT_FREE_MODULES = {"test_backend_client.py", "test_models.py", "test_backend.py", "test_planning.py",
                         "test_output.py", "test_artifact_patterns.py", "test_tar_stream.py", "test_script.py",
                         "test_dummy_executor.py", "test_secrets.py", "test_delivery.py",
                         "test_pipeline_language.py", "test_scheduler_when.py", "test_job_log.py",
                         "test_cache_cli.py",
                         "test_pipeline_matrix.py"}


def _prefect_free(item: pytest.Item) -> bool:
    return item.path.name in _PREFECT_FREE_MODULES and not item.get_closest_marker("engine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the Docker engine ``engine`` (``make test-fast`` leaves them out) and those
    that must run alone ``serial``; run the tests that need no Prefect server first (a stable sort keeps each
    group's order)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _ENGINE_FIXTURES or item.path.name in _ENGINE_MODULES:
            item.add_marker(pytest.mark.engine)
        if item.path.parent.name in _SERIAL_PACKAGES:
            item.add_marker(pytest.mark.serial)
    items.sort(key=lambda item: not _prefect_free(item))


_prefect_healthy = False


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that may talk to Prefect waits for the server's health (once per process): the session's server
    is still starting while the Prefect-free tests run."""
    global _prefect_healthy
    if _prefect_healthy or _prefect_free(item):
        return
    if _server is not None:
        _server.wait_healthy(timeout=240)
    else:  # an xdist worker, or a server given by PREFECT_API_URL
        health = os.environ["PREFECT_API_URL"].rstrip("/") + "/health"
        wait_for(lambda: _answers(health), 240, 0.25, f"the Prefect server at {health}")
    _prefect_healthy = True


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    client.ping()
    client.images.get(TEST_IMAGE)  # built by scripts/setup-docker.sh
    yield client
    label = {"label": f"cicd.worker-id={WORKER_ID}"}
    leftovers = client.containers.list(all=True, sparse=True, filters=label)
    for container in leftovers:
        container.remove(force=True)
    volumes = client.volumes.list(filters=label)
    for volume in volumes:
        volume.remove(force=True)
    networks = client.networks.list(filters=label)  # the networks of jobs with services
    for network in networks:
        network.remove()
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"
    assert not volumes, f"volumes left behind: {[v.name for v in volumes]}"
    assert not networks, f"networks left behind: {[n.name for n in networks]}"


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    from reference_backend.server import BackendServer

    with BackendServer(_SESSION_DIR / "backend") as server:
        yield Backend(server.url)


def worker_env(backend: Backend, **extra: str) -> dict[str, str]:
    return {"WORKER_BACKEND_URL": backend.api_url, "WORKER_RETRY_DELAY_SECONDS": "0.5",
            "WORKER_DEPENDENCY_POLL_SECONDS": "0.3", "WORKER_STOP_GRACE_SECONDS": "2",
            "WORKER_BACKEND_RETRY_SECONDS": "20", **extra}


@pytest.fixture(scope="session")
def worker(backend: Backend, docker_client: docker.DockerClient) -> Iterator[WorkerProcess]:
    env = worker_env(backend, WORKER_STATE_DIR=str(_SESSION_DIR / "worker-state"))
    process = WorkerProcess(env, ARTIFACT_DIR / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture()
def make_worker(backend: Backend, docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[object]:
    """Start an extra worker process with its own settings; stopped after the test."""
    started: list[WorkerProcess] = []

    def start(expect_healthy: bool = True, **env: str) -> WorkerProcess:
        env = {"WORKER_STATE_DIR": str(tmp_path / f"state-{len(started)}"), **env}
        process = WorkerProcess(worker_env(backend, **env), tmp_path / f"worker-{len(started)}.log")
        started.append(process)
        return process.start(expect_healthy=expect_healthy)

    yield start
    for process in started:
        process.stop()
