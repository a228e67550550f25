"""The reference backend over real loopback HTTP: contract side, admin API, faults, server lifecycle."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from reference_backend.server import BackendServer
from reference_backend.violations import violations_for
from reference_backend.wire import ExecutionStatus, jackson_local_datetime

JOB = {"dockerImage": "alpine:3.20", "script": ["echo hi"]}


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendServer]:
    with BackendServer() as server:
        yield server


@pytest.fixture
def client(backend: BackendServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=backend.url, timeout=10) as http:
        yield http


def create_run(http: httpx.Client, jobs: list[dict[str, Any]], **run: Any) -> dict[str, Any]:
    answer = http.post("/admin/pipeline-runs", json={"name": "demo", **run, "jobs": jobs})
    assert answer.status_code == 200, answer.text
    created: dict[str, Any] = answer.json()
    return created


def one_job(http: httpx.Client, **job: Any) -> str:
    execution_id: str = create_run(http, [{"name": "only", **JOB, **job}])["jobs"]["only"]
    return execution_id


def send_status(http: httpx.Client, execution_id: str, status: str, **extra: Any) -> httpx.Response:
    return http.post("/api/job/status", json={"jobExecutionId": execution_id, "status": status, "logs": "", **extra})


def report(http: httpx.Client, execution_id: str) -> dict[str, Any]:
    answer = http.get(f"/admin/job-executions/{execution_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def upload(http: httpx.Client, execution_id: str, name: str, content: bytes) -> httpx.Response:
    return http.post("/api/job/artifact/upload", data={"jobId": execution_id}, files={"file": (name, content)})


# --- job executions in Jackson style -------------------------------------------------------------


def test_job_execution_is_written_like_jackson(client: httpx.Client) -> None:
    created = create_run(
        client,
        [
            {"name": "build", **JOB, "stageOrder": 0, "artifacts": ["out/*.bin"]},
            {
                "name": "test",
                **JOB,
                "stageOrder": 1,
                "needs": ["build"],
                "allowFailure": True,
                "workingDir": "src",
                "env": {"A": "1"},
                "timeoutSeconds": 30,
                "retries": 2,
            },
        ],
        commitHash="abc123",
        local=True,
    )
    run_id, ids = created["pipelineExecutionId"], created["jobs"]
    build = client.get(f"/api/jobs/{ids['build']}").json()
    test = client.get(f"/api/jobs/{ids['test']}").json()

    assert test["id"] == ids["test"] and test["pipelineExecutionId"] == run_id
    assert test["local"] is True and "isLocal" not in test
    assert test["_links"] == {}
    assert (test["status"], test["commitHash"], test["allowFailure"]) == ("PENDING", "abc123", True)
    assert (build["stageOrder"], test["stageOrder"]) == (0, 1)
    assert build["stageExecutionId"] != test["stageExecutionId"]
    assert test["startTime"] is None and test["completionTime"] is None
    job = test["job"]
    assert job["id"] == test["jobId"] and job["name"] == "test"
    assert job["dependencies"] == [build["jobId"]]  # definition ids, not execution ids
    assert (job["workingDir"], job["env"], job["timeoutSeconds"], job["retries"]) == ("src", {"A": "1"}, 30, 2)
    assert build["job"]["artifacts"] == ["out/*.bin"]
    # Null extension fields are left out, null base fields are written as null.
    assert not {"workingDir", "env", "timeoutSeconds", "retries"} & build["job"].keys()
    for stamp in (job["createdAt"], job["updatedAt"]):
        assert isinstance(stamp, list) and 5 <= len(stamp) <= 7 and all(isinstance(p, int) for p in stamp)
        assert datetime(*stamp[:5]).year >= 2024
    for ident in (test["id"], test["jobId"], test["stageExecutionId"], job["stageId"]):
        uuid.UUID(ident)


def test_jackson_local_datetime_drops_trailing_zeros() -> None:
    assert jackson_local_datetime(datetime(2025, 3, 5, 14, 30)) == [2025, 3, 5, 14, 30]
    assert jackson_local_datetime(datetime(2025, 3, 5, 14, 30, 7)) == [2025, 3, 5, 14, 30, 7]
    assert jackson_local_datetime(datetime(2025, 3, 5, 14, 30, 0, 5)) == [2025, 3, 5, 14, 30, 0, 5000]
    assert jackson_local_datetime(None) is None


def test_pipeline_jobs_in_creation_order(client: httpx.Client) -> None:
    created = create_run(client, [{"name": n, **JOB} for n in ("c", "a", "b")])
    jobs = client.get(f"/api/pipeline-executions/{created['pipelineExecutionId']}/jobs").json()
    assert [job["job"]["name"] for job in jobs] == ["c", "a", "b"]
    assert [job["id"] for job in jobs] == [created["jobs"][n] for n in ("c", "a", "b")]
    assert all(job["local"] is False and job["commitHash"] is None for job in jobs)


def test_unknown_ids_answer_404_with_json(client: httpx.Client) -> None:
    for path in (
        "/api/jobs/nope",
        "/api/jobs/nope/dependencies",
        "/api/jobs/nope/status",
        "/api/pipeline-executions/nope/jobs",
        "/admin/job-executions/nope",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["status"] == 404 and "nope" in answer.json()["message"]


# --- dependencies ------------------------------------------------------------------------------


def test_dependencies_resolve_needs_then_raw_ids(client: httpx.Client) -> None:
    ids = create_run(
        client,
        [
            {"name": "a", **JOB},
            {"name": "b", **JOB},
            {"name": "c", **JOB, "needs": ["b", "a"], "rawDependencies": ["missing-id"]},
        ],
    )["jobs"]
    assert client.get(f"/api/jobs/{ids['a']}/dependencies").json() == []
    assert client.get(f"/api/jobs/{ids['c']}/dependencies").json() == [ids["b"], ids["a"], "missing-id"]


def test_cycles_are_stored_not_refused(client: httpx.Client) -> None:
    ids = create_run(client, [{"name": "x", **JOB, "needs": ["y"]}, {"name": "y", **JOB, "needs": ["x"]}])["jobs"]
    assert client.get(f"/api/jobs/{ids['x']}/dependencies").json() == [ids["y"]]
    assert client.get(f"/api/jobs/{ids['y']}/dependencies").json() == [ids["x"]]


@pytest.mark.parametrize(
    "jobs",
    [
        [{"name": "a", **JOB}, {"name": "a", **JOB}],
        [{"name": "a", **JOB, "needs": ["ghost"]}],
        [{"name": "a", **JOB, "typo": 1}],
    ],
    ids=["duplicate-name", "unknown-need", "unknown-field"],
)
def test_bad_pipeline_runs_are_refused(client: httpx.Client, jobs: list[dict[str, Any]]) -> None:
    answer = client.post("/admin/pipeline-runs", json={"name": "bad", "jobs": jobs})
    assert answer.status_code == 400
    assert answer.json()["message"]


# --- status ------------------------------------------------------------------------------------


def test_status_is_a_bare_json_string_by_default(client: httpx.Client) -> None:
    execution_id = one_job(client)
    answer = client.get(f"/api/jobs/{execution_id}/status")
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.text == '"PENDING"'
    send_status(client, execution_id, "RUNNING")
    assert client.get(f"/api/jobs/{execution_id}/status").json() == "RUNNING"


def test_status_as_object_when_configured() -> None:
    with BackendServer(status_as_object=True) as server, httpx.Client(base_url=server.url) as http:
        execution_id = one_job(http)
        send_status(http, execution_id, "RUNNING")
        assert http.get(f"/api/jobs/{execution_id}/status").json() == {"status": "RUNNING"}


def test_status_history_records_every_update(client: httpx.Client) -> None:
    execution_id = one_job(client)
    send_status(client, execution_id, "RUNNING", attempt=1, startTime="2025-03-05T14:30:00Z", extra={"x": 1})
    final = {
        "exitCode": 0,
        "attempt": 1,
        "logBytes": 3,
        "logSha256": "ab" * 32,
        "completionTime": "2025-03-05T14:31:00Z",
    }
    assert send_status(client, execution_id, "SUCCESS", **final).status_code == 200
    assert send_status(client, execution_id, "SUCCESS", **final).status_code == 200  # at-least-once repeat

    seen = report(client, execution_id)
    assert [entry["status"] for entry in seen["history"]] == ["RUNNING", "SUCCESS", "SUCCESS"]
    assert seen["history"][0]["startTime"] == "2025-03-05T14:30:00Z"
    last = seen["history"][-1]
    assert {key: last[key] for key in final} == final
    assert all(entry["receivedAt"] for entry in seen["history"])
    assert seen["status"] == "SUCCESS" and seen["violations"] == []
    dto = client.get(f"/api/jobs/{execution_id}").json()
    assert dto["status"] == "SUCCESS" and dto["startTime"] and dto["completionTime"]


def test_canceled_without_running_is_fine(client: httpx.Client) -> None:
    execution_id = one_job(client)
    send_status(client, execution_id, "CANCELED")
    assert report(client, execution_id)["violations"] == []


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        (["SUCCESS"], ["final status SUCCESS without a prior RUNNING"]),
        (["RUNNING", "FAILED", "SUCCESS"], ["SUCCESS after final status FAILED"]),
        (["RUNNING", "SUCCESS", "RUNNING"], ["RUNNING after final status SUCCESS"]),
        (["RUNNING", "PENDING"], ["PENDING reported: a worker only reports RUNNING and final statuses"]),
    ],
)
def test_violations_are_recorded_not_refused(client: httpx.Client, sequence: list[str], expected: list[str]) -> None:
    execution_id = one_job(client)
    for status in sequence:
        assert send_status(client, execution_id, status).status_code == 200
    seen = report(client, execution_id)
    assert seen["violations"] == expected
    assert seen["status"] == sequence[-1]


def test_violation_rules_directly() -> None:
    running, success, canceled = ExecutionStatus.RUNNING, ExecutionStatus.SUCCESS, ExecutionStatus.CANCELED
    assert violations_for([], running) == []
    assert violations_for([running, running], success) == []
    assert violations_for([running, success], success) == []
    assert violations_for([running], canceled) == []
    assert violations_for([canceled], canceled) == []
    assert violations_for([running, success, ExecutionStatus.FAILED], success) == []


def test_bad_status_updates_are_refused(client: httpx.Client) -> None:
    execution_id = one_job(client)
    assert send_status(client, str(uuid.uuid4()), "RUNNING").status_code == 404
    bad = send_status(client, execution_id, "DONE")
    assert bad.status_code == 400 and bad.json()["field"] == "status"
    assert client.post("/api/job/status", json={"status": "RUNNING"}).status_code == 400
    assert report(client, execution_id)["history"] == []


def test_concurrent_updates_are_all_recorded(client: httpx.Client, backend: BackendServer) -> None:
    ids = list(create_run(client, [{"name": f"j{i}", **JOB} for i in range(8)])["jobs"].values())

    def hammer(execution_id: str) -> None:
        with httpx.Client(base_url=backend.url) as http:
            for status in ("RUNNING", "RUNNING", "SUCCESS"):
                assert send_status(http, execution_id, status).status_code == 200

    threads = [threading.Thread(target=hammer, args=(execution_id,)) for execution_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for execution_id in ids:
        seen = report(client, execution_id)
        assert [e["status"] for e in seen["history"]] == ["RUNNING", "RUNNING", "SUCCESS"]
        assert seen["violations"] == []


# --- artifacts ---------------------------------------------------------------------------------


def test_artifact_round_trip_byte_for_byte(client: httpx.Client, backend: BackendServer) -> None:
    execution_id = one_job(client)
    content = bytes(range(256)) * 4096 + b"\r\n\x00tail"  # ~1 MiB, every byte value, CRLF kept
    answer = upload(client, execution_id, "out/deep/nested/data.bin", content)
    assert answer.status_code == 200, answer.text
    sha = hashlib.sha256(content).hexdigest()
    assert answer.json() == {"name": "out/deep/nested/data.bin", "size": len(content), "sha256": sha}

    assert upload(client, execution_id, "./report.txt", b"ok\n").status_code == 200
    fetched = client.get(f"/admin/job-executions/{execution_id}/artifacts/out/deep/nested/data.bin")
    assert fetched.status_code == 200 and fetched.content == content
    on_disk = backend.data_dir / "artifacts" / execution_id / "out/deep/nested/data.bin"
    assert on_disk.read_bytes() == content
    assert report(client, execution_id)["artifacts"] == [
        {"name": "out/deep/nested/data.bin", "size": len(content), "sha256": sha},
        {"name": "report.txt", "size": 3, "sha256": hashlib.sha256(b"ok\n").hexdigest()},
    ]


@pytest.mark.parametrize("name", ["../escape.txt", "a/../../escape.txt", "/etc/escape.txt", "..", "a\\..\\b"])
def test_artifact_path_traversal_is_refused(client: httpx.Client, backend: BackendServer, name: str) -> None:
    execution_id = one_job(client)
    answer = upload(client, execution_id, name, b"evil")
    assert answer.status_code == 400, answer.text
    assert report(client, execution_id)["artifacts"] == []
    assert not list(backend.data_dir.rglob("escape.txt"))


def test_artifact_for_unknown_job_is_404(client: httpx.Client) -> None:
    assert upload(client, str(uuid.uuid4()), "a.txt", b"x").status_code == 404


def test_artifact_over_the_limit_is_413(tmp_path: Path) -> None:
    with BackendServer(tmp_path, max_artifact_bytes=1000) as server, httpx.Client(base_url=server.url) as http:
        execution_id = one_job(http)
        assert upload(http, execution_id, "fits.bin", b"x" * 1000).status_code == 200
        assert upload(http, execution_id, "big.bin", b"x" * 1001).status_code == 413
        assert [a["name"] for a in report(http, execution_id)["artifacts"]] == ["fits.bin"]
        assert not list((tmp_path / "artifacts").rglob("*big*"))


# --- live logs ---------------------------------------------------------------------------------


def test_live_log_chunks_are_deduplicated_and_ordered(client: httpx.Client) -> None:
    execution_id = one_job(client)

    def chunk(seq: int, offset: int, lines: list[str]) -> httpx.Response:
        body = {"jobExecutionId": execution_id, "seq": seq, "offset": offset, "lines": lines}
        return client.post("/api/job/logs", json=body)

    assert chunk(1, 6, ["line 2"]).json() == {"seq": 1, "duplicate": False}
    assert chunk(0, 0, ["line 1"]).status_code == 200
    assert chunk(1, 6, ["line 2"]).json() == {"seq": 1, "duplicate": True}
    assert report(client, execution_id)["logChunks"] == [
        {"seq": 0, "offset": 0, "lines": ["line 1"]},
        {"seq": 1, "offset": 6, "lines": ["line 2"]},
    ]


def test_backend_without_live_logs_answers_404() -> None:
    with BackendServer(live_logs=False) as server, httpx.Client(base_url=server.url) as http:
        execution_id = one_job(http)
        body = {"jobExecutionId": execution_id, "seq": 0, "offset": 0, "lines": ["x"]}
        assert http.post("/api/job/logs", json=body).status_code == 404


# --- faults ------------------------------------------------------------------------------------


def test_down_window_faults_api_but_never_admin(client: httpx.Client) -> None:
    execution_id = one_job(client)
    try:
        client.post("/admin/faults", json={"downForSeconds": 0.5})
        assert client.get(f"/api/jobs/{execution_id}").status_code == 503
        assert send_status(client, execution_id, "RUNNING").status_code == 503
        assert client.get(f"/admin/job-executions/{execution_id}").status_code == 200
        time.sleep(0.6)
        assert client.get(f"/api/jobs/{execution_id}").status_code == 200
    finally:
        client.delete("/admin/faults")
    assert report(client, execution_id)["history"] == []


def test_fail_rate_is_seeded_and_reproducible(client: httpx.Client) -> None:
    execution_id = one_job(client)

    def pattern() -> list[int]:
        client.post("/admin/faults", json={"failRate": 0.5, "seed": 42})
        codes = [client.get(f"/api/jobs/{execution_id}/status").status_code for _ in range(40)]
        client.delete("/admin/faults")
        return codes

    first = pattern()
    assert set(first) == {200, 503}
    assert pattern() == first
    assert client.get(f"/api/jobs/{execution_id}/status").status_code == 200
    assert client.get("/admin/faults").json()["injected"] == 0


# --- pushing to a worker -----------------------------------------------------------------------


class _RecordingWorker(BaseHTTPRequestHandler):
    """Stands in for the worker's HTTP endpoint: records each POST, answers 202."""

    received: list[tuple[str, str | None, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, self.headers.get("Authorization"), body))
        answer = json.dumps({"status": "QUEUED", "flowRunId": "flow-1"}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def worker_url() -> Iterator[str]:
    _RecordingWorker.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingWorker)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_sends_jackson_dto_and_pipeline_id(client: httpx.Client, worker_url: str) -> None:
    created = create_run(client, [{"name": "only", **JOB}])
    execution_id, run_id = created["jobs"]["only"], created["pipelineExecutionId"]

    answer = client.post(f"/admin/job-executions/{execution_id}/push", json={"workerUrl": worker_url, "token": "t0k"})
    assert answer.json() == {"statusCode": 202, "body": {"status": "QUEUED", "flowRunId": "flow-1"}}
    answer = client.post(f"/admin/pipeline-executions/{run_id}/push", json={"workerUrl": worker_url + "/"})
    assert answer.json()["statusCode"] == 202

    (job_path, auth, dto), (pipeline_path, no_auth, body) = _RecordingWorker.received
    assert (job_path, auth) == ("/api/job/execute", "Bearer t0k")
    assert dto == client.get(f"/api/jobs/{execution_id}").json()
    assert dto["local"] is False and dto["_links"] == {} and isinstance(dto["job"]["createdAt"], list)
    assert (pipeline_path, no_auth, body) == ("/api/pipeline/execute", None, {"pipelineExecutionId": run_id})


