"""The flows' logic, fast and in-process: the real flows, the session Prefect server and the reference backend,
with the dummy executor (``executors/dummy.py``) playing each job as its env says instead of Docker.

What these cover (status sequences, retries by kind, allowFailure, downstream cancel, cancel, timeout,
recovery) does not depend on containers; what Docker itself does keeps its real-engine tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from core.models import JobExecutionDTO
from core.settings import Settings
from executors.dummy import DummyExecutor
from flows.job_flow import execute_job, hand_over_job, job_run_name
from flows.pipeline_flow import PipelineStart, execute_pipeline, hand_over_pipeline, pipeline_run_name
from flows.pipeline_plan import load_pipeline
from flows.recovery import RESTART_NOTE, RecoveryMasks, recover
from flows.services import Services, build_services, install
from flows.workspace import job_workspace_name, pipeline_workspace_name
from tests.support import Backend, final_log, statuses, wait_for


@pytest.fixture()
def services(backend: Backend, tmp_path: Path) -> Iterator[Services]:
    """Services around a fresh dummy executor and state directory, installed for the flows of this test."""
    settings = Settings(backend_url=backend.api_url, state_dir=tmp_path / "state", max_retries=2,
                        retry_delay_seconds=0, dependency_poll_seconds=0.1, log_chunk_interval_seconds=0.2)
    built = install(build_services(settings, executor=DummyExecutor(settings.worker_id)))
    yield built
    built.close()


def dummy(services: Services) -> DummyExecutor:
    executor = services.executor
    assert isinstance(executor, DummyExecutor)
    return executor


def fetch(services: Services, job_execution_id: str) -> JobExecutionDTO:
    return services.backend.get_job_execution(UUID(job_execution_id))


def run_job(services: Services, backend: Backend, **job: Any) -> tuple[str, Any]:
    """Create a one-job run, hand the job over as dispatch does and run its flow here; (job id, flow state)."""
    created = backend.create_run([{"name": "job", **job}])
    job_id = created["jobs"]["job"]
    dto = fetch(services, job_id)
    hand_over_job(dto)
    state = execute_job.with_options(flow_run_name=job_run_name(dto))(job_id, return_state=True)
    return job_id, state


def final(backend: Backend, job_id: str) -> dict[str, Any]:
    return backend.wait_final(job_id, timeout=15)


def attempts(record: dict[str, Any]) -> list[int | None]:
    return [entry.get("attempt") for entry in record["history"]]


def test_success_reports_running_then_success_with_the_output(services: Services, backend: Backend) -> None:
    job_id, state = run_job(services, backend, env={"DUMMY_OUTPUT": "hello\nworld"})
    record = final(backend, job_id)
    assert state.is_completed()
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    assert "hello\nworld\n" in final_log(record)
    assert record["history"][-1]["exitCode"] == 0
    volume = job_workspace_name(job_id)
    assert dummy(services).calls_to("create_volume") == [volume] == dummy(services).calls_to("remove_volume")
    assert services.inflight.all() == []  # the final status is durable: nothing left to recover


def test_script_failure_is_not_retried(services: Services, backend: Backend) -> None:
    job_id, state = run_job(services, backend, env={"DUMMY_EXIT_CODE": "3"})
    record = final(backend, job_id)
    assert state.is_failed()
    assert statuses(record) == ["RUNNING", "FAILED"] and record["history"][-1]["exitCode"] == 3
    assert "script failed with exit code 3" in final_log(record)
    assert dummy(services).calls_to("run") == [job_id]


def test_script_failure_is_retried_when_the_job_asks(services: Services, backend: Backend) -> None:
    job_id, _ = run_job(services, backend, retries=1, env={"DUMMY_EXIT_CODE": "1"})
    record = final(backend, job_id)
    assert statuses(record) == ["RUNNING", "RUNNING", "FAILED"] and attempts(record) == [1, 2, 2]
    assert dummy(services).calls_to("run") == [job_id] * 2


def test_infrastructure_failure_is_retried_then_succeeds(services: Services, backend: Backend) -> None:
    job_id, state = run_job(services, backend, env={"DUMMY_FAIL_ATTEMPTS": "1"})
    record = final(backend, job_id)
    assert state.is_completed()
    assert statuses(record) == ["RUNNING", "RUNNING", "SUCCESS"] and attempts(record) == [1, 2, 2]
    log = final_log(record)
    assert "infrastructure failure: dummy engine failure on attempt 1" in log and "attempt 2 of 3" in log


def test_infrastructure_failures_past_the_retries_fail_the_job(services: Services, backend: Backend) -> None:
    job_id, state = run_job(services, backend, env={"DUMMY_FAIL_ATTEMPTS": "9"})
    record = final(backend, job_id)
    assert state.is_failed()
    assert statuses(record) == ["RUNNING"] * 3 + ["FAILED"] and attempts(record) == [1, 2, 3, 3]
    assert dummy(services).calls_to("run") == [job_id] * 3  # WORKER_MAX_RETRIES=2: three attempts


def test_infrastructure_failure_that_waiting_cannot_fix_is_not_retried(services: Services, backend: Backend) -> None:
    job_id, _ = run_job(services, backend, env={"DUMMY_IMAGE_MISSING": "1"})
    record = final(backend, job_id)
    assert statuses(record) == ["RUNNING", "FAILED"] and "DUMMY_IMAGE_MISSING" in final_log(record)
    assert dummy(services).calls_to("run") == [job_id]


def test_allowed_failure_is_reported_success_with_a_note(services: Services, backend: Backend) -> None:
    job_id, state = run_job(services, backend, allowFailure=True, env={"DUMMY_EXIT_CODE": "1"})
    record = final(backend, job_id)
    assert state.is_completed()
    assert statuses(record) == ["RUNNING", "SUCCESS"] and record["history"][-1]["exitCode"] == 1
    assert "failure allowed (allowFailure): reported as SUCCESS" in final_log(record)


def test_timeout_fails_the_job_without_retry(services: Services, backend: Backend) -> None:
    started = time.monotonic()
    job_id, _ = run_job(services, backend, timeoutSeconds=1, env={"DUMMY_SLEEP": "60"})
    record = final(backend, job_id)
    assert statuses(record) == ["RUNNING", "FAILED"] and "timed out after 1 s" in final_log(record)
    assert time.monotonic() - started < 10
    assert dummy(services).calls_to("run") == [job_id]


def test_cancel_switch_stops_the_job_and_reports_canceled(services: Services, backend: Backend) -> None:
    created = backend.create_run([{"name": "job", "env": {"DUMMY_SLEEP": "60"}}])
    job_id = created["jobs"]["job"]
    dto = fetch(services, job_id)
    hand_over_job(dto)
    states: list[Any] = []
    flow = threading.Thread(target=lambda: states.append(execute_job(job_id, return_state=True)))
    flow.start()
    wait_for(lambda: dummy(services).calls_to("run"), 15, 0.02, "the job to start")
    record = services.registry.get(UUID(job_id))
    assert record is not None
    record.cancel.set()  # what DELETE /api/job/{id} and a Prefect cancel do
    flow.join(15)
    assert not flow.is_alive()
    assert statuses(final(backend, job_id)) == ["RUNNING", "CANCELED"]
    assert states[0].is_cancelled()


def test_failed_job_cancels_its_downstream_only(services: Services, backend: Backend) -> None:
    created = backend.create_run([
        {"name": "build", "env": {"DUMMY_EXIT_CODE": "2"}},
        {"name": "test", "needs": ["build"]},
        {"name": "deploy", "needs": ["test"]},
        {"name": "lint"},
    ])
    pipeline_id, jobs = created["pipelineExecutionId"], created["jobs"]
    hand_over_pipeline(pipeline_id, PipelineStart(planned=load_pipeline(services.backend, UUID(pipeline_id))))
    state = execute_pipeline.with_options(flow_run_name=pipeline_run_name(pipeline_id))(pipeline_id,
                                                                                          return_state=True)
    records = {name: final(backend, job_id) for name, job_id in jobs.items()}
    assert {name: statuses(record) for name, record in records.items()} == {
        "build": ["RUNNING", "FAILED"], "test": ["CANCELED"], "deploy": ["CANCELED"],
        "lint": ["RUNNING", "SUCCESS"]}
    assert "upstream job 'build'" in final_log(records["test"])
    assert state.is_failed()
    assert sorted(dummy(services).calls_to("run")) == sorted([jobs["build"], jobs["lint"]])
    volume = pipeline_workspace_name(pipeline_id)
    assert dummy(services).calls_to("create_volume") == [volume] == dummy(services).calls_to("remove_volume")


def test_pipeline_of_successes_completes_in_dependency_order(services: Services, backend: Backend) -> None:
    created = backend.create_run([{"name": "a"}, {"name": "b", "needs": ["a"]}, {"name": "c", "needs": ["b"]}])
    pipeline_id, jobs = created["pipelineExecutionId"], created["jobs"]
    state = execute_pipeline(pipeline_id, return_state=True)  # not handed over: fetched and planned by the flow
    assert state.is_completed()
    assert all(statuses(final(backend, job_id)) == ["RUNNING", "SUCCESS"] for job_id in jobs.values())
    assert dummy(services).calls_to("run") == [jobs["a"], jobs["b"], jobs["c"]]


def test_recovery_reports_cut_off_jobs_with_masked_output_and_sweeps(services: Services, backend: Backend) -> None:
    secret = "hunter2-not-for-logs"
    created = backend.create_run([{"name": "cut", "env": {"API_TOKEN": secret}}, {"name": "never-started"}])
    jobs = created["jobs"]
    executor = dummy(services)
    executor.leave(jobs["cut"], f"step one\ntoken is {secret}\n")
    stray = executor.leave(None)  # a workspace seed's container: nothing to report, just removed
    executor.create_volume("cicd-ws-left-behind", {})
    for name, job_id in jobs.items():
        services.inflight.add(UUID(job_id), None, name)
    masks = RecoveryMasks(services.backend, services.settings)
    assert recover(executor, services.outbox, services.inflight, 4096, masks) == 2
    cut = final(backend, jobs["cut"])
    assert statuses(cut) == ["FAILED"]
    assert "step one\n" in final_log(cut) and secret not in final_log(cut) and RESTART_NOTE in final_log(cut)
    assert statuses(final(backend, jobs["never-started"])) == ["FAILED"]
    assert stray in executor.calls_to("remove_container")
    assert executor.leftover_containers() == [] and executor.leftover_volumes() == []
    assert services.inflight.all() == []
