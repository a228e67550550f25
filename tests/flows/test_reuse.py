"""Reuse of unchanged jobs: the key (each input changes it, secrets only hashed, upstream keys propagate) and,
in-process with the dummy executor, a second run answered from Prefect's cache (state ``Cached``, nothing run,
artifacts uploaded again and copied back into the workspace)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from core.models import JobDTO
from core.settings import Settings
from executors.dummy import DummyExecutor
from flows.pipeline_flow import PipelineStart, execute_pipeline, hand_over_pipeline
from flows.reuse_keys import InputFiles, explain, keyed
from flows.reuse_store import ReuseStore
from flows.services import Services, build_services, install
from tests.support import Backend, final_log, statuses

SECRET = "s3cr3t-value-never-stored"


def job(**fields: Any) -> JobDTO:
    return JobDTO(**{"name": "build", "docker_image": "img", "script": ["make"], "inputs": ["src/**"], **fields})


def key(dto: JobDTO | None = None, image: str = "sha256:1", files: dict[str, str] | None = None,
        needs: dict[str, str] | None = None) -> str:
    return keyed(dto or job(), image, files if files is not None else {"src/a.c": "h1"}, needs or {}).key


def test_each_input_changes_the_key() -> None:
    base = key()
    assert key() == base  # stable
    changed = [
        key(image="sha256:2"),
        key(job(script=["make all"])),
        key(job(before_script=["setup"])),
        key(job(after_script=["cleanup"])),
        key(job(env={"MODE": "fast"})),
        key(job(artifacts=["out/"])),
        key(job(working_dir="sub")),
        key(files={"src/a.c": "h2"}),
        key(files={"src/a.c": "h1", "src/b.c": "h3"}),
        key(files={}),
        key(needs={"prep": "k1"}),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert key(job(env={"MODE": "fast"})) != key(job(env={"MODE": "slow"}))


def test_secret_values_enter_the_key_only_as_a_hash() -> None:
    with_secret = keyed(job(env={"API_TOKEN": SECRET}), "sha256:1", {}, {})
    other = keyed(job(env={"API_TOKEN": SECRET + "x"}), "sha256:1", {}, {})
    assert with_secret.key != other.key
    stored = json.dumps(with_secret.components)
    assert SECRET not in stored and "API_TOKEN" in stored
    assert explain(with_secret.components, other.components) == ["variable API_TOKEN: changed"]


def test_an_upstream_key_change_propagates_downstream() -> None:
    prep_before, prep_after = key(job(name="prep"), files={"a": "1"}), key(job(name="prep"), files={"a": "2"})
    build_before = keyed(job(), "sha256:1", {}, {"prep": prep_before})
    build_after = keyed(job(), "sha256:1", {}, {"prep": prep_after})
    test_before = keyed(job(name="test"), "sha256:1", {}, {"build": build_before.key})
    test_after = keyed(job(name="test"), "sha256:1", {}, {"build": build_after.key})
    assert build_before.key != build_after.key and test_before.key != test_after.key
    assert explain(test_before.components, test_after.components)[0].startswith("upstream job build: changed")


def test_input_files_match_globs_and_explain_names_them(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("one")
    (tmp_path / "docs.md").write_text("text")
    before = InputFiles(tmp_path).matching(["src/**"])
    assert list(before) == ["src/a.c"]
    (tmp_path / "src" / "a.c").write_text("two")
    (tmp_path / "src" / "b.c").write_text("new")
    after = InputFiles(tmp_path).matching(["src/"])
    assert explain({"files": before}, {"files": after}) == ["file src/a.c: changed", "file src/b.c: added"]


# -- in-process, dummy executor: Prefect's cache answers the second run ------------------------------------


@pytest.fixture()
def services(backend: Backend, tmp_path: Path) -> Iterator[Services]:
    settings = Settings(backend_url=backend.api_url, state_dir=tmp_path / "state", retry_delay_seconds=0,
                        dependency_poll_seconds=0.1, log_chunk_interval_seconds=0.2)
    built = install(build_services(settings, executor=DummyExecutor(settings.worker_id)))
    yield built
    built.close()


def run_pipeline(backend: Backend, project: Path, reuse: bool = True) -> tuple[Any, dict[str, str]]:
    created = backend.create_run([
        {"name": "prep", "inputs": ["prep.txt"], "artifacts": ["out/"],
         "env": {"DUMMY_ARTIFACTS": "out/prep.bin", "API_TOKEN": SECRET}},
        {"name": "build", "inputs": ["src/**"], "needs": ["prep"]},
        {"name": "plain", "needs": ["prep"]}])
    pipeline_id = created["pipelineExecutionId"]
    hand_over_pipeline(pipeline_id, PipelineStart(seed_directory=project, reuse=reuse))
    return execute_pipeline(pipeline_id, return_state=True), created["jobs"]


def task_states(flow_run_id: UUID) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs if run.state is not None}


def test_second_run_is_answered_from_prefects_cache(services: Services, backend: Backend, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "prep.txt").write_text("v1")
    (project / "src" / "main.c").write_text("int main;")
    executor = services.executor
    assert isinstance(executor, DummyExecutor)

    first, _ = run_pipeline(backend, project)
    assert first.is_completed() and len(executor.calls_to("run")) == 3
    stored = "".join(path.read_text() for path in (tmp_path / "state" / "reuse").rglob("*") if path.is_file())
    assert SECRET not in stored  # the secret's value is nowhere in the reuse store

    second, jobs = run_pipeline(backend, project)
    assert second.is_completed()
    assert len(executor.calls_to("run")) == 4  # only the job without inputs ran again
    assert task_states(second.state_details.flow_run_id) == {"prep": "Cached", "build": "Cached",
                                                             "plain": "Completed"}
    prep = backend.wait_final(jobs["prep"])
    assert statuses(prep) == ["RUNNING", "SUCCESS"]
    assert "reused: unchanged since run" in final_log(prep)
    uploaded = backend.http.get(f"/admin/job-executions/{jobs['prep']}/artifacts/out/prep.bin")
    assert uploaded.status_code == 200 and uploaded.content == b"out/prep.bin"  # uploaded again for this run
    assert len(executor.calls_to("seed_volume")) == 1 + 1 + 1  # each run's seed, and prep's artifacts restored

    (project / "src" / "main.c").write_text("int main() {}")
    third, _ = run_pipeline(backend, project)
    assert third.is_completed()
    assert task_states(third.state_details.flow_run_id)["build"] == "Completed"  # its input changed: it ran
    assert task_states(third.state_details.flow_run_id)["prep"] == "Cached"

    fourth, _ = run_pipeline(backend, project, reuse=False)  # --no-cache
    assert set(task_states(fourth.state_details.flow_run_id).values()) == {"Completed"}


# -- without a project folder (a pipeline run from the backend): inputs read from the workspace volume ----------

FROM_BACKEND = [
    {"name": "fetch", "env": {"DUMMY_WRITES": "src/a.txt=$CI_COMMIT_SHA;notes.txt=not an input"}},  # no inputs
    {"name": "build", "needs": ["fetch"], "inputs": ["src/**"], "artifacts": ["out/"],
     "env": {"DUMMY_ARTIFACTS": "out/b.bin", "DUMMY_WRITES": "out/b.bin=out/b.bin"}},  # the artifact, as collected
    {"name": "use", "needs": ["build"]},
    {"name": "check", "needs": ["build"], "inputs": ["out/**"]}]  # build's output, restored when build is reused


def run_from_backend(backend: Backend, commit: str) -> tuple[Any, dict[str, str]]:
    """A pipeline run as the service runs it: fetched from the backend, no project folder handed over."""
    created = backend.create_run(FROM_BACKEND, commitHash=commit)
    return execute_pipeline(created["pipelineExecutionId"], return_state=True), created["jobs"]


def test_without_a_project_folder_inputs_are_hashed_in_the_workspace_volume(services: Services,
                                                                            backend: Backend) -> None:
    executor = services.executor
    assert isinstance(executor, DummyExecutor)
    first, _ = run_from_backend(backend, "c0ffee1")
    assert first.is_completed() and len(executor.calls_to("run")) == 4
    assert len(executor.calls_to("volume_files")) == 2  # build's and check's inputs, each once its upstream ran

    second, jobs = run_from_backend(backend, "c0ffee1")  # the same sources fetched again
    assert second.is_completed()
    assert len(executor.calls_to("run")) == 6  # fetch and use ran; build was reused despite fetch having no key
    assert task_states(second.state_details.flow_run_id) == {"fetch": "Completed", "build": "Cached",
                                                             "use": "Completed", "check": "Cached"}
    build = backend.wait_final(jobs["build"])
    assert statuses(build) == ["RUNNING", "SUCCESS"] and "reused: unchanged since run" in final_log(build)
    uploaded = backend.http.get(f"/admin/job-executions/{jobs['build']}/artifacts/out/b.bin")
    assert uploaded.status_code == 200 and uploaded.content == b"out/b.bin"
    # build's outputs were copied back into the workspace once, before check's inputs were read from it
    assert executor.calls_to("seed_volume") == [executor.calls_to("create_volume")[-1]]

    third, _ = run_from_backend(backend, "c0ffee2")  # same job definitions, other content in src/
    assert third.is_completed()
    assert task_states(third.state_details.flow_run_id) == {"fetch": "Completed", "build": "Completed",
                                                            "use": "Completed", "check": "Completed"}


def tamper(state: Path, change: Any) -> None:
    """Rewrite the reuse part of build's stored result record with ``change``."""
    path = state / "reuse" / "results" / build_key(state)
    record = json.loads(path.read_text())
    summary = json.loads(record["result"]) if isinstance(record["result"], str) else record["result"]
    change(summary["reuse"])
    record["result"] = json.dumps(summary) if isinstance(record["result"], str) else summary
    path.write_text(json.dumps(record))


