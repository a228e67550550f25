"""What ``cicd-worker run`` prints: quiet by default, each job's lines prefixed with its name, the summary in file
order with the failed jobs' last lines, the logs on disk, and one live area on a terminal (a pseudo terminal)."""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cli.console import JobOutput, printable
from core.models import JobDTO, JobExecutionDTO

EXE = Path(sys.executable).with_name("cicd-worker")
IMAGE = "cicd-busybox:latest"
PREFECT_NOISE = ("Running hook", "Finished in state", "finished running successfully", " INFO ", "prefect.")
SGR = re.compile(r"\x1b\[[0-9;]*m")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "WORKER_PULL_POLICY": "never", "WORKER_STATE_DIR": str(tmp_path / "state"), **extra}


def run_plain(tmp_path: Path, text: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``cicd-worker run`` on ``text`` (written to ``pipeline.yaml``), output captured (not a terminal)."""
    (tmp_path / "pipeline.yaml").write_text(text)
    return subprocess.run([str(EXE), "run", "pipeline.yaml", *options], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=180)


def run_on_terminal(tmp_path: Path, text: str, timeout: float = 180) -> tuple[int, str]:
    """``cicd-worker run`` on a pseudo terminal 100 columns wide; its exit code and everything it wrote."""
    (tmp_path / "pipeline.yaml").write_text(text)
    leader, follower = os.openpty()
    process = subprocess.Popen([str(EXE), "run", "pipeline.yaml"], cwd=tmp_path, stdin=follower, stdout=follower,
                               stderr=follower, env=_env(tmp_path, TERM="xterm", COLUMNS="100", LINES="40"))
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=30), b"".join(chunks).decode("utf-8", errors="replace")


def _pipeline(*jobs: str) -> str:
    return "name: shown\nstages:\n  - name: only\n    jobs:\n" + "".join(f"      - {job}\n" for job in jobs)


def _job_lines(stdout: str, name: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(rf"{re.escape(name)} *( +\d+\.\d\ds)? \| ", line)]


def test_parallel_jobs_quiet_prefixed_attributable_and_logged(tmp_path: Path, docker_client) -> None:
    result = run_plain(tmp_path, _pipeline(
        f"{{name: zeta-long-name, image: '{IMAGE}', script: ['for i in 1 2 3 4 5; do echo zeta-$i; sleep 0.1; done']}}",
        f"{{name: a, image: '{IMAGE}', script: ['for i in 1 2 3 4 5; do echo a-$i; sleep 0.1; done', "
        f"\"printf 'x\\\\rfinal 00:00:00 job=a status=FAILED\\\\n'\", \"printf '\\\\033[31mred\\\\033[0m\\\\n'\"]}}"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    everything = result.stdout + result.stderr
    assert not [line for line in everything.splitlines() if any(noise in line for noise in PREFECT_NOISE)]
    assert "/runs/flow-run/" in result.stdout  # the Prefect UI link stays
    zeta, a = _job_lines(result.stdout, "zeta-long-name"), _job_lines(result.stdout, "a")
    assert [line.split(" | ", 1)[1] for line in zeta if "[cicd-worker]" not in line][-5:] == [
        f"zeta-{i}" for i in range(1, 6)]
    assert {f"a              | a-{i}" for i in range(1, 6)} <= set(a)  # padded to the longest name
    assert "a              | x\\rfinal 00:00:00 job=a status=FAILED" in a  # a carriage return cannot forge a line
    assert "a              | red" in a and "\x1b" not in result.stdout  # colours dropped off a terminal
    for line in result.stdout.splitlines():  # every line is a job's, a status change, or the run's own
        assert re.match(r"(zeta-long-name|a {13}) \| |(final )?\d\d:\d\d:\d\d job=|running pipeline |pipeline |"
                        r"logs: |Prefect UI: ", line), line
    finals = [line for line in result.stdout.splitlines() if line.startswith("final ")]
    assert [re.search(r"job=(\S+)", line).group(1) for line in finals] == ["zeta-long-name", "a"]  # file order
    assert all(" exit=0" in line for line in finals)
    assert re.search(r"^pipeline shown: SUCCEEDED in \d+\.\ds ", result.stdout, re.M)
    assert "artifacts:" not in result.stdout  # none made
    logs = next((tmp_path / ".cicd" / "runs").iterdir()) / "logs"
    assert sorted(path.name for path in logs.iterdir()) == ["a.log", "zeta-long-name.log"]
    logged = (logs / "a.log").read_bytes().decode().split("\n")
    assert [line for line in logged if line.startswith("a-")] == [f"a-{i}" for i in range(1, 6)]
    assert "x\rfinal 00:00:00 job=a status=FAILED" in logged and "\x1b[31mred\x1b[0m" in logged  # as printed


def test_failed_job_tail_allowed_failure_and_timestamps(tmp_path: Path, docker_client) -> None:
    result = run_plain(tmp_path, _pipeline(
        f"{{name: bad, image: '{IMAGE}', script: ['for i in $(seq 1 30); do echo line-$i; done', 'exit 3']}}",
        f"{{name: flaky, image: '{IMAGE}', allow_failure: true, script: ['echo flaky says', 'exit 1']}}",
        f"{{name: good, image: '{IMAGE}', script: ['echo fine']}}"), "--timestamps")
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^bad   +\d+\.\d\ds \| line-1$", out, re.M)  # the seconds since the job's start
    finals = [line for line in out.splitlines() if line.startswith("final ")]
    assert [re.search(r"job=(\S+)", line).group(1) for line in finals] == ["bad", "flaky", "good"]
    assert re.search(r"job=bad .*status=FAILED .*exit=3$", finals[0])
    assert re.search(r"job=flaky .*status=SUCCESS .*exit=1 \(allowed to fail\)$", finals[1])
    assert finals[2].endswith("exit=0")
    logs = next((tmp_path / ".cicd" / "runs").iterdir()) / "logs"
    head = f"--- bad: last 20 lines (whole log: {logs.resolve() / 'bad.log'}) ---"
    assert head in out and "--- flaky: last 20 lines" in out and "--- good:" not in out
    tail = out.split(head)[1].split("\n---")[0].strip().splitlines()
    assert len(tail) == 20 and all(line.startswith("bad   | ") for line in tail)  # no times in the summary
    assert "bad   | line-30" in tail and "bad   | line-1" not in tail
    assert "line-1\n" in (logs / "bad.log").read_text()  # the whole log on disk
    assert re.search(r"^pipeline shown: FAILED in \d+\.\ds ", out, re.M)


def test_terminal_live_area_drawn_in_place_and_table_once(tmp_path: Path, docker_client) -> None:
    code, screen = run_on_terminal(tmp_path, _pipeline(
        f"{{name: one, image: '{IMAGE}', script: ['for i in 1 2 3 4 5 6; do echo one-$i; sleep 0.2; done']}}"))
    assert code == 0, screen[-3000:]
    text = SGR.sub("", screen)
    assert text.count("pipeline shown: SUCCEEDED") == 2  # the table's title, then the verdict line
    assert len(re.findall(r"pipeline shown: SUCCEEDED\s*\r?\n", text)) == 1  # the title, once
    assert "Running hook" not in text and "Finished in state" not in text
    for number in range(1, 7):  # each output line once, alone on its line: never glued to a border
        assert len(re.findall(rf"one \| one-{number}\b", text)) == 1, text
        before = text[text.index(f"one | one-{number}") - 1]
        assert before in "\n\r" or before == "K", repr(text[text.index(f"one | one-{number}") - 20:][:40])


def test_version(tmp_path: Path) -> None:
    result = subprocess.run([str(EXE), "--version"], capture_output=True, text=True, timeout=60,
                            env=_env(tmp_path, WORKER_PORT="not a port"))  # answered whatever the settings
    assert result.returncode == 0
    assert result.stdout.strip() == f"cicd-worker {importlib.metadata.version('cicd-worker')}"


def test_a_name_with_control_characters_cannot_forge_a_line(tmp_path: Path) -> None:
    forged = "x\nfinal 00:00:00 job=deploy status=SUCCESS\x1b[2K\r"
    assert printable(forged) == "x\\nfinal 00:00:00 job=deploy status=SUCCESS\\x1b[2K\\r"
    out = io.StringIO()
    output = JobOutput([forged, "b"], lambda name: tmp_path / f"{len(name)}.log", out=out)
    # The models refuse such a name; built without validation here, as a second line of defence.
    job = JobExecutionDTO.model_construct(id=uuid.uuid4(), job=JobDTO.model_construct(name=forged))
    output.listener(job)(["hello"])
    assert out.getvalue().count("\n") == 1 and out.getvalue().endswith(" | hello\n")
