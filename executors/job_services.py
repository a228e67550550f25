"""A job's service containers (``JobSpec.services``): started before the job on a network of its own, removed after.

The network is a user-defined bridge made for one run of one job, ``internal`` (the engine gives it no route
out) and with no IPv4 address on the host's side of the bridge (``inhibit_ipv4``): an engine started with
``--iptables=false`` cannot enforce ``internal``, and without a host address there is no gateway to reach the
host or the outside through. The engine's DNS answers each service's alias inside it; a job stays as cut off
from everything else as on network ``none``.

Services get the job containers' limits (init, no new privileges, dropped capabilities, pids, memory and CPU)
but not a read-only root: a database writes where its image says. Before the job starts, each service must be
running and still running a moment later (``SETTLE_SECONDS``): one that exits at once fails the job naming it
(:class:`ServiceFailed`), an image missing under the pull policy is ``ImageUnavailable`` naming the service.
Whether a service *listens* yet is not waited for (an image need not declare its ports): a job retries its
first connection. Service containers carry the job's id under their own label, never the job label: start-up
recovery must not take one for the job's container.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Protocol

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.utils import parse_repository_tag

from core.errors import EngineUnavailable, ImageUnavailable, InfrastructureError
from core.models import ServiceDTO
from executors.base import JobSpec, LogSink, ServiceSpec
from executors.output import LineSplitter, whole_line_tail

log = logging.getLogger(__name__)

LABEL_SERVICE = "cicd.service"
"""On a service container: its alias."""
LABEL_SERVICE_OF = "cicd.service-of"
"""On a service container: the job execution it serves (``LeftoverContainer.service_of``)."""
NETWORK_OPTIONS = {"com.docker.network.bridge.inhibit_ipv4": "true",
                   "com.docker.network.bridge.enable_ip_masquerade": "false"}
SETTLE_SECONDS = 0.5
"""How long every service must stay running before the job starts: long enough to catch a bad command."""
OUTPUT_LINES = 100
"""Last lines of each service's output added to the log of a job that did not succeed."""
_OUTPUT_BYTES = 64 * 1024
_ALIAS_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NOT_ALIAS_CHARS = re.compile(r"[^a-z0-9-]+")
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class ServiceFailed(InfrastructureError):
    """A service container could not start or exited before the job began (not retried: its image or command
    is wrong, and waiting does not fix that)."""

    retryable = False


class ServiceEngine(Protocol):
    """What the services need of the executor that runs the job."""

    max_line_chars: int

    @property
    def client(self) -> docker.DockerClient: ...

    def ensure_image(self, image: str, policy: str) -> None: ...

    def engine_error(self, what: str, exc: BaseException) -> EngineUnavailable: ...


def valid_alias(alias: str) -> bool:
    """Whether ``alias`` is a host name label: lower-case letters, digits and inner hyphens, 1 to 63 of them."""
    return bool(_ALIAS_RE.fullmatch(alias))


def default_alias(image: str) -> str:
    """The alias of a service that names none: the image's last path component without tag or digest, made a
    host name (``registry:5000/team/my_db:16`` → ``my-db``)."""
    repository = parse_repository_tag(image.split("@", 1)[0])[0]
    name = _NOT_ALIAS_CHARS.sub("-", repository.rsplit("/", 1)[-1].lower()).strip("-")[:63].strip("-")
    return name or "service"


def service_specs(services: Iterable[ServiceDTO]) -> tuple[ServiceSpec, ...]:
    """The wire's services as specs, each with its alias (given or derived from the image)."""
    return tuple(ServiceSpec(image=s.image, alias=s.alias or default_alias(s.image), command=tuple(s.command or ()),
                             env=dict(s.env or {})) for s in services)


def check_aliases(services: Iterable[ServiceSpec]) -> None:
    """Refuse two services under one host name, or an alias that is not a host name (:class:`ServiceFailed`)."""
    seen: set[str] = set()
    for service in services:
        if not valid_alias(service.alias):
            raise ServiceFailed(f"service alias {service.alias!r} is not a valid host name")
        if service.alias in seen:
            raise ServiceFailed(f"two services share the alias {service.alias!r}: give each its own alias")
        seen.add(service.alias)


