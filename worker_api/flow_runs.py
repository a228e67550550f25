"""Where the dispatchers' Prefect writes come from (kept while pool dispatch imports it from here)."""

from flows.prefect_writes import FlowRunFactory, SharedPrefectClient

__all__ = ["FlowRunFactory", "SharedPrefectClient"]
