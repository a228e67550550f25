"""What ``cicd-worker run`` prints while jobs run: every line of every job, as it comes, prefixed with the job's name.

Each job's lines arrive from its log (``JobLog.add_listener``: masked, complete lines, notes included) on the
thread that reads the container. They are printed as ``<job> | <line>`` (the name padded to the longest job
name; ``--timestamps`` adds the seconds since the job's first line), written whole to the job's log file
under the run's ``logs/`` folder, and the last lines of each job are kept for the summary.

On a terminal each job has its own colour and the job's own colours are kept; lines go through the rich
console that draws the live status area, which prints them above it. Otherwise the output is plain text:
escape sequences are dropped and every control character is written as an escape (``\\x1b``, ``\\r``), so one
job line is one output line, always attributable to its job. A job name is escaped the same way everywhere it
is printed: a name cannot forge another line.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.text import Text

from core.models import JobExecutionDTO

TAIL_LINES = 20
_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_magenta", "bright_cyan", "bright_green",
            "bright_yellow", "bright_blue")
# Characters that move the cursor, end a line or change its direction on some terminal or reader: C0 (but tab),
# DEL, C1, the Unicode line/paragraph separators and the bidirectional controls.
_UNICODE_CONTROLS = "\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f{_UNICODE_CONTROLS}]")
_UNSAFE_KEEP_ESC = re.compile(f"[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f-\x9f{_UNICODE_CONTROLS}]")  # rich decodes ESC
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(text: str) -> str:
    """``text`` safe to print on one line: every control or format character written as its escape."""
    escaped = _UNSAFE.sub(_escape, text)
    if escaped.isprintable():
        return escaped
    return "".join(char if char.isprintable() or char == "\t" or unicodedata.category(char)[0] != "C"
                   else char.encode("unicode_escape").decode("ascii") for char in escaped)


def plain_line(text: str) -> str:
    """A job's line for a file or pipe: its escape sequences (colours) dropped, other controls escaped."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def quiet_logging(verbose: bool) -> None:
    """Console logging at WARNING (INFO with ``verbose``): the handlers only, so that the loggers still hand
    INFO records to Prefect's API handler (the run's logs in the Prefect UI)."""
    level = logging.INFO if verbose else logging.WARNING
    handlers = list(logging.getLogger().handlers)
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        handlers += [h for h in logging.getLogger(name).handlers if "Console" in type(h).__name__]
    for handler in handlers:
        handler.setLevel(level)


@dataclass
class _Stream:
    """One job's output: its printed label, colour, log file and last lines."""

    label: str
    style: str
    path: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    file: TextIO | None = None
    started: float | None = None


class JobOutput:
    """Prints and records the lines of the jobs of one run; ``listener`` plugs into ``Services.line_listener``.

    ``console``: the rich console of a terminal (lines in colour, above the live area), or None for plain text
    on ``out``. ``log_path(name)`` is where each job's whole log is written.
    """

    def __init__(self, names: list[str], log_path: Callable[[str], Path], console: Console | None = None, *,
                 timestamps: bool = False, out: TextIO | None = None) -> None:
        self.console = console
        self.timestamps = timestamps
        self.out = out or sys.stdout
        self._log_path = log_path
        self._lock = threading.Lock()
        self._width = max((len(printable(name)) for name in names), default=0)
        self._streams: dict[str, _Stream] = {}
        for name in names:
            self._stream(name)

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            label = printable(name).ljust(self._width)
            stream = _Stream(label, _PALETTE[len(self._streams) % len(_PALETTE)], self._log_path(name))
            self._streams[name] = stream
        return stream

    def listener(self, job: JobExecutionDTO) -> Callable[[list[str]], None]:
        """The callback that shows and records the lines of ``job`` (called by its log, on the reading thread)."""
        with self._lock:
            stream = self._stream(job.job.name)
        return lambda lines: self._lines(stream, lines)

    def _lines(self, stream: _Stream, lines: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            if stream.started is None:
                stream.started = now
            if stream.file is None:
                stream.path.parent.mkdir(parents=True, exist_ok=True)
                stream.file = stream.path.open("a", encoding="utf-8", errors="replace")
            stream.file.write("".join(line + "\n" for line in lines))
            stream.file.flush()
            stream.tail.extend(lines)
            since = f" {now - stream.started:7.2f}s" if self.timestamps else ""
            self._show(stream, lines, since)

    def _show(self, stream: _Stream, lines: list[str], since: str = "") -> None:
        if self.console is None:
            self.out.write("".join(f"{stream.label}{since} | {plain_line(line)}\n" for line in lines))
            self.out.flush()
            return
        text = Text()
        for number, line in enumerate(lines):
            if number:
                text.append("\n")
            text.append(f"{stream.label}{since} | ", style=stream.style)
            text.append_text(Text.from_ansi(_UNSAFE_KEEP_ESC.sub(_escape, line)))
        self.console.print(text, soft_wrap=True)

    def emit(self, line: str) -> None:
        """One plain line of the run itself (a status change), never in the middle of a job's batch."""
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def show_tail(self, name: str) -> None:
        """Print the last lines of ``name`` (without times), as they were printed while it ran."""
        with self._lock:
            stream = self._stream(name)
            if stream.tail:
                self._show(stream, list(stream.tail))

    def has_tail(self, name: str) -> bool:
        return bool(self._streams.get(name) and self._streams[name].tail)

    def log_file(self, name: str) -> Path:
        return self._stream(name).path

    def close(self) -> None:
        """Close the log files (lines that come later are still printed and reopen the file)."""
        with self._lock:
            for stream in self._streams.values():
                if stream.file is not None:
                    stream.file.close()
                    stream.file = None
