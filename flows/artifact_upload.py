"""Uploading a job's collected artifacts to the backend, one file per request (contract), via the outbox.

The task waits (up to ``wait_seconds``) for the outbox to deliver them: a refusal (413 or another 4xx)
fails the job with the backend's answer in the log. When the backend is unavailable for longer, the
files stay queued (durably) ahead of the job's final status, and the outbox turns a queued SUCCESS into
FAILED should the backend refuse one later: a job never reports success while its outputs were lost.
"""

from __future__ import annotations

import hashlib
import re

from prefect.artifacts import create_table_artifact

from core.errors import ArtifactsLost
from core.multipart import name_bytes, readable_name
from core.outbox import DELIVERED, PENDING, Outbox
from executors.artifacts import ArtifactCollection
from flows.job_log import JobLog


def upload_artifacts(outbox: Outbox, job_execution_id: str, collection: ArtifactCollection,
                     job_log: JobLog, wait_seconds: float) -> list[dict[str, object]]:
    """Upload every collected file, noting size and sha256 of each in the log.

    Raises :class:`ArtifactsLost` when collection found problems or the backend refused a file (its
    answer goes in the log): a job never reports success while its outputs were lost.
    """
    for warning in collection.warnings:
        job_log.note(f"warning: {warning}")
    for problem in collection.problems:
        job_log.note(f"artifact error: {problem}")
    if collection.problems:
        raise ArtifactsLost("; ".join(collection.problems))
    queued = {outbox.put_artifact(job_execution_id, a.relative_path, a.local_path): a for a in collection.files}
    outcomes = outbox.wait(queued, wait_seconds)
    rows: list[dict[str, object]] = []
    refused = []
    for item_id, artifact in queued.items():
        outcome = outcomes[item_id]
        shown = readable_name(name_bytes(artifact.relative_path))  # a name that is not UTF-8 shows %XX
        described = f"{shown} ({artifact.size} bytes, sha256 {artifact.sha256})"
        if outcome == DELIVERED:
            job_log.note(f"artifact uploaded: {described}")
        elif outcome == PENDING:
            job_log.note(f"artifact queued (backend unavailable, delivered before the final status): {described}")
        else:
            job_log.note(f"artifact NOT accepted: {described}: {outcome}")
            refused.append(f"{shown}: {outcome}")
        rows.append({"path": job_log.mask(shown), "bytes": artifact.size, "sha256": artifact.sha256,
                     "delivery": outcome.split(":")[0]})
    if refused:
        raise ArtifactsLost(f"the backend refused artifacts: {'; '.join(refused)}")
    return rows


def publish_artifact_table(job_execution_id: str, job_name: str, rows: list[dict[str, object]]) -> None:
    """A table artifact on the Prefect run listing what was uploaded."""
    if rows:
        create_table_artifact(table=rows, key=artifact_key(job_name, "artifacts"),
                              description=f"Artifacts uploaded by job {job_name}")


_NOT_IN_KEY = re.compile(r"[^a-z0-9]+")
_MAX_SLUG_CHARS = 60


def artifact_key(name: str, suffix: str) -> str:
    """A readable Prefect artifact key ``<name>-<suffix>`` (keys allow only ``a-z``, ``0-9`` and ``-``).

    A name that is already such a slug stays as it is (``compile`` -> ``compile-artifacts``); any other gets a
    short hash of the exact name, so that two names of one run that slug alike (``Unit_Tests``, ``unit-tests``)
    never share a key (``unit-tests-1a2b3c-artifacts``). The same name in later runs gives the same key: Prefect
    keeps those as versions of one artifact.
    """
    slug = _NOT_IN_KEY.sub("-", name.lower()).strip("-")[:_MAX_SLUG_CHARS].strip("-")
    if slug != name or not slug:
        slug = f"{slug or 'job'}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
    return f"{slug}-{suffix}"
