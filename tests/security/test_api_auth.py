"""Closed by default: who may reach the worker API, what health tells a stranger, and Prefect's basic auth.

Attacks tried: serving on every interface without a token, an empty token, reading the docs, schema and
metrics without the token, reading internals from health, hanging health through a wedged engine, and
calling a pool's Prefect API without credentials.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ARTIFACT_DIR, worker_env
from tests.support import REPO, Backend, WorkerProcess, free_port, prefect_server_with_auth, wait_for

CLI = str(Path(sys.executable).with_name("cicd-worker"))
TOKEN = "api-token-" + uuid.uuid4().hex
PREFECT_AUTH = "cicd:" + uuid.uuid4().hex


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORKER_API_TOKEN", "WORKER_INSECURE", "WORKER_HOST")}
    return {**env, **extra}


def _refused_to_connect(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(("args", "extra"), [
    (["--host", "0.0.0.0"], {}),
    (["--host", "::"], {}),
    ([], {"WORKER_HOST": "0.0.0.0"}),
    (["--host", "10.1.2.3"], {"WORKER_INSECURE": "false"}),
])
def test_serve_beyond_loopback_without_token_refuses_to_start(args: list[str], extra: dict[str, str]) -> None:
    port = free_port()
    started = time.monotonic()
    result = subprocess.run([CLI, "serve", *args, "--port", str(port)], env=_env(**extra), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "WORKER_API_TOKEN" in result.stderr and "--insecure" in result.stderr and "WORKER_INSECURE" in result.stderr
    assert "Traceback" not in result.stderr and "Uvicorn running" not in result.stderr
    assert _refused_to_connect(port)
    assert time.monotonic() - started < 30  # refused before any Prefect server or app start


@pytest.mark.parametrize("command", [["serve"], ["check", "pipeline.yaml"], ["deploy"]])
def test_empty_token_is_a_clean_settings_error(command: list[str]) -> None:
    for empty in ("", "   "):
        result = subprocess.run([CLI, *command], env=_env(WORKER_API_TOKEN=empty), capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2, result.stderr
        assert "WORKER_API_TOKEN" in result.stderr and "empty" in result.stderr
        assert "Traceback" not in result.stderr, result.stderr


class _Serve:
    """``cicd-worker serve`` with free-form arguments; reached through loopback whatever it listens on."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.process = subprocess.Popen([CLI, "serve", *args, "--port", str(self.port)], stdout=out,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def health(self) -> httpx.Response | None:
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}: {self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/api/worker/health", timeout=5)
        except httpx.HTTPError:
            return None

    def stop(self) -> None:
        worker = WorkerProcess({}, self.log_path)
        worker.process = self.process
        worker.stop()


@pytest.mark.engine  # a worker says UP only with an engine
@pytest.mark.parametrize("opt_out", [["--insecure"], ["WORKER_INSECURE=true"]], ids=["flag", "env"])
def test_insecure_opt_out_starts_with_a_loud_warning_shown_in_health(opt_out: list[str], backend: Backend,
                                                                      tmp_path: Path) -> None:
    flags = [a for a in opt_out if a.startswith("--")]
    extra = dict(a.split("=", 1) for a in opt_out if "=" in a)
    env = _env(**worker_env(backend, WORKER_STATE_DIR=str(tmp_path / "state")), **extra)
    serve = _Serve(["--host", "0.0.0.0", *flags], env, tmp_path / "serve.log")
    try:
        answer = wait_for(serve.health, 90, 0.3, "insecure worker answering health")
        assert answer.json() == {"status": answer.json()["status"], "insecure": True}  # no checks for strangers
        assert answer.json()["status"] in ("UP", "STARTING")
        log = serve.log_path.read_text()
        assert "WARNING" in log and "WITHOUT a token" in log and "!!!!!!!!!!" in log
        assert httpx.get(f"{serve.url}/api/worker/config", timeout=10).status_code == 200  # open, as asked
    finally:
        serve.stop()


@pytest.fixture(scope="module")
def token_worker(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("token-worker")
    worker = WorkerProcess(worker_env(backend, WORKER_API_TOKEN=TOKEN, WORKER_STATE_DIR=str(tmp / "state")),
                           tmp / "worker.log").start()
    yield worker
    worker.stop()


def _calls(body: dict) -> list[tuple[str, str, dict | None, set[int]]]:
    """(method, path, JSON body, statuses expected with the token) of every route but health."""
    unknown = str(uuid.uuid4())
    return [("GET", "/docs", None, {200}), ("GET", "/redoc", None, {200}), ("GET", "/openapi.json", None, {200}),
            ("GET", "/metrics", None, {200}), ("GET", "/api/worker/config", None, {200}),
            ("GET", f"/api/job/{unknown}", None, {404}), ("POST", f"/api/job/{unknown}/cancel", None, {404}),
            ("POST", "/api/pipeline/execute", {"pipelineExecutionId": unknown}, {404, 422}),
            ("POST", "/api/job/execute", body, {202})]


@pytest.mark.engine  # token_worker: a worker process, healthy only with an engine
def test_with_a_token_every_route_but_health_needs_it(token_worker: WorkerProcess, backend: Backend,
                                                      docker_client) -> None:
    job_id = backend.create_run([{"name": "needs-token", "script": ["echo ran"]}])["jobs"]["needs-token"]
    body = backend.dto(job_id)
    for method, path, payload, _ in _calls(body):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            answer = httpx.request(method, token_worker.url + path, json=payload, headers=headers, timeout=30)
            assert answer.status_code == 401, (method, path, headers, answer.status_code, answer.text[:200])
            assert "openapi" not in answer.text and "cicd_" not in answer.text
    assert backend.job(job_id)["history"] == []  # nothing ran on the refused execute
    good = {"Authorization": f"Bearer {TOKEN}"}
    for method, path, payload, wanted in _calls(body):
        answer = httpx.request(method, token_worker.url + path, json=payload, headers=good, timeout=30)
        assert answer.status_code in wanted, (method, path, answer.status_code, answer.text[:300])
    assert "/api/job/execute" in httpx.get(f"{token_worker.url}/openapi.json", headers=good).json()["paths"]
    assert backend.wait_final(job_id)["status"] == "SUCCESS"


@pytest.mark.engine
def test_health_tells_a_stranger_only_up_or_down(token_worker: WorkerProcess) -> None:
    stranger = httpx.get(f"{token_worker.url}/api/worker/health", timeout=10)
    assert stranger.status_code == 200 and stranger.json() == {"status": "UP"}
    for wrong in ("Bearer wrong", f"Basic {TOKEN}"):
        answer = httpx.get(f"{token_worker.url}/api/worker/health", headers={"Authorization": wrong}, timeout=10)
        assert answer.json() == {"status": "UP"}
    full = httpx.get(f"{token_worker.url}/api/worker/health", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=10).json()
    assert {"docker", "prefect", "backend", "outbox"} <= set(full["checks"])
    assert full["checks"]["prefect"]["detail"] == os.environ["PREFECT_API_URL"]  # detail only with the token
    assert "detail" not in full["checks"]["docker"] and "ersion" not in str(full["checks"]["docker"])


class _WedgedEngine:
    """A unix socket that accepts connections and never answers: what a deadlocked dockerd looks like."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            self.held.append(conn)  # read nothing, answer nothing, keep it open

    def close(self) -> None:
        self._server.close()
        for conn in self.held:
            conn.close()


def test_health_answers_within_5s_when_the_engine_hangs(make_worker, tmp_path: Path) -> None:
    engine = _WedgedEngine(tmp_path / "wedged.sock")
    try:
        worker = make_worker(expect_healthy=False, DOCKER_HOST=f"unix://{engine.path}")
        assert engine.held, "the worker never called the fake engine"
        for _ in range(3):  # again while the earlier probes still hang
            asked = time.monotonic()
            answer = httpx.get(f"{worker.url}/api/worker/health", timeout=10)
            took = time.monotonic() - asked
            assert took < 5, f"health took {took:.1f} s"
            assert answer.status_code == 503
            report = answer.json()
            assert report["status"] in ("DOWN", "STARTING") and report["checks"]["docker"]["status"] == "DOWN"
            assert report["checks"]["prefect"]["status"] == "UP"
    finally:
        engine.close()


@pytest.fixture(scope="module")
def prefect_with_auth() -> Iterator[str]:
    """A real Prefect server demanding basic auth (``PREFECT_SERVER_API_AUTH_STRING``); its API URL."""
    with prefect_server_with_auth(PREFECT_AUTH, ARTIFACT_DIR / "prefect-server-auth.log") as api_url:
        yield api_url


def test_prefect_api_with_auth_refuses_unauthenticated_calls(prefect_with_auth: str) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(PREFECT_AUTH.encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"cicd:guess").decode()}
    run = {"parameters": {}, "state": {"type": "SCHEDULED"}}
    calls = [("GET", "/admin/version", None), ("POST", "/flow_runs/filter", {}), ("POST", "/deployments/filter", {}),
             ("POST", f"/deployments/{uuid.uuid4()}/create_flow_run", run)]
    for method, path, body in calls:
        for headers in ({}, wrong):
            answer = httpx.request(method, prefect_with_auth + path, json=body, headers=headers, timeout=10)
            assert answer.status_code == 401, (method, path, answer.status_code)
        if method == "POST" and "create_flow_run" not in path:
            assert httpx.request(method, prefect_with_auth + path, json=body, headers=basic).status_code == 200
    assert httpx.get(prefect_with_auth + "/admin/version", headers=basic).status_code == 200


def _deploy(api_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in _env().items() if k != "PREFECT_API_AUTH_STRING"}
    return subprocess.run([CLI, "deploy", *args], env={**clean, "PREFECT_API_URL": api_url, **env},
                          capture_output=True, text=True, timeout=180, cwd=REPO)


@pytest.mark.slow  # each `cicd-worker deploy` imports Prefect: ~8 s apiece here
def test_deploy_refuses_without_prefect_auth(prefect_with_auth: str) -> None:
    missing = _deploy(prefect_with_auth)
    assert missing.returncode == 2 and "PREFECT_API_AUTH_STRING" in missing.stderr
    assert "PREFECT_SERVER_API_AUTH_STRING" in missing.stderr and "--no-prefect-auth" in missing.stderr
    wrong = _deploy(prefect_with_auth, PREFECT_API_AUTH_STRING="cicd:guess")
    assert wrong.returncode == 2 and "refuses PREFECT_API_AUTH_STRING" in wrong.stderr
    open_server = _deploy(os.environ["PREFECT_API_URL"], PREFECT_API_AUTH_STRING=PREFECT_AUTH)  # session server
    assert open_server.returncode == 2 and "PREFECT_SERVER_API_AUTH_STRING" in open_server.stderr
    assert "answers without credentials" in open_server.stderr
    for result in (missing, wrong, open_server):
        assert "ready" not in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow  # each `cicd-worker deploy` imports Prefect: ~8 s apiece here
def test_deploy_with_prefect_auth_or_loud_opt_out(prefect_with_auth: str) -> None:
    tag = uuid.uuid4().hex[:6]
    good = _deploy(prefect_with_auth, "--limit-name", f"l-{tag}", "--limit", "3", PREFECT_API_AUTH_STRING=PREFECT_AUTH)
    assert good.returncode == 0, good.stderr[-3000:]
    assert f"global concurrency limit 'l-{tag}' = 3: ready" in good.stdout and "WARNING" not in good.stderr
    opted_out = _deploy(prefect_with_auth, "--no-prefect-auth", "--limit-name", f"m-{tag}")
    assert "--no-prefect-auth" in opted_out.stderr and "WARNING" in opted_out.stderr
    assert opted_out.returncode != 0 and "ready" not in opted_out.stdout  # the server still says 401
