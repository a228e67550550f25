"""Artifacts reach the backend byte for byte; workspaces pass files along; escapes are refused."""

from __future__ import annotations

import hashlib

from tests.flows.test_pipeline_flow import run_pipeline
from tests.support import Backend, WorkerProcess, final_log, statuses
from tests.worker_api.test_execute_job import run_one


def stored(backend: Backend, job_id: str, name: str) -> bytes:
    answer = backend.http.get(f"/admin/job-executions/{job_id}/artifacts/{name}")
    answer.raise_for_status()
    return answer.content


def printed_sums(log: str) -> dict[str, str]:
    """``sha256sum`` lines the job printed: path -> digest."""
    sums = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].removeprefix("./")] = parts[0]
    return sums


def test_artifacts_round_trip_byte_for_byte(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, timeout=120, script=[
        "mkdir -p out/a/b dist",
        "head -c 4096 /dev/urandom > dist/blob.bin",
        "echo one > out/a/x.txt", "echo two > out/a/b/y.txt", "echo skip > out/a/b/z.log",
        "head -c 20000000 /dev/urandom > big.bin",
        "sha256sum dist/blob.bin out/a/x.txt out/a/b/y.txt big.bin",
    ], artifacts=["dist/blob.bin", "out/**/*.txt", "big.bin", "nothing-here/*"])
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)
    sums = printed_sums(final_log(record))
    assert {a["name"] for a in record["artifacts"]} == {"dist/blob.bin", "out/a/x.txt", "out/a/b/y.txt", "big.bin"}
    for artifact in record["artifacts"]:
        assert artifact["sha256"] == sums[artifact["name"]]
        assert hashlib.sha256(stored(backend, record["id"], artifact["name"])).hexdigest() == sums[artifact["name"]]
    assert next(a for a in record["artifacts"] if a["name"] == "big.bin")["size"] == 20_000_000
    assert "'nothing-here/*' matched no file" in final_log(record)
    assert f"big.bin (20000000 bytes, sha256 {sums['big.bin']})" in final_log(record)


def test_downstream_job_reads_upstream_file_from_workspace(backend: Backend, worker: WorkerProcess) -> None:
    result = run_pipeline(backend, worker, [
        {"name": "make", "script": ["pwd", "echo payload-42 > shared.txt"]},
        {"name": "use", "script": ["cat /workspace/shared.txt", "cat shared.txt"], "needs": ["make"]},
    ])
    use = result["records"]["use"]
    assert statuses(use) == ["RUNNING", "SUCCESS"]
    assert final_log(use).count("payload-42") == 2
    assert "/workspace" in final_log(result["records"]["make"])


def test_relative_working_dir_is_under_the_workspace(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, workingDir="sub/dir", script=["pwd", "echo x > f.txt"], artifacts=["f.txt"])
    assert "/workspace/sub/dir" in final_log(record)
    assert [a["name"] for a in record["artifacts"]] == ["f.txt"]


def test_traversal_is_refused(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, script=["echo hi > ok.txt"], artifacts=["../etc/passwd", "ok.txt"])
    assert statuses(record) == ["RUNNING", "FAILED"]
    assert "leaves the working directory" in final_log(record)
    record = run_one(backend, worker, script=["true"], artifacts=["/etc/passwd"])
    assert statuses(record) == ["RUNNING", "FAILED"] and "is absolute" in final_log(record)


def test_symlink_pointing_out_is_skipped_with_a_warning(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, script=["ln -s /etc/passwd leak", "ln -s ../../etc/hosts leak2"],
                     artifacts=["leak", "leak2"])
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    log = final_log(record)
    assert "'leak' is a link to '/etc/passwd', outside the working directory" in log
    assert "'leak2' is a link to '../../etc/hosts', outside the working directory" in log
    assert record["artifacts"] == []


def test_artifacts_over_the_file_limit_fail_the_job_clearly(backend: Backend, make_worker) -> None:
    worker = make_worker(WORKER_MAX_ARTIFACT_BYTES="1000")
    record = run_one(backend, worker, script=["head -c 5000 /dev/zero > big"], artifacts=["big"])
    assert statuses(record) == ["RUNNING", "FAILED"]
    assert "over the per-file limit of 1000 bytes" in final_log(record)


def test_artifacts_not_collected_after_failure_unless_asked(backend: Backend, worker: WorkerProcess) -> None:
    record = run_one(backend, worker, script=["echo r > report.txt", "exit 1"], artifacts=["report.txt"])
    assert statuses(record) == ["RUNNING", "FAILED"] and record["artifacts"] == []
    record = run_one(backend, worker, script=["echo r > report.txt", "exit 1"], artifacts=["report.txt"],
                     artifactsWhen="always")
    assert statuses(record) == ["RUNNING", "FAILED"] and [a["name"] for a in record["artifacts"]] == ["report.txt"]
