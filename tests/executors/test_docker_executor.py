"""DockerExecutor against the real engine: output, failures, timeout, cancel, images, cleanup, concurrency.

Every container carries the session's ``WORKER_ID`` label, so the ``docker_client`` fixture's teardown
fails the session if any test leaves one behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from core.errors import ContainerLost, ImageUnavailable
from executors.base import JobResult, JobSpec
from executors.docker_executor import LABEL_JOB, LABEL_WORKER, SCRIPT_DIR, SCRIPT_PATH, DockerExecutor
from tests.conftest import WORKER_ID
from tests.support import TEST_IMAGE, wait_for

MISSING_IMAGE = "cicd-test-no-such-image:0.0.1"


@pytest.fixture(scope="module")
def executor(docker_client: docker.DockerClient) -> DockerExecutor:
    # The same id the session's teardown sweeps for (conftest imported once, not a second copy).
    assert os.environ["WORKER_ID"] == WORKER_ID
    return DockerExecutor(WORKER_ID, max_containers=4, stop_grace_seconds=2)


@dataclass
class Run:
    """One job run through the executor: its spec, cancel event, printed lines and outcome."""

    spec: JobSpec
    lines: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    result: JobResult | None = None
    error: Exception | None = None
    started_at: float = 0.0  # wall clock, for the engine's event filter
    elapsed: float = 0.0

    def execute(self, executor: DockerExecutor) -> Run:
        self.started_at = time.time()
        begin = time.monotonic()
        try:
            self.result = executor.run(self.spec, self.lines.append, self.cancel)
        except Exception as exc:  # kept for the test's thread to re-raise or inspect
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - begin
        return self

    def in_thread(self, executor: DockerExecutor) -> threading.Thread:
        thread = threading.Thread(target=self.execute, args=(executor,), daemon=True)
        thread.start()
        return thread

    def outcome(self) -> JobResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def make_spec(*script: str, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {"job_execution_id": f"exec-test-{uuid.uuid4()}", "name": "test-job",
                              "image": TEST_IMAGE, "script": script, "pull_policy": "never", **overrides}
    return JobSpec(**fields)


def containers_of(client: docker.DockerClient, job_execution_id: str) -> list[Container]:
    return client.containers.list(all=True, sparse=True, filters={"label": f"{LABEL_JOB}={job_execution_id}"})


def container_actions(client: docker.DockerClient, run: Run) -> list[str]:
    """Engine events (create, start, die, destroy, …) of the run's containers, up to now."""
    events = client.events(since=run.started_at - 1, until=time.time(), decode=True,
                           filters={"type": "container", "label": f"{LABEL_JOB}={run.spec.job_execution_id}"})
    return [event["Action"] for event in events]


def running_container(client: docker.DockerClient, job_execution_id: str) -> Callable[[], Container | None]:
    def probe() -> Container | None:
        found = [c for c in containers_of(client, job_execution_id) if c.status == "running"]
        return found[0] if found else None

    return probe


def assert_cleaned_up(client: docker.DockerClient, run: Run) -> None:
    assert containers_of(client, run.spec.job_execution_id) == []
    actions = container_actions(client, run)
    assert actions.count("create") == 1 and actions.count("destroy") == 1, actions


def test_output_lines_arrive_in_order_per_stream_including_stderr(executor: DockerExecutor,
                                                                  docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("echo one", "echo two >&2", "echo three", "echo four >&2")).execute(executor)
    result = run.outcome()
    assert result.exit_code == 0 and result.succeeded
    stderr = ["two", "four"]
    assert [line for line in run.lines if line in stderr] == stderr
    assert [line for line in run.lines if line not in stderr] == [
        "$ echo one", "one", "$ echo two >&2", "$ echo three", "three", "$ echo four >&2"]
    assert result.log_bytes == sum(len(line) + 1 for line in run.lines)
    assert_cleaned_up(docker_client, run)


