"""What the benchmarks read off this host, and the number helpers they print it with.

``/proc`` (memory, threads, open files and CPU of a process, of a session, of every process) and the
Docker engine's container events. Stdlib only: nothing here knows the worker.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
LIFECYCLE = ("create", "start", "die", "destroy")  # the container actions the benchmarks time


# -- numbers ---------------------------------------------------------------------------------------------------


def epoch(text: str | None) -> float | None:
    """ISO text (naive = UTC, as the reference backend writes it) as epoch seconds."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def p90(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def fmt(value: float | None, width: int = 9, digits: int = 1) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'n/a':>{width}}"


def verdict(measure: str, value: float | None, target: float, unit: str = "", higher_is_better: bool = False) -> str:
    """One line ``measure: value (target <= T) PASS|MISS`` (``>=`` when higher is better), printed and returned.

    A missing value is a MISS: a benchmark that could not measure has not met its target.
    """
    sign = ">=" if higher_is_better else "<="
    met = value is not None and (value >= target if higher_is_better else value <= target)
    shown = "n/a" if value is None else f"{value:.2f}{unit}"
    line = f"{measure}: {shown} (target {sign} {target:g}{unit}) {'PASS' if met else 'MISS'}"
    print(line, flush=True)
    return line


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- /proc -----------------------------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A number of ``/proc/PID/status``: VmHWM and VmRSS (in KiB), Threads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def threads_and_fds(pid: int) -> tuple[int, int]:
    return proc_status(pid, "Threads"), len(os.listdir(f"/proc/{pid}/fd"))


def _stat(pid: int | str) -> tuple[str, list[str]]:
    """The command name and the fields from 3 (state) on of ``/proc/PID/stat`` (the name may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (its threads included), in seconds."""
    fields = _stat(pid)[1]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def processes() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, command name, stat fields from 3 on) of every live process; one that ends meanwhile is skipped."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                yield int(entry.name), *_stat(entry.name)


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU of every live process of a session (a server and the children it started)."""
    return sum((int(fields[11]) + int(fields[12])) / CLK_TCK for _, _, fields in processes() if int(fields[3]) == sid)


class Monitor:
    """Samples a process's VmRSS (KiB), threads and open files every ``interval`` s on a thread; keeps the maxima."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.rss_kib = self.threads = self.fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                threads, fds = threads_and_fds(self.pid)
                self.rss_kib = max(self.rss_kib, proc_status(self.pid, "VmRSS"))
                self.threads, self.fds = max(self.threads, threads), max(self.fds, fds)
            if self._stop.wait(self.interval):
                return


# -- docker events -----------------------------------------------------------------------------------------------

CATCH_UP_SECONDS = 0.3  # for the stream to catch up with the engine before a look-up


def engine_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def _by_label(events: list[dict[str, Any]], label: str) -> dict[str, dict[str, float]]:
    """Label value -> first epoch time of each action of the containers carrying that label."""
    out: dict[str, dict[str, float]] = {}
    for event in events:
        value = ((event.get("Actor") or {}).get("Attributes") or {}).get(label)
        if value is not None:
            out.setdefault(value, {}).setdefault(event.get("Action", ""), event["timeNano"] / 1e9)
    return out


class EngineEvents:
    """A ``docker events`` child process streamed for the whole session (container lifecycle only).

    Streamed live rather than asked for afterwards with ``--since``: the engine keeps only its last 256
    events for such queries, fewer than one measurement (and other users of the engine) produces. When the
    stream ends (the engine stopped or restarted: on a shared host, someone else's doing) ``breaks`` counts
    it and a new stream resumes from the last event seen; a container missing from the stream is looked up
    with a bounded ``docker events --since --until`` query.
    """

    ACTIONS = ("create", "attach", *LIFECYCLE[1:])

    def __init__(self) -> None:
        self.breaks = 0  # streams that ended while the session ran: the engine went away meanwhile
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._stopping = threading.Event()
        self._since = time.time()

    def _filters(self) -> list[str]:
        return ["--filter", "type=container",
                *[arg for action in self.ACTIONS for arg in ("--filter", f"event={action}")],
                "--format", "{{json .}}"]

    def start(self) -> EngineEvents:
        self._reader = threading.Thread(target=self._read, name="docker-events", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        while True:
            with self._lock:  # stop() sets the flag under the lock: no stream is started after it
                if self._stopping.is_set():
                    return
                process = self._process = subprocess.Popen(
                    ["docker", "events", "--since", f"{self._since:.6f}", *self._filters()],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                with contextlib.suppress(ValueError, KeyError):
                    event = json.loads(line)
                    with self._lock:
                        self._events.append(event)
                    self._since = max(self._since, event["timeNano"] / 1e9)
            process.wait()
            with self._lock:
                self.breaks += not self._stopping.is_set()
            self._stopping.wait(0.5)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def by_label(self, label: str) -> dict[str, dict[str, float]]:
        """Label value -> first epoch time of each action, for every container seen with that label."""
        return _by_label(self.events(), label)

    def containers(self, since: float = 0.0, until: float = math.inf) -> list[dict[str, Any]]:
        """Containers created in [since, until]: {"id", "attributes", action: first epoch time} each."""
        time.sleep(CATCH_UP_SECONDS)
        by_id: dict[str, dict[str, Any]] = {}
        for event in self.events():
            actor = event.get("Actor") or {}
            entry = by_id.setdefault(actor.get("ID", ""), {"id": actor.get("ID", ""),
                                                           "attributes": actor.get("Attributes") or {}})
            entry.setdefault(event.get("Action", ""), event["timeNano"] / 1e9)
        return [c for c in by_id.values() if "create" in c and since <= c["create"] <= until]

    def container(self, label: str, value: str, since: float) -> dict[str, float]:
        """Epoch seconds of each action of the container with that label value (asked of the engine when the
        stream missed its creation or removal)."""
        time.sleep(CATCH_UP_SECONDS)
        found = self.by_label(label).get(value, {})
        if "create" in found and "destroy" in found:
            return found
        query = subprocess.run(["docker", "events", "--since", f"{since - 1:.6f}", "--until", f"{time.time():.6f}",
                                "--filter", f"label={label}={value}", *self._filters()],
                               capture_output=True, text=True, timeout=60)
        events = []
        for line in query.stdout.splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return _by_label(events, label).get(value) or found
