"""Delivery cannot be stopped: every outbox item is delivered or set aside, against real HTTP servers.

The reference backend (with its fault knobs) and, for answers no backend would give on purpose (a drip,
a huge body), a tiny HTTP server speaking the real protocol on loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import metrics
from core.backend_client import BackendClient, BackendUnavailable
from core.delivery_policy import OutboxLimits
from core.models import ExecutionStatus, JobStatusUpdate, LogChunk
from core.outbox import Outbox, chunk_json
from reference_backend.server import BackendServer
from tests.conftest import worker_env
from tests.support import TEST_IMAGE, Backend, WorkerProcess, final_log, raised, statuses, wait_for

FAST = OutboxLimits(max_backoff=0.2, watchdog_seconds=0.2, stuck_after_seconds=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendServer]:
    with BackendServer(tmp_path_factory.mktemp("delivery-backend")) as running:
        yield running


@pytest.fixture()
def admin(server: BackendServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/admin", timeout=10) as http:
        yield http
        http.delete("/faults").raise_for_status()


@pytest.fixture()
def outbox(server: BackendServer, tmp_path: Path) -> Iterator[Outbox]:
    """A real outbox on the module's backend, not started yet (a test queues items first when it must)."""
    sender = BackendClient(server.api_url, timeout=2.0, retry_seconds=0)
    box = Outbox(tmp_path / "state", sender, FAST)
    yield box
    box.stop()
    sender.close()


def new_job(server: BackendServer) -> str:
    spec = {"name": "delivery", "jobs": [{"name": "j", "dockerImage": TEST_IMAGE, "script": ["true"]}]}
    answer = httpx.post(f"{server.url}/admin/pipeline-runs", json=spec)
    answer.raise_for_status()
    return str(answer.json()["jobs"]["j"])


def history(server: BackendServer, job_id: str) -> list[str]:
    return statuses(httpx.get(f"{server.url}/admin/job-executions/{job_id}").json())


def running(job_id: str) -> JobStatusUpdate:
    return JobStatusUpdate(job_execution_id=uuid.UUID(job_id), status=ExecutionStatus.RUNNING, attempt=1)


# -- items that cannot be sent ---------------------------------------------------------------------


def test_item_whose_build_raises_goes_dead_with_its_reason_and_later_items_flow(
        server: BackendServer, outbox: Outbox, tmp_path: Path) -> None:
    job_id = new_job(server)
    artifact = tmp_path / "report.txt"
    artifact.write_text("x")
    # Its stored file disappears (a disk cleaned up by hand): building the upload raises, every time.
    item = outbox.put_artifact(job_id, "report.txt", artifact)
    next(outbox.files.iterdir()).unlink()
    outbox.put_status(running(job_id))
    outbox.start()
    wait_for(lambda: history(server, job_id) == ["RUNNING"], 15, what="the status queued behind the bad item")
    stats = outbox.stats()
    assert stats["dead"] == 1 and stats["deadByCause"]["local"] == 1 and stats["depth"] == 0
    dead = stats["lastDead"][0]
    assert dead["id"] == item and dead["kind"] == "artifact" and "FileNotFoundError" in dead["error"]
    assert "3 failures on our side" in dead["error"]
    assert outbox.wait([item], 0)[item].startswith("rejected:")
    scraped = metrics.render(stats).decode()
    assert 'cicd_outbox_dead{cause="local"} 1.0' in scraped and "cicd_outbox_sender_up 1.0" in scraped


def test_final_success_behind_a_lost_artifact_becomes_failed(server: BackendServer, outbox: Outbox,
                                                           tmp_path: Path) -> None:
    job_id = new_job(server)
    (tmp_path / "a.bin").write_bytes(b"a")
    # Both queued before the sender looks, as by a job that stopped waiting for its uploads.
    outbox.put_artifact(job_id, "a.bin", tmp_path / "a.bin")
    next(outbox.files.iterdir()).unlink()
    outbox.put_status(JobStatusUpdate(job_execution_id=uuid.UUID(job_id), status=ExecutionStatus.SUCCESS,
                                      logs="ok\n"))
    outbox.start()
    record = wait_for(lambda: (r := httpx.get(f"{server.url}/admin/job-executions/{job_id}").json())["history"]
                      and r, 15, what="the final status")
    assert statuses(record) == ["FAILED"]
    assert "artifact a.bin not delivered" in final_log(record)


# -- only 2xx delivers -----------------------------------------------------------------------------


def test_redirect_is_retried_and_delivered_once_the_backend_stops_redirecting(
        server: BackendServer, admin: httpx.Client, outbox: Outbox) -> None:
    job_id = new_job(server)
    admin.post("/faults", json={"answers": {"/api/job/status": 302}}).raise_for_status()
    outbox.start().put_status(running(job_id))
    wait_for(lambda: admin.get("/faults").json()["injected"] >= 3, 15, what="three redirected attempts")
    assert history(server, job_id) == [] and outbox.stats()["depth"] == 1
    admin.delete("/faults").raise_for_status()
    wait_for(lambda: history(server, job_id) == ["RUNNING"], 15, what="the status after the redirects stop")
    assert outbox.stats()["dead"] == 0


