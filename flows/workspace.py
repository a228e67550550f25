"""Workspaces: one Docker volume per pipeline run (or per job sent alone), mounted at ``/workspace``.

Jobs of the same pipeline run see what the jobs they depend on wrote, like GitLab's artifacts passed
along ``needs``. The volume is removed when the run ends unless ``WORKER_KEEP_WORKSPACES`` is set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from core.errors import InfrastructureError
from flows.services import current

log = logging.getLogger(__name__)


@contextlib.contextmanager
def workspace(name: str, labels: dict[str, str]) -> Iterator[str]:
    """Create the named volume for the duration of the block; yields its name.

    An engine that cannot create it now is not the end of the job: the container task that follows retries
    infrastructure failures, and its container create makes the volume (unlabelled, still removed here by name).
    """
    services = current()
    executor = services.executor
    try:
        executor.create_volume(name, labels)
    except InfrastructureError as exc:
        log.warning("workspace volume %s not created (the job's container attempts will retry): %s", name, exc)
    try:
        yield name
    finally:
        if not services.settings.keep_workspaces:
            executor.remove_volume(name)


def pipeline_workspace_name(pipeline_execution_id: str) -> str:
    return f"cicd-ws-{pipeline_execution_id}"


def job_workspace_name(job_execution_id: str) -> str:
    return f"cicd-ws-job-{job_execution_id}"
