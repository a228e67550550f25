"""The executor contract: how one job runs, independent of Prefect and of the backend.

An :class:`Executor` runs one :class:`JobSpec` and returns a :class:`JobResult`:

* ``run(spec, log_sink, cancel)`` blocks until the job ends. Every output line is passed to
  ``log_sink`` as it comes, in order, without its trailing newline.
* A non-zero exit, a timeout and a cancellation are *results*, not exceptions (``exit_code``,
  ``timed_out``, ``canceled``). Exceptions mean the runner broke: subclasses of
  :class:`core.errors.InfrastructureError`.
* ``cancel`` may be set at any moment (before start, during pull, after exit); the executor stops
  the job promptly (SIGTERM, then SIGKILL after ``stop_grace_seconds``) and reports ``canceled``.
* Cleanup always runs: whatever happens, nothing the executor created is left behind.
* ``run`` is thread-safe: many jobs may run at once from different threads.
* Artifacts named by the spec are copied out of the container before it is removed, into a temporary
  directory that the caller owns (``executors.artifacts.discard`` deletes it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from executors.artifacts import ArtifactCollection

LogSink = Callable[[str], None]
DEFAULT_CAP_DROP = ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP")
"""Raw sockets (packet spoofing), device nodes, audit log writes, file capabilities: not for CI jobs."""


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run one job's script in a container."""

    job_execution_id: str
    name: str
    image: str
    script: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, repr=False)  # secrets: never in a logged repr
    working_dir: str = "/workspace"
    timeout_seconds: float = 3600.0
    pull_policy: str = "if-not-present"
    network: str = "none"
    labels: dict[str, str] = field(default_factory=dict)
    workspace_volume: str | None = None
    """Docker volume mounted at ``workspace_mount`` (shared by the jobs of a pipeline run)."""
    workspace_mount: str = "/workspace"
    artifacts: tuple[str, ...] = ()
    artifacts_when: str = "success"
    """``success`` (collect only when the script succeeded) or ``always``."""
    max_artifact_bytes: int = 100 * 1024 * 1024
    max_job_artifact_bytes: int = 1024 * 1024 * 1024
    """Most bytes of artifacts kept, and of archives read from the engine while collecting them."""
    artifact_collect_timeout_seconds: float = 300.0
    pids_limit: int | None = 1024
    memory_limit: str | None = None
    privileged: bool = False
    cap_drop: tuple[str, ...] = DEFAULT_CAP_DROP
    """Linux capabilities removed from Docker's default set (a CI job needs none of these)."""
    cap_add: tuple[str, ...] = ()
    cpus: float | None = None
    """CPU limit (2.0: two CPUs' worth of time); capped at the engine's CPU count. None: no limit."""
    read_only_rootfs: bool = False
    """Root filesystem read-only; ``/tmp`` is then a tmpfs and the workspace volume stays writable."""


@dataclass
class JobResult:
    """What happened to one run of a job."""

    exit_code: int | None
    started_at: datetime
    finished_at: datetime
    timed_out: bool = False
    canceled: bool = False
    log_bytes: int = 0
    artifacts: ArtifactCollection = field(default_factory=ArtifactCollection)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.canceled

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class Executor(Protocol):
    """Runs jobs; see the module docstring for the contract."""

    def run(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event) -> JobResult: ...
