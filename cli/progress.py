"""Live progress of a pipeline run in the terminal (the flow runs in this process).

On a terminal: one live status area at the bottom, redrawn in place (rich ``Live``); whatever else is printed
meanwhile (job output, log records) goes above it. Otherwise: one plain, parseable line per status change,
``HH:MM:SS job=<name> stage=<stage> status=<STATUS> duration=<s>[ exit=<code>]``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.console import printable
from core.job_records import JobRecord, JobRegistry

_STYLE = {"SUCCESS": "green", "FAILED": "red", "CANCELED": "yellow", "RUNNING": "cyan"}


def duration(record: JobRecord) -> float | None:
    if record.start_time is None:
        return None
    end = record.completion_time or datetime.now(UTC)
    return round((end - record.start_time).total_seconds(), 1)


class PipelineProgress:
    """Shows the jobs of one pipeline run while it runs (their records in ``registry``); a context manager.

    ``order``: job names in the order to show them (the pipeline file's); ``console``: the terminal's console
    (made on ``out`` when None); ``emit``: how a plain line is printed (so that it never splits a job's
    output); ``compact``: the live area lists the running jobs only (under a line of counts) and disappears at
    the end, for a caller that prints its own summary.
    """

    def __init__(self, registry: JobRegistry, pipeline_execution_id: str, stages: dict[str, str] | None = None,
                 out: TextIO | None = None, interval: float = 0.3, *, order: list[str] | None = None,
                 console: Console | None = None, emit: Callable[[str], None] | None = None,
                 compact: bool = False) -> None:
        self.registry = registry
        self.pipeline_execution_id = pipeline_execution_id
        self.stages = stages or {}
        self.out = out or sys.stdout
        self.interval = interval
        self.live_table = self.out.isatty() if console is None else console.is_terminal
        self.console = console
        self.emit = emit or (lambda line: print(line, file=self.out, flush=True))
        self.compact = compact
        self._rank = {name: index for index, name in enumerate(order or [])}
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._live: Live | None = None
        self._started = time.monotonic()
        self._rerouted: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def records(self) -> list[JobRecord]:
        """The run's records in the order to show them."""
        mine = [r for r in self.registry.all() if str(r.pipeline_execution_id) == self.pipeline_execution_id]
        return sorted(mine, key=lambda r: (self._rank.get(r.name, len(self._rank)), r.name))

    def __enter__(self) -> PipelineProgress:
        self._started = time.monotonic()
        if self.live_table:
            console = self.console or Console(file=self.out)
            self._live = Live(self.area(), console=console, refresh_per_second=4, transient=self.compact,
                              redirect_stdout=True, redirect_stderr=True)
            self._live.__enter__()
            self._reroute_logging()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        if self._live is not None:
            self._live.__exit__(None, None, None)
            for handler, stream in self._rerouted:
                handler.setStream(stream)

    def _reroute_logging(self) -> None:
        # A log handler writes to the stream it was given, not to the live area's stand-in for sys.stderr:
        # while the area is drawn, console handlers write above it instead of through it.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.__stderr__, sys.__stdout__):
                self._rerouted.append((handler, handler.stream))
                handler.setStream(sys.stderr)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        if self._live is not None:
            self._live.update(self.area())
            return
        for record in self.records():
            if self._seen.get(record.name) != record.status.value:
                self._seen[record.name] = record.status.value
                self.emit(self.line(record))

    def line(self, record: JobRecord, every_exit: bool = False) -> str:
        """The plain line of ``record``; ``exit=`` only when not 0, or always (``-`` when none) with ``every_exit``."""
        took = duration(record)
        extra = f" exit={record.exit_code}" if record.exit_code not in (None, 0) else ""
        if every_exit:
            extra = f" exit={'-' if record.exit_code is None else record.exit_code}"
        return (f"{time.strftime('%H:%M:%S')} job={printable(record.name)} "
                f"stage={printable(self.stages.get(record.name, '-'))} "
                f"status={record.status.value} duration={'-' if took is None else took}{extra}")

    def area(self) -> RenderableType:
        """The live area: the whole table, or (compact) a line of counts above the running jobs."""
        if not self.compact:
            return self.table()
        records = self.records()
        counts: dict[str, int] = {}
        for record in records:
            counts[record.status.value] = counts.get(record.status.value, 0) + 1
        shown = ", ".join(f"[{_STYLE.get(status, 'white')}]{count} {status.lower()}[/]"
                          for status, count in sorted(counts.items()))
        header = Text.from_markup(f"[bold]{time.monotonic() - self._started:.1f}s[/] {shown}")
        running = [r for r in records if r.status.value == "RUNNING"]
        if not running:
            return header
        return Group(header, self.table(running))

    def table(self, records: list[JobRecord] | None = None, title: str | None = None,
              remark: Callable[[JobRecord], str | None] | None = None) -> Table:
        """One row per record (all by default): job, stage, status, duration, exit code; ``remark`` may add a
        word to a status (shown in yellow then)."""
        table = Table(title=title)
        for column in ("job", "stage", "status", "duration s", "exit"):
            table.add_column(column)
        for record in self.records() if records is None else records:
            status = Text(record.status.value, style=_STYLE.get(record.status.value, "white"))
            said = remark(record) if remark is not None else None
            if said:
                status = Text(f"{record.status.value} ({said})", style="yellow")
            took = duration(record)
            exit_code = "" if record.exit_code is None else str(record.exit_code)
            table.add_row(Text(printable(record.name)), Text(printable(self.stages.get(record.name, "-"))), status,
                          "" if took is None else f"{took:.1f}", exit_code)
        return table
