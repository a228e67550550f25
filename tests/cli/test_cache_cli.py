"""``cicd-worker cache ls | clear``, the ``cache`` key of pipeline files, and a cache across two local runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.pipeline_file import PipelineFileError, load_pipeline_file
from executors.cache_store import CacheStore
from tests.cli.test_local_run import cli


def _save(directory: Path, key: str, size: int) -> None:
    writer = CacheStore(directory).writer(key, 1 << 30)
    start = writer.start_segment()
    writer.write(b"\0" * size)
    writer.end_segment(start, "deps", "", 3, size)
    writer.commit()


def test_cache_ls_lists_and_clear_removes(tmp_path: Path) -> None:
    caches = tmp_path / "state" / "caches"
    _save(caches, "deps-a", 2000)
    _save(caches, "files-0123", 5000)
    (caches / ("f" * 64 + ".cache")).write_bytes(b"junk")
    listed = cli("cache", "ls", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^deps-a +2\.\d kB  \d{4}-\d\d-\d\d ", listed.stdout, re.MULTILINE), listed.stdout
    assert "files-0123" in listed.stdout and "(unreadable: ffff" in listed.stdout
    assert "3 cache(s)" in listed.stdout
    as_json = json.loads(cli("cache", "ls", "--json", cwd=tmp_path).stdout)
    assert {item["key"] for item in as_json} == {"deps-a", "files-0123", None}

    assert cli("cache", "clear", "deps-a", cwd=tmp_path).returncode == 0
    missing = cli("cache", "clear", "deps-a", cwd=tmp_path)
    assert missing.returncode == 1 and "no cache with key 'deps-a'" in missing.stderr
    cleared = cli("cache", "clear", cwd=tmp_path)
    assert cleared.returncode == 0 and "removed 2 cache(s)" in cleared.stdout
    assert list(caches.iterdir()) == []


def test_without_a_state_dir_the_local_runs_caches_are_shown(tmp_path: Path) -> None:
    _save(tmp_path / ".cicd" / "state" / "caches", "local-one", 10)
    env = {name: value for name, value in os.environ.items() if name not in ("WORKER_STATE_DIR", "WORKER_CACHE_DIR")}
    exe = Path(sys.executable).with_name("cicd-worker")
    listed = subprocess.run([str(exe), "cache", "ls"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env=env)
    assert listed.returncode == 0 and "local-one" in listed.stdout


PIPELINE = """\
defaults:
  image: cicd-busybox:latest
  cache: {key: shared, paths: [deps/]}
stages:
  - name: s
    jobs:
      - {name: inherits, script: ["true"]}
      - name: own
        script: ["true"]
        cache: {key: {files: [a.lock, b.lock]}, paths: [deps, .m2/repository], policy: pull}
"""


def test_the_cache_key_of_a_job_and_of_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    jobs = {job.name: job for job in load_pipeline_file(path).jobs}
    assert jobs["inherits"].cache == {"key": "shared", "paths": ["deps/"], "policy": "pull-push"}
    assert jobs["own"].cache == {"key": {"files": ["a.lock", "b.lock"]}, "paths": ["deps", ".m2/repository"],
                                 "policy": "pull"}


@pytest.mark.parametrize(("cache", "problem"), [
    ("{paths: [/etc]}", "p.yaml:7: stages[0].jobs[0].cache.paths[0]: '/etc': it must be a relative path inside"),
    ("{paths: [a/../../b]}", "cache.paths[0]: 'a/../../b': it must be a relative path inside the working dir"),
    ("{paths: []}", "p.yaml:7: stages[0].jobs[0].cache.paths: must list 1 to 50 paths"),
    ("{key: x}", "p.yaml:7: stages[0].jobs[0].cache.paths: missing"),
    ("{key: {files: []}, paths: [d]}", "cache.key.files: must list 1 to 20 paths"),
    ("{key: {file: [a]}, paths: [d]}", "cache.key.file: unknown key (did you mean 'files'?)"),
    ("{paths: [d], policy: pul}", "cache.policy: 'pul' is not one of pull-push, pull, push (did you mean 'pull'?)"),
    ("[d]", "p.yaml:7: stages[0].jobs[0].cache: must be a mapping"),
])
def test_a_wrong_cache_is_reported_at_its_line(tmp_path: Path, cache: str, problem: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"stages:\n  - name: s\n    jobs:\n      - name: a\n        image: cicd-busybox:latest\n"
                    f"        script: ['true']\n        cache: {cache}\n")
    with pytest.raises(PipelineFileError) as raised:
        load_pipeline_file(path)
    assert any(problem in line for line in raised.value.problems), raised.value.problems


@pytest.mark.slow  # two local runs: ~30 s
def test_a_second_local_run_restores_the_cache_of_the_first(tmp_path: Path, docker_client) -> None:
    (tmp_path / "deps.lock").write_text("one\n")
    (tmp_path / "pipeline.yaml").write_text(
        "stages:\n  - name: s\n    jobs:\n      - name: fetch\n        image: cicd-busybox:latest\n"
        "        cache: {key: {files: [deps.lock]}, paths: [deps/]}\n"
        "        script: ['test -f deps/got || (mkdir deps && echo fetched > deps/got)', 'cat deps/got']\n")
    first = cli("run", "pipeline.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert re.search(r"fetch \| \[cicd-worker\] cache files-\w+: saved 1 files", first.stdout), first.stdout
    second = cli("run", "pipeline.yaml", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert re.search(r"fetch \| \[cicd-worker\] cache files-\w+: restored 1 files", second.stdout), second.stdout
    listed = cli("cache", "ls", cwd=tmp_path)
    assert re.search(r"^files-\w+ ", listed.stdout, re.MULTILINE), listed.stdout