def test_stdout_and_stderr_lines_keep_the_order_they_were_written_in(executor: DockerExecutor) -> None:
    loop = "for i in $(seq 1 500); do echo out$i; echo err$i >&2; done"
    run = Run(make_spec("echo one", "echo two >&2", loop)).execute(executor)
    assert run.outcome().succeeded
    written = ["one", "two"] + [f"{stream}{i}" for i in range(1, 501) for stream in ("out", "err")]
    assert [line for line in run.lines if not line.startswith("$ ")] == written


def test_failing_line_stops_the_script_with_its_exit_code(executor: DockerExecutor,
                                                          docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("echo before", "sh -c 'exit 3'", "echo after")).execute(executor)
    result = run.outcome()
    assert result.exit_code == 3 and not result.succeeded
    assert not result.timed_out and not result.canceled
    assert "[cicd] script line 2 failed with exit code 3" in run.lines
    assert "before" in run.lines and "after" not in run.lines and "$ echo after" not in run.lines
    assert_cleaned_up(docker_client, run)


def test_cd_and_variables_carry_over_between_lines(executor: DockerExecutor) -> None:
    run = Run(make_spec("mkdir -p /tmp/a/b", "cd /tmp/a/b", "pwd", "GREETING=hi", 'echo "$GREETING"'))
    result = run.execute(executor).outcome()
    assert result.succeeded
    assert run.lines[-3:] == ["$ GREETING=hi", '$ echo "$GREETING"', "hi"]
    assert "/tmp/a/b" in run.lines


def test_env_and_working_dir_are_honoured(executor: DockerExecutor) -> None:
    # The executor receives an absolute working dir (relative ones are resolved before it); a missing
    # directory is created by the engine.
    env = {"GREETING": "hello world", "LITERAL": "it's $HOME and `date`"}
    run = Run(make_spec("pwd", 'echo "$GREETING"', "printf '%s\\n' \"$LITERAL\"",
                        env=env, working_dir="/workspace/sub/dir"))
    assert run.execute(executor).outcome().succeeded
    output = [line for line in run.lines if not line.startswith("$ ")]
    assert output == ["/workspace/sub/dir", "hello world", "it's $HOME and `date`"]


def test_long_line_and_last_line_without_newline_arrive_whole(executor: DockerExecutor) -> None:
    # Docker splits output into 16 KiB frames; multi-byte characters get cut at frame edges too.
    run = Run(make_spec("yes x | head -c 100000 | tr -d '\\n'; echo",
                        "yes é | head -c 120000 | tr -d '\\n'; echo",
                        "printf 'last line without newline'"))
    assert run.execute(executor).outcome().succeeded
    output = [line for line in run.lines if not line.startswith("$ ")]
    assert [len(line) for line in output[:2]] == [50000, 40000]
    assert output == ["x" * 50000, "é" * 40000, "last line without newline"]


def test_lines_over_the_limit_arrive_in_pieces_without_cutting_a_character(docker_client: docker.DockerClient) -> None:
    executor = DockerExecutor(WORKER_ID, max_line_chars=1000, stop_grace_seconds=2)
    run = Run(make_spec("yes é | head -c 7500 | tr -d '\\n'; echo", "printf 'x%.0s' $(seq 2500)"))
    assert run.execute(executor).outcome().succeeded
    output = [line for line in run.lines if not line.startswith("$ ")]
    assert output == ["é" * 1000, "é" * 1000, "é" * 500, "x" * 1000, "x" * 1000, "x" * 500]


