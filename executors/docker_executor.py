"""DockerExecutor: runs a job's script in a fresh container through docker-py.

Contract (see ``executors.base``): one container per run, labelled with
``cicd.job-execution-id`` and ``cicd.worker-id`` so that other tools and the start-up sweep can find
it; output streamed line by line as it comes; timeout and cancel stop the container with SIGTERM, then
SIGKILL after the grace period (containers run with an init process so SIGTERM reaches the script);
the container is always removed.
"""

from __future__ import annotations

import io
import logging
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.utils import parse_repository_tag

from executors.artifacts import ArtifactCollection, ArtifactCollector
from executors.base import JobResult, JobSpec, LogSink
from executors.errors import ContainerLost, EngineUnavailable, ImageUnavailable
from executors.script import build_shell_script

log = logging.getLogger(__name__)

LABEL_JOB = "cicd.job-execution-id"
LABEL_WORKER = "cicd.worker-id"
SCRIPT_PATH = "/.cicd-job-script.sh"
_MAX_INLINE_SCRIPT_BYTES = 100 * 1024
_KILLED_BY_SIGNAL = (137, 143)
_ENGINE_WATCH_SECONDS = 3.0
_WAIT_STEP_SECONDS = 0.5


class LineSplitter:
    """Re-joins byte chunks into lines (docker splits long lines into 16 KiB frames)."""

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink
        self._pending = b""
        self.total_bytes = 0

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        for line in lines:
            self._sink(line.decode("utf-8", errors="replace"))

    def close(self) -> None:
        if self._pending:
            self._sink(self._pending.decode("utf-8", errors="replace"))
            self._pending = b""


