"""DockerExecutor: runs a job's script in a fresh container through docker-py.

Contract (see ``executors.base``): one container per run, labelled with
``cicd.job-execution-id`` and ``cicd.worker-id`` so that other tools and the start-up sweep can find
it; output streamed line by line as it comes; timeout and cancel stop the container with SIGTERM, then
SIGKILL after the grace period (containers run with an init process so SIGTERM reaches the script);
the container is always removed.

Containers hold little: network ``none`` by default, no new privileges, the capabilities a CI job does not
need dropped (``JobSpec.cap_drop``), pids, memory and CPU limits, optionally a read-only root with a tmpfs
``/tmp``; an image outside ``allowed_images`` is refused before any engine call. A job with services runs on
an internal network of its own instead, beside its service containers (:mod:`executors.job_services`).

A wedged engine accepts connections and never answers: every engine call has a deadline
(``docker_timeout_seconds``), a run pings the engine while it waits (a ``wait`` timing out is normal), and
no answer in time is :class:`EngineUnavailable` (retried), with the container slot released and the
container's removal left for a later retry.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import os
import posixpath
import tarfile
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils.socket
import requests.exceptions
from docker.models.containers import Container
from docker.types import Mount
from docker.utils import parse_repository_tag

from core.errors import ContainerLost, EngineUnavailable, ImageNotAllowed, ImageUnavailable
from executors.artifacts import ArtifactCollection, ArtifactLimits, collect_artifacts
from executors.base import JobResult, JobSpec, LeftoverContainer, LeftoverNetwork, LogSink, acquire_slot
from executors.container_files import ContainerFiles
from executors.job_cache import JobCache
from executors.job_services import LABEL_SERVICE_OF, JobServices, check_aliases, remove_network
from executors.output import FrameReader, LineSplitter, whole_line_tail
from executors.script import build_shell_script
from executors.volume_files import HashLimits, hash_matching
from executors.workspace_seed import DEFAULT_MAX_BYTES as DEFAULT_SEED_MAX_BYTES
from executors.workspace_seed import plan_seed, write_seed_archive

log = logging.getLogger(__name__)

LABEL_JOB = "cicd.job-execution-id"
LABEL_WORKER = "cicd.worker-id"
SCRIPT_DIR = "/.cicd-job"
SCRIPT_PATH = f"{SCRIPT_DIR}/script.sh"
_MAX_INLINE_SCRIPT_BYTES = 100 * 1024
_KILLED_BY_SIGNAL = (137, 143)
_ENGINE_WATCH_SECONDS = 3.0
_WAIT_STEP_SECONDS = 0.5
_ENGINE_CHECK_SECONDS = 5.0
_TMPFS_OPTIONS = "rw,nosuid,nodev,exec"  # exec: jobs build and run programs in /tmp
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)
_ATTACH_PARAMS = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 1}  # logs: what it printed before the attach
_READ_BYTES = 1 << 18  # the most one read of the container's output takes (its lines go on as one batch)


class DockerExecutor:
    """Runs jobs in Docker containers; at most ``max_containers`` at once across all threads."""

    def __init__(self, worker_id: str, *, max_containers: int = 4, stop_grace_seconds: float = 10.0,
                 pull_timeout_seconds: float = 300.0, docker_timeout_seconds: float = 30.0,
                 allowed_images: tuple[str, ...] = (), max_line_chars: int = 65536,
                 client: docker.DockerClient | None = None) -> None:
        self.worker_id = worker_id
        self.max_line_chars = max_line_chars  # longer output lines are passed on in pieces (executors.output)
        self.stop_grace_seconds = stop_grace_seconds
        self.pull_timeout_seconds = pull_timeout_seconds
        self.docker_timeout_seconds = docker_timeout_seconds
        self.allowed_images = tuple(allowed_images)
        self.engine = client.api.base_url if client else os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self._engine_cpus: int | None = None
        self._slots = threading.BoundedSemaphore(max_containers)
        self._client = client
        self._client_lock = threading.Lock()
        self._unremoved: set[str] = set()  # containers whose removal failed (engine down): retried later
        self._running = 0  # attempts in a slot now

    @property
    def client(self) -> docker.DockerClient:
        """The engine client, made on first use: a pool sized for many concurrent jobs, and every call bounded
        by ``docker_timeout_seconds`` (a wedged engine accepts connections and never answers)."""
        with self._client_lock:
            if self._client is not None:
                return self._client
        try:
            # Made outside the lock: it asks the engine for its API version, which may take the whole deadline.
            client = docker.from_env(max_pool_size=64, timeout=self.docker_timeout_seconds)
        except docker.errors.DockerException as exc:
            raise self.engine_error("cannot reach the Docker engine", exc) from exc
        with self._client_lock:
            if self._client is None:
                self._client = client
            return self._client

    def engine_error(self, what: str, exc: BaseException) -> EngineUnavailable:
        """An :class:`EngineUnavailable` naming the engine, and the deadline when it did not answer in time."""
        if _is_timeout(exc):
            return EngineUnavailable(f"{what}: the Docker engine at {self.engine} did not answer within "
                                     f"{self.docker_timeout_seconds:g} s (WORKER_DOCKER_TIMEOUT_SECONDS)")
        detail = exc.explanation if isinstance(exc, docker.errors.APIError) and exc.explanation else exc
        return EngineUnavailable(f"{what}: Docker engine at {self.engine}: {detail}")

    def check_image_allowed(self, image: str) -> None:
        """Raise :class:`ImageNotAllowed` unless ``image`` matches an allowed pattern (none set: any image).

        Patterns are globs over the whole reference as the job writes it (``*`` also crosses ``/``); a
        reference without tag or digest is matched as ``<image>:latest`` too.
        """
        if not self.allowed_images:
            return
        repository, tag = parse_repository_tag(image)
        forms = (image,) if tag else (image, f"{repository}:latest")
        if any(fnmatch.fnmatchcase(form, pattern) for form in forms for pattern in self.allowed_images):
            return
        raise ImageNotAllowed(f"image {image!r} is not allowed on this worker: it matches none of "
                              f"WORKER_ALLOWED_IMAGES {list(self.allowed_images)}")

    def run(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event) -> JobResult:
        """Run ``spec`` to the end; see the module docstring."""
        self.check_image_allowed(spec.image)  # before any engine call: a refused image costs nothing
        for service in spec.services:
            self.check_image_allowed(service.image)
        check_aliases(spec.services)
        started = datetime.now(UTC)
        if not acquire_slot(self._slots, cancel, poll_seconds=0.2):
            return JobResult(exit_code=None, started_at=started, finished_at=datetime.now(UTC), canceled=True)
        with self._client_lock:
            self._running += 1
        try:
            if spec.services:
                return self._run_with_services(spec, log_sink, cancel, started)
            return self._run_in_slot(spec, log_sink, cancel, started)
        finally:
            self._slots.release()
            self._close_idle_connections()

    def _close_idle_connections(self) -> None:
        """When the last running attempt ends, close the engine connections kept alive for reuse: a worker back
        to idle holds no more sockets than before its jobs (a call made meanwhile opens a new one)."""
        with self._client_lock:
            self._running -= 1
            client = self._client if self._running == 0 else None
        if client is not None:
            client.api.close()

    def _run_with_services(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event,
                           started: datetime) -> JobResult:
        """Start the job's services on a network of its own, run the job on it, then remove them all; when the job
        did not succeed, the services' last output lines go to its log (:mod:`executors.job_services`)."""
        services = JobServices(self, spec, {**spec.labels, LABEL_WORKER: self.worker_id},
                               {LABEL_WORKER: self.worker_id, LABEL_JOB: spec.job_execution_id},
                               self._nano_cpus(spec.cpus))
        result: JobResult | None = None
        try:
            if not services.start(cancel):
                return JobResult(None, started, datetime.now(UTC), canceled=True)
            result = self._run_in_slot(replace(spec, network=services.network), log_sink, cancel, started)
            return result
        finally:
            if result is None or not result.succeeded:
                services.report(log_sink)
            services.remove()

    def _run_in_slot(self, spec: JobSpec, log_sink: LogSink, cancel: threading.Event,
                     started: datetime) -> JobResult:
        try:
            container = self._create_with_image(spec, cancel)
        except _ENGINE_ERRORS as exc:
            if _is_timeout(exc):
                self._remove_unanswered_create(spec)
            raise self.engine_error("could not create the job's container", exc) from exc
        if container is None:
            return JobResult(None, started, datetime.now(UTC), canceled=True)
        try:
            return self._supervise(container, spec, log_sink, cancel)
        except requests.exceptions.RequestException as exc:  # attach, start or a later call got no answer
            raise self.engine_error("could not run the job's container", exc) from exc
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

    def image_id(self, image: str) -> str | None:
        """The local image's id (``docker image inspect``), or None when it is not here; never pulls."""
        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            return None
        except _ENGINE_ERRORS as exc:
            raise self.engine_error(f"inspecting image {image}", exc) from exc

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
        script = build_shell_script(spec.script, spec.after_script)
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
            cap_drop=list(spec.cap_drop) or None,
            cap_add=list(spec.cap_add) or None,
            pids_limit=spec.pids_limit,
            mem_limit=spec.memory_limit,
            nano_cpus=self._nano_cpus(spec.cpus),
            read_only=spec.read_only_rootfs,
            tmpfs={"/tmp": _TMPFS_OPTIONS} if spec.read_only_rootfs else None,
            volumes={spec.workspace_volume: {"bind": spec.workspace_mount, "mode": "rw"}}
            if spec.workspace_volume else None,
            # The program file goes on an anonymous volume of its own, removed with the container (v=True): the
            # engine refuses archives into a read-only root, and a tmpfs /tmp is only mounted at start.
            mounts=[Mount(SCRIPT_DIR, None, type="volume")] if as_file else None,
            detach=True,
        )
        if as_file:
            try:
                container.put_archive(SCRIPT_DIR, script_archive(script))
            except Exception:
                self._remove(container)
                raise
        return container

    def _remove_unanswered_create(self, spec: JobSpec) -> None:
        """A create that got no answer may still have made the container: remove it if the engine answers now."""
        try:
            self.remove_labelled(**{LABEL_JOB: spec.job_execution_id})
        except _ENGINE_ERRORS as exc:  # the start-up sweep of the next worker life removes it
            log.warning("could not look for a container of job %s left by an unanswered create: %s", spec.name, exc)

    def _nano_cpus(self, cpus: float | None) -> int | None:
        """``cpus`` in the engine's unit, capped at the engine's CPU count (it refuses a limit above it)."""
        if cpus is None:
            return None
        if self._engine_cpus is None:
            self._engine_cpus = int(self.client.info().get("NCPU") or 1)
        return int(min(cpus, self._engine_cpus) * 1e9)

    def _supervise(self, container: Container, spec: JobSpec, log_sink: LogSink,
                   cancel: threading.Event) -> JobResult:
        cache = JobCache(spec, self.client.api, container.id or container.name, log_sink)
        cache.restore()  # into the created container: the script finds it; nothing here fails the job
        splitter = LineSplitter(log_sink, self.max_line_chars)
        # Attach before start so that no early output is missed; the stream ends when the container exits.
        stream = self.client.api.attach_socket(container.id, params=_ATTACH_PARAMS)
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
        if result.succeeded:
            cache.save()
        return result

    def _collect(self, container: Container, spec: JobSpec) -> ArtifactCollection:
        """The job's artifacts (``executors.artifacts``); an engine failing meanwhile is an infrastructure error."""
        files = ContainerFiles(self.client.api, container.id or container.name, spec.working_dir)
        limits = ArtifactLimits(spec.max_artifact_bytes, spec.max_job_artifact_bytes,
                                spec.artifact_collect_timeout_seconds)
        try:
            return collect_artifacts(spec.artifacts, files, limits)
        except _ENGINE_ERRORS as exc:
            raise EngineUnavailable(f"the Docker engine failed while artifacts were collected: {exc}") from exc

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        """Create (or reuse) a named volume carrying our worker label; :class:`EngineUnavailable` if it cannot."""
        try:
            self.client.volumes.create(name=name, labels={**labels, LABEL_WORKER: self.worker_id})
        except _ENGINE_ERRORS as exc:
            raise self.engine_error(f"creating volume {name}", exc) from exc

    def seed_volume(self, name: str, directory: Path, image: str, mount: str = "/workspace",
                    max_bytes: int = DEFAULT_SEED_MAX_BYTES) -> list[str]:
        """Copy the project files of ``directory`` into a volume through a container that is created but
        never started; returns the warnings (links left out).

        Which files, links and the size cap: :mod:`executors.workspace_seed`. The listing is checked against
        ``max_bytes`` before any container exists (:class:`SeedTooLarge`).
        """
        plan = plan_seed(directory, max_bytes)
        for warning in plan.warnings:
            log.warning(warning)
        # Never started, yet held to the job containers' rules (and more: no capability at all).
        container = self.client.containers.create(image, command=["true"], network_mode="none",
                                                  security_opt=["no-new-privileges"], cap_drop=["ALL"],
                                                  labels={LABEL_WORKER: self.worker_id},
                                                  volumes={name: {"bind": mount, "mode": "rw"}})
        try:
            with tempfile.TemporaryFile() as archive:
                write_seed_archive(plan, archive, max_bytes)
                archive.seek(0)
                container.put_archive(mount, archive)
        finally:
            self._remove(container)
        return plan.warnings

    def volume_files(self, name: str, image: str, mount: str, globs: list[str], limits: HashLimits) -> dict[str, str]:
        """``{path: hash}`` of the files of volume ``name`` matching ``globs`` (``Executor.volume_files``), read
        through a container that mounts it read-only and is never started."""
        try:
            container = self.client.containers.create(
                image, command=["true"], network_mode="none", security_opt=["no-new-privileges"], cap_drop=["ALL"],
                labels={LABEL_WORKER: self.worker_id},
                mounts=[Mount(mount, name, type="volume", read_only=True, no_copy=True)])
        except _ENGINE_ERRORS as exc:
            raise self.engine_error(f"reading volume {name}", exc) from exc
        try:
            return hash_matching(ContainerFiles(self.client.api, container.id or container.name, mount), globs, limits)
        except _ENGINE_ERRORS as exc:
            raise self.engine_error(f"reading volume {name}", exc) from exc
        finally:
            self._remove(container)

    def remove_volume(self, name: str) -> None:
        """Remove a volume; a missing one is fine, one still in use is logged."""
        try:
            self.client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        except (*_ENGINE_ERRORS, EngineUnavailable) as exc:  # in use, or the engine failed or did not answer
            log.error("could not remove volume %s: %s", name, exc)

    def leftover_containers(self) -> list[LeftoverContainer]:
        """Every container labelled with this worker id, running or not (``Executor.leftover_containers``)."""
        try:
            found = self.client.containers.list(all=True, filters={"label": f"{LABEL_WORKER}={self.worker_id}"},
                                                ignore_removed=True)
        except _ENGINE_ERRORS as exc:
            raise self.engine_error("listing the containers of this worker", exc) from exc
        return [LeftoverContainer(container.id or container.name, container.labels.get(LABEL_JOB),
                                  dict(container.labels), container.labels.get(LABEL_SERVICE_OF))
                for container in found]

    def captured_output(self, container_id: str, tail_bytes: int) -> bytes:
        """The engine's copy of a container's output, its tail from a whole line (``Executor.captured_output``)."""
        try:
            output = self.client.api.logs(container_id, stdout=True, stderr=True)
        except docker.errors.NotFound as exc:
            raise ContainerLost(f"container {container_id[:12]} is gone: {exc.explanation or exc}") from exc
        except _ENGINE_ERRORS as exc:
            raise self.engine_error(f"reading the output of container {container_id[:12]}", exc) from exc
        return whole_line_tail(output, tail_bytes)

    def remove_container(self, container_id: str) -> None:
        """Force-remove a container with its anonymous volumes; a missing one is fine."""
        try:
            self.client.api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except _ENGINE_ERRORS as exc:
            raise self.engine_error(f"removing container {container_id[:12]}", exc) from exc

    def leftover_volumes(self) -> list[str]:
        """The names of the volumes labelled with this worker id (``Executor.leftover_volumes``)."""
        try:
            volumes = self.client.volumes.list(filters={"label": f"{LABEL_WORKER}={self.worker_id}"})
        except _ENGINE_ERRORS as exc:
            raise self.engine_error("listing the volumes of this worker", exc) from exc
        return [volume.name for volume in volumes]

    def leftover_networks(self) -> list[LeftoverNetwork]:
        """The job networks labelled with this worker id (``Executor.leftover_networks``)."""
        try:
            networks = self.client.networks.list(filters={"label": f"{LABEL_WORKER}={self.worker_id}"})
        except _ENGINE_ERRORS as exc:
            raise self.engine_error("listing the networks of this worker", exc) from exc
        return [LeftoverNetwork(network.name, (network.attrs.get("Labels") or {}).get(LABEL_JOB))
                for network in networks]

    def remove_network(self, name: str) -> None:
        """Remove a job network; a missing one is fine, a failure is logged (``Executor.remove_network``)."""
        try:
            client = self.client
        except EngineUnavailable as exc:
            log.error("could not remove network %s: %s", name, exc)
            return
        remove_network(client, name)

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
        next_check = time.monotonic() + _ENGINE_CHECK_SECONDS
        while True:
            code = self._wait_step(container)
            if code is not None:
                return code, False, False
            if cancel.is_set():
                return self._stop(container), False, True
            if time.monotonic() >= deadline:
                return self._stop(container), True, False
            if time.monotonic() >= next_check:
                self._check_engine_answers()
                next_check = time.monotonic() + _ENGINE_CHECK_SECONDS

    def _check_engine_answers(self) -> None:
        """Fail the job when the engine no longer answers a ping within the deadline.

        ``wait`` timing out is normal while a job runs, so it cannot tell a wedged engine from a busy job.
        """
        try:
            self.client.ping()
        except _ENGINE_ERRORS as exc:
            raise self.engine_error("the Docker engine stopped answering while the job ran", exc) from exc

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
        """Force-remove ``container`` within the call deadline; if the engine fails, keep it for a later retry."""
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except _ENGINE_ERRORS as exc:
            log.error("could not remove container %s (retried later): %s", container.short_id, exc)
            with self._client_lock:
                self._unremoved.add(container.id or container.name)
            return  # the engine is failing: retrying the others now would only wait on it again
        self._retry_removals()

    def _retry_removals(self) -> None:
        with self._client_lock:
            pending, self._unremoved = self._unremoved, set()
        while pending:
            container_id = pending.pop()
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except _ENGINE_ERRORS:
                pending.add(container_id)
                break  # one deadline spent on a failing engine is enough: the rest waits for the next chance
        with self._client_lock:
            self._unremoved |= pending

    def remove_labelled(self, **label_values: str) -> int:
        """Force-remove every container with our labels (and the given label values); returns the count."""
        filters = [f"{LABEL_WORKER}={self.worker_id}"] + [f"{k}={v}" for k, v in label_values.items()]
        removed = 0
        for container in self.client.containers.list(all=True, filters={"label": filters}):
            self._remove(container)
            removed += 1
        return removed


