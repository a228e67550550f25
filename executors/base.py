"""The executor contract: how one job runs, independent of Prefect and of the backend.

An :class:`Executor` runs jobs (one :class:`JobSpec` in, one :class:`JobResult` out), keeps the
workspace volumes that the jobs of a pipeline run share, and finds what a previous life of the same
worker id left behind. :class:`executors.docker_executor.DockerExecutor` is the production one;
:class:`executors.dummy.DummyExecutor` is a complete in-process one for fast tests of the flows.

Who calls what, in which order:

* **A flow run** (``flows.workspace``, ``flows.job_task``): ``create_volume`` → ``seed_volume`` (local
  runs, and reused jobs' outputs) → ``run`` once per attempt of each job, from many threads at once (with
  ``volume_files`` before a job with ``inputs`` when the run has no project folder) → ``remove_volume``
  in a ``finally`` (also when ``create_volume`` raised: the first container create may have made it).
* **Start-up recovery** (``flows.recovery``), one thread, before this process runs any job:
  ``leftover_containers`` → ``captured_output`` and ``remove_container`` for each → ``leftover_networks``
  → ``remove_network`` for each → ``leftover_volumes`` → ``remove_volume`` for each. A pool flow process
  removes only the containers (services included) and networks of its own cut-off jobs, since other
  processes of the same worker id run beside it.

What every method promises:

* **Thread safety.** Every method may be called from any thread, concurrently with any other, on one
  instance shared by the whole process (the container limit holds across all flows through it).
* **Errors.** Exceptions mean the runner broke and are subclasses of :class:`core.errors.InfrastructureError`
  (``EngineUnavailable`` retried, ``ImageUnavailable`` not: see :mod:`core.errors`); the exceptions are
  ``seed_volume``'s ``SeedTooLarge`` (the project is over the cap: retrying cannot help) and
  ``volume_files``' ``InputsNotHashed`` (over its limits). A job's own failure is never an exception: a
  non-zero exit, a timeout and a cancellation are *results*.
* **Idempotency.** Removing something already gone is no error; creating a volume that exists reuses it.
* **Ownership.** Everything an executor creates carries its worker id, so that a later life (the
  ``leftover_*`` methods) finds exactly what this worker id left, and nothing of another worker's. (A
  workspace volume that a container create made because ``create_volume`` failed carries no labels: the
  flow's ``remove_volume`` by name is what removes it.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from executors.artifacts import ArtifactCollection
from executors.volume_files import HashLimits

LogSink = Callable[[str], None]
DEFAULT_CAP_DROP = ("NET_RAW", "MKNOD", "AUDIT_WRITE", "SETFCAP")
"""Raw sockets (packet spoofing), device nodes, audit log writes, file capabilities: not for CI jobs."""


@dataclass(frozen=True)
class CacheSpec:
    """A job's cache: ``paths`` of its working dir kept on this host under a key across runs."""

    key: str
    """The key as written; ``$VAR`` / ``${VAR}`` are taken from the job's env. Ignored when ``files`` is set."""
    paths: tuple[str, ...]
    """Relative to the working dir; absolute ones and ``..`` are refused (logged) when the job runs."""
    directory: Path
    """Where this host keeps its caches (``executors.cache_store``)."""
    files: tuple[str, ...] = ()
    """When set, the key is a hash of these files' content as the job starts (lock files, say)."""
    policy: str = "pull-push"
    """``pull-push``, ``pull`` (restore, never save) or ``push`` (save, never restore)."""
    max_bytes: int = 2 * 1024 ** 3
    """All caches of the host together; a single cache bigger than this is not saved."""
    timeout_seconds: float = 300.0
    """Time budget of reading the cache paths from the container when saving."""


@dataclass(frozen=True)
class ServiceSpec:
    """A service container beside the job (a database, say), reached by ``alias`` on the job's own network."""

    image: str
    alias: str
    """Host name the job reaches it by (``executors.job_services.default_alias`` when none was given)."""
    command: tuple[str, ...] = ()
    """Replaces the image's command (its entrypoint stays); empty: the image's own."""
    env: dict[str, str] = field(default_factory=dict, repr=False)  # may hold passwords: never in a logged repr


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run one job's script in a container."""

    job_execution_id: str
    name: str
    image: str
    script: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, repr=False)  # secrets: never in a logged repr
    after_script: tuple[str, ...] = ()
    """Run after ``script`` whatever its outcome, in the same container; its failure changes nothing."""
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
    cache: CacheSpec | None = None
    """Folders of the working dir restored before the script and saved after a success (``executors.job_cache``)."""
    services: tuple[ServiceSpec, ...] = ()
    """Service containers started before the job on a network of its own, removed after it
    (``executors.job_services``); ``network`` is then that network."""


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


@dataclass(frozen=True)
class LeftoverContainer:
    """A container that a life of this worker id created and did not remove (see ``Executor.leftover_containers``)."""

    container_id: str
    """What ``captured_output`` and ``remove_container`` take."""
    job_execution_id: str | None
    """The job execution it ran (``JobSpec.job_execution_id``); None for one that ran no job (a workspace seed)."""
    labels: dict[str, str] = field(default_factory=dict)
    """The labels it was created with: ``JobSpec.labels`` among them (the flow run id of the job, say)."""
    service_of: str | None = None
    """For a service container: the job execution it served (it ran no job itself: never reported as one)."""


