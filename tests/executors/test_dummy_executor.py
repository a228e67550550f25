"""DummyExecutor on its own: each env knob, cancel, timeout, slots, volumes and leftovers (no engine, no Prefect)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from core.errors import ContainerLost, EngineUnavailable, ImageUnavailable
from executors.artifacts import discard
from executors.base import JobResult, JobSpec
from executors.dummy import EXIT_STOPPED, DummyExecutor


def spec(timeout: float = 30.0, artifacts: tuple[str, ...] = (), **env: str) -> JobSpec:
    return JobSpec(job_execution_id=str(uuid.uuid4()), name="job", image="any:latest", script=("true",),
                   env=env, timeout_seconds=timeout, artifacts=artifacts, labels={"cicd.flow-run-id": "f"})


def run(executor: DummyExecutor, job: JobSpec, cancel: threading.Event | None = None) -> tuple[JobResult, list[str]]:
    lines: list[str] = []
    return executor.run(job, lines.append, cancel or threading.Event()), lines


def test_output_and_exit_code_come_from_the_env() -> None:
    executor = DummyExecutor()
    result, lines = run(executor, spec(DUMMY_OUTPUT="one\ntwo", DUMMY_EXIT_CODE="3"))
    assert lines == ["one", "two"]
    assert result.exit_code == 3 and not result.succeeded and not (result.timed_out or result.canceled)
    assert result.log_bytes == len("one\ntwo\n")
    assert run(executor, spec())[0].succeeded


def test_first_attempts_fail_as_infrastructure_then_the_job_runs() -> None:
    executor = DummyExecutor()
    job = spec(DUMMY_FAIL_ATTEMPTS="2", DUMMY_OUTPUT="hello")
    for _ in range(2):
        with pytest.raises(EngineUnavailable):
            run(executor, job)
    result, lines = run(executor, job)
    assert result.succeeded and lines == ["hello"]
    assert executor.calls_to("run") == [job.job_execution_id] * 3
    assert executor.leftover_containers() == []  # a failed attempt leaves nothing behind


def test_missing_image_is_an_infrastructure_failure_not_retried() -> None:
    with pytest.raises(ImageUnavailable) as raised:
        run(DummyExecutor(), spec(DUMMY_IMAGE_MISSING="1"))
    assert not raised.value.retryable


def test_timeout_and_cancel_stop_the_sleep_promptly() -> None:
    executor = DummyExecutor()
    started = time.monotonic()
    result, _ = run(executor, spec(timeout=0.3, DUMMY_SLEEP="30"))
    assert result.timed_out and result.exit_code == EXIT_STOPPED and time.monotonic() - started < 2
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    result, _ = run(executor, spec(DUMMY_SLEEP="30"), cancel)
    assert result.canceled and not result.timed_out and time.monotonic() - started < 3


def test_canceled_while_waiting_for_a_slot_creates_nothing() -> None:
    executor = DummyExecutor(max_containers=1)
    first_cancel = threading.Event()
    first = threading.Thread(target=run, args=(executor, spec(DUMMY_SLEEP="30"), first_cancel))
    first.start()
    while not executor.leftover_containers():
        time.sleep(0.01)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    result, _ = run(executor, spec(DUMMY_SLEEP="30"), cancel)
    assert result.canceled and result.exit_code is None
    first_cancel.set()
    first.join(5)
    assert executor.leftover_containers() == []


def test_artifacts_follow_the_artifacts_when_rule() -> None:
    executor = DummyExecutor()
    result, _ = run(executor, spec(artifacts=("out/**",), DUMMY_ARTIFACTS="out/a.txt, out/b/c.txt"))
    try:
        assert [(f.relative_path, f.local_path.read_text()) for f in result.artifacts.files] == [
            ("out/a.txt", "out/a.txt"), ("out/b/c.txt", "out/b/c.txt")]
    finally:
        discard(result.artifacts)
    failed, _ = run(executor, spec(artifacts=("out/**",), DUMMY_ARTIFACTS="out/a.txt", DUMMY_EXIT_CODE="1"))
    assert failed.artifacts.files == []


def test_volumes_and_leftovers_as_recovery_sees_them() -> None:
    executor = DummyExecutor("w1")
    executor.create_volume("ws", {"cicd.pipeline-execution-id": "p"})
    assert executor.volumes["ws"] == {"cicd.pipeline-execution-id": "p", "cicd.worker-id": "w1"}
    left = executor.leave("job-1", "a\n" * 10 + "secret line\n", {"cicd.flow-run-id": "f"})
    [leftover] = executor.leftover_containers()
    assert (leftover.container_id, leftover.job_execution_id) == (left, "job-1")
    assert leftover.labels == {"cicd.flow-run-id": "f", "cicd.worker-id": "w1"}
    assert executor.captured_output(left, 14) == b"secret line\n"  # cut: from a whole line on
    executor.remove_container(left)
    executor.remove_container(left)  # idempotent
    with pytest.raises(ContainerLost):
        executor.captured_output(left, 100)
    assert executor.leftover_volumes() == ["ws"]
    executor.remove_volume("ws")
    executor.remove_volume("ws")
    assert executor.leftover_volumes() == []