def test_timeout_stops_the_job_with_sigterm_reaching_the_script(docker_client: docker.DockerClient) -> None:
    # A long grace period: finishing well before it proves SIGTERM (not the SIGKILL fallback) ended the job.
    # The sleep runs in the background because a shell runs its trap only once its foreground child ends.
    patient = DockerExecutor(WORKER_ID, stop_grace_seconds=20)
    run = Run(make_spec("trap 'echo got SIGTERM; exit 7' TERM", "sleep 60 & wait $!", timeout_seconds=1))
    result = run.execute(patient).outcome()
    assert result.timed_out and not result.canceled and not result.succeeded
    assert result.exit_code == 7
    assert "got SIGTERM" in run.lines
    assert run.elapsed < 6, f"took {run.elapsed:.1f} s"
    assert_cleaned_up(docker_client, run)


def test_cancel_from_another_thread_stops_the_job(executor: DockerExecutor,
                                                  docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("echo started", "sleep 60"))
    thread = run.in_thread(executor)
    wait_for(running_container(docker_client, run.spec.job_execution_id), 15, what="the job's container")
    wait_for(lambda: "started" in run.lines, 10, what="the job's first output")
    canceled_at = time.monotonic()
    run.cancel.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    result = run.outcome()
    assert result.canceled and not result.timed_out and not result.succeeded
    assert time.monotonic() - canceled_at < 5
    run.cancel.set()  # cancel is idempotent, even after the run ended
    assert_cleaned_up(docker_client, run)


def test_cancel_before_start_creates_no_container(executor: DockerExecutor,
                                                  docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("echo should not run"))
    run.cancel.set()
    result = run.execute(executor).outcome()
    assert result.canceled and result.exit_code is None and not result.succeeded
    assert run.lines == []
    assert container_actions(docker_client, run) == []


@pytest.mark.parametrize("policy", ["never", "if-not-present"])
def test_missing_image_is_refused_fast_naming_it(policy: str, executor: DockerExecutor,
                                                 docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("true", image=MISSING_IMAGE, pull_policy=policy)).execute(executor)
    assert isinstance(run.error, ImageUnavailable), run.error
    assert MISSING_IMAGE in str(run.error)
    assert not run.error.retryable
    assert run.elapsed < 5
    assert container_actions(docker_client, run) == []


@pytest.mark.parametrize(("script", "timeout", "cancel", "expected"), [
    pytest.param(("true",), 30, False, "succeeded", id="success"),
    pytest.param(("false",), 30, False, "failed", id="failure"),
    pytest.param(("sleep 60",), 1, False, "timed_out", id="timeout"),
    pytest.param(("sleep 60",), 30, True, "canceled", id="cancel"),
])
def test_container_is_removed_whatever_the_outcome(script: tuple[str, ...], timeout: float, cancel: bool,
                                                   expected: str, executor: DockerExecutor,
                                                   docker_client: docker.DockerClient) -> None:
    run = Run(make_spec(*script, timeout_seconds=timeout))
    thread = run.in_thread(executor)
    if cancel:
        wait_for(running_container(docker_client, run.spec.job_execution_id), 15, what="the job's container")
        run.cancel.set()
    thread.join(timeout=30)
    result = run.outcome()
    outcomes = {"succeeded": result.succeeded, "failed": result.exit_code not in (0, None),
                "timed_out": result.timed_out, "canceled": result.canceled}
    assert outcomes[expected], result
    assert_cleaned_up(docker_client, run)


def test_container_carries_job_and_worker_labels_while_running(executor: DockerExecutor,
                                                               docker_client: docker.DockerClient) -> None:
    run = Run(make_spec("sleep 60", labels={"cicd.extra": "kept"}))
    thread = run.in_thread(executor)
    try:
        container = wait_for(running_container(docker_client, run.spec.job_execution_id), 15,
                             what="the job's container")
        container.reload()  # listed sparse: read the full configuration
        labels = container.labels
        assert labels[LABEL_JOB] == run.spec.job_execution_id
        assert labels[LABEL_WORKER] == WORKER_ID
        assert labels["cicd.extra"] == "kept"
    finally:
        run.cancel.set()
        thread.join(timeout=15)
    assert run.outcome().canceled


