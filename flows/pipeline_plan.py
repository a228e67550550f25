"""Loading a pipeline run from the backend and planning it (the only I/O is in ``load_pipeline``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

import networkx as nx

from core.backend_client import BackendClient
from core.errors import WorkerError
from core.models import ExecutionStatus, JobExecutionDTO, JobStatusUpdate
from flows.job_log import WORKER_PREFIX
from flows.planning import JobNode, PlanningError, build_graph

log = logging.getLogger(__name__)

@dataclass
class PipelineRun:
    """The jobs of one pipeline run, their dependencies (execution ids) and the planned graph.

    Never a flow-run parameter: the jobs carry their env (see :mod:`flows.handoff`).
    """

    pipeline_execution_id: UUID
    jobs: dict[str, JobExecutionDTO]
    dependencies: dict[str, list[str]]
    graph: nx.DiGraph


def plan(pipeline_execution_id: UUID, jobs: list[JobExecutionDTO],
         dependencies: dict[str, list[str]]) -> PipelineRun:
    """Plan a run; raises :class:`flows.planning.PlanningError` naming the jobs when it is invalid."""
    nodes = [JobNode(id=str(job.id), name=job.job.name, stage_order=job.stage_order,
                     dependencies=tuple(dependencies.get(str(job.id), ())), when=job.job.when or "on_success")
             for job in jobs]
    graph = build_graph(nodes)
    return PipelineRun(pipeline_execution_id, {str(job.id): job for job in jobs}, dependencies, graph)


def fetch_pipeline(backend: BackendClient, pipeline_execution_id: UUID
                   ) -> tuple[list[JobExecutionDTO], dict[str, list[str]]]:
    """The run's jobs (one call) and each job's dependencies (one call per job, never per poll)."""
    jobs = backend.get_pipeline_jobs(pipeline_execution_id)
    if not jobs:
        raise PlanningError([f"pipeline run {pipeline_execution_id} has no jobs"], [])
    dependencies = {str(job.id): [str(dep) for dep in backend.get_job_dependencies(job.id)] for job in jobs}
    return jobs, dependencies


def load_pipeline(backend: BackendClient, pipeline_execution_id: UUID) -> PipelineRun:
    """Fetch and plan; an invalid run has every job reported ``FAILED`` with the reason, then raises."""
    jobs, dependencies = fetch_pipeline(backend, pipeline_execution_id)
    try:
        return plan(pipeline_execution_id, jobs, dependencies)
    except PlanningError as exc:
        report_refusal(backend, jobs, exc)
        raise


def report_refusal(backend: BackendClient, jobs: list[JobExecutionDTO], error: PlanningError) -> None:
    """Tell the backend that no job of an invalid run will run, so that it does not wait forever.

    Posted directly, not through the outbox: ``POST /api/pipeline/execute`` answers 422 only once the backend
    has these ``FAILED`` statuses. A backend that cannot take them within the client's retry window gets the
    422 answer all the same (the planning error is raised by the caller); the loss is logged loudly.
    """
    text = f"{WORKER_PREFIX} pipeline refused before anything ran:\n{error}\n"
    for job in jobs:
        try:
            backend.update_job_status(JobStatusUpdate(job_execution_id=job.id, status=ExecutionStatus.FAILED,
                                                      logs=text))
        except WorkerError as exc:
            log.error("could not report FAILED for job %s of a refused pipeline: %s", job.id, exc)
