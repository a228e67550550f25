"""Writing to the Prefect API on our own terms: one long-lived client, a short jittered retry schedule.

Prefect's client backs off 2, 4, 8 ... s on a 503 (a busy SQLite server answers "database is locked"),
which made jobs a minute late under load. Calls made through :class:`PrefectWriter` run with Prefect's own
retries off and retry on a short schedule instead (about 3 s in all); the caller decides what to do after
that (the job mirror keeps the write queued and tries again later).

Flow runs are created with a cached flow id: ``client.create_flow_run`` upserts the flow on every call (two
API round trips), and a worker creates runs of two flows only.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from uuid import UUID, uuid4

import httpx
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import FlowCreate, FlowRunCreate
from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.states import Pending, State, to_state_create

# Delays between attempts at one Prefect write, before jitter (x0.5-1.5): about 3 s in all.
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}

T = TypeVar("T")


class SharedPrefectClient:
    """One long-lived sync Prefect client, entered on first use and closed once; thread-safe."""

    def __init__(self) -> None:
        self._client: SyncPrefectClient | None = None
        self._lock = threading.Lock()

    def get(self) -> SyncPrefectClient:
        with self._lock:
            if self._client is None:
                client = get_client(sync_client=True)
                client.__enter__()
                self._client = client
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.__exit__(None, None, None)


def without_heartbeats() -> SettingsContext:
    """Prefect settings for a flow run called in this process, without the flow run heartbeat thread: its
    engine joins that thread at the run's end, which sleeps in 1 s steps (up to a second more per flow run;
    measured 0.8 s of a warm ``cicd-worker run``), and its heartbeats only serve server-side zombie detection,
    which start-up recovery does for this worker. Enter the returned context around the flow call."""
    context = get_settings_context()
    settings = context.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    return SettingsContext(profile=context.profile, settings=settings)


def transient(exc: BaseException) -> bool:
    """Whether a failed Prefect call may succeed if tried again (no answer, or a 408/429/5xx)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status in _RETRY_STATUSES or isinstance(exc, OSError | httpx.TransportError)


class PrefectWriter:
    """Prefect API calls with our retry schedule; thread-safe (the client is shared)."""

    def __init__(self, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.shared = SharedPrefectClient()
        self._delays = delays
        context = get_settings_context()
        self._profile = context.profile
        self._settings = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})

    def call(self, action: Callable[[SyncPrefectClient], T]) -> T:
        """``action(client)`` retried while it fails transiently; the last error when every attempt failed."""
        for delay in (*self._delays, None):
            try:
                # A context object can be entered once: a new one per call (cheap: the settings are built).
                with SettingsContext(profile=self._profile, settings=self._settings):
                    return action(self.shared.get())
            except Exception as exc:
                if delay is None or not transient(exc):
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        self.shared.close()


class FlowRunFactory:
    """Creates flow runs; thread-safe."""

    def __init__(self, writer: PrefectWriter | None = None) -> None:
        self._writer = writer or PrefectWriter()
        self._flow_ids: dict[str, UUID] = {}

    def _post(self, path: Literal["/flows/", "/flow_runs/"], body: dict[str, Any]) -> Any:
        return self._writer.call(lambda client: client.request("POST", path, json=body)).json()

    def _flow_id(self, flow: Flow) -> UUID:
        flow_id = self._flow_ids.get(flow.name)
        if flow_id is None:
            answer = self._post("/flows/", FlowCreate(name=flow.name).model_dump(mode="json"))
            flow_id = self._flow_ids[flow.name] = UUID(answer["id"])
        return flow_id

    def create(self, flow: Flow, params: dict[str, Any], name: str, tags: list[str],
               state: State | None = None) -> FlowRun:
        """A flow run of ``flow`` in ``state`` (default Pending, ready for ``prefect.flow_engine.run_flow``).

        The idempotency key is new for each call and the same across its retries: a retried create answers
        the run the first attempt made, and a later call (a job sent again) makes a new one.
        """
        create = FlowRunCreate(flow_id=self._flow_id(flow), flow_version=flow.version, name=name,
                               parameters=params, context={}, tags=tags, state=to_state_create(state or Pending()),
                               idempotency_key=f"cicd-worker:{uuid4()}",
                               empirical_policy=FlowRunPolicy(retries=flow.retries,
                                                              retry_delay=int(flow.retry_delay_seconds or 0)))
        return FlowRun.model_validate(self._post("/flow_runs/", create.model_dump(mode="json")))

    def close(self) -> None:
        self._writer.close()
