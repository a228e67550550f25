"""Secrets stay secret: a job's env values reach no Prefect object and no log unmasked, in any form.

Real worker processes, the session's Prefect server and the reference backend. Each job echoes its
secrets plainly, base64-encoded and URL-encoded; afterwards every sink is searched for every value and
every encoded form the job printed: the backend's statuses and live chunks, the flow run (parameters,
name, tags, state), its task runs, its logs, its artifacts, and the Prefect events of the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.flows.test_pipeline_flow import flow_run_state
from tests.support import Backend, WorkerProcess, containers, final_log, flow_run_id_of, statuses, wait_for

_HEX = uuid.uuid4().hex
SECRETS = {
    "DEPLOY_TOKEN": f"dpl-{_HEX}",
    "DB_PASS": f"db p@ss/{_HEX[:12]}&x",  # characters that URL encoding changes
    "GH_PAT": f"ghp_{_HEX[::-1]}",
    "MY_THING": f"thing-{_HEX[4:20]}",  # secret only because the job lists it in maskedEnv
    "SIGNING_KEY": "-----BEGIN TEST PRIVATE KEY-----\n"
                   + "\n".join(base64.b64encode(uuid.uuid4().bytes * 3).decode() for _ in range(3))
                   + "\n-----END TEST PRIVATE KEY-----",
}
SHORT = {"SHORT_TOKEN": "ab1"}  # below WORKER_SECRET_MIN_LENGTH (4): not masked, warned
ENV = {**SECRETS, **SHORT, "PLAIN": "visible-value"}
# What busybox sh prints; ${X} stays unexpanded in the script echo, so the echo itself leaks nothing.
SCRIPT = [
    'echo "plain: $DEPLOY_TOKEN $DB_PASS $GH_PAT $MY_THING $PLAIN short=$SHORT_TOKEN"',
    'echo "$SIGNING_KEY"',
    'printf %s "$DEPLOY_TOKEN" | base64',
    'echo "$GH_PAT" | base64',
    'printf %s "ci:$MY_THING" | base64',
    'echo "$SIGNING_KEY" | base64',
    "printf %s \"$DB_PASS\" | sed -e 's/%/%25/g; s/@/%40/g; s|/|%2F|g; s/ /%20/g; s/&/%26/g'",
    "printf %s \"$DB_PASS\" | sed -e 's/%/%25/g; s/@/%40/g; s|/|%2F|g; s/ /+/g; s/&/%26/g'",
    "printf %s \"$MY_THING\" | base64 | tr '+/' '-_' | tr -d '='",
]


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def leaks() -> list[str]:
    """Every string that must appear nowhere: the values, each line of the PEM, the forms the job prints."""
    key = SECRETS["SIGNING_KEY"]
    wrapped = _b64(key + "\n")
    found = [value for value in SECRETS.values() if "\n" not in value]
    found += [line for line in key.splitlines() if "PRIVATE KEY" not in line]
    found += [_b64(SECRETS["DEPLOY_TOKEN"]), _b64(SECRETS["GH_PAT"] + "\n"), _b64("ci:" + SECRETS["MY_THING"]),
              quote(SECRETS["DB_PASS"], safe=""), quote_plus(SECRETS["DB_PASS"]),
              _b64(SECRETS["MY_THING"]).replace("+", "-").replace("/", "_").rstrip("=")]
    found += [wrapped[i:i + 76] for i in range(0, len(wrapped) - 76, 76)]  # whole 76-character lines
    return found


def assert_nothing_leaks(text: str, where: str) -> None:
    leaked = [secret for secret in leaks() if secret in text]
    assert not leaked, f"{len(leaked)} secret form(s) found in {where}"


def secret_job(name: str = "secretive", **extra: Any) -> dict[str, Any]:
    return {"name": name, "env": ENV, "maskedEnv": ["MY_THING"], "script": SCRIPT, **extra}


# -- Prefect, read through its REST API as anyone who can reach it could ---------------------------------

def _prefect(path: str, body: dict[str, Any] | None = None) -> Any:
    url = f"{os.environ['PREFECT_API_URL']}{path}"
    answer = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
    answer.raise_for_status()
    return answer.json()


def _logs(flow_run_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        page = _prefect("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200,
                                         "offset": len(entries)})
        entries += page
        if len(page) < 200:
            return entries


def _events(since: datetime) -> list[dict[str, Any]]:
    until = datetime.now(UTC) + timedelta(seconds=5)
    page = _prefect("/events/filter", {"filter": {"occurred": {"since": since.isoformat(), "until": until.isoformat()}},
                                       "limit": 50})
    events = list(page["events"])
    for _ in range(200):  # bounded: a test writes a few hundred events at most
        if not page.get("next_page"):
            break
        answer = httpx.get(page["next_page"], timeout=30)
        answer.raise_for_status()
        page = answer.json()
        events += page["events"]
    return events


def prefect_objects(flow_run_id: str, since: datetime) -> dict[str, Any]:
    """Everything Prefect holds about one flow run, once its logs show masking and its final events are in."""
    wait_for(lambda: "[MASKED]" in json.dumps(_logs(flow_run_id)), 30, 0.5, "masked lines in the Prefect logs")
    final_event = f"prefect.flow-run.{flow_run_state(flow_run_id).capitalize()}"
    wait_for(lambda: any(e["event"] == final_event and e["resource"]["prefect.resource.id"].endswith(flow_run_id)
                         for e in _events(since)), 60, 1.0, f"event {final_event} of flow run {flow_run_id}")
    task_runs = _prefect("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
    return {
        "flow run": _prefect(f"/flow_runs/{flow_run_id}"),
        "task runs": task_runs,
        "logs": _logs(flow_run_id),
        "artifacts": _prefect("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}),
        "events": _events(since),
    }


def assert_job_log_masked(record: dict[str, Any]) -> None:
    log = final_log(record)
    assert "[MASKED]" in log and "visible-value" in log, log
    assert "plain: [MASKED] [MASKED] [MASKED] [MASKED] visible-value" in log, log
    assert "secret env var SHORT_TOKEN has a value (or a line of it) shorter than 4 characters" in log, log
    assert "short=ab1" in log  # too short to mask: it stays, with the warning above
    assert_nothing_leaks(json.dumps(record), f"the backend's record of {record['name']}")


# -- the tests ------------------------------------------------------------------------------------------

def test_which_names_are_secret() -> None:
    from core.settings import Settings
    from flows.masking import secret_names

    config = Settings()
    env = dict.fromkeys(["DEPLOY_TOKEN", "db_pass", "GH_PAT", "AWS_CREDENTIALS", "PRIVATE_THING", "HTTP_AUTH",
                         "PATH", "GIT_AUTHOR_NAME", "MY_THING", "PLAIN"], "value")
    assert secret_names(env, config.secret_env_patterns, config.secret_env_exclude, ["MY_THING"]) == [
        "DEPLOY_TOKEN", "db_pass", "GH_PAT", "AWS_CREDENTIALS", "PRIVATE_THING", "HTTP_AUTH", "MY_THING"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text("ab+/.", min_size=1, max_size=6), min_size=1, max_size=8), st.text("ab+/. x", max_size=40))
def test_masker_replaces_like_a_longest_first_alternation(needles: list[str], text: str) -> None:
    from flows.masking import Masker

    plain = re.compile("|".join(re.escape(n) for n in sorted(set(needles), key=len, reverse=True)))
    assert Masker(needles).mask(text) == plain.sub("[MASKED]", text)



def test_job_secrets_reach_no_prefect_object_and_no_log(backend: Backend, worker: WorkerProcess) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    job_id = backend.create_run([secret_job()])["jobs"]["secretive"]
    backend.push_job(job_id, worker.url)
    record = backend.wait_final(job_id)
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)
    assert record["logChunks"], "live chunks are a sink too"
    assert_job_log_masked(record)
    flow_run_id = flow_run_id_of(worker.url, job_id, {})
    objects = prefect_objects(flow_run_id, since)
    assert objects["flow run"]["parameters"] == {"job_execution_id": job_id}
    assert [run["name"] for run in objects["task runs"]] == ["secretive"]
    assert all(not any(run["task_inputs"].values()) for run in objects["task runs"])
    for sink, content in objects.items():
        assert_nothing_leaks(json.dumps(content), f"Prefect {sink}")
    assert_nothing_leaks(worker.log_path.read_text(errors="replace"), "the worker's own log")


def test_pipeline_secrets_reach_no_prefect_object_and_no_log(backend: Backend, worker: WorkerProcess) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    run = backend.create_run([secret_job(), {"name": "after", "needs": ["secretive"], "env": ENV,
                                             "script": ['echo "after: $GH_PAT"']}])
    answer = httpx.post(f"{worker.url}/api/pipeline/execute", json={"pipelineExecutionId": run["pipelineExecutionId"]},
                        timeout=60)
    assert answer.status_code == 202, answer.text
    records = {name: backend.wait_final(job_id) for name, job_id in run["jobs"].items()}
    assert all(statuses(rec) == ["RUNNING", "SUCCESS"] for rec in records.values()), records
    assert_job_log_masked(records["secretive"])
    assert "after: [MASKED]" in final_log(records["after"])
    objects = prefect_objects(answer.json()["flowRunId"], since)
    assert objects["flow run"]["parameters"] == {"pipeline_execution_id": run["pipelineExecutionId"]}
    assert sorted(run["name"] for run in objects["task runs"]) == ["after", "secretive"]
    assert objects["artifacts"], "the pipeline's summary table is an artifact"
    for sink, content in objects.items():
        assert_nothing_leaks(json.dumps(content), f"Prefect {sink}")


def test_flows_take_ids_only_so_deployment_runs_cannot_seed_host_paths() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.job_flow import execute_job
    from flows.pipeline_flow import execute_pipeline

    assert list(parameter_schema(execute_job).properties) == ["job_execution_id"]
    assert list(parameter_schema(execute_pipeline).properties) == ["pipeline_execution_id"]


def _kill_group(worker: WorkerProcess) -> None:
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(10)


def _start_and_kill(backend: Backend, make_worker: Any, docker_client: Any, state: str) -> str:
    """A job that echoes its secret then sleeps, on a worker killed (SIGKILL, whole group) while it runs."""
    first = make_worker(WORKER_STATE_DIR=state)
    job_id = backend.create_run([{"name": "victim", "env": SECRETS, "maskedEnv": ["MY_THING"], "script": [
        'echo "token=$DEPLOY_TOKEN"', 'printf %s "$DEPLOY_TOKEN" | base64', 'echo "$SIGNING_KEY"', "sleep 300"]}],
    )["jobs"]["victim"]
    backend.push_job(job_id, first.url)
    wait_for(lambda: any("token=[MASKED]" in line for chunk in backend.job(job_id)["logChunks"]
                         for line in chunk["lines"]), 30, 0.1, "the secret line shipped live")
    _kill_group(first)
    return job_id


def test_log_recovered_after_a_crash_is_masked(backend: Backend, make_worker, docker_client, tmp_path: Path) -> None:
    state = str(tmp_path / "crash-state")
    job_id = _start_and_kill(backend, make_worker, docker_client, state)
    make_worker(WORKER_STATE_DIR=state)
    record = backend.wait_final(job_id, 60)
    log = final_log(record)
    assert statuses(record)[-1] == "FAILED" and "worker restarted while the job was running" in log, log
    assert "token=[MASKED]" in log, log
    assert_nothing_leaks(log, "the recovered log")
    assert not containers(docker_client, f"cicd.job-execution-id={job_id}")


def test_recovered_log_is_withheld_when_its_secrets_cannot_be_learnt(backend: Backend, make_worker, docker_client,
                                                                     tmp_path: Path) -> None:
    state = str(tmp_path / "withheld-state")
    job_id = _start_and_kill(backend, make_worker, docker_client, state)
    # The backend does not answer the job execution to the restarted worker: its env cannot be learnt.
    backend.http.post("/admin/faults", json={"answers": {f"/api/jobs/{job_id}": 404}}).raise_for_status()
    try:
        make_worker(WORKER_STATE_DIR=state)
        record = backend.wait_final(job_id, 60)
    finally:
        backend.http.delete("/admin/faults")
    log = final_log(record)
    assert "output captured from the job's container is withheld" in log, log
    assert "token=" not in log and "worker restarted while the job was running" in log, log
    assert_nothing_leaks(json.dumps(record), "the backend's record")
