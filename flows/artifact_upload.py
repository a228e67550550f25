"""Uploading a job's collected artifacts to the backend, one file per request (contract)."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from executors.artifacts import ArtifactCollection
from executors.errors import ArtifactsLost
from flows.job_log import JobLog
from worker_api.backend_client import BackendClient, BackendError


def upload_artifacts(backend: BackendClient, job_execution_id: str, collection: ArtifactCollection,
                     job_log: JobLog) -> list[dict[str, object]]:
    """Upload every collected file, noting size and sha256 of each in the log.

    Raises :class:`ArtifactsLost` when collection found problems or the backend refused a file (its
    answer goes in the log): a job never reports success while its outputs were lost.
    """
    for warning in collection.warnings:
        job_log.note(f"warning: {warning}")
    for problem in collection.problems:
        job_log.note(f"artifact error: {problem}")
    rows: list[dict[str, object]] = []
    for artifact in collection.files:
        try:
            backend.upload_artifact(job_execution_id, artifact.relative_path, artifact.local_path.read_bytes())
        except BackendError as exc:
            job_log.note(f"artifact {artifact.relative_path} NOT uploaded: {exc}")
            raise ArtifactsLost(f"artifact {artifact.relative_path} was not accepted by the backend: {exc}") from exc
        job_log.note(f"artifact uploaded: {artifact.relative_path} ({artifact.size} bytes, sha256 {artifact.sha256})")
        rows.append({"path": artifact.relative_path, "bytes": artifact.size, "sha256": artifact.sha256})
    if collection.problems:
        raise ArtifactsLost("; ".join(collection.problems))
    return rows


def publish_artifact_table(job_execution_id: str, job_name: str, rows: list[dict[str, object]]) -> None:
    """A table artifact on the Prefect run listing what was uploaded."""
    if rows:
        create_table_artifact(table=rows, key=f"artifacts-{job_execution_id}",
                              description=f"Artifacts uploaded by job {job_name}")
