"""Job caches against the real engine: saved after a success, restored before the next script, keyed by a string
or by files' content, capped, and never failing a job; plus the host store's own rules (no engine)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from executors.base import CacheSpec, JobResult, JobSpec
from executors.cache_store import CacheEntry, CacheStore
from executors.docker_executor import DockerExecutor
from tests.conftest import WORKER_ID
from tests.support import TEST_IMAGE

NOTE = "[cicd-worker] cache"
REFUSED = "refused: it must be a relative path inside the working dir (not absolute, no '..')"


@pytest.fixture(scope="module")
def executor(docker_client: docker.DockerClient) -> DockerExecutor:
    return DockerExecutor(WORKER_ID, max_containers=4, stop_grace_seconds=2)


@pytest.fixture()
def caches(tmp_path: Path) -> Path:
    return tmp_path / "caches"


@pytest.fixture()
def volumes(executor: DockerExecutor) -> Iterator[list[str]]:
    """Workspace volumes a test makes; removed afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        executor.remove_volume(name)


def spec_of(*script: str, cache: CacheSpec, **overrides: Any) -> JobSpec:
    return JobSpec(job_execution_id=f"exec-cache-{uuid.uuid4()}", name="cache-job", image=TEST_IMAGE,
                   script=script, pull_policy="never", cache=cache, **overrides)


def run(executor: DockerExecutor, spec: JobSpec) -> tuple[JobResult, list[str]]:
    lines: list[str] = []
    result = executor.run(spec, lines.append, threading.Event())
    return result, lines


def notes(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(NOTE)]


def seeded_volume(executor: DockerExecutor, volumes: list[str], project: Path) -> str:
    name = f"cicd-test-cache-{uuid.uuid4().hex[:10]}"
    volumes.append(name)
    executor.create_volume(name, {})
    executor.seed_volume(name, project, TEST_IMAGE)
    return name


def test_a_cache_saved_by_one_run_is_restored_before_the_next_script(executor: DockerExecutor,
                                                                      caches: Path) -> None:
    cache = CacheSpec(key="deps-$CI_JOB_NAME", paths=("deps/", "out/nested/more"), directory=caches)
    env = {"CI_JOB_NAME": "build"}
    first, lines = run(executor, spec_of("mkdir -p deps/sub out/nested/more", "echo lib > deps/sub/lib.txt",
                                         "echo x > out/nested/more/x.txt", cache=cache, env=env))
    assert first.succeeded, lines
    assert notes(lines) == [f"{NOTE} deps-build: not found", f"{NOTE} deps-build: saved 2 files (0.0 MB)"]

    # A fresh container without a workspace volume: only the cache can bring the files (their folders included).
    second, lines = run(executor, spec_of("cat deps/sub/lib.txt out/nested/more/x.txt", cache=cache, env=env))
    assert second.succeeded, lines
    restored = lines.index(f"{NOTE} deps-build: restored 2 files (0.0 MB)")
    assert restored < lines.index("lib") < lines.index("x")
    [entry] = CacheStore(caches).entries()
    assert isinstance(entry, CacheEntry) and entry.key == "deps-build" and entry.files == 2


def test_policy_pull_restores_but_never_saves(executor: DockerExecutor, caches: Path) -> None:
    cache = CacheSpec(key="pull-only", paths=("deps",), directory=caches, policy="pull")
    result, lines = run(executor, spec_of("mkdir deps", "echo a > deps/a", cache=cache))
    assert result.succeeded
    assert notes(lines) == [f"{NOTE} pull-only: not found", f"{NOTE} pull-only: not saved (policy pull)"]
    assert CacheStore(caches).entries() == []


def test_a_failed_job_saves_nothing(executor: DockerExecutor, caches: Path) -> None:
    cache = CacheSpec(key="failing", paths=("deps",), directory=caches)
    result, lines = run(executor, spec_of("mkdir deps", "echo a > deps/a", "exit 3", cache=cache))
    assert result.exit_code == 3
    assert notes(lines) == [f"{NOTE} failing: not found"]
    assert CacheStore(caches).entries() == []


