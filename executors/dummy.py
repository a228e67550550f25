"""DummyExecutor: a complete executor that runs nothing, in-process, its outcomes driven by each job's env.

It keeps the whole :class:`executors.base.Executor` contract (slots, cancel, timeout, volumes, leftovers)
without a container engine, so the flows' logic (statuses, retries by kind, allowFailure, downstream
cancel, recovery) can be tested in a second instead of the seconds a real container costs. Everything
Docker itself does keeps its real-engine tests. The script is never run; the job's env says what
happens instead:

``DUMMY_OUTPUT``         the job's output, lines separated by ``\\n`` (default: none)
``DUMMY_EXIT_CODE``      its exit code (default 0)
``DUMMY_SLEEP``          seconds it runs after its output (default 0); cancel and ``timeout_seconds`` stop it
                         as they stop a container (SIGTERM: exit 143)
``DUMMY_FAIL_ATTEMPTS``  N: the first N runs of this job execution raise ``EngineUnavailable`` (an
                         infrastructure failure, retried), after writing their output
``DUMMY_IMAGE_MISSING``  ``1``: every run raises ``ImageUnavailable`` (an infrastructure failure that is not retried)
``DUMMY_ARTIFACTS``      comma-separated relative paths collected as artifacts (each file holds its own path),
                         under the same rule as a container's (``artifacts_when``)
``DUMMY_WRITES``         ``path=text`` pairs separated by ``;``: files the run writes into its workspace volume
                         (paths relative to the volume's root), after its output; ``$NAME`` in a text is the
                         job's variable (``$CI_COMMIT_SHA``, say)

Volumes hold files (what was seeded, what runs wrote), so ``volume_files`` hashes them as the Docker executor
hashes a real volume's (:mod:`executors.volume_files`: same globs, same hashes; links are not modelled).

``JobSpec.services`` are recorded with the spec, never played (service containers have real-engine tests).
Every call is recorded in ``calls`` (``(method, argument)`` pairs, in order) for tests to assert on; the
runs themselves in ``specs``. A test can plant what a crashed worker left with :meth:`DummyExecutor.leave`.
"""

from __future__ import annotations

import hashlib
import string
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ContainerLost, EngineUnavailable, ImageUnavailable
from executors.artifact_patterns import parse_patterns
from executors.artifacts import ArtifactCollection, CollectedArtifact
from executors.base import Executor, JobResult, JobSpec, LeftoverContainer, LeftoverNetwork, LogSink, acquire_slot
from executors.output import whole_line_tail
from executors.volume_files import HashLimits, InputsNotHashed, content_hasher, matches_any
from executors.workspace_seed import DEFAULT_MAX_BYTES, plan_seed

EXIT_STOPPED = 143  # what a container's init reports after SIGTERM stopped the script
_TICK_SECONDS = 0.01


