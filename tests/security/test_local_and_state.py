"""Local runs stay inside their folder; the state on disk is private, survives damage and remembers jobs.

Real CLI (``cicd-worker run/check``), real worker processes, real engine and reference backend.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cli.local_run import UnsafePath, _save_artifacts, inside
from core.job_records import JobRegistry, JobStore
from core.models import ExecutionStatus
from executors.workspace_seed import plan_seed
from tests.support import TEST_IMAGE, Backend, containers, flow_run_id_of, statuses, wait_for

BAD_NAMES = {"dotdot": "'../../x'", "slash": "a/b", "newline": '"a\\nb"', "control": '"a\\x07b"',
             "backslash": "'a\\b'"}


def cli(*args: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("cicd-worker")
    full_env = {**os.environ, "WORKER_PULL_POLICY": "never", "WORKER_STATE_DIR": str(cwd / "state"), **env}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def pipeline(name: str, script: list[str], artifacts: list[str] | None = None) -> str:
    lines = "".join(f"          - {json.dumps(line)}\n" for line in script)  # JSON strings are YAML strings
    arts = f"        artifacts: {artifacts}\n" if artifacts else ""
    return (f"name: p\nstages:\n  - name: s\n    jobs:\n      - name: {name}\n        image: {TEST_IMAGE}\n"
            f"        script:\n{lines}{arts}")


# -- 6. local runs stay inside -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(BAD_NAMES))
@pytest.mark.parametrize("command", ["check", "run"])
def test_unsafe_job_names_exit_2_with_file_line_and_key(kind: str, command: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(pipeline(BAD_NAMES[kind], ["true"]))
    result = cli(command, "bad.yaml", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert any(line.startswith("bad.yaml:5: stages[0].jobs[0].name: invalid job name")
               for line in result.stderr.splitlines()), result.stderr
    assert not (tmp_path / ".cicd").exists()  # nothing ran, nothing written


def test_path_guard_refuses_every_way_out(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "artifacts").mkdir(parents=True)
    assert inside(root, "artifacts", "job", "a.txt") == (root / "artifacts" / "job" / "a.txt").resolve()
    for parts in (("..", "x"), ("artifacts", "../../x"), ("/etc/passwd",)):
        with pytest.raises(UnsafePath, match="outside"):
            inside(root, *parts)
    (root / "artifacts" / "hooks").symlink_to(tmp_path / "elsewhere")  # a link planted in the run folder
    with pytest.raises(UnsafePath):
        inside(root, "artifacts", "hooks", "pre-commit")
    # Copying what a backend received, for a job whose name would climb out: refused, nothing lands outside.
    received = tmp_path / "backend" / "artifacts" / "job-id"
    received.mkdir(parents=True)
    (received / "pre-commit").write_text("#!/bin/sh\necho pwned\n")
    with pytest.raises(UnsafePath):
        _save_artifacts(tmp_path / "backend", {"../../x": "job-id"}, root / "artifacts")
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()
    assert _save_artifacts(tmp_path / "backend", {"fine": "job-id"}, root / "artifacts") == 1


def _project(directory: Path, git: bool) -> Path:
    directory.mkdir()
    files = {"tracked.txt": "tracked\n", "sub/nested.txt": "nested\n", "ignored.txt": "ignored\n",
             "build/out.bin": "built\n", "private/notes.txt": "private\n", ".env": "DEPLOY_TOKEN=s3cr3t-value\n",
             ".env.example": "DEPLOY_TOKEN=\n", ".gitignore": "ignored.txt\nbuild/\n", ".cicdignore": "private/\n"}
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    (directory / "passwd-link").symlink_to("/etc/passwd")
    (directory / "inner-link").symlink_to("tracked.txt")
    script = ["find . | sort > /tmp/listing.txt", "mv /tmp/listing.txt listing.txt",
              "grep -R -l 'root:x:[0]' . > leaks.txt || true", "cat inner-link > via-link.txt"]
    (directory / "pipeline.yaml").write_text(pipeline("look", script, ["listing.txt", "leaks.txt", "via-link.txt"]))
    if git:
        subprocess.run(["git", "init", "-q", str(directory)], check=True)
        subprocess.run(["git", "-C", str(directory), "add", "tracked.txt", "sub/nested.txt", ".gitignore"],
                       check=True)
    return directory


@pytest.mark.parametrize("git", [True, False], ids=["git-checkout", "plain-dir"])
def test_workspace_seed_honours_ignore_files_and_never_follows_links_out(git: bool, tmp_path: Path,
                                                                         docker_client) -> None:
    project = _project(tmp_path / "project", git)
    result = cli("run", str(project / "pipeline.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    artifacts = next((tmp_path / ".cicd" / "runs").iterdir()) / "artifacts" / "look"
    listing = set((artifacts / "listing.txt").read_text().split())
    assert {"./tracked.txt", "./sub/nested.txt", "./inner-link", "./.env.example", "./pipeline.yaml",
            "./.gitignore", "./.cicdignore"} <= listing
    assert not {"./ignored.txt", "./build", "./private", "./.env", "./passwd-link", "./.git"} & listing, listing
    assert (artifacts / "leaks.txt").read_text() == ""  # /etc/passwd's content is nowhere in the workspace
    assert (artifacts / "via-link.txt").read_text() == "tracked\n"  # a link inside the project still works
    assert "passwd-link -> /etc/passwd points outside" in result.stderr


def test_cicdignore_can_bring_env_back(tmp_path: Path) -> None:
    project = _project(tmp_path / "project", git=False)
    (project / ".cicdignore").write_text("private/\n!.env\n")
    names = {entry.path for entry in plan_seed(project).entries}
    assert ".env" in names and "private" not in names and "passwd-link" not in names


def test_seed_over_the_cap_fails_the_run_before_anything_runs(tmp_path: Path, docker_client) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "big.bin").write_bytes(os.urandom(4096))
    (project / "pipeline.yaml").write_text(pipeline("never", ["touch /workspace/ran"]))
    result = cli("run", str(project / "pipeline.yaml"), cwd=tmp_path, timeout=60, WORKER_SEED_MAX_BYTES="1024")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "over WORKER_SEED_MAX_BYTES (1024 bytes)" in result.stderr, result.stderr
    assert not (tmp_path / ".cicd" / "runs").exists()


# -- 7. state private and surviving damage --------------------------------------------------------------------

def _modes(state: Path) -> dict[str, int]:
    return {str(path.relative_to(state)): stat.S_IMODE(path.lstat().st_mode) for path in [state, *state.rglob("*")]}


def run_job(backend: Backend, worker_url: str, script: list[str] | None = None) -> tuple[str, dict]:
    job_id = backend.create_run([{"name": "job", "script": script or ["echo hi"]}])["jobs"]["job"]
    answer = backend.push_job(job_id, worker_url).json()
    assert answer["statusCode"] == 202, answer
    return job_id, {**answer["body"], "flowRunId": flow_run_id_of(worker_url, job_id, answer["body"])}


def test_state_is_private_after_a_worker_start(backend: Backend, make_worker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "outbox").mkdir(parents=True, mode=0o755)
    state.chmod(0o755)  # as an older worker left it
    worker = make_worker(WORKER_STATE_DIR=str(state))
    secret = f"tok-{uuid.uuid4().hex}"
    job_id = backend.create_run([{"name": "job", "script": ["echo hi"], "env": {"DEPLOY_TOKEN": secret}}])[
        "jobs"]["job"]
    assert backend.push_job(job_id, worker.url).json()["statusCode"] == 202
    assert backend.wait_final(job_id)["status"] == "SUCCESS"
    # Nothing at rest holds the job's env (the registry keeps ids, status and times only).
    assert not [p for p in state.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    modes = _modes(state)
    assert {"outbox/outbox.db", "inflight.db", "jobs.db", "outbox/outbox.db-wal"} <= set(modes), modes
    wider = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not wider, wider
    assert modes["."] == 0o700 and modes["outbox"] == 0o700


def test_corrupt_outbox_is_moved_aside_and_the_worker_still_delivers(backend: Backend, make_worker,
                                                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "outbox").mkdir(parents=True)
    (state / "outbox" / "outbox.db").write_bytes(os.urandom(64 * 1024))
    worker = make_worker(WORKER_STATE_DIR=str(state))
    aside = wait_for(lambda: list((state / "outbox").glob("outbox.db.corrupt-*")), 20, what="the file moved aside")
    assert len(aside) == 1, list((state / "outbox").iterdir())
    # Start-up runs beside the API: the report shows the problem once the outbox is open.
    health = wait_for(lambda: (text := httpx.get(f"{worker.url}/api/worker/health", timeout=10).text)
                      and "outbox.db.corrupt-" in text and text, 20, 0.3, "the problem in health")
    assert "moved aside" in health, health
    assert "ERROR" in worker.log_path.read_text() and "moved aside" in worker.log_path.read_text()
    job_id, _ = run_job(backend, worker.url)
    assert backend.wait_final(job_id)["status"] == "SUCCESS"


def test_truncated_database_and_directory_in_its_place_are_survived(backend: Backend, make_worker,
                                                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "inflight.db") as db:  # a real database, then cut in half
        db.execute("CREATE TABLE inflight (job_execution_id TEXT PRIMARY KEY, flow_run_id TEXT, name TEXT, "
                   "accepted_at REAL NOT NULL)")
        db.executemany("INSERT INTO inflight VALUES (?, NULL, 'x', 0)", [(str(uuid.uuid4()),) for _ in range(3000)])
    data = (state / "inflight.db").read_bytes()
    (state / "inflight.db").write_bytes(data[: len(data) // 2])
    (state / "jobs.db").mkdir()
    worker = make_worker(WORKER_STATE_DIR=str(state))
    wait_for(lambda: list(state.glob("inflight.db.corrupt-*")) and list(state.glob("jobs.db.corrupt-*")), 20,
             what=f"both files moved aside in {state}")
    job_id, _ = run_job(backend, worker.url)
    assert backend.wait_final(job_id)["status"] == "SUCCESS"
    assert httpx.get(f"{worker.url}/api/job/{job_id}", timeout=10).json()["status"] == "SUCCESS"


# -- 8. idempotent across restarts ----------------------------------------------------------------------------

def test_registry_on_disk_keeps_the_newest_final_records_and_fails_the_unfinished(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db", keep=3)
    registry = JobRegistry(store)
    ids = []
    for number in range(5):
        record, created = registry.claim(uuid.uuid4(), f"job-{number}")
        record.accepted_at = datetime(2024, 1, 1, 0, number, tzinfo=UTC)
        record.status, record.exit_code = ExecutionStatus.SUCCESS, 0
        record.save()
        ids.append(record.job_execution_id)
    running, _ = registry.claim(uuid.uuid4(), "running")
    running.status = ExecutionStatus.RUNNING
    running.save()
    store.prune()
    reopened = JobRegistry(JobStore(tmp_path / "jobs.db", keep=3))  # a restart
    # The cut-off job became final (FAILED, the newest): with it, the newest three are it and the last two.
    assert [reopened.get(i) is not None for i in ids] == [False, False, False, True, True]
    cut_off = reopened.get(running.job_execution_id)
    assert cut_off is not None and cut_off.status is ExecutionStatus.FAILED and "restarted" in (cut_off.message or "")
    known, created = reopened.claim(ids[-1], "job-4")
    assert not created and known.status is ExecutionStatus.SUCCESS and known.exit_code == 0


@pytest.mark.slow  # two worker starts and a graceful stop: ~20 s (the registry test above is the fast check)
def test_job_resent_after_a_restart_is_answered_from_disk_and_not_run_again(backend: Backend, make_worker,
                                                                            tmp_path: Path, docker_client) -> None:
    state = str(tmp_path / "state")
    worker = make_worker(WORKER_STATE_DIR=state)
    job_id, accepted = run_job(backend, worker.url)
    assert backend.wait_final(job_id)["status"] == "SUCCESS"
    worker.stop()  # SIGTERM: a graceful stop
    again = make_worker(WORKER_STATE_DIR=state)
    answer = backend.push_job(job_id, again.url).json()
    assert answer["statusCode"] == 200, answer
    assert answer["body"]["flowRunId"] == accepted["flowRunId"]
    view = httpx.get(f"{again.url}/api/job/{job_id}", timeout=10).json()
    assert view["status"] == "SUCCESS" and view["flowRunId"] == accepted["flowRunId"], view
    assert view["exitCode"] == 0 and view["attempts"] == 1, view
    assert not containers(docker_client, f"cicd.job-execution-id={job_id}")
    assert statuses(backend.job(job_id)) == ["RUNNING", "SUCCESS"]


@pytest.mark.slow
def test_job_in_flight_at_a_crash_is_failed_on_disk_and_not_run_again(backend: Backend, make_worker,
                                                                      tmp_path: Path, docker_client) -> None:
    state = str(tmp_path / "state")
    worker = make_worker(WORKER_STATE_DIR=state)
    job_id, accepted = run_job(backend, worker.url, ["sleep 60"])
    wait_for(lambda: "RUNNING" in statuses(backend.job(job_id)), 30, what="job running")
    assert worker.process is not None
    os.killpg(worker.process.pid, 9)  # a crash: no drain, no final status
    worker.process.wait(10)
    again = make_worker(WORKER_STATE_DIR=state)
    record = backend.wait_final(job_id)
    assert record["status"] == "FAILED" and "worker restarted" in record["history"][-1]["logs"]
    answer = backend.push_job(job_id, again.url).json()
    assert answer["statusCode"] == 200 and answer["body"]["flowRunId"] == accepted["flowRunId"], answer
    view = httpx.get(f"{again.url}/api/job/{job_id}", timeout=10).json()
    assert view["status"] == "FAILED" and "restarted" in (view["message"] or ""), view
    assert statuses(backend.job(job_id)).count("RUNNING") == 1
