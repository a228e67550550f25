"""Wire format of the reference backend: the bodies it reads and the JSON it writes.

Everything here imitates a Spring Boot service serialised by Jackson, because
that is the backend the worker is written against (see docs/contract.md):

* camelCase names, enums as their upper-case names, UUIDs as strings;
* the ``isLocal`` flag is written as ``local`` (Jackson strips ``is`` from a
  boolean getter);
* ``LocalDateTime`` values are written as Jackson arrays
  (``WRITE_DATES_AS_TIMESTAMPS``), which drop trailing zero seconds and
  nanoseconds: ``[2025,3,5,14,30]``, ``[2025,3,5,14,30,7]`` or
  ``[2025,3,5,14,30,7,123456000]``;
* optional fields of the base contract are written as ``null`` (Jackson's
  default inclusion), while null **extension** fields are left out, as a
  backend without the extension would never send them;
* an unknown ``_links`` field (as Spring HATEOAS adds) proves readers ignore
  unknown fields.

Request models ignore unknown fields like Jackson does, except the admin API,
which forbids them so a typo in a test fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class ExecutionStatus(StrEnum):
    """Status of a job execution, written as its upper-case name."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_final(self) -> bool:
        """True for SUCCESS, FAILED and CANCELED."""
        return self in (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELED)


class _ContractModel(BaseModel):
    """A body sent by a worker: camelCase, unknown fields ignored (Jackson default)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class _AdminModel(BaseModel):
    """A body of the admin API: camelCase, unknown fields refused to catch typos in tests."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class JobStatusUpdate(_ContractModel):
    """``POST /api/job/status`` body, with the contract's extension fields."""

    job_execution_id: str
    status: ExecutionStatus
    logs: str | None = None
    exit_code: int | None = None
    attempt: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    log_bytes: int | None = None
    log_sha256: str | None = None


class LogChunk(_ContractModel):
    """``POST /api/job/logs`` body (live log extension)."""

    job_execution_id: str
    seq: int = Field(ge=0)
    offset: int = Field(ge=0)
    lines: list[str]


class JobSpec(_AdminModel):
    """One job of ``POST /admin/pipeline-runs``."""

    name: str = Field(min_length=1)
    # Not validated: tests need to hand the worker bad image references too.
    docker_image: str
    script: list[str]
    stage_order: int | None = None
    needs: list[str] = []
    raw_dependencies: list[str] = []
    allow_failure: bool = False
    artifacts: list[str] = []
    working_dir: str | None = None
    env: dict[str, str] | None = None
    masked_env: list[str] | None = None
    timeout_seconds: int | None = None
    retries: int | None = None
    artifacts_when: str | None = None
    before_script: list[str] | None = None
    after_script: list[str] | None = None
    when: str | None = None
    # Passed to the worker as they are (not validated: tests need to hand the worker bad ones too).
    services: list[Any] | None = None
    cache: Any = None
    inputs: list[Any] | None = None


class PipelineRunSpec(_AdminModel):
    """``POST /admin/pipeline-runs`` body: one pipeline run and its jobs."""

    name: str
    commit_hash: str | None = None
    local: bool = False
    jobs: list[JobSpec] = []

    @model_validator(mode="after")
    def _names_resolve(self) -> PipelineRunSpec:
        # Only names are checked; cycles are allowed on purpose (bad-input tests).
        names = [job.name for job in self.jobs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"job names must be unique within a run: {duplicates}")
        for job in self.jobs:
            unknown = [need for need in job.needs if need not in names]
            if unknown:
                raise ValueError(f"job {job.name!r} needs unknown jobs {unknown}")
        return self


class PushRequest(_AdminModel):
    """Where to push a job or pipeline execution."""

    worker_url: str
    token: str | None = None


class FaultSpec(_AdminModel):
    """``POST /admin/faults`` body."""

    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    down_for_seconds: float = Field(default=0.0, ge=0.0)
    seed: int | None = None
    answers: dict[str, int] = Field(default_factory=dict)
    """Request path (e.g. ``/api/job/logs``) → HTTP status always answered there (500, 302, ...)."""


@dataclass(frozen=True)
class JobExecutionRecord:
    """A job execution joined with its job definition and pipeline run, as stored."""

    id: str
    pipeline_execution_id: str
    stage_execution_id: str | None
    stage_order: int | None
    commit_hash: str | None
    local: bool
    status: ExecutionStatus
    start_time: datetime | None
    completion_time: datetime | None
    job_id: str
    stage_id: str | None
    name: str
    docker_image: str
    script: list[str]
    dependencies: list[str]
    allow_failure: bool
    artifacts: list[str]
    working_dir: str | None
    env: dict[str, str] | None
    masked_env: list[str] | None
    timeout_seconds: int | None
    retries: int | None
    artifacts_when: str | None
    created_at: datetime
    updated_at: datetime
    before_script: list[str] | None = None
    after_script: list[str] | None = None
    when: str | None = None
    services: list[Any] | None = None
    cache: Any = None
    inputs: list[Any] | None = None


def jackson_local_datetime(value: datetime | None) -> list[int] | None:
    """Write a ``LocalDateTime`` the way Jackson's JavaTimeModule does by default."""
    if value is None:
        return None
    parts = [value.year, value.month, value.day, value.hour, value.minute]
    if value.second or value.microsecond:
        parts.append(value.second)
        if value.microsecond:
            parts.append(value.microsecond * 1000)
    return parts


def _without_nulls(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def job_dto(record: JobExecutionRecord) -> dict[str, Any]:
    """The JobDTO (job definition) of a stored job execution."""
    return {
        "id": record.job_id,
        "stageId": record.stage_id,
        "name": record.name,
        "dockerImage": record.docker_image,
        "script": record.script,
        "dependencies": record.dependencies,
        "allowFailure": record.allow_failure,
        "artifacts": record.artifacts,
        **_without_nulls(
            {
                "workingDir": record.working_dir,
                "env": record.env,
                "maskedEnv": record.masked_env,
                "timeoutSeconds": record.timeout_seconds,
                "retries": record.retries,
                "artifactsWhen": record.artifacts_when,
                "beforeScript": record.before_script,
                "afterScript": record.after_script,
                "when": record.when,
                "services": record.services,
                "cache": record.cache,
                "inputs": record.inputs,
            }
        ),
        "createdAt": jackson_local_datetime(record.created_at),
        "updatedAt": jackson_local_datetime(record.updated_at),
    }


def job_execution_dto(record: JobExecutionRecord) -> dict[str, Any]:
    """The JobExecutionDTO of a stored job execution, with Jackson's quirks."""
    return {
        "id": record.id,
        "stageExecutionId": record.stage_execution_id,
        "jobId": record.job_id,
        **_without_nulls({"pipelineExecutionId": record.pipeline_execution_id, "stageOrder": record.stage_order}),
        "commitHash": record.commit_hash,
        "local": record.local,
        "status": record.status.value,
        "startTime": jackson_local_datetime(record.start_time),
        "completionTime": jackson_local_datetime(record.completion_time),
        "allowFailure": record.allow_failure,
        "job": job_dto(record),
        "_links": {},
    }


def error_body(status: int, error: str, message: str, path: str, **extra: Any) -> dict[str, Any]:
    """A Spring Boot style error body (``/error`` controller shape)."""
    return {
        "timestamp": datetime.now().astimezone().isoformat(),
        "status": status,
        "error": error,
        "message": message,
        "path": path,
        **extra,
    }