def build_key(state: Path) -> str:
    last = ReuseStore(state).last("build")
    assert last is not None
    return str(last["key"])


def test_a_tampered_result_cannot_point_the_worker_at_another_folder(services: Services, backend: Backend,
                                                                    tmp_path: Path) -> None:
    first, _ = run_from_backend(backend, "c0ffee1")
    assert first.is_completed()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "tree").mkdir(parents=True)
    (elsewhere / "tree" / "secret.txt").write_text("host secret")
    (elsewhere / "manifest.json").write_text(json.dumps({"files": [{
        "path": b"out/b.bin".hex(), "tree": b"secret.txt".hex(), "size": 11, "sha256": "0" * 64}],
        "bytes": 11, "inWorkspace": True}))
    tamper(tmp_path / "state", lambda reuse: reuse.update(artifacts=str(elsewhere), key="../../elsewhere"))

    second, jobs = run_from_backend(backend, "c0ffee1")
    assert second.is_completed()
    assert task_states(second.state_details.flow_run_id)["build"] == "Cached"
    uploaded = backend.http.get(f"/admin/job-executions/{jobs['build']}/artifacts/out/b.bin")
    assert uploaded.content == b"out/b.bin"  # what build kept, not the folder the record named
    executor = services.executor
    assert isinstance(executor, DummyExecutor)
    assert all(b"host secret" not in content for files in executor.files.values() for content in files.values())

    kept = tmp_path / "state" / "reuse" / "artifacts" / build_key(tmp_path / "state") / "manifest.json"  # tampered
    manifest = json.loads(kept.read_text())
    manifest["files"][0]["tree"] = b"../../../elsewhere/tree/secret.txt".hex()
    kept.write_text(json.dumps(manifest))
    third, jobs = run_from_backend(backend, "c0ffee1")
    build = backend.wait_final(jobs["build"])
    assert statuses(build) == ["RUNNING", "FAILED"] and "leaves its folder" in final_log(build)
    assert third.is_failed()
