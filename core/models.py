"""Wire models of the contract (``docs/contract.md``): lenient on input, camelCase and strict on output.

Reading rules (docs/contract.md, "Reading rules"): unknown fields are ignored; ``isLocal`` may arrive as ``local``;
a timestamp may be an ISO-8601 string, epoch seconds, or a Jackson array ``[y, m, d, h, mi, s, nanos]``;
a missing optional field takes its default. Anything else is refused naming the field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


class ExecutionStatus(StrEnum):
    """Status of one job execution, as the backend's enum names it."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_final(self) -> bool:
        return self in (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELED)


def parse_timestamp(value: Any) -> Any:
    """Accept the three timestamp shapes a Jackson backend may send; leave others to pydantic."""
    if isinstance(value, bool):
        raise ValueError("a timestamp cannot be a boolean")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"epoch seconds out of range: {value}") from None
    if isinstance(value, list | tuple):
        if not 3 <= len(value) <= 7 or not all(isinstance(v, int) for v in value):
            raise ValueError("a Jackson timestamp array is [year, month, day, hour, minute, second, nanos]")
        parts = list(value) + [0] * (7 - len(value))
        year, month, day, hour, minute, second, nanos = parts
        return datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=UTC)
    return value


def assume_utc(value: datetime) -> datetime:
    """A time without offset (Jackson's ``LocalDateTime`` as a string) is UTC, like the other shapes."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp), AfterValidator(assume_utc)]

# Docker image reference: [registry[:port]/]path[:tag][@digest], lower-case path components.
_IMAGE_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def _valid_image(value: str) -> str:
    if not _IMAGE_RE.fullmatch(value):
        raise ValueError(f"not a valid image reference: {value!r}")
    return value


MAX_SCRIPT_LINES = 5000
MAX_SCRIPT_BYTES = 512 * 1024
MAX_ARTIFACT_PATTERNS = 100
MAX_ARTIFACT_PATTERN_CHARS = 1024


class WireModel(BaseModel):
    """Base of every payload: camelCase aliases, snake_case names also accepted, unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase names, for what we send."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ServiceDTO(WireModel):
    """Extension: a service container beside the job (a database, say), reached by ``alias`` on the job's own
    internal network."""

    image: str = Field(min_length=1, max_length=512)
    alias: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    """Host name the job reaches the service by; None: derived from the image (``postgres:16`` → ``postgres``)."""
    command: list[str] | None = Field(default=None, max_length=100)
    env: dict[str, str] | None = Field(default=None, validation_alias=AliasChoices("env", "variables"))

    @field_validator("image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        return _valid_image(value)


class CacheKeyFiles(WireModel):
    """A cache key made from the content of files of the workspace (lock files, say)."""

    files: list[str] = Field(min_length=1, max_length=20)


class CacheDTO(WireModel):
    """Extension: folders of the workspace kept across runs under a key, restored before the script and saved
    after a successful job (``pull``: never saved; ``push``: never restored)."""

    key: str | CacheKeyFiles = "default"
    paths: list[str] = Field(min_length=1, max_length=50)
    policy: Literal["pull-push", "pull", "push"] = "pull-push"


class JobDTO(WireModel):
    """The job definition."""

    id: UUID | None = None
    stage_id: UUID | None = None
    name: str = Field(min_length=1, max_length=255)
    docker_image: str = Field(min_length=1, max_length=512)
    script: list[str] = Field(default_factory=list)
    dependencies: list[UUID] = Field(default_factory=list)
    allow_failure: bool = False
    artifacts: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    env: dict[str, str] | None = None
    # Extension: names of env entries whose values are secrets, on top of the worker's name patterns.
    masked_env: list[str] | None = None
    timeout_seconds: int | None = Field(default=None, ge=1)
    retries: int | None = Field(default=None, ge=0, le=20)
    artifacts_when: Literal["success", "always"] | None = None
    # Extensions (pipeline files): lines run before the script in its shell, lines run after it whatever its
    # outcome (their failure changes nothing), and when the job runs relative to the jobs upstream of it.
    before_script: list[str] = Field(default_factory=list)
    after_script: list[str] = Field(default_factory=list)
    when: Literal["on_success", "on_failure", "always", "manual"] | None = None
    # Extensions (issue 13): service containers, a cache, and the files whose content decides whether an
    # unchanged job may be reused instead of run.
    services: list[ServiceDTO] = Field(default_factory=list, max_length=10)
    cache: CacheDTO | None = None
    inputs: list[str] = Field(default_factory=list, max_length=MAX_ARTIFACT_PATTERNS)
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None

    @field_validator("script", "before_script", "after_script")
    @classmethod
    def _script_size(cls, value: list[str]) -> list[str]:
        # Bounded so that one request cannot make the worker build and ship an arbitrarily large program.
        if any("\0" in line for line in value):
            raise ValueError("a script line holds a NUL character")
        if len(value) > MAX_SCRIPT_LINES:
            raise ValueError(f"script has {len(value)} lines; at most {MAX_SCRIPT_LINES} are allowed")
        size = sum(len(line.encode()) for line in value)
        if size > MAX_SCRIPT_BYTES:
            raise ValueError(f"script is {size} bytes; at most {MAX_SCRIPT_BYTES} are allowed")
        return value

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        # A name ends up in log lines, thread names and the Prefect UI: a newline there forges lines.
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise ValueError("a job name cannot hold control characters (newlines, tabs, escapes)")
        return value

    @field_validator("env")
    @classmethod
    def _env_entries(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # Docker refuses these with an API error, which would otherwise look like an engine failure (retried).
        for name, text in (value or {}).items():
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"env name {name[:40]!r} is empty or holds '=' or NUL")
            if "\0" in text:
                raise ValueError(f"env value of {name[:40]!r} holds a NUL character")
        return value

    @field_validator("artifacts")
    @classmethod
    def _artifact_patterns(cls, value: list[str]) -> list[str]:
        # Bounded so that matching a job's files against its patterns stays cheap (executors.artifact_patterns).
        if len(value) > MAX_ARTIFACT_PATTERNS:
            raise ValueError(f"{len(value)} artifact patterns; at most {MAX_ARTIFACT_PATTERNS} are allowed")
        for pattern in value:
            if len(pattern) > MAX_ARTIFACT_PATTERN_CHARS:
                raise ValueError(f"artifact pattern {pattern[:40]!r}... is {len(pattern)} characters; "
                                 f"at most {MAX_ARTIFACT_PATTERN_CHARS} are allowed")
        return value

    @field_validator("docker_image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        return _valid_image(value)


class JobExecutionDTO(WireModel):
    """One run of a job: what ``/api/job/execute`` receives and ``GET /jobs/{id}`` answers."""

    id: UUID
    stage_execution_id: UUID | None = None
    job_id: UUID | None = None
    pipeline_execution_id: UUID | None = None
    stage_order: int | None = Field(default=None, ge=0)
    commit_hash: str | None = None
    is_local: bool = Field(default=False, validation_alias=AliasChoices("isLocal", "local", "is_local"))
    status: ExecutionStatus | None = None
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    allow_failure: bool = False
    job: JobDTO

    @property
    def allows_failure(self) -> bool:
        """``allowFailure`` may be set on the execution or on its job definition."""
        return self.allow_failure or self.job.allow_failure


class JobStatusUpdate(WireModel):
    """What the worker POSTs to ``/job/status``; fields after ``logs`` are contract extensions."""

    job_execution_id: UUID
    status: ExecutionStatus
    logs: str = ""
    exit_code: int | None = None
    attempt: int | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    log_bytes: int | None = None
    log_sha256: str | None = None


class LogChunk(WireModel):
    """Live log chunk, contract extension ``POST /job/logs``."""

    job_execution_id: UUID
    seq: int
    offset: int
    lines: list[str]


class PipelineExecuteRequest(WireModel):
    """Body of ``POST /api/pipeline/execute``."""

    pipeline_execution_id: UUID


class StatusAnswer(WireModel):
    """``getJobStatus`` answer in its object form."""

    status: ExecutionStatus


class ExecuteAccepted(WireModel):
    """Answer of the execute endpoints."""

    status: str = "QUEUED"
    job_execution_id: UUID | None = None
    pipeline_execution_id: UUID | None = None
    flow_run_id: UUID | None = None


class JobView(WireModel):
    """The worker's view of one job execution (``GET /api/job/{id}``)."""

    job_execution_id: UUID
    name: str
    status: ExecutionStatus
    flow_run_id: UUID | None = None
    pipeline_execution_id: UUID | None = None
    accepted_at: datetime
    start_time: datetime | None = None
    completion_time: datetime | None = None
    exit_code: int | None = None
    attempts: int = 0
    message: str | None = None


class HealthReport(WireModel):
    """``GET /api/worker/health``: the status for anyone; checks and warnings only for who may see detail."""

    status: str
    checks: dict[str, dict[str, Any]] | None = None
    insecure: bool | None = Field(default=None, description="true: listening beyond loopback without a token")
    warnings: list[str] | None = None
