"""/metrics in Prometheus format reflects the jobs the worker ran."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Backend, WorkerProcess
from tests.worker_api.test_execute_job import run_one


def samples(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{worker.url}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def test_metrics_count_jobs_by_status_and_time_them(backend: Backend, worker: WorkerProcess) -> None:
    before = samples(worker)
    run_one(backend, worker, script=["true"])
    run_one(backend, worker, script=["exit 1"])
    after = samples(worker)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("cicd_jobs_total", status="SUCCESS") >= 1 and delta("cicd_jobs_total", status="FAILED") >= 1
    assert delta("cicd_job_duration_seconds_count") >= 2 and delta("cicd_job_queue_wait_seconds_count") >= 2
    assert after[("cicd_running_containers", ())] == 0
    assert ("cicd_outbox_depth", ()) in after and ("cicd_job_retries_total", (("kind", "infrastructure"),)) not in {
        k for k, v in after.items() if v < 0}
