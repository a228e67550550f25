"""BackendClient against real reference backends over loopback HTTP: every call, refusals, retries, faults."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.backend_client import BackendClient, BackendRejected, BackendRequestInvalid, BackendUnavailable
from core.errors import is_retryable
from core.http_deadline import DeadlineTransport
from core.models import ExecutionStatus, JobStatusUpdate, LogChunk
from reference_backend.server import BackendServer
from tests.support import TEST_IMAGE, free_port, raised


class CountingTransport(DeadlineTransport):
    """The client's real HTTP transport, counting the requests it sends (to see retries)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return super().handle_request(request)


def _server(path: Path, **options: Any) -> Iterator[BackendServer]:
    with BackendServer(path, **options) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendServer]:
    yield from _server(tmp_path_factory.mktemp("backend"))


@pytest.fixture(scope="module")
def object_status_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendServer]:
    yield from _server(tmp_path_factory.mktemp("backend-object-status"), status_as_object=True)


@pytest.fixture(scope="module")
def no_live_logs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendServer]:
    yield from _server(tmp_path_factory.mktemp("backend-no-live-logs"), live_logs=False)


@pytest.fixture
def admin(server: BackendServer) -> Iterator[httpx.Client]:
    """The backend's admin API; faults are reset after each test."""
    with httpx.Client(base_url=server.url + "/admin", timeout=10) as http:
        yield http
        http.delete("/faults").raise_for_status()


@pytest.fixture
def client(server: BackendServer) -> Iterator[BackendClient]:
    backend = BackendClient(server.api_url, retry_seconds=5)
    yield backend
    backend.close()


def create_run(server: BackendServer, jobs: list[dict[str, Any]], **run: Any) -> dict[str, Any]:
    jobs = [{"dockerImage": TEST_IMAGE, "script": ["true"], **job} for job in jobs]
    answer = httpx.post(f"{server.url}/admin/pipeline-runs", json={"name": "client-test", "jobs": jobs, **run})
    answer.raise_for_status()
    created: dict[str, Any] = answer.json()
    return created


def one_job(server: BackendServer, name: str = "only", **job: Any) -> str:
    execution_id: str = create_run(server, [{"name": name, **job}])["jobs"][name]
    return execution_id