class DummyExecutor:
    """Runs jobs as their env says, at most ``max_containers`` at once; see the module docstring."""

    def __init__(self, worker_id: str = "dummy", *, max_containers: int = 4) -> None:
        self.worker_id = worker_id
        self.calls: list[tuple[str, str]] = []
        self.specs: list[JobSpec] = []
        self.volumes: dict[str, dict[str, str]] = {}
        self.seeded: dict[str, list[str]] = {}
        """Relative paths of the files each seeded volume got."""
        self.files: dict[str, dict[str, bytes]] = {}
        """What each volume holds: path relative to its root -> content."""
        self.networks: dict[str, str | None] = {}
        """Job networks (``JobSpec.services``) a crashed life left, by name: the job each was made for."""
        self._slots = threading.BoundedSemaphore(max_containers)
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        self._containers: dict[str, tuple[LeftoverContainer, bytearray]] = {}
        self._next_id = 0

    def calls_to(self, method: str) -> list[str]:
        """The arguments of every call of ``method``, in order."""
        with self._lock:
            return [argument for name, argument in self.calls if name == method]

    def _record(self, method: str, argument: str) -> None:
        with self._lock:
            self.calls.append((method, argument))

    # -- running jobs ---------------------------------------------------------------------------------------

    def run(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event) -> JobResult:
        """Play the job its env describes (``Executor.run``)."""
        with self._lock:
            self.calls.append(("run", spec.job_execution_id))
            self.specs.append(spec)
            self._attempts[spec.job_execution_id] += 1
            attempt = self._attempts[spec.job_execution_id]
        started = datetime.now(UTC)
        if spec.env.get("DUMMY_IMAGE_MISSING") == "1":
            raise ImageUnavailable(f"image {spec.image!r} is not present (DUMMY_IMAGE_MISSING)")
        if not acquire_slot(self._slots, cancel, poll_seconds=0.05):
            return JobResult(exit_code=None, started_at=started, finished_at=datetime.now(UTC), canceled=True)
        container_id = self._create(spec)
        try:
            return self._play(spec, container_id, attempt, log_sink, cancel)
        finally:
            with self._lock:
                self._containers.pop(container_id, None)
            self._slots.release()

    def _create(self, spec: JobSpec) -> str:
        labels = {**spec.labels, "cicd.job-execution-id": spec.job_execution_id, "cicd.worker-id": self.worker_id}
        with self._lock:
            self._next_id += 1
            container_id = f"dummy-{self._next_id}"
            self._containers[container_id] = (LeftoverContainer(container_id, spec.job_execution_id, labels),
                                              bytearray())
        return container_id

    def _play(self, spec: JobSpec, container_id: str, attempt: int, log_sink: LogSink,
              cancel: threading.Event) -> JobResult:
        started = datetime.now(UTC)
        log_bytes = 0
        output = spec.env.get("DUMMY_OUTPUT")
        for line in output.split("\n") if output else ():
            log_sink(line)
            log_bytes += len(line.encode()) + 1
            with self._lock:
                self._containers[container_id][1].extend(line.encode() + b"\n")
        self._write(spec)
        if attempt <= _int(spec.env, "DUMMY_FAIL_ATTEMPTS", 0):
            raise EngineUnavailable(f"dummy engine failure on attempt {attempt} (DUMMY_FAIL_ATTEMPTS)")
        outcome = _sleep(float(spec.env.get("DUMMY_SLEEP") or 0), spec.timeout_seconds, cancel)
        exit_code = EXIT_STOPPED if outcome else _int(spec.env, "DUMMY_EXIT_CODE", 0)
        result = JobResult(exit_code=exit_code, started_at=started, finished_at=datetime.now(UTC),
                           timed_out=outcome == "timed_out", canceled=outcome == "canceled", log_bytes=log_bytes)
        if spec.artifacts and not result.canceled and (result.succeeded or spec.artifacts_when == "always"):
            result.artifacts = _artifacts(spec.env.get("DUMMY_ARTIFACTS", ""))
        return result

    def _write(self, spec: JobSpec) -> None:
        """The files ``DUMMY_WRITES`` says the run writes into its workspace volume."""
        writes = [pair.partition("=") for pair in spec.env.get("DUMMY_WRITES", "").split(";") if "=" in pair]
        if spec.workspace_volume is None or not writes:
            return
        with self._lock:
            held = self.files.setdefault(spec.workspace_volume, {})
            held.update((path.strip(), string.Template(text).safe_substitute(spec.env).encode())
                        for path, _, text in writes)

    # -- workspace volumes ----------------------------------------------------------------------------------

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        self._record("create_volume", name)
        with self._lock:
            self.volumes.setdefault(name, {**labels, "cicd.worker-id": self.worker_id})

    def seed_volume(self, name: str, directory: Path, image: str, mount: str = "/workspace",
                    max_bytes: int = DEFAULT_MAX_BYTES) -> list[str]:
        """Plan the seed as the Docker executor does (same files, same cap) and record what it would copy."""
        self._record("seed_volume", name)
        plan = plan_seed(directory, max_bytes)
        with self._lock:
            self.volumes.setdefault(name, {"cicd.worker-id": self.worker_id})
            self.seeded[name] = [entry.path for entry in plan.entries if entry.kind == "file"]
            self.files.setdefault(name, {}).update(
                (path, (directory / path).read_bytes()) for path in self.seeded[name])
        return plan.warnings

    def volume_files(self, name: str, image: str, mount: str, globs: list[str], limits: HashLimits) -> dict[str, str]:
        """Hash what the volume holds, as ``DockerExecutor.volume_files`` does (same globs, same hashes)."""
        self._record("volume_files", name)
        patterns, _ = parse_patterns(list(globs))
        with self._lock:
            held = dict(self.files.get(name, {}))
        found, size = {}, 0
        for path, content in sorted(held.items()):
            if not matches_any(patterns, path):
                continue
            size += len(content)
            if size > limits.max_bytes:
                raise InputsNotHashed(f"the inputs are over {limits.max_bytes} bytes")
            hasher = content_hasher()
            hasher.update(content)
            found[path] = hasher.hexdigest()
        return found

    def image_id(self, image: str) -> str | None:
        """A made-up id derived from the name (``DUMMY_IMAGE_MISSING`` is per job: every image is present)."""
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest()

    def remove_volume(self, name: str) -> None:
        self._record("remove_volume", name)
        with self._lock:
            self.volumes.pop(name, None)
            self.files.pop(name, None)

    # -- what a previous life left --------------------------------------------------------------------------

    def leave(self, job_execution_id: str | None, output: str = "", labels: dict[str, str] | None = None,
              service_of: str | None = None) -> str:
        """Plant a container as a crashed life would have left it, with its captured ``output`` (``service_of``:
        a service container of that job execution); returns its id."""
        with self._lock:
            self._next_id += 1
            container_id = f"dummy-{self._next_id}"
            leftover = LeftoverContainer(container_id, job_execution_id,
                                         {**(labels or {}), "cicd.worker-id": self.worker_id}, service_of)
            self._containers[container_id] = (leftover, bytearray(output.encode()))
        return container_id

    def leftover_containers(self) -> list[LeftoverContainer]:
        self._record("leftover_containers", "")
        with self._lock:
            return [leftover for leftover, _ in self._containers.values()]

    def captured_output(self, container_id: str, tail_bytes: int) -> bytes:
        self._record("captured_output", container_id)
        with self._lock:
            found = self._containers.get(container_id)
            if found is None:
                raise ContainerLost(f"container {container_id} is gone")
            return whole_line_tail(bytes(found[1]), tail_bytes)

    def remove_container(self, container_id: str) -> None:
        self._record("remove_container", container_id)
        with self._lock:
            self._containers.pop(container_id, None)

    def leftover_volumes(self) -> list[str]:
        self._record("leftover_volumes", "")
        with self._lock:
            return list(self.volumes)

    def leftover_networks(self) -> list[LeftoverNetwork]:
        self._record("leftover_networks", "")
        with self._lock:
            return [LeftoverNetwork(name, job) for name, job in self.networks.items()]

    def remove_network(self, name: str) -> None:
        self._record("remove_network", name)
        with self._lock:
            self.networks.pop(name, None)


def _int(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name)
    return int(value) if value else default


def _sleep(seconds: float, timeout: float, cancel: threading.Event) -> str | None:
    """Wait ``seconds``; ``"canceled"`` or ``"timed_out"`` when one of those comes first, else None."""
    deadline = time.monotonic() + seconds
    give_up = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cancel.wait(min(_TICK_SECONDS, max(deadline - time.monotonic(), 0))):
            return "canceled"
        if time.monotonic() >= give_up:
            return "timed_out"
    return None


def _artifacts(names: str) -> ArtifactCollection:
    """A collection with one small file per comma-separated relative path, each holding its own path."""
    collection = ArtifactCollection()
    paths = [name.strip() for name in names.split(",") if name.strip()]
    if not paths:
        return collection
    collection.directory = Path(tempfile.mkdtemp(prefix="cicd-dummy-artifacts-"))
    for relative in paths:
        local = collection.directory / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        data = relative.encode()
        local.write_bytes(data)
        collection.files.append(CollectedArtifact(relative, local, len(data), hashlib.sha256(data).hexdigest()))
    return collection


if TYPE_CHECKING:  # mypy holds the dummy to the whole protocol here (tests, which use it, are not type-checked)
    _CONFORMS: Executor = DummyExecutor()
