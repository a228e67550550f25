"""A JobDTO with ``cache`` through the service: the first job execution saves it, the next one restores it."""

from __future__ import annotations

import uuid

from tests.support import Backend, WorkerProcess, final_log, statuses
from tests.worker_api.test_execute_job import run_one


def test_a_cache_saved_by_one_job_execution_is_restored_in_the_next(backend: Backend, worker: WorkerProcess) -> None:
    key = f"api-{uuid.uuid4().hex[:8]}"
    cache = {"key": key, "paths": ["deps/"], "policy": "pull-push"}
    script = ["test -f deps/lib || (mkdir -p deps && echo fetched-once > deps/lib)", "cat deps/lib"]
    first = run_one(backend, worker, script=script, cache=cache)
    assert statuses(first) == ["RUNNING", "SUCCESS"], final_log(first)
    assert f"[cicd-worker] cache {key}: not found" in final_log(first)
    assert f"[cicd-worker] cache {key}: saved 1 files (0.0 MB)" in final_log(first)

    second = run_one(backend, worker, script=["test -f deps/lib", "cat deps/lib"], cache=cache)
    log = final_log(second)
    assert statuses(second) == ["RUNNING", "SUCCESS"], log
    assert log.index(f"[cicd-worker] cache {key}: restored 1 files (0.0 MB)") < log.index("$ test -f deps/lib")
    assert "fetched-once" in log
