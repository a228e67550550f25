"""Headless Chromium opens the Prefect UI page of a finished pipeline's flow run and finds every job's task run.

Chromium is Debian's ``chromium`` (``scripts/setup-chromium.sh``), driven over the DevTools protocol with the
``websockets`` client that Prefect already depends on: no browser download, no Playwright. The screenshot is
kept as ``test-artifacts/prefect-ui-flow-run.png`` (taken even when the test fails, to show what was seen).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ARTIFACT_DIR
from tests.support import REPO, Backend, WorkerProcess, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ARTIFACT_DIR / "prefect-ui-flow-run.png"
# Without the background-networking flags Chromium tries to reach Google services, which this closed
# network refuses; --no-sandbox because tests run as root.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1440,1100",
]
FINAL_FLOW_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
JOBS = [
    {"name": "ui-checkout", "script": ["echo checkout"]},
    {"name": "ui-unit-tests", "script": ["echo unit"], "needs": ["ui-checkout"]},
    {"name": "ui-lint", "script": ["echo lint"], "needs": ["ui-checkout"]},
    {"name": "ui-package", "script": ["echo package"], "needs": ["ui-unit-tests", "ui-lint"]},
]
# Every link to a task run page on the flow run page, as [task run id, link text].
TASK_RUN_LINKS_JS = """
Array.from(document.querySelectorAll('a[href*="/runs/task-run/"]')).map(
    a => [a.getAttribute('href').split('/runs/task-run/')[1].split(/[?#]/)[0], a.innerText.trim()])
"""


def api_url() -> str:
    return os.environ["PREFECT_API_URL"].rstrip("/")


def ui_url() -> str:
    return api_url().removesuffix("/api")


@pytest.fixture(scope="module")
def chromium() -> Path:
    """/usr/bin/chromium, installed by scripts/setup-chromium.sh when missing; skip only if that fails."""
    if not CHROMIUM.exists():
        setup = subprocess.run(["bash", str(REPO / "scripts" / "setup-chromium.sh")], capture_output=True,
                               text=True, timeout=280, stdin=subprocess.DEVNULL)
        if not CHROMIUM.exists():
            pytest.skip(f"{CHROMIUM} is absent and scripts/setup-chromium.sh could not install it "
                        f"(exit {setup.returncode}): {(setup.stderr or setup.stdout).strip()[-500:]}")
    return CHROMIUM


class DevToolsPage:
    """One page target of a Chromium driven over the DevTools protocol (commands only, events ignored)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        command_id = next(self.ids)
        self.ws.send(json.dumps({"id": command_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if message.get("id") == command_id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method} failed: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))


@pytest.fixture()
def browser_page(chromium: Path, tmp_path: Path) -> Iterator[DevToolsPage]:
    """A headless Chromium with a new empty profile, on a free DevTools port; stopped after the test."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log_path = tmp_path / "chromium.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        def devtools_port() -> int | None:
            if process.poll() is not None:
                raise AssertionError(f"chromium exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            port_file = profile / "DevToolsActivePort"
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            return int(lines[0]) if lines and lines[0].isdigit() else None

        port = wait_for(devtools_port, 30, 0.1, "chromium's DevTools port")

        def page_target() -> str | None:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5, trust_env=False).json()
            return next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)

        ws_url = wait_for(page_target, 15, 0.1, "chromium's page target")
        with connect(ws_url, max_size=None, proxy=None, open_timeout=15) as ws:
            yield DevToolsPage(ws)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def finished_pipeline(backend: Backend, worker: WorkerProcess) -> tuple[str, dict[str, str]]:
    """Run JOBS as one pipeline to the end; the flow run id and its task runs as {name: id}, from the API."""
    run = backend.create_run(JOBS, name="ui-pipeline")
    answer = httpx.post(f"{worker.url}/api/pipeline/execute",
                        json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=60)
    assert answer.status_code == 202, answer.text
    flow_run_id = answer.json()["flowRunId"]
    for job_id in run["jobs"].values():
        assert backend.wait_final(job_id, 40)["status"] == "SUCCESS"

    def final_flow_state() -> str | None:
        state = httpx.get(f"{api_url()}/flow_runs/{flow_run_id}", timeout=10).json()["state"]["type"]
        return state if state in FINAL_FLOW_STATES else None

    assert wait_for(final_flow_state, 20, 0.2, f"final state of flow run {flow_run_id}") == "COMPLETED"
    task_runs = httpx.post(f"{api_url()}/task_runs/filter", timeout=10,
                           json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    by_name = {task_run["name"]: task_run["id"] for task_run in task_runs}
    assert set(by_name) == {job["name"] for job in JOBS}, by_name
    return flow_run_id, by_name


def test_flow_run_page_shows_every_job_task_run(backend: Backend, worker: WorkerProcess,
                                                browser_page: DevToolsPage) -> None:
    flow_run_id, task_runs = finished_pipeline(backend, worker)
    url = f"{ui_url()}/runs/flow-run/{flow_run_id}?tab={quote('Task Runs')}"
    expected = {task_run_id: name for name, task_run_id in task_runs.items()}
    shown: dict[str, str] = {}

    def all_task_runs_shown() -> bool:
        shown.update((task_run_id, text) for task_run_id, text in browser_page.evaluate(TASK_RUN_LINKS_JS) or []
                     if task_run_id in expected)
        return shown == expected

    browser_page.send("Page.navigate", url=url)
    try:
        wait_for(all_task_runs_shown, 45, 0.25, f"every job's task run name on {url} (expected {expected})")
        time.sleep(1)  # let the run graph finish drawing before the screenshot
    finally:
        browser_page.screenshot(SCREENSHOT)
    title = browser_page.evaluate("document.body.innerText")
    assert f"pipeline [" in title, f"flow run page without the pipeline run name: {title[:500]!r}"
