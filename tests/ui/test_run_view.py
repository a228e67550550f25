"""What the Prefect UI shows of our runs, read through the API calls the UI makes; fast (no browser, no engine).

The real flows run in this process against the session's Prefect server and the reference backend, with the
dummy executor (``executors/dummy.py``) playing each job. The browser test (``test_prefect_ui.py``) shows the
same on a real page.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow, get_run_logger, task

from core.settings import Settings
from executors.dummy import DummyExecutor
from flows.pipeline_flow import execute_pipeline
from flows.prefect_logging import HookBookkeepingFilter
from flows.services import Services, build_services, install
from tests.support import Backend, wait_for

DIAMOND: list[dict[str, Any]] = [
    {"name": "checkout", "env": {"DUMMY_ARTIFACTS": "src/main.c"}, "artifacts": ["src/main.c"]},
    {"name": "Lint_Code", "needs": ["checkout"], "allowFailure": True, "env": {"DUMMY_EXIT_CODE": "1"}},
    {"name": "unit", "needs": ["checkout"]},
    {"name": "package", "needs": ["Lint_Code", "unit"]},
]
HOOK_LINES = ("Running hook", "finished running successfully")


def prefect(method: str, path: str, **kwargs: Any) -> Any:
    answer = httpx.request(method, f"{os.environ['PREFECT_API_URL'].rstrip('/')}{path}", timeout=10, **kwargs)
    answer.raise_for_status()
    return answer.json()


@pytest.fixture()
def dummy_services(backend: Backend, tmp_path: Path) -> Iterator[Services]:
    """Services around the dummy executor, installed (which quiets Prefect's hook lines in this process)."""
    settings = Settings(backend_url=backend.api_url, state_dir=tmp_path / "state", retry_delay_seconds=0)
    services = install(build_services(settings, executor=DummyExecutor(settings.worker_id)))
    yield services
    services.close()


def flow_run_logs(flow_run_id: str, last: str) -> list[str]:
    """The flow run's log messages in the Prefect API, once the one containing ``last`` has arrived."""
    def delivered() -> list[str] | None:
        logs = prefect("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
        messages = [entry["message"] for entry in logs]
        return messages if any(last in message for message in messages) else None
    found: list[str] = wait_for(delivered, 20, 0.2, f"log {last!r} of flow run {flow_run_id} in the Prefect API")
    return found


def test_pipeline_graph_has_the_dag_edges_and_readable_artifacts(dummy_services: Services,
                                                                 backend: Backend) -> None:
    created = backend.create_run(DIAMOND)
    pipeline_id, jobs = created["pipelineExecutionId"], created["jobs"]
    state = execute_pipeline(pipeline_id, return_state=True)
    assert state.is_completed(), state
    flow_run_id = str(state.state_details.flow_run_id)

    graph = prefect("GET", f"/flow_runs/{flow_run_id}/graph-v2")
    nodes = {node_id: node for node_id, node in graph["nodes"]}
    parents = {node["label"]: {nodes[p["id"]]["label"] for p in node["parents"]} for node in nodes.values()}
    assert parents == {job["name"]: set(job.get("needs", [])) for job in DIAMOND}

    task_runs = prefect("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
    lint = next(run for run in task_runs if run["name"] == "Lint_Code")["state"]
    assert (lint["type"], lint["name"], lint["message"]) == ("COMPLETED", "AllowedFailure", "allowed to fail: exit 1")
    assert all(run["state"]["name"] == "Completed" for run in task_runs if run["name"] != "Lint_Code")
    assert backend.job(jobs["Lint_Code"])["status"] == "SUCCESS"

    artifacts = prefect("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    keys = sorted(artifact["key"] for artifact in artifacts)
    assert keys == ["checkout-artifacts", f"pipeline-{pipeline_id[:8]}-jobs"]


@task(name="hooked")
def hooked() -> None:
    get_run_logger().info("the task's own line")


def _hook(*_: Any) -> None:
    """A state hook: Prefect logs two bookkeeping lines around each call."""


@flow(name="hook-lines")
def hook_lines() -> None:
    hooked.with_options(on_running=[_hook], on_completion=[_hook])()


def test_hook_bookkeeping_lines_never_reach_the_run_logs(dummy_services: Services) -> None:
    assert sum(isinstance(f, HookBookkeepingFilter) for f in logging.getLogger("prefect.task_runs").filters) == 1
    install(dummy_services)  # a second install adds no second filter
    assert sum(isinstance(f, HookBookkeepingFilter) for f in logging.getLogger("prefect.task_runs").filters) == 1
    state = hook_lines(return_state=True)
    messages = flow_run_logs(str(state.state_details.flow_run_id), "Finished in state Completed")
    assert "the task's own line" in messages
    assert not [message for message in messages if any(line in message for line in HOOK_LINES)], messages
