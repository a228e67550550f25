"""The end of ``cicd-worker run``: every job in the pipeline file's order, what failed, where everything is.

One row per job (status, duration, exit code), an allowed failure marked ``(allowed to fail)``; then for
every job that failed, allowed or not, its last lines; then the verdict with the total wall time, where the
logs are, the Prefect UI link, and the artifacts when there are any. On a terminal the rows are one table;
otherwise each is one plain line, ``final HH:MM:SS job=<name> stage=<stage> status=<STATUS> duration=<s>
exit=<code|-> [(allowed to fail)|(cached)]``; a reused job (not run: its inputs had not changed) is marked ``cached``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from cli.console import TAIL_LINES, JobOutput, printable
from cli.pipeline_file import PipelineFile
from cli.progress import PipelineProgress
from core.job_records import JobRecord
from core.models import ExecutionStatus
from flows.reuse_store import REUSED_PREFIX

ALLOWED = "allowed to fail"
CACHED = "cached"  # reused: not run, its earlier run's result and artifacts restored (flows.reuse)


@dataclass
class RunOutcome:
    """What the summary reports about one finished run."""

    succeeded: bool
    message: str
    wall_seconds: float
    run_dir: Path
    ui_link: str
    artifacts: int


def allowed_failure(pipeline: PipelineFile, record: JobRecord) -> bool:
    """The job failed but may (``allow_failure``): it is reported as SUCCESS with its non-zero exit code."""
    allowed = {job.name for job in pipeline.jobs if job.allow_failure}
    return record.name in allowed and record.status is ExecutionStatus.SUCCESS and record.exit_code not in (None, 0)


def reused(record: JobRecord) -> bool:
    """The job was not run: an earlier run's result was reused (its inputs had not changed)."""
    return record.status is ExecutionStatus.SUCCESS and (record.message or "").startswith(REUSED_PREFIX)


def _mark(pipeline: PipelineFile, record: JobRecord) -> str | None:
    return ALLOWED if allowed_failure(pipeline, record) else CACHED if reused(record) else None


def failed(pipeline: PipelineFile, record: JobRecord) -> bool:
    return record.status is ExecutionStatus.FAILED or allowed_failure(pipeline, record)


def print_summary(pipeline: PipelineFile, progress: PipelineProgress, output: JobOutput, outcome: RunOutcome,
                  console: Console | None) -> None:
    """Print the summary once: the rows, the failed jobs' last lines, the verdict and the links."""
    records = progress.records()
    verdict = "SUCCEEDED" if outcome.succeeded else "FAILED"
    if console is not None:
        console.print(progress.table(records, f"pipeline {printable(pipeline.name)}: {verdict}",
                                     lambda record: _mark(pipeline, record)))
    else:
        for record in records:
            output.emit("final " + _plain_row(pipeline, progress, record))
    for record in records:
        if failed(pipeline, record) and output.has_tail(record.name):
            output.emit(f"--- {printable(record.name)}: last {TAIL_LINES} lines "
                        f"(whole log: {output.log_file(record.name)}) ---")
            output.show_tail(record.name)
    output.emit(f"pipeline {printable(pipeline.name)}: {verdict} in {outcome.wall_seconds:.1f}s ({outcome.message})")
    output.emit(f"logs: {outcome.run_dir / 'logs'}")
    output.emit(f"Prefect UI: {outcome.ui_link}")
    if outcome.artifacts:
        output.emit(f"artifacts: {outcome.artifacts} file(s) in {outcome.run_dir / 'artifacts'}")


def _plain_row(pipeline: PipelineFile, progress: PipelineProgress, record: JobRecord) -> str:
    mark = _mark(pipeline, record)
    return progress.line(record, every_exit=True) + (f" ({mark})" if mark else "")

