"""Headless Chromium opens the Prefect UI page of a finished pipeline's flow run and finds every job's task run.

The run's graph (``/flow_runs/{id}/graph-v2``, what the UI's graph canvas draws) has the pipeline's dependency
edges, and the run's logs, in the API and on the page's Logs tab, hold the jobs' output and no Prefect hook
bookkeeping lines.

Chromium is Debian's ``chromium`` (``scripts/setup-chromium.sh``), driven over the DevTools protocol with the
``websockets`` client that Prefect already depends on: no browser download, no Playwright. The screenshot is
kept as ``test-artifacts/prefect-ui-flow-run.png`` (taken even when the test fails, to show what was seen).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]
VIEWPORT = {"width": 1440, "height": 1100, "deviceScaleFactor": 1, "mobile": False}
FINAL_FLOW_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
JOBS = [
    {"name": "ui-checkout", "script": ["echo checkout"]},
    {"name": "ui-unit-tests", "script": ["echo unit"], "needs": ["ui-checkout"]},
    {"name": "ui-lint", "script": ["echo lint", "exit 1"], "needs": ["ui-checkout"], "allowFailure": True},
    {"name": "ui-package", "script": ["echo package"], "needs": ["ui-unit-tests", "ui-lint"]},
]
# Opens the flow run page's "Task Runs" tab as a person would, by a click (the tab appears only once the UI has
# loaded a final flow run, and a `?tab=` given before that falls back to "Logs"); then returns every link to a
# task run page there, as [task run id, link text].
TASK_RUN_LINKS_JS = """(() => {
    const tab = Array.from(document.querySelectorAll('[role=tablist] .p-tab'))
        .find(t => t.innerText.trim() === 'Task Runs');
    if (tab && !tab.classList.contains('p-tab__active')) tab.click();
    return Array.from(document.querySelectorAll('a[href*="/runs/task-run/"]')).map(
        a => [a.getAttribute('href').split('/runs/task-run/')[1].split(/[?#]/)[0], a.innerText.trim()]);
})()"""


HOOK_LINES = ("Running hook", "finished running successfully")
# Opens the flow run page's "Logs" tab by a click when it is not the active one; returns the page's text.
LOGS_TAB_TEXT_JS = """(() => {
    const tab = Array.from(document.querySelectorAll('[role=tablist] .p-tab'))
        .find(t => t.innerText.trim() === 'Logs');
    if (tab && !tab.classList.contains('p-tab__active')) tab.click();
    return document.body ? document.body.innerText : '';  // null while the page is still loading
})()"""


def api_url() -> str:
    return os.environ["PREFECT_API_URL"].rstrip("/")


def ui_url() -> str:
    return api_url().removesuffix("/api")


@pytest.fixture(scope="module")
def chromium() -> Path:
    """/usr/bin/chromium, installed by scripts/setup-chromium.sh when missing; skip only if that fails."""
    if not CHROMIUM.exists():
        try:
            setup = subprocess.run(["bash", str(REPO / "scripts" / "setup-chromium.sh")], capture_output=True,
                                   text=True, timeout=240, stdin=subprocess.DEVNULL)
            outcome = f"exit {setup.returncode}: {(setup.stderr or setup.stdout).strip()[-500:]}"
        except subprocess.TimeoutExpired:
            outcome = "still installing after 240 s"
        if not CHROMIUM.exists():
            pytest.skip(f"{CHROMIUM} is absent and scripts/setup-chromium.sh could not install it ({outcome})")
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

    def capture(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.capture())

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until two captures half a second apart are the same picture (animations done), at most timeout."""
        last: list[bytes] = [self.capture()]

        def still() -> bool:
            last.append(self.capture())
            return last[-1] == last[-2]

        with contextlib.suppress(AssertionError):  # a page still moving after timeout is shown as it is then
            wait_for(still, timeout, 0.5, "a still page")


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
            page = DevToolsPage(ws)
            page.send("Emulation.setDeviceMetricsOverride", **VIEWPORT)
            yield page
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def assert_ui_talks_to_this_server() -> None:
    """The UI loads its data from the API named by ``/ui-settings``; it must be this session's server.

    ``prefect server start --port N`` does not change that URL: without ``PREFECT_UI_API_URL`` in the server's
    environment the UI asks ``127.0.0.1:4200`` (whatever server runs there, or nothing) and shows a 404 page.
    """
    settings = httpx.get(f"{ui_url()}/ui-settings", timeout=10).json()
    assert settings["api_url"].rstrip("/") == api_url(), (
        f"the Prefect UI at {ui_url()} loads its data from {settings['api_url']}, not from {api_url()}: "
        "start the server with PREFECT_UI_API_URL set to its API URL (cli/prefect_server.py)")


@pytest.fixture(scope="module")
def finished_pipeline(backend: Backend, worker: WorkerProcess) -> tuple[dict[str, Any], dict[str, str]]:
    """JOBS run as one pipeline to the end, once for this module; its flow run and task runs ({name: id}), from
    the Prefect API."""
    run = backend.create_run(JOBS, name="ui-pipeline")
    answer = httpx.post(f"{worker.url}/api/pipeline/execute",
                        json={"pipelineExecutionId": run["pipelineExecutionId"]}, timeout=60)
    assert answer.status_code == 202, answer.text
    flow_run_id = answer.json()["flowRunId"]
    for job_id in run["jobs"].values():
        assert backend.wait_final(job_id, 40)["status"] == "SUCCESS"

    def final_flow_run() -> dict[str, Any] | None:
        flow_run = httpx.get(f"{api_url()}/flow_runs/{flow_run_id}", timeout=10).json()
        return flow_run if flow_run["state"]["type"] in FINAL_FLOW_STATES else None

    flow_run = wait_for(final_flow_run, 20, 0.2, f"final state of flow run {flow_run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    task_runs = httpx.post(f"{api_url()}/task_runs/filter", timeout=10,
                           json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    by_name = {task_run["name"]: task_run["id"] for task_run in task_runs}
    assert set(by_name) == {job["name"] for job in JOBS}, by_name
    return flow_run, by_name


def test_flow_run_page_shows_every_job_task_run(finished_pipeline: tuple[dict[str, Any], dict[str, str]],
                                                browser_page: DevToolsPage) -> None:
    assert_ui_talks_to_this_server()
    flow_run, task_runs = finished_pipeline
    url = f"{ui_url()}/runs/flow-run/{flow_run['id']}"
    expected = {task_run_id: name for name, task_run_id in task_runs.items()}
    shown: dict[str, str] = {}

    def all_task_runs_shown() -> bool:
        shown.update((task_run_id, text) for task_run_id, text in browser_page.evaluate(TASK_RUN_LINKS_JS) or []
                     if task_run_id in expected)
        return shown == expected

    browser_page.send("Page.navigate", url=url)
    try:
        wait_for(all_task_runs_shown, 45, 0.25, f"every job's task run name on {url} (expected {expected})")
        browser_page.settle()  # the run graph is a canvas that zooms in: let it finish before the screenshot
    finally:
        browser_page.screenshot(SCREENSHOT)
    page_text = browser_page.evaluate("document.body.innerText")
    assert flow_run["name"] in page_text, f"no flow run name {flow_run['name']!r} on the page: {page_text[:500]!r}"
    # The allowed failure (ui-lint) is marked by its state's name, not shown as a plain "Completed".
    assert page_text.count("AllowedFailure") == 1 and page_text.count("Completed") >= 3, page_text[-1500:]


def graph_parents(flow_run_id: str) -> dict[str, set[str]]:
    """{task run name: names of its parents} in the flow run's graph, as the UI's graph endpoint gives it."""
    graph = httpx.get(f"{api_url()}/flow_runs/{flow_run_id}/graph-v2", timeout=10).json()
    nodes = {node_id: node for node_id, node in graph["nodes"]}
    return {node["label"]: {nodes[parent["id"]]["label"] for parent in node["parents"]} for node in nodes.values()}


def api_log_messages(flow_run_id: str) -> list[str]:
    """The flow run's log messages (its task runs' included) once the flow's last one has reached the API."""
    def delivered() -> list[str] | None:
        logs = httpx.post(f"{api_url()}/logs/filter", timeout=10,
                          json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}).json()
        messages = [entry["message"] for entry in logs]
        return messages if any("Finished in state" in message for message in messages) else None
    found: list[str] = wait_for(delivered, 30, 0.3, f"the last log of flow run {flow_run_id} in the Prefect API")
    return found


def test_flow_run_graph_has_the_edges_and_logs_read_like_a_ci_log(
        finished_pipeline: tuple[dict[str, Any], dict[str, str]], browser_page: DevToolsPage) -> None:
    assert_ui_talks_to_this_server()
    flow_run, _ = finished_pipeline
    assert graph_parents(flow_run["id"]) == {job["name"]: set(job.get("needs", [])) for job in JOBS}
    messages = api_log_messages(flow_run["id"])
    assert any("unit" in message for message in messages), messages
    assert not [m for m in messages if any(line in m for line in HOOK_LINES)], messages

    url = f"{ui_url()}/runs/flow-run/{flow_run['id']}"
    shown: list[str] = []

    def job_output_shown() -> bool:
        shown[:] = [browser_page.evaluate(LOGS_TAB_TEXT_JS) or ""]
        return "echo package" in shown[0]

    browser_page.send("Page.navigate", url=url)
    try:
        wait_for(job_output_shown, 45, 0.25, f"the jobs' output on the Logs tab of {url}")
    finally:
        browser_page.screenshot(SCREENSHOT.with_name("prefect-ui-flow-run-logs.png"))
    assert not [line for line in HOOK_LINES if line in shown[0]], shown[0][-2000:]
