"""py-spy around the worker process: profiles of the log path (``bench.logs``, ``bench.soak``), thread names.

``.venv/bin/pip install py-spy`` first. ``record --threads --format raw`` writes collapsed stacks, one line
per stack with its sample count; ``summarise_gil`` and ``summarise_wall`` print where they went.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PROFILE_MODES = {
    # which thread holds the GIL, where: the worker's Python CPU
    "gil": ["--gil"],
    # every thread at every sample, waiting included: where each thread's wall time goes
    "wall": ["--idle"],
}
GENERIC_FRAMES = ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run (threading.py)")
LOG_PATH_THREADS = ("logs-", "logship-", "outbox-sender", "flow_")


def py_spy() -> str | None:
    """The py-spy executable: next to this Python's, or on PATH (None when not installed)."""
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, out: Path, mode: str) -> subprocess.Popen[bytes]:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "wb") as err:
        spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "100", "--threads",
                                *PROFILE_MODES[mode], "--format", "raw", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    time.sleep(1.0)  # attached before the job starts
    if spy.poll() is not None:
        raise RuntimeError(f"py-spy exited at once: {out.with_suffix('.log').read_text()[-1000:]}")
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)


def _frame_name(frame: str) -> str:
    """``function (path/to/file.py:123)`` -> ``function (file.py)`` (package path kept for site-packages)."""
    found = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not found:
        return frame
    path = found.group(2)
    parts = Path(path).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts else path
    return f"{found.group(1)} ({short})"


def _thread_label(frame: str) -> str:
    """``thread (12979): logs-print`` -> ``logs-print [12979]`` (names repeat: Prefect starts several threads
    of one name); ``thread (12979)`` when py-spy has no name."""
    found = re.match(r"thread \((\w+)\)(?:: (.*))?$", frame)
    if not found:
        return frame
    return f"{found.group(2)} [{found.group(1)}]" if found.group(2) else f"thread [{found.group(1)}]"


@dataclass
class Profile:
    total: int = 0
    per_thread: Counter[str] = field(default_factory=Counter)
    leaf: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    leaf_by_thread: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    inclusive_by_thread: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


def read_profile(path: Path) -> Profile:
    profile = Profile()
    for raw in path.read_text().splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = _thread_label(frames[0])
        named = [_frame_name(f) for f in frames[1:]
                 if not f.startswith("process ") and not f.startswith(GENERIC_FRAMES)]
        profile.total += count
        profile.per_thread[thread] += count
        leaf = named[-1] if named else "(no Python frame)"
        profile.leaf[leaf] += count
        profile.leaf_by_thread[thread][leaf] += count
        for name in set(named):
            profile.inclusive[name] += count
            profile.inclusive_by_thread[thread][name] += count
    return profile


def _print_counter(counter: Counter[str], total: int, top: int, indent: str = "    ") -> None:
    for name, count in counter.most_common(top):
        print(f"{indent}{100 * count / total:5.1f}%  {name}")


def summarise_gil(path: Path, seconds: float, top: int = 20) -> None:
    """Where the worker's Python runs: samples of the GIL holder, per thread and per function."""
    if not path.exists():
        print(f"  (no profile at {path})")
        return
    profile = read_profile(path)
    if not profile.total:
        print("  (no samples)")
        return
    print(f"  GIL held in {profile.total} of ~{seconds * 100:.0f} samples (100 Hz over {seconds:.1f} s): the GIL was "
          f"busy ~{profile.total / (seconds * 100) * 100:.0f}% of the run")
    print("  GIL holder by thread:")
    _print_counter(profile.per_thread, profile.total, 8)
    print(f"  self (leaf frame) while holding the GIL, top {top}:")
    _print_counter(profile.leaf, profile.total, top)
    print(f"  inclusive while holding the GIL, top {top}:")
    _print_counter(profile.inclusive, profile.total, top)
    for thread, count in profile.per_thread.most_common(3):
        print(f"  within {thread} ({100 * count / profile.total:.1f}% of GIL samples), inclusive top 12:")
        _print_counter(profile.inclusive_by_thread[thread], count, 12, "      ")


def summarise_wall(path: Path, seconds: float) -> None:
    """Where the wall time of the threads that carry the log goes (waiting included)."""
    if not path.exists():
        print(f"  (no profile at {path})")
        return
    profile = read_profile(path)
    span = max(profile.per_thread.values(), default=0)
    print(f"  {span} samples of the longest-lived thread over {seconds + 1:.1f} s: py-spy sampled every thread at "
          f"~{span / (seconds + 1):.0f} Hz (it falls behind 100 Hz with many threads)")
    threads = [t for t in profile.per_thread if t.startswith(LOG_PATH_THREADS)][:8]
    for thread in sorted(threads, key=lambda t: -profile.per_thread[t]):
        count = profile.per_thread[thread]
        print(f"  {thread}: {count} samples ({100 * count / max(span, 1):.0f}% of the profiled span); "
              "leaf frame top 8:")
        _print_counter(profile.leaf_by_thread[thread], count, 8, "      ")
        print("    inclusive top 12:")
        _print_counter(profile.inclusive_by_thread[thread], count, 12, "      ")


def thread_names(pid: int) -> Counter[str] | None:
    """A process's Python threads by name (digits folded: ``flow_3`` -> ``flow_#``), from ``py-spy dump``."""
    exe = py_spy()
    if exe is None:
        return None
    dump = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=120)
    names = re.findall(r'^Thread \S+ \([^)]*\): "(.*)"', dump.stdout, re.MULTILINE)
    return Counter(re.sub(r"\d+", "#", name) for name in names) if names else None
