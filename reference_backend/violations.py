"""Contract checks on the sequence of statuses a worker reports for one job execution.

The contract (docs/contract.md): every status for one job execution follows ``RUNNING`` → one
final status; a job that never starts gets only ``CANCELED``; delivery is at
least once (repeats are fine) and never goes backwards. The backend does not
refuse a breach (a real backend would not either); it records it so tests can
assert that a run produced none.
"""

from __future__ import annotations

from collections.abc import Sequence

from reference_backend.wire import ExecutionStatus


def violations_for(previous: Sequence[ExecutionStatus], new: ExecutionStatus) -> list[str]:
    """Messages for each rule that ``new`` breaks, given the statuses received before it (oldest first)."""
    found: list[str] = []
    if new is ExecutionStatus.PENDING:
        found.append("PENDING reported: a worker only reports RUNNING and final statuses")
    first_final = next((status for status in previous if status.is_final), None)
    if first_final is not None:
        # The outcome is fixed by the first final status; a repeat of it is an at-least-once redelivery.
        if new is ExecutionStatus.RUNNING:
            found.append(f"RUNNING after final status {first_final}")
        elif new is not first_final:
            found.append(f"{new} after final status {first_final}")
    elif new.is_final and new is not ExecutionStatus.CANCELED and ExecutionStatus.RUNNING not in previous:
        found.append(f"final status {new} without a prior RUNNING")
    return found
