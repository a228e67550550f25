"""The one error tree of the worker.

::

    WorkerError
    ├── JobFailure                 the user's job failed; retried only when the job asks for it
    │   ├── ScriptFailed           a script line exited non-zero (exit code kept)
    │   ├── JobTimedOut            the job ran past its timeout and was stopped
    │   └── ArtifactsLost          artifacts over a limit, escaping the working dir, or refused by the backend
    └── InfrastructureError        the runner broke; retried by default (``is_retryable``)
        ├── EngineUnavailable      Docker engine unreachable, answering errors, or not answering within
        │                          ``WORKER_DOCKER_TIMEOUT_SECONDS`` (a wedged engine)
        ├── ImageUnavailable       image missing under the pull policy, or the pull failed (not retried:
        │   │                      a missing image does not appear by waiting)
        │   └── ImageNotAllowed    image outside ``WORKER_ALLOWED_IMAGES``: refused before any engine call
        ├── ContainerLost          the container vanished while the job ran
        ├── ServiceFailed          a service container could not start or exited before the job began (not
        │                          retried; defined in ``executors.job_services``)
        ├── BackendError           the CI backend refused a call (4xx) or stayed unreachable
        │   (defined in ``core.backend_client``)
        └── ContainerLimitUnavailable  pool mode: the Prefect global concurrency limit is missing (not
            retried) or Prefect is unreachable (defined in ``flows.global_limit``)

Cancellation is a state, not an error: the executor returns a result with ``canceled=True``.
"""

from __future__ import annotations

import docker.errors
import requests.exceptions


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class JobFailure(WorkerError):
    """The user's job failed (its own fault, not the runner's)."""


class ScriptFailed(JobFailure):
    """A script line exited non-zero."""

    def __init__(self, exit_code: int, message: str | None = None) -> None:
        super().__init__(message or f"script failed with exit code {exit_code}")
        self.exit_code = exit_code


class JobTimedOut(JobFailure):
    """The job did not finish within its timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


class ArtifactsLost(JobFailure):
    """Artifacts could not be collected or the backend refused them: the job must not report success."""


class InfrastructureError(WorkerError):
    """Something under the job broke; retrying may help."""

    retryable = True


class EngineUnavailable(InfrastructureError):
    """The Docker engine could not be reached or failed a call."""


class ImageUnavailable(InfrastructureError):
    """The job's image is not present and may not, or could not, be pulled."""

    retryable = False


class ImageNotAllowed(ImageUnavailable):
    """The job's image matches none of the worker's allowed image patterns (not retried)."""


class ContainerLost(InfrastructureError):
    """The container disappeared while the job was running."""


_TRANSIENT_LIBRARY_ERRORS = (docker.errors.APIError, requests.exceptions.ConnectionError)


def is_retryable(exc: BaseException) -> bool:
    """Whether a task attempt that raised ``exc`` should be retried by default."""
    if isinstance(exc, InfrastructureError):
        return exc.retryable
    return isinstance(exc, _TRANSIENT_LIBRARY_ERRORS) and not isinstance(exc, docker.errors.ImageNotFound)