class DockerExecutor:
    """Runs jobs in Docker containers; at most ``max_containers`` at once across all threads."""

    def __init__(self, worker_id: str, *, max_containers: int = 4, stop_grace_seconds: float = 10.0,
                 pull_timeout_seconds: float = 300.0, client: docker.DockerClient | None = None) -> None:
        self.worker_id = worker_id
        self.stop_grace_seconds = stop_grace_seconds
        self.pull_timeout_seconds = pull_timeout_seconds
        self._slots = threading.BoundedSemaphore(max_containers)
        self._client = client
        self._client_lock = threading.Lock()
        self._unremoved: set[str] = set()  # containers whose removal failed (engine down): retried later

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, made on first use (pool sized for many concurrent jobs)."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.from_env(max_pool_size=64, timeout=60)
                except docker.errors.DockerException as exc:
                    raise EngineUnavailable(f"Docker engine unreachable: {exc}") from exc
            return self._client

    def ping(self) -> None:
        """Raise :class:`EngineUnavailable` unless the engine answers."""
        try:
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise EngineUnavailable(f"Docker engine unreachable: {exc}") from exc
        self._retry_removals()

    def run(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event) -> JobResult:
        """Run ``spec`` to the end; see the module docstring."""
        started = datetime.now(UTC)
        if not self._acquire_slot(cancel):
            return JobResult(exit_code=None, started_at=started, finished_at=datetime.now(UTC), canceled=True)
        try:
            return self._run_in_slot(spec, log_sink, cancel, started)
        finally:
            self._slots.release()

    def _acquire_slot(self, cancel: threading.Event) -> bool:
        while not cancel.is_set():
            if self._slots.acquire(timeout=0.2):
                return True
        return False

    def _run_in_slot(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event,
                     started: datetime) -> JobResult:
        try:
            container = self._create_with_image(spec, cancel)
            if container is None:
                return JobResult(None, started, datetime.now(UTC), canceled=True)
        except docker.errors.APIError as exc:
            raise EngineUnavailable(f"Docker engine error: {exc.explanation or exc}") from exc
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable(f"Docker engine unreachable: {exc}") from exc
        try:
            return self._supervise(container, spec, log_sink, cancel)
        finally:
            self._remove(container)

    def _create_with_image(self, spec: JobSpec, cancel: threading.Event) -> Container | None:
        """Create the container, pulling the image as the policy says; None when canceled meanwhile.

        Under ``if-not-present`` and ``never`` the create is tried first: a present image (the usual case)
        then costs no separate inspect call on the way to a running job.
        """
        if spec.pull_policy == "always":
            self._pull(spec.image)
        elif cancel.is_set():
            return None
        else:
            try:
                return self._create(spec)
            except docker.errors.ImageNotFound:
                self.ensure_image(spec.image, spec.pull_policy)  # raises under never; pulls otherwise
        return None if cancel.is_set() else self._create(spec)

    def ensure_image(self, image: str, policy: str) -> None:
        """Make ``image`` present under ``policy`` or raise :class:`ImageUnavailable` naming it."""
        if policy != "always":
            try:
                self.client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                if policy == "never":
                    raise ImageUnavailable(
                        f"image {image!r} is not present on this worker and the pull policy 'never' "
                        "forbids pulling it") from None
        self._pull(image)

    def _pull(self, image: str) -> None:
        # The high-level pull hides errors that arrive inside the progress stream: read it ourselves.
        repository, tag = parse_repository_tag(image)  # handles registry ports and @sha256 digests
        deadline = time.monotonic() + self.pull_timeout_seconds
        try:
            for line in self.client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise ImageUnavailable(f"could not pull image {image!r}: {line['error']}")
                if time.monotonic() > deadline:
                    raise ImageUnavailable(f"pulling image {image!r} took longer than {self.pull_timeout_seconds:g} s")
        except docker.errors.APIError as exc:
            raise ImageUnavailable(f"could not pull image {image!r}: {exc.explanation or exc}") from exc

    def _create(self, spec: JobSpec) -> Container:
        labels = {**spec.labels, LABEL_JOB: spec.job_execution_id, LABEL_WORKER: self.worker_id}
        script = build_shell_script(spec.script)
        # The kernel caps one argument at 128 KiB: a longer program goes in as a file (one more API call).
        as_file = len(script.encode()) > _MAX_INLINE_SCRIPT_BYTES
        container = self.client.containers.create(
            spec.image,
            entrypoint=["/bin/sh"],
            command=[SCRIPT_PATH] if as_file else ["-c", script],
            working_dir=spec.working_dir,
            environment=spec.env,
            labels=labels,
            init=True,
            network_mode=spec.network,
            security_opt=["no-new-privileges"],
            privileged=spec.privileged,
            pids_limit=spec.pids_limit,
            mem_limit=spec.memory_limit,
            volumes={spec.workspace_volume: {"bind": spec.workspace_mount, "mode": "rw"}}
            if spec.workspace_volume else None,
            detach=True,
        )
        if as_file:
            try:
                container.put_archive("/", script_archive(script))
            except Exception:
                self._remove(container)
                raise
        return container

    def _supervise(self, container: Container, spec: JobSpec, log_sink: LogSink,
                   cancel: threading.Event) -> JobResult:
        splitter = LineSplitter(log_sink)
        # Attach before start so that no early output is missed; the stream ends when the container exits.
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
        pump = threading.Thread(target=_pump, args=(stream, splitter), name=f"logs-{spec.name}", daemon=True)
        pump.start()
        container.start()
        started = datetime.now(UTC)
        exit_code, timed_out, canceled = self._wait(container, spec.timeout_seconds, cancel)
        pump.join(timeout=self.stop_grace_seconds + 5)
        splitter.close()
        if exit_code in _KILLED_BY_SIGNAL and not (timed_out or canceled):
            self._raise_if_engine_went_away(exit_code)
        result = JobResult(exit_code=exit_code, started_at=started, finished_at=datetime.now(UTC),
                           timed_out=timed_out, canceled=canceled, log_bytes=splitter.total_bytes)
        if spec.artifacts and not canceled and (result.succeeded or spec.artifacts_when == "always"):
            result.artifacts = self._collect(container, spec)
        return result

    def _collect(self, container: Container, spec: JobSpec) -> ArtifactCollection:
        collector = ArtifactCollector(spec.artifacts, spec.max_artifact_bytes, spec.max_job_artifact_bytes)
        if not collector.wanted:
            return collector.result
        try:
            chunks, _ = container.get_archive(spec.working_dir.rstrip("/") or "/")
            return collector.collect(chunks)
        except docker.errors.NotFound:
            collector.result.warnings.append(f"working directory {spec.working_dir} not found: no artifacts")
            return collector.result

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        """Create (or reuse) a named volume carrying our worker label."""
        self.client.volumes.create(name=name, labels={**labels, LABEL_WORKER: self.worker_id})

    def seed_volume(self, name: str, directory: Path, image: str, mount: str = "/workspace",
                    exclude: tuple[str, ...] = (".cicd", ".git", ".venv")) -> None:
        """Copy ``directory`` into a volume through a container that is created but never started."""
        container = self.client.containers.create(image, command=["true"], network_mode="none",
                                                  labels={LABEL_WORKER: self.worker_id},
                                                  volumes={name: {"bind": mount, "mode": "rw"}})
        try:
            with tempfile.TemporaryFile() as archive:
                with tarfile.open(fileobj=archive, mode="w") as tar:
                    for entry in sorted(directory.iterdir()):
                        if entry.name not in exclude:
                            tar.add(entry, arcname=entry.name)
                archive.seek(0)
                container.put_archive(mount, archive)
        finally:
            self._remove(container)

    def remove_volume(self, name: str) -> None:
        """Remove a volume; a missing one is fine, one still in use is logged."""
        try:
            self.client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            log.error("could not remove volume %s: %s", name, exc)

    def _raise_if_engine_went_away(self, exit_code: int) -> None:
        """A stopping engine kills its containers (143/137) just before it goes: that is not the job's fault.

        Watch the engine briefly; if it stops answering, report an infrastructure failure (retried).
        """
        deadline = time.monotonic() + _ENGINE_WATCH_SECONDS
        while time.monotonic() < deadline:
            try:
                self.client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                raise EngineUnavailable(
                    f"the Docker engine went away while the job ran (container killed, exit {exit_code})") from exc
            time.sleep(0.2)

    def _wait(self, container: Container, timeout: float, cancel: threading.Event
              ) -> tuple[int | None, bool, bool]:
        deadline = time.monotonic() + timeout
        while True:
            code = self._wait_step(container)
            if code is not None:
                return code, False, False
            if cancel.is_set():
                return self._stop(container), False, True
            if time.monotonic() >= deadline:
                return self._stop(container), True, False

    def _wait_step(self, container: Container) -> int | None:
        try:
            return int(container.wait(timeout=_WAIT_STEP_SECONDS)["StatusCode"])
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            # docker-py reports a wait timeout as ConnectionError(ReadTimeoutError): not a dead engine.
            if _is_read_timeout(exc):
                return None
            raise EngineUnavailable(f"lost the Docker engine while the job ran: {exc}") from exc
        except docker.errors.NotFound as exc:
            raise ContainerLost(f"container of the job disappeared: {exc.explanation or exc}") from exc

    def _stop(self, container: Container) -> int | None:
        try:
            container.stop(timeout=int(max(self.stop_grace_seconds, 0)))
            return int(container.wait(timeout=self.stop_grace_seconds + 10)["StatusCode"])
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            log.warning("stopping container %s failed: %s", container.short_id, exc)
            return None

    def _remove(self, container: Container) -> None:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            log.error("could not remove container %s (retried later): %s", container.short_id, exc)
            with self._client_lock:
                self._unremoved.add(container.id or container.name)
        self._retry_removals()

    def _retry_removals(self) -> None:
        with self._client_lock:
            pending, self._unremoved = self._unremoved, set()
        for container_id in pending:
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.APIError, requests.exceptions.RequestException):
                with self._client_lock:
                    self._unremoved.add(container_id)

    def remove_labelled(self, **label_values: str) -> int:
        """Force-remove every container with our labels (and the given label values); returns the count."""
        filters = [f"{LABEL_WORKER}={self.worker_id}"] + [f"{k}={v}" for k, v in label_values.items()]
        removed = 0
        for container in self.client.containers.list(all=True, filters={"label": filters}):
            self._remove(container)
            removed += 1
        return removed


def script_archive(script: str) -> bytes:
    """A tar holding the job's shell program at ``SCRIPT_PATH`` (relative to ``/``)."""
    data = script.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(SCRIPT_PATH.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pump(stream: Iterator[bytes], splitter: LineSplitter) -> None:
    try:
        for chunk in stream:
            splitter.feed(chunk)
    except Exception as exc:  # the stream dies with the engine; the wait loop reports that
        log.warning("log stream ended early: %s", exc)


def _is_read_timeout(exc: BaseException) -> bool:
    text = repr(exc)
    return isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in text