def test_push_to_unreachable_worker_is_502(client: httpx.Client) -> None:
    execution_id = one_job(client)
    answer = client.post(f"/admin/job-executions/{execution_id}/push", json={"workerUrl": "http://127.0.0.1:9"})
    assert answer.status_code == 502


# --- server lifecycle and CLI ------------------------------------------------------------------


def test_data_survives_a_restart_and_temp_dirs_are_removed(tmp_path: Path) -> None:
    with BackendServer(tmp_path) as first, httpx.Client(base_url=first.url) as http:
        execution_id = one_job(http)
        upload(http, execution_id, "kept.txt", b"kept")
    with BackendServer(tmp_path) as second, httpx.Client(base_url=second.url) as http:
        assert http.get(f"/admin/job-executions/{execution_id}/artifacts/kept.txt").content == b"kept"
        assert second.api_url == second.url + "/api"
    temporary = BackendServer().start()
    temporary.stop()
    temporary.stop()  # safe twice
    assert not temporary.data_dir.exists()


def test_command_line_entry_point(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a free port; the tiny race until the subprocess binds it is acceptable
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reference_backend",
            "--port",
            str(free_port),
            "--data-dir",
            str(tmp_path / "d"),
            "--status-as-object",
            "--log-level",
            "warning",
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{free_port}/admin/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{free_port}") as http:
            execution_id = one_job(http)
            assert http.get(f"/api/jobs/{execution_id}/status").json() == {"status": "PENDING"}
        assert (tmp_path / "d" / "backend.db").exists()
    finally:
        process.terminate()
        process.wait(10)
