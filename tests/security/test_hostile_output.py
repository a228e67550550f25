"""Job output cannot hurt the worker: long lines, pathological globs, many files, links, pattern caps.

Attacks tried against a real worker process: 64 MiB printed without a newline (the old splitter re-copied
the pending bytes on every chunk: 107 s of worker CPU), an artifact glob that made the old regex
backtrack for minutes, 300,000 files left in the working directory (the old collector kept every tar
entry: 139 MiB), links pointing out of the working directory (one used to fail the job and lose every
artifact), and too many or too long patterns. Worker CPU is user+system time of the worker process from
``/proc/<pid>/stat``; memory its resident set from ``/proc/<pid>/status``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support import TEST_IMAGE, Backend, WorkerProcess, final_log, statuses
from tests.worker_api.test_execute_job import run_one

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20


def worker_cpu_seconds(worker: WorkerProcess) -> float:
    assert worker.process is not None
    text = Path(f"/proc/{worker.process.pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def worker_rss_kib(worker: WorkerProcess) -> int:
    assert worker.process is not None
    for line in Path(f"/proc/{worker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssPeak:
    """The largest resident set of the worker seen while the block runs (sampled every 50 ms)."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker, self.peak_kib, self._stop = worker, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssPeak:
        self.before_kib = worker_rss_kib(self.worker)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, worker_rss_kib(self.worker))

    @property
    def growth_mib(self) -> float:
        return max(self.peak_kib - self.before_kib, 0) / 1024


def test_64_mib_without_newline_costs_the_worker_little_cpu(backend: Backend, worker: WorkerProcess) -> None:
    before = worker_cpu_seconds(worker)
    with RssPeak(worker) as memory:
        record = run_one(backend, worker, timeout=240, script=["head -c 67108864 /dev/zero | tr '\\0' a"])
    spent = worker_cpu_seconds(worker) - before
    print(f"\n64 MiB line: worker CPU {spent:.2f} s, RSS growth {memory.growth_mib:.1f} MiB")
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)[-2000:]
    lines = [line for chunk in record["logChunks"] for line in chunk["lines"]]
    pieces = [line for line in lines if line.startswith("a")]
    assert sum(map(len, pieces)) == 64 * MIB and {len(p) for p in pieces} == {65536}
    assert record["history"][-1]["logBytes"] == sum(len(line.encode()) + 1 for line in lines)
    assert spent < 10  # the old splitter: 107 s; the splitter alone is tested at < 1 s in tests/executors
    assert memory.growth_mib < 100


def test_pathological_glob_is_matched_fast(backend: Backend, worker: WorkerProcess) -> None:
    deep = "/".join(["d"] * 30)
    pattern = "**/" * 12 + "x"  # 172 s against one 30-level path with the old regex
    before = worker_cpu_seconds(worker)
    record = run_one(backend, worker, timeout=120, artifacts=[pattern, "*a" * 8 + "b"], script=[
        f"mkdir -p {deep} && cd {deep} && for i in $(seq 30); do touch y$i; cd ..; done",
        f"printf %s {'a' * 200} > {'a' * 200}",
        "echo found > x",
    ])
    spent = worker_cpu_seconds(worker) - before
    print(f"\npathological glob: worker CPU for the whole job {spent:.2f} s")
    assert statuses(record) == ["RUNNING", "SUCCESS"], final_log(record)
    assert [a["name"] for a in record["artifacts"]] == ["x"]
    assert spent < 2


@pytest.mark.slow
def test_300k_files_and_one_artifact(backend: Backend, worker: WorkerProcess) -> None:
    # Six directories filled at once; touch through xargs is the fastest busybox has (~30-60 s here).
    fill = ("(mkdir junk && cd junk && for d in 0 1 2 3 4 5; do mkdir $d; (cd $d && seq 50000 | xargs touch) & done;"
            " wait)")
    before = worker_cpu_seconds(worker)
    with RssPeak(worker) as memory:
        started = time.monotonic()
        record = run_one(backend, worker, timeout=280, artifacts=["**/app.bin"], script=[
            fill, "mkdir -p dist && head -c 100000 /dev/urandom > dist/app.bin",
            "sha256sum dist/app.bin", "find junk -type f | wc -l",
        ])
        elapsed = time.monotonic() - started
    spent = worker_cpu_seconds(worker) - before
    print(f"\n300k files: job {elapsed:.1f} s, worker CPU {spent:.2f} s, RSS growth {memory.growth_mib:.1f} MiB")
    log = final_log(record)
    assert statuses(record) == ["RUNNING", "SUCCESS"], log[-3000:]
    assert "\n300000\n" in log
    digest = next(line.split()[0] for line in log.splitlines() if line.endswith("  dist/app.bin"))
    assert record["artifacts"] == [{"name": "dist/app.bin", "size": 100000, "sha256": digest}]
    assert memory.growth_mib < 50  # every tar entry kept: 139 MiB


def test_link_out_of_the_working_dir_is_skipped_and_the_rest_uploaded(backend: Backend,
                                                                      worker: WorkerProcess) -> None:
    record = run_one(backend, worker, artifacts=["leak", "rel-leak", "via/passwd", "alias", "good.txt"], script=[
        "ln -s /etc/passwd leak", "ln -s ../../etc/hosts rel-leak", "ln -s /etc via",
        "echo good > good.txt", "ln -s good.txt alias",
    ])
    log = final_log(record)
    assert statuses(record) == ["RUNNING", "SUCCESS"], log
    assert record["artifacts"] == [{"name": "good.txt", "size": 5,
                                    "sha256": hashlib.sha256(b"good\n").hexdigest()}]
    assert "'leak' is a link to '/etc/passwd', outside the working directory: skipped" in log
    assert "'rel-leak' is a link to '../../etc/hosts', outside the working directory: skipped" in log
    assert "'via' is a link to '/etc', outside the working directory: skipped" in log
    assert "'alias' is a link to 'good.txt': skipped" in log
    assert "matched no file" not in log


def _execute(worker: WorkerProcess, artifacts: list[str]) -> httpx.Response:
    body = {"id": str(uuid.uuid4()), "local": False, "startTime": [2025, 3, 5, 14, 30, 0],
            "job": {"name": "j", "dockerImage": TEST_IMAGE, "script": ["true"], "artifacts": artifacts}}
    return httpx.post(f"{worker.url}/api/job/execute", json=body, timeout=30)


def test_too_many_or_too_long_patterns_are_refused(worker: WorkerProcess) -> None:
    for artifacts, reason in ((["a"] * 101, "101 artifact patterns; at most 100"),
                              (["x" * 1025], "1025 characters; at most 1024")):
        answer = _execute(worker, artifacts)
        assert answer.status_code == 422 and answer.json()["field"] == "job.artifacts", answer.text
        assert reason in answer.text