def script_archive(script: str) -> bytes:
    """A tar holding the job's shell program, to extract into ``SCRIPT_DIR`` (giving ``SCRIPT_PATH``)."""
    data = script.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(posixpath.basename(SCRIPT_PATH))
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pump(stream: Any, splitter: LineSplitter) -> None:
    """Move the container's output into ``splitter`` a block at a time: whatever has arrived, up to
    ``_READ_BYTES``, read straight from the attach socket and demultiplexed at once (docker-py's iterator
    makes a few Python steps per docker frame, which is one write of the job: a few KiB)."""
    frames = FrameReader()
    sock = getattr(stream, "_sock", stream)  # a socket.SocketIO over a unix socket: recv from the socket itself
    try:
        while (block := docker.utils.socket.read(sock, _READ_BYTES)) != b"":
            if block:  # None: interrupted, read again
                splitter.feed(frames.payload(block))
    except Exception as exc:  # the stream dies with the engine; the wait loop reports that
        log.warning("log stream ended early: %s", exc)
    finally:
        _close(stream)


def _close(stream: Any) -> None:
    """Close the attach socket and the HTTP response docker-py keeps on it (``_response``)."""
    for closable in (stream, getattr(stream, "_response", None)):
        with contextlib.suppress(Exception):
            if closable is not None:
                closable.close()


def _is_read_timeout(exc: BaseException) -> bool:
    text = repr(exc)
    return isinstance(exc, requests.exceptions.ReadTimeout) or "Read timed out" in text


def _is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` means no answer in time (docker-py wraps some timeouts in other exception types)."""
    return isinstance(exc, requests.exceptions.Timeout) or "timed out" in repr(exc)
