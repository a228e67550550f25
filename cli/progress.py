"""Live progress of a pipeline run in the terminal (the flow runs in this process).

On a terminal: a live table (job, stage, status, duration). Otherwise: one plain, parseable line per
status change, ``HH:MM:SS job=<name> stage=<stage> status=<STATUS> duration=<s>``.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from core.job_records import JobRecord, JobRegistry

_STYLE = {"SUCCESS": "green", "FAILED": "red", "CANCELED": "yellow", "RUNNING": "cyan"}


def duration(record: JobRecord) -> float | None:
    if record.start_time is None:
        return None
    end = record.completion_time or datetime.now(UTC)
    return round((end - record.start_time).total_seconds(), 1)


class PipelineProgress:
    """Shows the jobs of one pipeline run while it runs (their records in ``registry``); a context manager."""

    def __init__(self, registry: JobRegistry, pipeline_execution_id: str, stages: dict[str, str] | None = None,
                 out: TextIO | None = None, interval: float = 0.3) -> None:
        self.registry = registry
        self.pipeline_execution_id = pipeline_execution_id
        self.stages = stages or {}
        self.out = out or sys.stdout
        self.interval = interval
        self.live_table = self.out.isatty()
        self._seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._live: Live | None = None

    def records(self) -> list[JobRecord]:
        return [r for r in self.registry.all() if str(r.pipeline_execution_id) == self.pipeline_execution_id]

    def __enter__(self) -> PipelineProgress:
        if self.live_table:
            self._live = Live(self.table(), console=Console(file=self.out), refresh_per_second=4, transient=False)
            self._live.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._update()

    def _update(self) -> None:
        if self._live is not None:
            self._live.update(self.table())
            return
        for record in self.records():
            if self._seen.get(record.name) != record.status.value:
                self._seen[record.name] = record.status.value
                print(self.line(record), file=self.out, flush=True)

    def line(self, record: JobRecord) -> str:
        took = duration(record)
        extra = f" exit={record.exit_code}" if record.exit_code not in (None, 0) else ""
        return (f"{time.strftime('%H:%M:%S')} job={record.name} stage={self.stages.get(record.name, '-')} "
                f"status={record.status.value} duration={'-' if took is None else took}{extra}")

    def table(self, title: str | None = None) -> Table:
        table = Table(title=title)
        for column in ("job", "stage", "status", "duration s", "exit"):
            table.add_column(column)
        for record in sorted(self.records(), key=lambda r: r.name):
            status = record.status.value
            took = duration(record)
            table.add_row(record.name, self.stages.get(record.name, "-"),
                          f"[{_STYLE.get(status, 'white')}]{status}[/]", "" if took is None else f"{took:.1f}",
                          "" if record.exit_code is None else str(record.exit_code))
        return table