def report(server: BackendServer, execution_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/admin/job-executions/{execution_id}")
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def test_get_job_execution_reads_the_jackson_dto(server: BackendServer, client: BackendClient) -> None:
    execution_id = one_job(server, name="build", script=["echo hi", "make"], env={"A": "1"},
                           workingDir="sub", timeoutSeconds=30, stageOrder=2)
    dto = client.get_job_execution(execution_id)
    assert str(dto.id) == execution_id
    assert dto.status is ExecutionStatus.PENDING and dto.stage_order == 2
    assert dto.job.name == "build" and dto.job.docker_image == TEST_IMAGE
    assert dto.job.script == ["echo hi", "make"] and dto.job.env == {"A": "1"}
    assert dto.job.working_dir == "sub" and dto.job.timeout_seconds == 30
    assert dto.job.created_at is not None


def test_is_local_arrives_as_local(server: BackendServer, client: BackendClient) -> None:
    execution_id = create_run(server, [{"name": "j"}], local=True, commitHash="abc123")["jobs"]["j"]
    dto = client.get_job_execution(execution_id)
    assert dto.is_local is True and dto.commit_hash == "abc123"


def test_dependencies_and_pipeline_jobs(server: BackendServer, client: BackendClient) -> None:
    run = create_run(server, [{"name": "a"}, {"name": "b", "needs": ["a"]}, {"name": "c", "needs": ["a", "b"]}])
    ids = run["jobs"]
    assert client.get_job_dependencies(ids["a"]) == []
    assert client.get_job_dependencies(ids["b"]) == [uuid.UUID(ids["a"])]
    assert client.get_job_dependencies(ids["c"]) == [uuid.UUID(ids["a"]), uuid.UUID(ids["b"])]
    jobs = client.get_pipeline_jobs(run["pipelineExecutionId"])
    assert [str(job.id) for job in jobs] == [ids["a"], ids["b"], ids["c"]]
    assert [job.job.name for job in jobs] == ["a", "b", "c"]
    assert {str(job.pipeline_execution_id) for job in jobs} == {run["pipelineExecutionId"]}


def test_status_updates_are_recorded_and_read_back(server: BackendServer, client: BackendClient) -> None:
    execution_id = one_job(server)
    assert client.get_job_status(execution_id) is ExecutionStatus.PENDING
    client.update_job_status(JobStatusUpdate(job_execution_id=uuid.UUID(execution_id),
                                             status=ExecutionStatus.RUNNING, attempt=1))
    assert client.get_job_status(execution_id) is ExecutionStatus.RUNNING
    logs = "$ true\n"
    client.update_job_status(JobStatusUpdate(
        job_execution_id=uuid.UUID(execution_id), status=ExecutionStatus.SUCCESS, logs=logs, exit_code=0,
        attempt=1, log_bytes=len(logs), log_sha256=hashlib.sha256(logs.encode()).hexdigest()))
    assert client.get_job_status(execution_id) is ExecutionStatus.SUCCESS
    record = report(server, execution_id)
    assert [entry["status"] for entry in record["history"]] == ["RUNNING", "SUCCESS"]
    final = record["history"][-1]
    assert final["logs"] == logs and final["exitCode"] == 0 and final["logBytes"] == len(logs)
    assert final["logSha256"] == hashlib.sha256(logs.encode()).hexdigest()
    assert record["violations"] == []


def test_status_read_in_object_form(object_status_server: BackendServer) -> None:
    execution_id = one_job(object_status_server)
    raw = httpx.get(f"{object_status_server.api_url}/jobs/{execution_id}/status").json()
    assert raw == {"status": "PENDING"}  # the server really answers the object form
    backend = BackendClient(object_status_server.api_url, retry_seconds=5)
    try:
        assert backend.get_job_status(execution_id) is ExecutionStatus.PENDING
        backend.update_job_status(JobStatusUpdate(job_execution_id=uuid.UUID(execution_id),
                                                  status=ExecutionStatus.CANCELED))
        assert backend.get_job_status(execution_id) is ExecutionStatus.CANCELED
    finally:
        backend.close()


def test_unknown_job_is_rejected_with_the_backend_message(server: BackendServer) -> None:
    unknown = uuid.uuid4()
    transport_calls = CountingTransport()
    counted = BackendClient(server.api_url, retry_seconds=5, transport=transport_calls)
    error, _ = raised(BackendRejected, counted, lambda c: c.get_job_execution(unknown))
    assert error.status_code == 404
    assert f"job execution {unknown} not found" in str(error)
    assert "GET /jobs/" in str(error) and "HTTP 404" in str(error)
    assert not is_retryable(error)
    assert transport_calls.requests == 1  # a 4xx is not retried


def test_unknown_job_status_update_is_rejected(client: BackendClient) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(BackendRejected) as exc:
        client.update_job_status(JobStatusUpdate(job_execution_id=unknown, status=ExecutionStatus.RUNNING))
    assert exc.value.status_code == 404 and f"job execution {unknown} not found" in str(exc.value)


def test_live_log_chunks_are_sent(server: BackendServer, client: BackendClient) -> None:
    execution_id = one_job(server)
    chunks = [LogChunk(job_execution_id=uuid.UUID(execution_id), seq=0, offset=0, lines=["$ true", "one"]),
              LogChunk(job_execution_id=uuid.UUID(execution_id), seq=1, offset=11, lines=["two"])]
    assert all(client.send_log_chunk(chunk) for chunk in chunks)
    assert report(server, execution_id)["logChunks"] == [
        {"seq": 0, "offset": 0, "lines": ["$ true", "one"]}, {"seq": 1, "offset": 11, "lines": ["two"]}]


def test_log_chunk_is_declined_without_live_logs(no_live_logs_server: BackendServer) -> None:
    execution_id = one_job(no_live_logs_server)
    backend = BackendClient(no_live_logs_server.api_url, retry_seconds=5)
    try:
        chunk = LogChunk(job_execution_id=uuid.UUID(execution_id), seq=0, offset=0, lines=["x"])
        assert backend.send_log_chunk(chunk) is False
    finally:
        backend.close()


def test_bad_log_chunk_is_still_an_error(server: BackendServer, client: BackendClient) -> None:
    # Only 404/405 mean "no live logs"; any other refusal is raised with the backend's answer.
    execution_id = one_job(server)
    with pytest.raises(BackendRejected) as exc:
        client.send_log_chunk(LogChunk(job_execution_id=uuid.UUID(execution_id), seq=-1, offset=0, lines=[]))
    assert exc.value.status_code == 400 and "seq" in exc.value.body


def test_artifact_upload_round_trips_bytes(server: BackendServer, client: BackendClient) -> None:
    execution_id = one_job(server)
    content = bytes(range(256)) * 300 + b"\r\n\x00end"
    client.upload_artifact(execution_id, "reports/out.bin", content)
    client.upload_artifact(uuid.UUID(execution_id), "empty.txt", b"")
    stored = httpx.get(f"{server.url}/admin/job-executions/{execution_id}/artifacts/reports/out.bin")
    assert stored.status_code == 200 and stored.content == content
    assert report(server, execution_id)["artifacts"] == [
        {"name": "empty.txt", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()},
        {"name": "reports/out.bin", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}]


def test_unsafe_artifact_path_is_rejected(server: BackendServer, client: BackendClient) -> None:
    execution_id = one_job(server)
    with pytest.raises(BackendRejected) as exc:
        client.upload_artifact(execution_id, "../escape.txt", b"x")
    assert exc.value.status_code == 400


def test_transient_503s_are_retried_until_success(server: BackendServer, admin: httpx.Client) -> None:
    execution_id = one_job(server)
    transport = CountingTransport()
    backend = BackendClient(server.api_url, retry_seconds=20, transport=transport)
    admin.post("/faults", json={"failRate": 0.5, "seed": 1234}).raise_for_status()
    try:
        for _ in range(8):
            assert backend.get_job_status(execution_id) is ExecutionStatus.PENDING
        backend.update_job_status(JobStatusUpdate(job_execution_id=uuid.UUID(execution_id),
                                                  status=ExecutionStatus.RUNNING))
    finally:
        backend.close()
    injected = admin.get("/faults").json()["injected"]
    assert injected >= 1
    assert transport.requests == 9 + injected  # every 503 was followed by one retry
    assert [entry["status"] for entry in report(server, execution_id)["history"]] == ["RUNNING"]


def test_short_outage_is_ridden_out(server: BackendServer, admin: httpx.Client) -> None:
    execution_id = one_job(server)
    backend = BackendClient(server.api_url, retry_seconds=15)
    admin.post("/faults", json={"downForSeconds": 1}).raise_for_status()
    began = time.monotonic()
    try:
        assert backend.get_job_status(execution_id) is ExecutionStatus.PENDING
    finally:
        backend.close()
    assert time.monotonic() - began >= 0.9
    assert admin.get("/faults").json()["injected"] >= 2


def test_outage_longer_than_retry_window_is_unavailable(server: BackendServer, admin: httpx.Client) -> None:
    execution_id = one_job(server)
    transport = CountingTransport()
    backend = BackendClient(server.api_url, retry_seconds=1.5, transport=transport)
    admin.post("/faults", json={"downForSeconds": 30}).raise_for_status()
    error, took = raised(BackendUnavailable, backend, lambda c: c.get_job_status(execution_id))
    assert took < 5
    assert transport.requests >= 2
    assert "HTTP 503" in str(error) and f"/jobs/{execution_id}/status" in str(error)
    assert is_retryable(error)


def test_connection_refused_is_retried_then_unavailable() -> None:
    transport = CountingTransport()
    backend = BackendClient(f"http://127.0.0.1:{free_port()}/api", retry_seconds=1.5, transport=transport)
    error, took = raised(BackendUnavailable, backend, lambda c: c.get_job_execution(uuid.uuid4()))
    assert took < 5
    assert transport.requests >= 2
    assert "ConnectError" in str(error)


def test_awkward_file_names_arrive_as_named(server: BackendServer, client: BackendClient) -> None:
    # Quotes, CR/LF and ';' would break a plain filename="..."; these go as filename*=UTF-8''<pct>.
    execution_id = one_job(server)
    names = {'q"uote;x\r\n.txt': 'q"uote;x\r\n.txt', "déjà/中.txt": "déjà/中.txt", "50%.txt": "50%.txt",
             "plain/a b.txt": "plain/a b.txt", b"bad\xffname": "bad%FFname"}
    for sent in names:
        client.upload_artifact(execution_id, sent, b"x")
    assert sorted(a["name"] for a in report(server, execution_id)["artifacts"]) == sorted(names.values())


def test_upload_streams_a_file_and_a_missing_file_is_our_error(server: BackendServer, client: BackendClient,
                                                             tmp_path: Path) -> None:
    execution_id = one_job(server)
    content = bytes(range(256)) * 8192  # 2 MiB, sent in blocks from disk
    (tmp_path / "big.bin").write_bytes(content)
    client.upload_artifact(execution_id, "big.bin", tmp_path / "big.bin")
    stored = httpx.get(f"{server.url}/admin/job-executions/{execution_id}/artifacts/big.bin")
    assert stored.content == content
    with pytest.raises(BackendRequestInvalid) as exc:
        client.upload_artifact(execution_id, "gone.bin", tmp_path / "gone.bin")
    assert "FileNotFoundError" in str(exc.value) and not is_retryable(exc.value)


def test_only_2xx_is_success(server: BackendServer, admin: httpx.Client) -> None:
    execution_id = one_job(server)
    admin.post("/faults", json={"answers": {"/api/job/status": 302}}).raise_for_status()
    transport = CountingTransport()
    backend = BackendClient(server.api_url, retry_seconds=1, transport=transport)
    running = JobStatusUpdate(job_execution_id=uuid.UUID(execution_id), status=ExecutionStatus.RUNNING)
    error, _ = raised(BackendUnavailable, backend, lambda c: c.update_job_status(running))
    assert "HTTP 302 to /login (not followed)" in str(error) and error.status_code == 302
    assert transport.requests >= 2  # retried, never followed
    assert report(server, execution_id)["history"] == []