class JobServices:
    """The network and service containers of one run of one job; see the module docstring.

    ``start`` then, whatever happened, ``report`` (when the job did not succeed) and ``remove``.
    """

    def __init__(self, engine: ServiceEngine, spec: JobSpec, container_labels: dict[str, str],
                 network_labels: dict[str, str], nano_cpus: int | None) -> None:
        self.engine = engine
        self.spec = spec
        self.network = f"cicd-job-{uuid.uuid4().hex[:16]}"
        self._container_labels = {**container_labels, LABEL_SERVICE_OF: spec.job_execution_id}
        self._network_labels = network_labels
        self._nano_cpus = nano_cpus
        self._made_network = False
        self.containers: list[tuple[ServiceSpec, Container]] = []

    def start(self, cancel: threading.Event) -> bool:
        """Make the network and start every service on it; False when ``cancel`` came first."""
        try:
            self.engine.client.networks.create(self.network, driver="bridge", internal=True,
                                               options=NETWORK_OPTIONS, labels=self._network_labels)
            self._made_network = True
            for service in self.spec.services:
                if cancel.is_set():
                    return False
                container = self._create(service)
                self.containers.append((service, container))
                self._start(service, container)
            return not cancel.is_set() and self._settled(cancel)
        except _ENGINE_ERRORS as exc:
            raise self.engine.engine_error("could not start the job's services", exc) from exc

    def _create(self, service: ServiceSpec) -> Container:
        """The service's container, its image made present as the pull policy says (as the job's own)."""
        if self.spec.pull_policy == "always":
            self._ensure_image(service)
        try:
            return self._create_container(service)
        except docker.errors.ImageNotFound:
            self._ensure_image(service)
        return self._create_container(service)

    def _ensure_image(self, service: ServiceSpec) -> None:
        try:
            self.engine.ensure_image(service.image, self.spec.pull_policy)
        except ImageUnavailable as exc:
            raise type(exc)(f"service {service.alias!r}: {exc}") from exc

    def _create_container(self, service: ServiceSpec) -> Container:
        client = self.engine.client
        spec = self.spec
        return client.containers.create(
            service.image, command=list(service.command) or None, environment=service.env,
            labels={**self._container_labels, LABEL_SERVICE: service.alias}, hostname=service.alias,
            network=self.network,
            networking_config={self.network: client.api.create_endpoint_config(aliases=[service.alias])},
            init=True, security_opt=["no-new-privileges"], privileged=spec.privileged,
            cap_drop=list(spec.cap_drop) or None, cap_add=list(spec.cap_add) or None,
            pids_limit=spec.pids_limit, mem_limit=spec.memory_limit, nano_cpus=self._nano_cpus, detach=True)

    def _start(self, service: ServiceSpec, container: Container) -> None:
        try:
            container.start()
        except docker.errors.APIError as exc:  # a command not found is the service's fault, an engine error not
            if not (exc.is_client_error() or "OCI runtime" in str(exc.explanation or "")):
                raise
            raise ServiceFailed(f"service {service.alias!r} (image {service.image!r}) could not start: "
                                f"{exc.explanation or exc}") from exc

    def _settled(self, cancel: threading.Event) -> bool:
        """Every service still running ``SETTLE_SECONDS`` after the last start; False when canceled meanwhile."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            for service, container in self.containers:
                container.reload()
                if container.status != "running":
                    code = container.attrs.get("State", {}).get("ExitCode")
                    raise ServiceFailed(f"service {service.alias!r} (image {service.image!r}) exited with code "
                                        f"{code} before the job started")
            if time.monotonic() >= deadline:
                return True
            if cancel.wait(0.1):
                return False

    def report(self, log_sink: LogSink) -> None:
        """Add each service's last ``OUTPUT_LINES`` lines to the job's log, each prefixed with ``[alias]``."""
        for service, container in self.containers:
            try:
                output = self.engine.client.api.logs(container.id, stdout=True, stderr=True, tail=OUTPUT_LINES)
            except _ENGINE_ERRORS as exc:
                log_sink(f"[{service.alias}] (its output could not be read: {exc})")
                continue
            splitter = LineSplitter(functools.partial(_prefixed, log_sink, f"[{service.alias}] "),
                                    self.engine.max_line_chars)
            splitter.feed(whole_line_tail(output, _OUTPUT_BYTES))
            splitter.close()

    def remove(self) -> None:
        """Remove the service containers, then the network; failures are logged (start-up recovery removes
        what is left: both carry the worker's label)."""
        for service, container in self.containers:
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except _ENGINE_ERRORS as exc:
                log.error("could not remove service %s of job %s: %s", service.alias, self.spec.name, exc)
        if self._made_network:
            remove_network(self.engine.client, self.network)


def _prefixed(log_sink: LogSink, prefix: str, line: str) -> None:
    log_sink(prefix + line)


def remove_network(client: docker.DockerClient, name: str) -> None:
    """Remove network ``name``; a missing one is fine, a failure is logged (``Executor.remove_network``)."""
    try:
        client.networks.get(name).remove()
    except docker.errors.NotFound:
        pass
    except (*_ENGINE_ERRORS, EngineUnavailable) as exc:
        log.error("could not remove network %s: %s", name, exc)
