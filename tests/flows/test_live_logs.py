"""Live log chunks, big outputs with bounded memory, and secrets masked in every sink."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from tests.support import Backend, WorkerProcess, final_log, statuses, wait_for
from tests.worker_api.test_execute_job import run_one


def chunk_text(record: dict) -> str:
    return "".join(line + "\n" for chunk in record["logChunks"] for line in chunk["lines"])


def assert_chunks_complete(record: dict) -> None:
    chunks = record["logChunks"]
    assert [chunk["seq"] for chunk in chunks] == list(range(len(chunks)))
    offset = 0
    for chunk in chunks:
        assert chunk["offset"] == offset
        offset += sum(len(line.encode()) + 1 for line in chunk["lines"])
    final = record["history"][-1]
    assert offset == final["logBytes"]
    assert hashlib.sha256(chunk_text(record).encode()).hexdigest() == final["logSha256"]


def test_live_chunks_arrive_in_order_before_the_job_ends(backend: Backend, worker: WorkerProcess) -> None:
    job_id = backend.create_run([{"name": "ticker", "script": [
        "for i in $(seq 1 40); do echo tick $i; sleep 0.1; done"]}])["jobs"]["ticker"]
    backend.push_job(job_id, worker.url)
    early = wait_for(lambda: (rec := backend.job(job_id))["status"] == "RUNNING" and rec["logChunks"] and rec,
                     30, 0.05, "a live chunk while the job runs")
    assert any("tick" in line for chunk in early["logChunks"] for line in chunk["lines"])
    record = backend.wait_final(job_id)
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    assert len(record["logChunks"]) >= 2
    assert_chunks_complete(record)
    assert chunk_text(record) == final_log(record)


def test_backend_without_live_logs_gets_the_log_in_the_final_status(make_worker, tmp_path: Path) -> None:
    from reference_backend.server import BackendServer

    with BackendServer(tmp_path / "plain", live_logs=False) as server:
        plain = Backend(server.url)
        worker = make_worker(WORKER_BACKEND_URL=server.api_url)
        record = run_one(plain, worker, script=["for i in $(seq 1 30); do echo line $i; sleep 0.05; done"])
        assert statuses(record) == ["RUNNING", "SUCCESS"] and record["logChunks"] == []
        assert all(f"line {i}\n" in final_log(record) for i in range(1, 31))
        assert record["history"][-1]["logBytes"] == len(final_log(record).encode())


def _peak_rss_kib(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _worker_pid(worker: WorkerProcess) -> int:
    assert worker.process is not None
    return worker.process.pid


def test_fifty_megabytes_of_output_arrive_complete_with_bounded_memory(backend: Backend, make_worker) -> None:
    worker = make_worker(WORKER_LOG_TAIL_BYTES="200000")
    before = _peak_rss_kib(_worker_pid(worker))
    # 50 MB of numbered lines: 1,000,000 lines of 50 bytes.
    script = ["seq -w 1 1000000 | sed 's/.*/line & of the fifty megabyte log, padded..../'"]
    record = run_one(backend, worker, timeout=300, script=script)
    assert statuses(record) == ["RUNNING", "SUCCESS"]
    assert_chunks_complete(record)
    text = chunk_text(record)
    assert "line 0000001 of" in text and "line 1000000 of" in text and text.count("\n") >= 1_000_000
    assert record["history"][-1]["logBytes"] > 50_000_000
    assert "log truncated: first" in final_log(record) and len(final_log(record)) < 300_000
    growth_mib = (_peak_rss_kib(_worker_pid(worker)) - before) / 1024
    print(f"worker peak RSS growth while printing 50 MB: {growth_mib:.1f} MiB")
    assert growth_mib < 150, f"worker memory grew by {growth_mib:.0f} MiB for a 50 MB log"


def test_secrets_never_appear_in_any_log_sink(backend: Backend, worker: WorkerProcess) -> None:
    secret = "hunter2-very-secret-value"
    record = run_one(backend, worker, env={"API_TOKEN": secret, "DB_PASSWORD": "pw-" + secret, "PLAIN": "visible"},
                     script=["echo token=$API_TOKEN", "echo pw=$DB_PASSWORD plain=$PLAIN",
                             "echo $API_TOKEN >&2", f"test \"$API_TOKEN\" = {secret}"])
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)
    log = final_log(record)
    assert "token=[MASKED]" in log and "pw=[MASKED] plain=visible" in log
    assert secret not in log and secret not in chunk_text(record)
    # The Prefect UI's logs of that flow run.
    view = httpx.get(f"{worker.url}/api/job/{record['id']}").json()

    def prefect_messages() -> str:
        logs = httpx.post(f"{os.environ['PREFECT_API_URL']}/logs/filter",
                          json={"logs": {"flow_run_id": {"any_": [view["flowRunId"]]}}, "limit": 200}).json()
        text = "\n".join(entry["message"] for entry in logs)
        return text if "token=[MASKED]" in text else ""

    messages = wait_for(prefect_messages, 30, 0.5, "the job's lines in the Prefect logs")
    assert secret not in messages
    assert secret not in worker.log_path.read_text()