@dataclass(frozen=True)
class LeftoverNetwork:
    """A job's network (``JobSpec.services``) that a life of this worker id created and did not remove."""

    name: str
    job_execution_id: str | None


class Executor(Protocol):
    """Runs jobs and keeps their workspaces; see the module docstring for the order of calls and the promises
    every method keeps (thread safety, errors, idempotency)."""

    def run(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event) -> JobResult:
        """Run ``spec`` once and block until it ends; called once per attempt by the job's task.

        Every output line goes to ``log_sink`` as it comes, in order, without its trailing newline (a line
        longer than the executor's limit in pieces); the sink may be called from a thread of the executor's,
        one call at a time. ``cancel`` may be set at any moment (before start, during a pull, after exit):
        the job is stopped promptly (SIGTERM, then SIGKILL after a grace period) and the result says
        ``canceled``; set while the run waits for a container slot, nothing is created at all. Past
        ``spec.timeout_seconds`` the job is stopped the same way and the result says ``timed_out``.
        Artifacts named by the spec are copied out before cleanup, when the job succeeded or
        ``artifacts_when`` is ``always``, into a temporary directory that the caller owns
        (``executors.artifacts.discard`` deletes it). With ``spec.services``, they run beside the job and, when
        it did not succeed, their last lines follow its output, each prefixed with ``[alias]``. Whatever
        happens, nothing the run created is left behind. Raises :class:`core.errors.InfrastructureError`
        subclasses only.
        """
        ...

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        """Create the workspace volume ``name`` (an existing one is reused), with ``labels`` and this worker's
        id; raises ``EngineUnavailable`` when it cannot (the caller goes on: the first job's container
        create makes the volume anyway)."""
        ...

    def seed_volume(self, name: str, directory: Path, image: str, mount: str, max_bytes: int) -> list[str]:
        """Copy the project files of host ``directory`` into volume ``name``, as a job mounting it at ``mount``
        will see them (``image``: the first job's, which the engine needs to mount the volume); returns the
        warnings (links left out). Which files: :mod:`executors.workspace_seed`; over ``max_bytes`` it raises
        ``SeedTooLarge`` before anything is copied."""
        ...

    def volume_files(self, name: str, image: str, mount: str, globs: list[str], limits: HashLimits) -> dict[str, str]:
        """``{path: hash}`` of the files in volume ``name`` matching ``globs`` (relative to the volume's root, as
        a job mounting it at ``mount`` sees them; ``image``: one present here, which the engine needs to mount
        it), as :mod:`executors.volume_files` hashes them: content never kept, links never followed. Raises
        ``InputsNotHashed`` past ``limits`` (the other exception to the rule above), ``EngineUnavailable``
        when the engine fails. Reuse keys of a pipeline run without a project folder are built on it."""
        ...

    def remove_volume(self, name: str) -> None:
        """Remove volume ``name``; a missing one is fine, and a failure is logged, never raised (called from
        ``finally`` blocks and start-up, where raising would hide the real outcome)."""
        ...

    def leftover_containers(self) -> list[LeftoverContainer]:
        """Every container of this worker id that still exists, running or not (start-up recovery)."""
        ...

    def captured_output(self, container_id: str, tail_bytes: int) -> bytes:
        """The output a leftover container captured (stdout and stderr as written), at most its last
        ``tail_bytes``; when cut, it starts at a whole line (a secret cut in two could not be masked).
        Raises ``EngineUnavailable`` when the engine cannot give it, ``ContainerLost`` when it is gone."""
        ...

    def remove_container(self, container_id: str) -> None:
        """Force-remove a leftover container (stopping it if it runs); a missing one is fine, an engine
        failure raises ``EngineUnavailable``."""
        ...

    def leftover_volumes(self) -> list[str]:
        """The names of every volume carrying this worker id (workspaces a cut-off run did not remove)."""
        ...

    def image_id(self, image: str) -> str | None:
        """The id of ``image`` as present on this host (not its tag), or None when it is not present; never
        pulls. Raises ``EngineUnavailable`` when the engine does not answer. Reuse keys are built on it."""
        ...

    def leftover_networks(self) -> list[LeftoverNetwork]:
        """Every job network (``JobSpec.services``) carrying this worker id, with the job it was made for."""
        ...

    def remove_network(self, name: str) -> None:
        """Remove network ``name``; a missing one is fine, and a failure is logged, never raised (like
        ``remove_volume``)."""
        ...


def acquire_slot(slots: threading.Semaphore, cancel: threading.Event, poll_seconds: float) -> bool:
    """Take one container slot, giving up (False) as soon as ``cancel`` is set: a job cancelled while it
    waits for a slot never starts."""
    while not cancel.is_set():
        if slots.acquire(timeout=poll_seconds):
            return True
    return False