def test_a_direct_call_answered_302_is_an_error(server: BackendServer, admin: httpx.Client) -> None:
    job_id = new_job(server)
    admin.post("/faults", json={"answers": {f"/api/jobs/{job_id}/status": 302}}).raise_for_status()
    client = BackendClient(server.api_url, retry_seconds=0)
    error, _ = raised(BackendUnavailable, client, lambda c: c.get_job_status(job_id))
    assert "HTTP 302" in str(error) and error.answered and error.status_code == 302


def test_chunks_are_counted_until_delivered_and_arrive_as_the_model_writes_them(
        server: BackendServer, outbox: Outbox) -> None:
    job_id = new_job(server)
    lines = ["plain", 'quote " and \\ backslash', "tab\tand\nnewline", "é😀", "lone \udc80 surrogate"]
    model = LogChunk(job_execution_id=uuid.UUID(job_id), seq=0, offset=0, lines=lines)
    assert json.loads(chunk_json(job_id, 0, 0, lines)) == model.to_wire()
    outbox.put_chunk_lines(job_id, 0, 0, lines)
    outbox.put_chunk(LogChunk(job_execution_id=uuid.UUID(job_id), seq=1, offset=99, lines=["two"]))
    assert outbox.undelivered_chunks(job_id) == 2  # not started: both wait
    outbox.start()
    assert outbox.flush(15) and outbox.undelivered_chunks(job_id) == 0
    chunks = httpx.get(f"{server.url}/admin/job-executions/{job_id}").json()["logChunks"]
    assert [chunk["lines"] for chunk in chunks] == [[*lines[:-1], "lone \ufffd surrogate"], ["two"]]


# -- whole-call deadline and answer size -----------------------------------------------------------


