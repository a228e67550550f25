"""Keep Prefect's hook bookkeeping out of the run logs, so that a run's Logs tab reads like a CI log.

Prefect's task and flow engines log two INFO lines around every state hook they call, through the run
loggers ``prefect.task_runs`` and ``prefect.flow_runs`` (``call_hooks`` in ``prefect/task_engine.py`` and
``prefect/flow_engine.py``, Prefect 3.9)::

    Running hook '_on_running' in response to entering state 'Running'
    Hook '_on_running' finished running successfully

Those loggers carry the handler that ships records to the Prefect API, so every job's Logs tab held two such
lines per hook. A filter on the loggers themselves drops them before any handler (API or console) sees them;
the ERROR Prefect logs when a hook raises is kept. Only stdlib ``logging`` is used: installing it does not
import Prefect. Prefect's logging set-up (``dictConfig``) replaces a logger's handlers, never its filters.
"""

from __future__ import annotations

import logging
import threading

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")

_HOOK_CALLER = "call_hooks"  # the engine method that logs both lines
_lock = threading.Lock()


def is_hook_bookkeeping(record: logging.LogRecord) -> bool:
    """The INFO line an engine logs before or after calling a state hook (not a hook's failure)."""
    if record.levelno != logging.INFO or record.funcName != _HOOK_CALLER:
        return False
    message = record.getMessage()
    before = message.startswith("Running hook ") and " in response to entering state " in message
    after = message.startswith("Hook ") and message.endswith(" finished running successfully")
    return before or after


class HookBookkeepingFilter(logging.Filter):
    """Drops :func:`is_hook_bookkeeping` records; lets everything else through (job output, our notes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_hook_bookkeeping(record)


def quiet_hook_bookkeeping() -> None:
    """Install the filter on Prefect's run loggers, once per process (later calls change nothing)."""
    with _lock:
        for name in RUN_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(existing, HookBookkeepingFilter) for existing in logger.filters):
                logger.addFilter(HookBookkeepingFilter())
