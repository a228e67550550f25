"""A job is never late because Prefect is: it runs while the Prefect server is down, and its Prefect record
(flow run, task run, final state) catches up once the server is back."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cli.prefect_server import LocalPrefectServer
from tests.conftest import worker_env
from tests.support import Backend, WorkerProcess, final_log, free_port, statuses, wait_for


@pytest.mark.slow  # a Prefect server of its own, started twice: ~45 s
def test_job_runs_while_prefect_is_down_and_its_record_catches_up(backend: Backend, docker_client: object,
                                                                    tmp_path: Path) -> None:
    server = LocalPrefectServer(port=free_port(), log_path=tmp_path / "prefect.log",
                                env={"PREFECT_HOME": str(tmp_path / "prefect-home")})
    server.start(timeout=240)
    worker = WorkerProcess(worker_env(backend, WORKER_STATE_DIR=str(tmp_path / "state"),
                                      PREFECT_API_URL=server.api_url), tmp_path / "worker.log")
    try:
        worker.start()
        server.stop()
        job_id = backend.create_run([{"name": "offline", "script": ["echo ran without prefect"]}])["jobs"]["offline"]
        answer = backend.push_job(job_id, worker.url).json()
        assert answer["statusCode"] == 202, answer
        assert answer["body"]["flowRunId"] is None  # the answer waited a while for it, the job did not
        record = backend.wait_final(job_id, 60)
        assert statuses(record) == ["RUNNING", "SUCCESS"]
        assert "ran without prefect" in final_log(record)

        server.start(timeout=240)  # same port, same database: the job's record is written now
        flow_run_id = wait_for(lambda: httpx.get(f"{worker.url}/api/job/{job_id}").json().get("flowRunId"),
                               60, 0.5, "the job's flow run created once Prefect is back")

        def final_states() -> tuple[str, str] | None:
            flow_run = httpx.get(f"{server.api_url}/flow_runs/{flow_run_id}").json()
            tasks = httpx.post(f"{server.api_url}/task_runs/filter",
                               json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
            if not tasks or flow_run["state_type"] != "COMPLETED":
                return None
            return flow_run["state_type"], tasks[0]["state_type"]

        assert wait_for(final_states, 60, 0.5, "the flow run and task run Completed") == ("COMPLETED", "COMPLETED")
    finally:
        worker.stop()
        server.stop()
