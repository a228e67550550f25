"""Wire models: lenient reading of Jackson-style payloads, camelCase writing, refusals naming the field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from core.models import ExecutionStatus, JobDTO, JobExecutionDTO, JobStatusUpdate, LogChunk

EXECUTION_ID = "3f2b8c9e-1d4a-4c1b-9a57-0c6e2f1b7d10"
JOB_ID = "9b7e6a52-5c1f-4f0e-8d3b-2a4c6e8f0a12"
INSTANT = datetime(2025, 3, 5, 14, 30, 7, tzinfo=UTC)


def jackson_payload(**overrides: Any) -> dict[str, Any]:
    """A JobExecutionDTO as a Spring backend writes it: ``local``, date arrays, nulls, ``_links``."""
    job = {"id": JOB_ID, "stageId": None, "name": "build", "dockerImage": "alpine:3.20",
           "script": ["echo hi", "make"], "dependencies": [], "allowFailure": False, "artifacts": ["dist/*"],
           "createdAt": [2025, 3, 5, 14, 30], "updatedAt": [2025, 3, 5, 14, 30, 7, 123456000]}
    payload: dict[str, Any] = {"id": EXECUTION_ID, "stageExecutionId": None, "jobId": JOB_ID, "commitHash": None,
                               "local": True, "status": "PENDING", "startTime": None, "completionTime": None,
                               "allowFailure": False, "job": job, "_links": {}}
    job_overrides = overrides.pop("job", {})
    payload["job"] = {**job, **job_overrides}
    return {**payload, **overrides}


def error_locations(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [error["loc"] for error in exc.value.errors()]


def test_jackson_payload_is_read() -> None:
    dto = JobExecutionDTO.model_validate(jackson_payload())
    assert dto.id == uuid.UUID(EXECUTION_ID) and dto.job_id == uuid.UUID(JOB_ID)
    assert dto.is_local is True
    assert dto.status is ExecutionStatus.PENDING
    assert dto.start_time is None and dto.stage_execution_id is None and dto.commit_hash is None
    assert dto.job.docker_image == "alpine:3.20" and dto.job.script == ["echo hi", "make"]
    assert dto.job.created_at == datetime(2025, 3, 5, 14, 30, tzinfo=UTC)
    assert dto.job.updated_at == datetime(2025, 3, 5, 14, 30, 7, 123456, tzinfo=UTC)
    # Missing optional fields (extensions) take their defaults.
    assert dto.job.env is None and dto.job.working_dir is None and dto.job.timeout_seconds is None
    assert dto.pipeline_execution_id is None and dto.stage_order is None


@pytest.mark.parametrize(("key", "value"), [("local", True), ("isLocal", True), ("is_local", True),
                                             ("local", False), ("isLocal", False)])
def test_is_local_is_read_under_either_name(key: str, value: bool) -> None:
    payload = jackson_payload()
    del payload["local"]
    payload[key] = value
    assert JobExecutionDTO.model_validate(payload).is_local is value


def test_is_local_defaults_to_false() -> None:
    payload = jackson_payload()
    del payload["local"]
    assert JobExecutionDTO.model_validate(payload).is_local is False


@pytest.mark.parametrize("stamp", [
    "2025-03-05T14:30:07Z",
    "2025-03-05T14:30:07+00:00",
    "2025-03-05T16:30:07+02:00",
    1741185007,
    1741185007.0,
    [2025, 3, 5, 14, 30, 7],
    [2025, 3, 5, 14, 30, 7, 0],
])
def test_timestamp_shapes_give_the_same_instant(stamp: Any) -> None:
    dto = JobExecutionDTO.model_validate(jackson_payload(startTime=stamp, completionTime=stamp))
    assert dto.start_time == INSTANT and dto.completion_time == INSTANT
    assert dto.start_time is not None and dto.start_time.utcoffset() is not None


def test_jackson_arrays_without_seconds_and_with_nanos() -> None:
    dto = JobExecutionDTO.model_validate(jackson_payload(startTime=[2025, 3, 5, 14, 30],
                                                         completionTime=[2025, 3, 5, 14, 30, 7, 999999999]))
    assert dto.start_time == datetime(2025, 3, 5, 14, 30, tzinfo=UTC)
    assert dto.completion_time == datetime(2025, 3, 5, 14, 30, 7, 999999, tzinfo=UTC)


def test_iso_timestamp_without_offset_is_utc_like_the_array_form() -> None:
    naive = JobExecutionDTO.model_validate(jackson_payload(startTime="2025-03-05T14:30:07"))
    array = JobExecutionDTO.model_validate(jackson_payload(startTime=[2025, 3, 5, 14, 30, 7]))
    assert naive.start_time == array.start_time


@pytest.mark.parametrize("stamp", [[2025, 13], [2025, 13, 1], [2025, 3, 5, 14, 30, 7.5], True, "yesterday",
                                   {"epoch": 1}])
def test_bad_timestamp_is_refused_naming_the_field(stamp: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(jackson_payload(startTime=stamp))
    assert error_locations(exc) == [("startTime",)]


def test_out_of_range_epoch_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(jackson_payload(startTime=1e20))
    assert error_locations(exc) == [("startTime",)]


def test_unknown_fields_are_ignored_at_every_level() -> None:
    dto = JobExecutionDTO.model_validate(jackson_payload(futureField={"x": 1}, job={"_links": {}, "owner": "me"}))
    dumped = dto.model_dump(by_alias=True)
    assert "futureField" not in dumped and "_links" not in dumped
    assert "owner" not in dumped["job"] and "_links" not in dumped["job"]


def test_status_update_is_written_in_camel_case_without_nulls() -> None:
    update = JobStatusUpdate(job_execution_id=uuid.UUID(EXECUTION_ID), status=ExecutionStatus.SUCCESS,
                             logs="done\n", exit_code=0, attempt=1, start_time=INSTANT, log_bytes=5,
                             log_sha256="ab" * 32)
    assert update.to_wire() == {
        "jobExecutionId": EXECUTION_ID, "status": "SUCCESS", "logs": "done\n", "exitCode": 0, "attempt": 1,
        "startTime": "2025-03-05T14:30:07Z", "logBytes": 5, "logSha256": "ab" * 32}


def test_minimal_status_update_keeps_the_base_contract_fields() -> None:
    update = JobStatusUpdate.model_validate({"jobExecutionId": EXECUTION_ID, "status": "RUNNING"})
    assert update.to_wire() == {"jobExecutionId": EXECUTION_ID, "status": "RUNNING", "logs": ""}


def test_log_chunk_is_written_in_camel_case() -> None:
    chunk = LogChunk(job_execution_id=uuid.UUID(EXECUTION_ID), seq=0, offset=0, lines=["a", "b"])
    assert chunk.to_wire() == {"jobExecutionId": EXECUTION_ID, "seq": 0, "offset": 0, "lines": ["a", "b"]}


def test_missing_docker_image_is_refused_naming_the_field() -> None:
    payload = jackson_payload()
    del payload["job"]["dockerImage"]
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(payload)
    assert error_locations(exc) == [("job", "dockerImage")]


@pytest.mark.parametrize(("overrides", "location"), [
    ({"id": "not-a-uuid"}, ("id",)),
    ({"jobId": "1234"}, ("jobId",)),
    ({"job": {"dependencies": [JOB_ID, "zzz"]}}, ("job", "dependencies", 1)),
])
def test_malformed_uuid_is_refused_naming_the_field(overrides: dict[str, Any], location: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(jackson_payload(**overrides))
    assert error_locations(exc) == [location]


@pytest.mark.parametrize("image", ["alpine", "alpine:3.20", "library/alpine:latest", "cicd-busybox:latest",
                                   "registry.example.com:5000/team/app:1.0-rc_1", "localhost/app",
                                   "ghcr.io/org/app@sha256:" + "a" * 64])
def test_valid_image_references_are_accepted(image: str) -> None:
    assert JobDTO(name="j", docker_image=image).docker_image == image


@pytest.mark.parametrize("image", ["Not An Image", "alpine:", "team/App", "alpine:3.20 ; rm -rf /",
                                   "-alpine", "alpine@sha256:short", ""])
def test_bad_image_reference_is_refused_naming_the_field(image: str) -> None:
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(jackson_payload(job={"dockerImage": image}))
    assert error_locations(exc) == [("job", "dockerImage")]


def test_image_reference_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(jackson_payload(job={"dockerImage": "alpine:3.20\n"}))
    assert error_locations(exc) == [("job", "dockerImage")]


@pytest.mark.parametrize("status", ["DONE", "success", "", 3])
def test_bad_status_is_refused_naming_the_field(status: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        JobExecutionDTO.model_validate(jackson_payload(status=status))
    assert error_locations(exc) == [("status",)]
    with pytest.raises(ValidationError) as exc:
        JobStatusUpdate.model_validate({"jobExecutionId": EXECUTION_ID, "status": status})
    assert error_locations(exc) == [("status",)]


def test_allow_failure_on_execution_or_job_definition() -> None:
    assert not JobExecutionDTO.model_validate(jackson_payload()).allows_failure
    assert JobExecutionDTO.model_validate(jackson_payload(allowFailure=True)).allows_failure
    assert JobExecutionDTO.model_validate(jackson_payload(job={"allowFailure": True})).allows_failure


def test_final_statuses() -> None:
    assert {status for status in ExecutionStatus if status.is_final} == {
        ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELED}