def test_no_more_than_max_containers_run_at_once(docker_client: docker.DockerClient) -> None:
    limited = DockerExecutor(WORKER_ID, max_containers=2, stop_grace_seconds=2)
    batch = f"batch-{uuid.uuid4()}"
    runs = [Run(make_spec("sleep 1", labels={"cicd.test-batch": batch})) for _ in range(4)]
    threads = [run.in_thread(limited) for run in runs]
    in_batch = {"label": f"cicd.test-batch={batch}"}
    seen: list[int] = []
    for _ in _until_all_done(threads, timeout=30):
        seen.append(len(docker_client.containers.list(all=True, sparse=True, filters=in_batch)))
    assert all(run.outcome().succeeded for run in runs)
    assert max(seen) == 2, seen
    assert docker_client.containers.list(all=True, sparse=True, filters=in_batch) == []


def _until_all_done(threads: list[threading.Thread], timeout: float) -> Iterator[None]:
    """Yield repeatedly (for the caller to poll something) until every thread ended."""
    deadline = time.monotonic() + timeout
    while any(thread.is_alive() for thread in threads):
        assert time.monotonic() < deadline, "jobs did not finish in time"
        yield
        time.sleep(0.05)


def test_long_script_goes_in_as_a_file_on_a_volume_removed_with_the_container(
        executor: DockerExecutor, docker_client: docker.DockerClient) -> None:
    # Over 100 KiB the program cannot be one argument: it is put on an anonymous volume before start.
    filler = ": " + "x" * 60_000
    run = Run(make_spec(filler, filler, "cat /proc/1/cmdline | tr '\\0' ' '; echo", "sleep 2"))
    thread = run.in_thread(executor)
    container = wait_for(running_container(docker_client, run.spec.job_execution_id), 15, what="the container")
    container.reload()
    volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Destination"] == SCRIPT_DIR]
    thread.join(timeout=30)
    assert run.outcome().succeeded, run.lines[-5:]
    assert f"/sbin/docker-init -- /bin/sh {SCRIPT_PATH} " in run.lines
    assert len(volumes) == 1
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(volumes[0])
    assert_cleaned_up(docker_client, run)


def test_leftovers_of_a_worker_id_are_listed_read_and_removed(docker_client: docker.DockerClient) -> None:
    # An id of its own: the session's id may have containers and volumes of other tests at this moment.
    leftover = DockerExecutor(f"{WORKER_ID}-leftovers", stop_grace_seconds=1)
    job_id, volume = str(uuid.uuid4()), f"cicd-test-leftover-{uuid.uuid4().hex[:8]}"
    labels = {LABEL_WORKER: leftover.worker_id, LABEL_JOB: job_id, "cicd.flow-run-id": "flow-1"}
    container = docker_client.containers.run(TEST_IMAGE, ["sh", "-c", "echo line1; echo line2; echo line3; sleep 60"],
                                             labels=labels, detach=True, init=True)
    leftover.create_volume(volume, {})
    try:
        wait_for(lambda: b"line3" in container.logs(), 15, what="the container's output")
        [found] = leftover.leftover_containers()
        assert (found.container_id, found.job_execution_id) == (container.id, job_id)
        assert found.labels["cicd.flow-run-id"] == "flow-1"
        assert leftover.captured_output(found.container_id, 1000) == b"line1\nline2\nline3\n"
        assert leftover.captured_output(found.container_id, 8) == b"line3\n"  # cut: from a whole line on
        leftover.remove_container(found.container_id)  # running: stopped and removed
        leftover.remove_container(found.container_id)  # already gone: no error
        assert leftover.leftover_containers() == []
        with pytest.raises(ContainerLost):
            leftover.captured_output(found.container_id, 1000)
        assert leftover.leftover_volumes() == [volume]
        leftover.remove_volume(volume)
        assert leftover.leftover_volumes() == []
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
        leftover.remove_volume(volume)
