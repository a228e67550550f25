"""The worker's one settings object (env prefix ``WORKER_``), read once by each entry point."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PullPolicy = Literal["always", "if-not-present", "never"]


class Settings(BaseSettings):
    """Effective configuration. Every field can be set as ``WORKER_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    backend_url: str = "http://localhost:8080/api"
    backend_token: SecretStr | None = Field(default=None, description="bearer token for calls to the backend")
    backend_timeout_seconds: float = Field(
        default=10.0, gt=0, description="overall deadline of one backend call: connect, send, answer and body")
    backend_max_answer_bytes: int = Field(default=16 * 1024 * 1024, ge=1024,
                                          description="backend answers larger than this are refused")
    backend_retry_seconds: float = Field(
        default=60.0, description="how long one backend call keeps retrying transient failures"
    )
    host: str = Field(default="127.0.0.1", description="listen address; beyond loopback a token is required")
    port: int = 8081
    api_token: SecretStr | None = Field(default=None, description="bearer token required by the worker API")
    insecure: bool = Field(default=False, description="allow listening beyond loopback without a token (loud)")
    max_concurrent_jobs: int = Field(default=4, ge=1, description="containers at once, whole process")
    dispatch: Literal["local", "pool"] = Field(
        default="local", description="local: jobs run in this process; pool: by `cicd-worker pool-worker` processes")
    work_pool: str = Field(default="cicd-pool", description="pool of pool mode (`cicd-worker pool-worker --pool`)")
    concurrency_limit_name: str = Field(
        default="cicd-containers", description="Prefect global concurrency limit: containers at once, all pool workers")
    max_retries: int = Field(default=2, ge=0, description="retries of infrastructure failures per job")
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    pull_policy: PullPolicy = "if-not-present"
    pull_timeout_seconds: float = 300.0
    job_timeout_seconds: int = Field(default=3600, ge=1)
    stop_grace_seconds: float = Field(default=10.0, ge=0, description="SIGTERM to SIGKILL on timeout/cancel")
    dependency_poll_seconds: float = Field(default=2.0, gt=0)
    dependency_timeout_seconds: float = Field(default=3600.0, gt=0)
    docker_network: str = "none"
    default_working_dir: str = "/workspace"
    log_tail_bytes: int = Field(default=1_000_000, ge=1024, description="log kept for the final status")
    log_max_line_chars: int = Field(default=65536, ge=80, description="longer lines are split, not lost")
    log_chunk_bytes: int = Field(default=65536, ge=1024, description="live log chunk size to the backend")
    log_chunk_interval_seconds: float = Field(default=1.0, gt=0, description="live log chunk at least this often")
    prefect_log_max_bytes: int = Field(default=2_000_000, ge=0, description="job output sent to the Prefect UI")
    secret_env_patterns: list[str] = Field(
        default=["*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASS*", "*KEY*", "*PAT*", "*CREDENTIAL*", "*PRIVATE*",
                 "*AUTH*"],
        description="job env vars whose names match (case-insensitive) have their values masked in logs")
    secret_env_exclude: list[str] = Field(
        default=["*PATH*", "*AUTHOR*"],
        description="names matching a secret pattern but known not to be secrets (PATH, GIT_AUTHOR_NAME)")
    secret_min_length: int = Field(
        default=4, ge=1, description="shorter secret values are not masked (they would mask common text): warned")
    keep_workspaces: bool = Field(default=False, description="keep workspace volumes after runs (debugging)")
    artifacts_when: Literal["success", "always"] = "success"
    artifact_collect_timeout_seconds: float = Field(
        default=300.0, gt=0, description="time budget of one job's artifact collection")
    max_artifact_bytes: int = Field(default=100 * 1024 * 1024, ge=1, description="per artifact file")
    max_job_artifact_bytes: int = Field(default=1024 * 1024 * 1024, ge=1, description="all artifacts of one job")
    artifact_wait_seconds: float = Field(default=60.0, ge=0, description="how long a job waits for its uploads")
    shutdown_grace_seconds: float = Field(default=60.0, ge=0, description="running jobs may finish on SIGTERM")
    shutdown_flush_seconds: float = Field(default=30.0, ge=0, description="outbox flush at shutdown")
    max_queued_jobs: int = Field(default=200, ge=1, description="accepted, unfinished jobs; beyond: 429")
    flow_run_id_wait_seconds: float = Field(
        default=1.0, ge=0, le=30, description="how long an execute answer waits for the job's Prefect flow run id "
        "(the job never waits); past it flowRunId is null and GET /api/job/{id} shows it once written")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="request bodies larger are refused 413")
    container_pids_limit: int = Field(default=1024, ge=16)
    container_memory_limit: str | None = Field(default="4g", description="docker memory limit, e.g. 512m")
    privileged: bool = Field(default=False, description="run job containers privileged (never by default)")
    cap_drop: list[str] = Field(default=["NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP"],
                                description="Linux capabilities dropped from job containers")
    cap_add: list[str] = Field(default=[], description="Linux capabilities added to job containers")
    container_cpus: float | None = Field(default=2.0, gt=0, description="CPU limit of one job container")
    read_only_rootfs: bool = Field(default=False, description="job containers' root filesystem read-only "
                                                              "(writable /tmp tmpfs and workspace)")
    allowed_images: list[str] = Field(default=[], description="glob patterns of allowed images; empty: any")
    docker_timeout_seconds: float = Field(
        default=30.0, gt=0, description="deadline of one Docker API call (create, start, inspect, remove ...)")
    seed_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0,
                                description="local runs: most bytes copied from the project into the workspace")
    cache_max_bytes: int = Field(default=2 * 1024 ** 3, ge=0,
                                 description="job caches kept on this host, in total; a bigger cache is not saved, "
                                             "the least recently used go first")
    cache_dir: Path | None = Field(default=None, description="where job caches are kept; default <state dir>/caches")
    outbox_max_attempts: int = Field(
        default=50, ge=1, description="failed deliveries of one item (answers, not an unreachable backend) "
                                      "before it is set aside as dead")
    outbox_max_failing_seconds: float = Field(
        default=900.0, ge=0, description="... and for at least this long")
    extension_max_failures: int = Field(
        default=8, ge=1, description="consecutive 5xx of an extension call (live logs, artifact upload) before "
                                     "the backend is taken not to have it")
    extension_max_failing_seconds: float = Field(default=60.0, ge=0, description="... and for at least this long")
    state_dir: Path = Path(os.path.expanduser("~/.cicd-worker"))
    # The issue names it WORKER_ID (not WORKER_WORKER_ID): an alias bypasses the prefix.
    worker_id: str = Field(default_factory=socket.gethostname, validation_alias=AliasChoices("WORKER_ID", "worker_id"))

    @property
    def cache_path(self) -> Path:
        """The directory of this host's job caches (``WORKER_CACHE_DIR``, else ``caches`` in the state dir)."""
        return self.cache_dir or self.state_dir / "caches"

    @field_validator("api_token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty WORKER_API_TOKEN used to turn auth off while the config said a token was set.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("WORKER_API_TOKEN is set but empty: set a real token or unset the variable")
        return value

    def public_view(self) -> dict[str, Any]:
        """Settings as JSON for ``/api/worker/config``: secrets reported only as set or not."""
        data = self.model_dump(mode="json", exclude={"api_token", "backend_token"})
        data["apiTokenSet"] = self.api_token is not None
        data["backendTokenSet"] = self.backend_token is not None
        data["prefectApiUrl"] = os.environ.get("PREFECT_API_URL")
        return data