def test_a_files_key_changes_when_the_lock_file_changes(executor: DockerExecutor, caches: Path,
                                                        volumes: list[str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "lock.txt").write_text("left-pad 1.0\n")
    cache = CacheSpec(key="", files=("lock.txt", "absent.lock"), paths=("deps",), directory=caches)
    script = ("test -d deps || (mkdir deps && echo fetched > deps/lib)", "cat deps/lib")

    def run_on_fresh_workspace() -> list[str]:
        volume = seeded_volume(executor, volumes, project)
        result, lines = run(executor, spec_of(*script, cache=cache, workspace_volume=volume))
        assert result.succeeded, lines
        return notes(lines)

    first = run_on_fresh_workspace()
    key = first[0].split(":")[0].removeprefix(f"{NOTE} ")
    assert key.startswith("files-") and first == [f"{NOTE} {key}: not found", f"{NOTE} {key}: saved 1 files (0.0 MB)"]
    assert run_on_fresh_workspace()[0] == f"{NOTE} {key}: restored 1 files (0.0 MB)"
    (project / "lock.txt").write_text("left-pad 1.1\n")
    changed = run_on_fresh_workspace()
    assert changed[0].endswith(": not found") and key not in changed[0]


def test_a_cache_over_the_cap_is_not_saved_and_the_job_succeeds(executor: DockerExecutor, caches: Path) -> None:
    cache = CacheSpec(key="big", paths=("deps",), directory=caches, max_bytes=20_000)
    result, lines = run(executor, spec_of("mkdir deps", "dd if=/dev/zero of=deps/big bs=1024 count=50 2>/dev/null",
                                          cache=cache))
    assert result.succeeded
    assert notes(lines)[-1] == f"{NOTE} big: WARNING: not saved: bigger than WORKER_CACHE_MAX_BYTES (20000 bytes)"
    assert list(caches.iterdir()) == []  # no temporary file left either


def test_a_corrupt_cache_file_is_reported_and_the_job_runs_without_it(executor: DockerExecutor,
                                                                      caches: Path) -> None:
    store = CacheStore(caches)
    caches.mkdir()
    store.file_for("broken").write_bytes(b"not a cache " * 100)
    cache = CacheSpec(key="broken", paths=("deps",), directory=caches)
    result, lines = run(executor, spec_of("echo ran", "mkdir deps", "echo a > deps/a", cache=cache))
    assert result.succeeded and "ran" in lines
    assert notes(lines)[0].startswith(f"{NOTE} broken: WARNING: restore failed, the job runs without (all of) its "
                                      "cache: CacheCorrupt: no cache manifest at its end")
    assert notes(lines)[1] == f"{NOTE} broken: saved 1 files (0.0 MB)"  # a good one replaced it


def test_an_archive_the_engine_refuses_is_reported_and_the_job_runs(executor: DockerExecutor, caches: Path) -> None:
    writer = CacheStore(caches).writer("garbled", 1 << 20)
    start = writer.start_segment()
    writer.write(b"\x01" * 4096)  # no tar at all, behind a valid manifest
    writer.end_segment(start, "deps", "", 1, 4096)
    writer.commit()
    cache = CacheSpec(key="garbled", paths=("deps",), directory=caches, policy="pull")
    result, lines = run(executor, spec_of("echo ran", cache=cache))
    assert result.succeeded and "ran" in lines
    assert notes(lines)[0].startswith(f"{NOTE} garbled: WARNING: restore failed")


def test_paths_outside_the_working_dir_are_refused(executor: DockerExecutor, caches: Path) -> None:
    cache = CacheSpec(key="outside", paths=("/etc", "../up", "deps"), directory=caches, policy="push")
    result, lines = run(executor, spec_of("mkdir deps", "echo a > deps/a", cache=cache))
    assert result.succeeded
    assert notes(lines) == [
        f"{NOTE} outside: WARNING: path '/etc' {REFUSED}",
        f"{NOTE} outside: WARNING: path '../up' {REFUSED}",
        f"{NOTE} outside: saved 1 files (0.0 MB)"]


# -- the host store, without the engine ----------------------------------------------------------------------


def _save(store: CacheStore, key: str, size: int) -> CacheEntry:
    writer = store.writer(key, 1 << 30)
    start = writer.start_segment()
    writer.write(b"\0" * size)
    writer.end_segment(start, "deps", "", 1, size)
    return writer.commit()


def test_the_least_recently_used_caches_go_first(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    old, used, new = (_save(store, key, 10_000) for key in ("old", "used", "new"))
    now = time.time()
    os.utime(old.file, (now - 300, now - 300))
    os.utime(used.file, (now - 200, now - 200))
    store.touch(used)  # restored just now: younger than "old"
    assert store.evict(25_000, keep=new.file) == 1
    assert sorted(entry.key for entry in store.entries() if isinstance(entry, CacheEntry)) == ["new", "used"]


def test_the_last_writer_of_a_key_wins_and_nothing_torn_is_seen(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    first, second = store.writer("same", 1 << 20), store.writer("same", 1 << 20)
    for writer, size in ((first, 100), (second, 200)):
        start = writer.start_segment()
        writer.write(b"\0" * size)
        writer.end_segment(start, "deps", "", 1, size)
    with store.open("same") as found:
        assert found is None  # nothing visible before a commit
    second.commit()
    first.commit()
    with store.open("same") as found:
        assert found is not None and found[0].content_bytes == 100
    assert [path.name for path in tmp_path.iterdir()] == [store.file_for("same").name]
