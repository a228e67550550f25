"""Job containers hold less, and a hung Docker engine is a failure, not a wait.

Capabilities a CI job does not need are dropped, CPU is limited, the root filesystem can be read-only,
images can be limited to an allow-list; every engine call has a deadline, so a wedged engine fails jobs
(retried, then FAILED naming the engine) and frees their container slots instead of holding them for ever.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest

from core.errors import EngineUnavailable, ImageNotAllowed
from executors.base import DEFAULT_CAP_DROP, JobResult, JobSpec
from executors.docker_executor import LABEL_JOB, DockerExecutor
from tests.conftest import ARTIFACT_DIR, WORKER_ID, worker_env
from tests.security.wedged_engine import WedgingEngine
from tests.support import TEST_IMAGE, Backend, WorkerProcess, containers, final_log, statuses, wait_for

OUTSIDE_IMAGE = "alpine:3.19"  # never pulled: refused before any engine call


def _spec(*script: str, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {"job_execution_id": f"exec-sec-{uuid.uuid4()}", "name": "sec-job",
                              "image": TEST_IMAGE, "script": script, "pull_policy": "never", **overrides}
    return JobSpec(**fields)


def _run(executor: DockerExecutor, spec: JobSpec) -> tuple[JobResult, list[str]]:
    lines: list[str] = []
    return executor.run(spec, lines.append, threading.Event()), lines


def _events(docker_client: docker.DockerClient, job_execution_id: str, since: float) -> list[str]:
    events = docker_client.events(since=since - 1, until=time.time(), decode=True,
                                  filters={"type": "container", "label": f"{LABEL_JOB}={job_execution_id}"})
    return [event["Action"] for event in events]


def _send(backend: Backend, worker: WorkerProcess, name: str, image: str = TEST_IMAGE, **job: Any) -> str:
    job_id: str = backend.create_run([{"name": name, "dockerImage": image, **job}])["jobs"][name]
    backend.push_job(job_id, worker.url)
    return job_id


# --- capabilities and CPU --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cap_drop", "denied"), [
    pytest.param(DEFAULT_CAP_DROP, True, id="default-drops"),
    pytest.param((), False, id="nothing-dropped"),
])
def test_raw_sockets_and_device_nodes_need_the_dropped_capabilities(
        cap_drop: tuple[str, ...], denied: bool, docker_client: docker.DockerClient) -> None:
    # Network "none" still has a loopback: ping works there only with NET_RAW, mknod only with MKNOD.
    executor = DockerExecutor(WORKER_ID, stop_grace_seconds=2)
    script = ("if ping -c1 -W1 127.0.0.1; then echo RAW-SOCKET-OPENED; fi",
              "if mknod /tmp/null c 1 3; then echo DEVICE-NODE-MADE; fi")
    result, lines = _run(executor, _spec(*script, cap_drop=cap_drop))
    assert result.succeeded, lines
    assert ("RAW-SOCKET-OPENED" in lines) is not denied and ("DEVICE-NODE-MADE" in lines) is not denied, lines
    if denied:
        assert "ping: permission denied (are you root?)" in lines
        assert "mknod: /tmp/null: Operation not permitted" in lines


# --- read-only root and image allow-list (one worker with both) -----------------------------------------------

@pytest.fixture(scope="module")
def restricted_worker(backend: Backend, docker_client: docker.DockerClient,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = worker_env(backend, WORKER_STATE_DIR=str(tmp_path_factory.mktemp("restricted-state")),
                     WORKER_READ_ONLY_ROOTFS="true", WORKER_ALLOWED_IMAGES='["cicd-busybox:*"]')
    process = WorkerProcess(env, ARTIFACT_DIR / "worker-restricted.log").start()
    yield process
    process.stop()


def test_read_only_root_leaves_tmp_and_workspace_writable(backend: Backend, restricted_worker: WorkerProcess) -> None:
    script = ["if touch /etc/planted; then echo ROOT-WRITABLE; exit 1; fi",
              "echo scratch > /tmp/scratch && cat /tmp/scratch",
              "echo kept > /workspace/kept && cat /workspace/kept"]
    record = backend.wait_final(_send(backend, restricted_worker, "read-only", script=script), 60)
    log = final_log(record)
    assert record["status"] == "SUCCESS", log
    assert "touch: /etc/planted: Read-only file system" in log
    assert "\nscratch\n" in log and "\nkept\n" in log


def test_long_script_runs_with_a_read_only_root(backend: Backend, restricted_worker: WorkerProcess) -> None:
    # Over the executor's 100 KiB inline limit, the program goes in as a file: it must still get in.
    filler = ": " + "x" * 60_000
    script = [filler, filler, "echo long-script-ran", "cat /proc/1/cmdline | tr '\\0' ' '"]
    record = backend.wait_final(_send(backend, restricted_worker, "long-read-only", script=script), 60)
    log = final_log(record)
    assert record["status"] == "SUCCESS", log[-2000:]
    assert "\nlong-script-ran\n" in log
    assert "/bin/sh /.cicd-job/script.sh" in log  # really the file path, not the inline one


def test_image_outside_the_allow_list_fails_at_once(backend: Backend, restricted_worker: WorkerProcess,
                                                    docker_client: docker.DockerClient) -> None:
    since = time.time()
    job_id = _send(backend, restricted_worker, "refused", image=OUTSIDE_IMAGE, script=["echo should not run"])
    record = backend.wait_final(job_id, 30)
    log = final_log(record)
    assert record["status"] == "FAILED"
    assert OUTSIDE_IMAGE in log and "WORKER_ALLOWED_IMAGES" in log and "cicd-busybox:*" in log, log
    assert statuses(record).count("RUNNING") == 1 and "attempt 2" not in log  # not retried
    assert "should not run" not in log.replace("$ echo should not run", "")
    assert _events(docker_client, job_id, since) == []  # no container was ever created


@pytest.mark.parametrize(("image", "allowed"), [
    ("cicd-busybox:latest", True), ("cicd-busybox", True),  # no tag: matched as :latest
    ("registry.example.com/team/tool:1.2", True), ("registry.example.com/other/tool:1.2", False),
    ("cicd-busybox-evil:latest", False), ("alpine", False), ("docker.io/library/cicd-busybox:1", False),
])
def test_allow_list_matches_whole_references(image: str, allowed: bool) -> None:
    executor = DockerExecutor(WORKER_ID, allowed_images=("cicd-busybox:*", "registry.example.com/team/*"))
    if allowed:
        executor.check_image_allowed(image)
        return
    with pytest.raises(ImageNotAllowed, match="WORKER_ALLOWED_IMAGES") as refused:
        executor.check_image_allowed(image)
    assert repr(image) in str(refused.value) and not refused.value.retryable


# --- a hung engine ---------------------------------------------------------------------------------------------

HUNG_ENGINE_ENV = {"WORKER_DOCKER_TIMEOUT_SECONDS": "2", "WORKER_MAX_RETRIES": "1",
                   "WORKER_RETRY_DELAY_SECONDS": "0.2", "WORKER_MAX_CONCURRENT_JOBS": "1"}


def _fails_naming_the_engine(backend: Backend, worker: WorkerProcess, engine: WedgingEngine,
                             name: str) -> tuple[str, str]:
    """Send a job; it must end FAILED within 30 s, its log naming the engine and the deadline. (id, log)"""
    begin = time.monotonic()
    job_id = _send(backend, worker, name, script=["echo should not run"])
    record = backend.wait_final(job_id, 30)
    log = final_log(record)
    assert record["status"] == "FAILED", log
    assert f"Docker engine at {engine.url}" in log and "did not answer within 2 s" in log, log
    assert time.monotonic() - begin < 30
    return job_id, log


@pytest.mark.slow  # a worker of its own (~15 s to start)
def test_engine_that_never_answers_fails_jobs_and_keeps_the_worker(backend: Backend, make_worker: Any) -> None:
    with WedgingEngine(silent=True) as engine:
        worker = make_worker(expect_healthy=False, DOCKER_HOST=engine.url, **HUNG_ENGINE_ENV)
        _fails_naming_the_engine(backend, worker, engine, "silent-1")
        _fails_naming_the_engine(backend, worker, engine, "silent-2")  # nothing held on to the first one
        assert worker.process is not None and worker.process.poll() is None
        assert httpx.get(f"{worker.url}/api/worker/health", timeout=10).status_code in (200, 503)


@pytest.mark.slow  # a worker of its own (~15 s to start)
def test_unanswered_container_create_is_retried_then_fails_and_frees_the_slot(
        backend: Backend, make_worker: Any, docker_client: docker.DockerClient) -> None:
    # Creates reach the real engine, which makes the container, but their answer never comes back (the
    # wedge seen: `docker run` hung, containers stuck in Created). Everything else is answered.
    since = time.time()
    with WedgingEngine(swallow=lambda line: "/containers/create" in line) as engine:
        worker = make_worker(expect_healthy=False, DOCKER_HOST=engine.url, **HUNG_ENGINE_ENV)
        creates = lambda: sum("/containers/create" in line for line in engine.requests)  # noqa: E731
        first, log = _fails_naming_the_engine(backend, worker, engine, "wedged-1")
        assert "attempt 2 of 2" in log and creates() == 2
        # One container slot in all: the second job gets it, so its creates reach the engine too.
        second, _ = _fails_naming_the_engine(backend, worker, engine, "wedged-2")
        assert creates() == 4
        assert worker.process is not None and worker.process.poll() is None
        # The containers the unanswered creates made were found by label and removed.
        for job_id in (first, second):
            assert containers(docker_client, f"{LABEL_JOB}={job_id}") == []
            actions = _events(docker_client, job_id, since)
            assert actions.count("create") == 2 and actions.count("destroy") == 2, actions


def test_engine_wedged_while_the_job_runs_fails_it_within_the_deadline(
        docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    with WedgingEngine() as engine:
        monkeypatch.setenv("DOCKER_HOST", engine.url)  # the executor makes its own client, as in the worker
        executor = DockerExecutor(WORKER_ID, max_containers=1, stop_grace_seconds=1, docker_timeout_seconds=2)
        spec = _spec("sleep 60")
        outcome: list[Any] = []
        thread = threading.Thread(target=lambda: outcome.append(_try_run(executor, spec)), daemon=True)
        thread.start()
        found = wait_for(lambda: containers(docker_client, f"{LABEL_JOB}={spec.job_execution_id}", running=True),
                         30, 0.1, "the job's container")
        engine.freeze()
        frozen_at = time.monotonic()
        thread.join(timeout=30)
        elapsed = time.monotonic() - frozen_at
        try:
            assert not thread.is_alive(), "the job's thread still waits on the wedged engine"
            assert isinstance(outcome[0], EngineUnavailable), outcome
            assert "stopped answering while the job ran" in str(outcome[0])
            assert f"Docker engine at {engine.url}" in str(outcome[0])
            # A ping every 5 s, each bounded by the 2 s deadline, then a bounded removal attempt.
            assert elapsed < 5 + 2 + 2 + 3, f"took {elapsed:.1f} s"
        finally:
            docker_client.containers.get(found[0].id).remove(force=True, v=True)  # the wedged engine could not


def _try_run(executor: DockerExecutor, spec: JobSpec) -> JobResult | Exception:
    try:
        return executor.run(spec, lambda line: None, threading.Event())
    except Exception as exc:  # handed to the test's thread
        return exc