class _Raw(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture()
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A loopback HTTP server whose answer is written by hand: ``start(answer)`` returns its base URL."""
    servers: list[_Raw] = []

    def start(answer: Callable[[socket.socket], None]) -> str:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)  # the request (small: a GET)
                with contextlib.suppress(OSError):  # the client gave up: what the tests want
                    answer(self.request)

        running = _Raw(("127.0.0.1", 0), Handler)
        threading.Thread(target=running.serve_forever, daemon=True).start()
        servers.append(running)
        return f"http://127.0.0.1:{running.server_address[1]}/api"

    yield start
    for running in servers:
        running.shutdown()
        running.server_close()


def _drip(data: bytes, every: float) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            time.sleep(every)
    return answer


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n" + b'"' + b"x" * 198 + b'"',
    b"HTTP/1.1 200 OK\r\n" + b"X-Padding: " + b"y" * 300 + b"\r\n\r\n",
], ids=["drip-body", "drip-headers"])
def test_slow_drip_answer_is_abandoned_within_the_deadline(raw_server: Any, answer: bytes) -> None:
    base = raw_server(_drip(answer, 0.05))  # a byte every 50 ms: no single read ever waits 1.5 s
    client = BackendClient(base, timeout=1.5, retry_seconds=0)
    error, took = raised(BackendUnavailable, client, lambda c: c.get_job_status(uuid.uuid4()))
    assert took < 2.5, f"the call took {took:.1f} s, deadline 1.5 s"
    assert "1.5 s" in str(error)


def test_huge_answer_is_refused_naming_the_size(raw_server: Any) -> None:
    declared = raw_server(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 65536))

    def chunked(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"z" * 65536
        for _ in range(64):  # 4 MiB, never announced
            conn.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        conn.sendall(b"0\r\n\r\n")

    undeclared = raw_server(chunked)
    for base, expected in ((declared, "50000000 bytes refused (more than 1048576)"),
                           (undeclared, "refused: more than 1048576 bytes")):
        client = BackendClient(base, timeout=5, retry_seconds=0, max_answer_bytes=1024 * 1024)
        error, _ = raised(BackendUnavailable, client, lambda c: c.get_job_execution(uuid.uuid4()))
        assert expected in str(error) and error.answered


# -- a supervised sender ---------------------------------------------------------------------------


def _kill(thread: threading.Thread) -> None:
    """Raise SystemExit inside ``thread`` (what an unforeseen BaseException would do to it).

    Only while the sender idles in its condition wait: an asynchronous exception landing between a lock's acquire
    and its ``with`` block would leave the outbox lock held for ever, which no real exception can do.
    """
    assert thread.ident is not None
    ident = thread.ident
    wait_for(lambda: sys._current_frames()[ident].f_code.co_name == "wait", 10, 0.001, "the sender idle")
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    assert done == 1


def test_killed_sender_shows_down_then_is_restarted_and_delivers(server: BackendServer, outbox: Outbox) -> None:
    assert outbox.stats()["senderAlive"] is False  # not started yet
    assert outbox.start().stats()["senderAlive"] is True
    victim = outbox.sender.thread
    assert victim is not None
    _kill(victim)
    down = wait_for(lambda: (s := outbox.stats())["senderAlive"] is False and s, 5, 0.005, "the sender down")
    assert "sender not running" in down["senderProblem"] and "SystemExit" in down["senderProblem"]
    assert b"cicd_outbox_sender_up 0.0" in metrics.render(down)
    job_id = new_job(server)
    outbox.put_status(running(job_id))
    wait_for(lambda: outbox.stats()["senderAlive"], 5, what="the sender restarted")
    assert outbox.sender.thread is not victim and outbox.sender.restarts == 1
    wait_for(lambda: history(server, job_id) == ["RUNNING"], 10, what="delivery by the restarted sender")


def test_stuck_delivery_is_flagged_until_it_ends(server: BackendServer, outbox: Outbox, tmp_path: Path) -> None:
    job_id = new_job(server)
    fifo = tmp_path / "stuck"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: a delivery stuck for real
    item = outbox.start().put_artifact(job_id, "stuck.txt", fifo)
    stuck = wait_for(lambda: (s := outbox.stats())["senderAlive"] is False and s, 10, what="the stuck flag")
    assert stuck["senderProblem"].startswith("one outbox-sender step running for")
    with open(next(outbox.files.iterdir()), "wb"):
        pass
    assert outbox.wait([item], 10)[item] == "delivered"
    assert outbox.stats()["senderAlive"] is True


# -- through a worker process ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(backend: Backend, docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for this module, taking a backend to lack an extension after 3 answers of 5xx over 1 s."""
    state = tmp_path_factory.mktemp("delivery-worker")
    env = worker_env(backend, WORKER_STATE_DIR=str(state / "state"), WORKER_EXTENSION_MAX_FAILURES="3",
                     WORKER_EXTENSION_MAX_FAILING_SECONDS="1")
    process = WorkerProcess(env, state / "worker.log").start()
    yield process
    process.stop()


def _run(backend: Backend, worker: WorkerProcess, timeout: float = 90, **job: Any) -> dict[str, Any]:
    job_id = backend.create_run([{"name": "job", **job}])["jobs"]["job"]
    backend.push_job(job_id, worker.url)
    return backend.wait_final(job_id, timeout)


def test_artifact_named_with_bytes_that_are_not_utf8_is_delivered(backend: Backend, worker: WorkerProcess) -> None:
    record = _run(backend, worker, script=["touch \"$(printf 'bad\\377name')\"", "echo fine > ok.txt"],
                  artifacts=["bad*", "ok.txt"])
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)
    assert sorted(a["name"] for a in record["artifacts"]) == ["bad%FFname", "ok.txt"]
    assert "artifact uploaded: bad%FFname (0 bytes" in final_log(record)
    stored = backend.http.get(f"/admin/job-executions/{record['id']}/artifacts/bad%25FFname")
    assert stored.status_code == 200 and stored.content == b""
    later = _run(backend, worker, script=["echo later"])
    assert statuses(later) == ["RUNNING", "SUCCESS"]
    assert httpx.get(f"{worker.url}/api/worker/health", timeout=10).status_code == 200


@pytest.fixture()
def faulty(backend: Backend) -> Iterator[Callable[[dict[str, int]], None]]:
    def answer(answers: dict[str, int]) -> None:
        backend.http.post("/admin/faults", json={"answers": answers}).raise_for_status()

    yield answer
    backend.http.delete("/admin/faults").raise_for_status()


def test_backend_answering_500_on_live_logs_gets_final_statuses(backend: Backend, worker: WorkerProcess,
                                                                faulty: Any) -> None:
    faulty({"/api/job/logs": 500})
    ok = _run(backend, worker, script=["for i in $(seq 1 20); do echo line $i; sleep 0.1; done"])
    assert statuses(ok) == ["RUNNING", "SUCCESS"] and ok["logChunks"] == []
    assert "taken not to have live log chunks" in worker.log_path.read_text()
    assert all(f"line {i}\n" in final_log(ok) for i in range(1, 21))
    failed = _run(backend, worker, timeout=30, script=["echo before", "exit 3"])
    assert statuses(failed) == ["RUNNING", "FAILED"] and "before\n" in final_log(failed)


def test_backend_answering_500_on_artifact_upload_fails_the_job(backend: Backend, worker: WorkerProcess,
                                                               faulty: Any) -> None:
    faulty({"/api/job/artifact/upload": 500})
    record = _run(backend, worker, script=["echo data > out.txt"], artifacts=["out.txt"])
    assert statuses(record) == ["RUNNING", "FAILED"]
    assert "out.txt" in final_log(record) and "artifact upload" in final_log(record)
    assert record["artifacts"] == []
