"""``DockerExecutor.volume_files`` against the real engine: a volume's files matching globs hashed as a project
folder's are (same paths, same hashes), links hashed by their target's text and never followed, a folder under
a link not read, the byte cap refusing, no container left."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from executors.base import JobSpec
from executors.docker_executor import DockerExecutor
from executors.volume_files import HashLimits, InputsNotHashed, link_hash
from flows.reuse_keys import InputFiles
from tests.conftest import WORKER_ID
from tests.support import TEST_IMAGE

LIMITS = HashLimits(max_bytes=1 << 20, timeout_seconds=60)
WRITE = ["mkdir -p src/sub docs", "echo one > src/a.txt", "printf 'two' > src/sub/b.txt", "echo doc > docs/d.md",
         "ln -s ../docs src/docs", "ln -s /etc/passwd src/passwd", "ln -s src alias"]


@pytest.fixture()
def volume(docker_client: docker.DockerClient) -> Iterator[tuple[DockerExecutor, str]]:
    executor = DockerExecutor(WORKER_ID, stop_grace_seconds=2)
    name = f"cicd-test-inputs-{uuid.uuid4().hex[:8]}"
    executor.create_volume(name, {})
    spec = JobSpec(job_execution_id=str(uuid.uuid4()), name="write", image=TEST_IMAGE, script=tuple(WRITE),
                   workspace_volume=name, pull_policy="never")
    assert executor.run(spec, lambda line: None, threading.Event()).succeeded
    yield executor, name
    executor.remove_volume(name)


def project(root: Path) -> Path:
    """The same files as the volume, as a project folder on this host."""
    (root / "src" / "sub").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "src" / "a.txt").write_text("one\n")
    (root / "src" / "sub" / "b.txt").write_text("two")
    (root / "docs" / "d.md").write_text("doc\n")
    os.symlink("../docs", root / "src" / "docs")
    os.symlink("/etc/passwd", root / "src" / "passwd")
    os.symlink("src", root / "alias")
    return root


def test_volume_files_hash_as_a_project_folders_do(volume: tuple[DockerExecutor, str], tmp_path: Path) -> None:
    executor, name = volume
    globs = ["src/**", "alias/a.txt", "docs/*.md"]
    found = executor.volume_files(name, TEST_IMAGE, "/workspace", globs, LIMITS)
    assert sorted(found) == ["docs/d.md", "src/a.txt", "src/docs", "src/passwd", "src/sub/b.txt"]  # alias/: a link
    assert found["src/passwd"] == link_hash("/etc/passwd")  # its text, never what it points at
    # A project folder's link out of it is left out of the seed (and so of the inputs); in a volume it is there.
    assert {path: value for path, value in found.items() if path != "src/passwd"} == \
        InputFiles(project(tmp_path)).matching(globs)
    assert executor.volume_files(name, TEST_IMAGE, "/workspace", ["nothing/**", "src/*.c"], LIMITS) == {}


def test_volume_files_refuse_past_the_byte_cap(volume: tuple[DockerExecutor, str],
                                               docker_client: docker.DockerClient) -> None:
    executor, name = volume
    with pytest.raises(InputsNotHashed, match="over 1000 bytes"):
        executor.volume_files(name, TEST_IMAGE, "/workspace", ["src/**"], HashLimits(1000, 60))
    left = docker_client.containers.list(all=True, filters={"label": f"cicd.worker-id={WORKER_ID}",
                                                            "volume": name})
    assert left == []
