"""The variables every job gets (GitLab's predefined ``CI_*`` variables, as far as this worker knows them).

Set in one place for both doors (the service and ``cicd-worker run``), from the JobExecutionDTO:

``CI=true``, ``CI_JOB_NAME``, ``CI_JOB_STAGE`` (the stage's position when no name is known; a local run
passes the stage's name as a job variable), ``CI_PIPELINE_ID`` (the pipeline execution id, when there is
one), ``CI_PROJECT_DIR`` (the workspace mount in the container) and ``CI_COMMIT_SHA`` (the DTO's
``commitHash``, when sent). As in GitLab, a variable of the job with the same name wins.
"""

from __future__ import annotations

from core.models import JobExecutionDTO


def predefined_env(job: JobExecutionDTO, workspace_mount: str) -> dict[str, str]:
    """The predefined variables of ``job``; absent values are left out, never set empty."""
    env = {"CI": "true", "CI_JOB_NAME": job.job.name, "CI_PROJECT_DIR": workspace_mount}
    if job.stage_order is not None:
        env["CI_JOB_STAGE"] = str(job.stage_order)
    if job.pipeline_execution_id is not None:
        env["CI_PIPELINE_ID"] = str(job.pipeline_execution_id)
    if job.commit_hash:
        env["CI_COMMIT_SHA"] = job.commit_hash
    return env


def with_predefined(job: JobExecutionDTO, workspace_mount: str) -> dict[str, str]:
    """The container env of ``job``: the predefined variables, overridden by the job's own."""
    return {**predefined_env(job, workspace_mount), **(job.job.env or {})}
