"""Creating Prefect flow runs cheaply: one long-lived API client and the flow ids cached.

``client.create_flow_run`` upserts the flow on every call (two API round trips); a worker creates runs
of two flows only, so their ids are looked up once.

Creation retries on our own terms: Prefect's client backs off 2, 4, 8 ... s on a 503 (a busy SQLite server
answers "database is locked"), which made jobs a minute late under load. Here Prefect's own retries are off
for these calls and a short, jittered schedule (about 3 s in all) is used instead, with an idempotency key
so that a create whose answer was lost is not made twice.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Literal
from uuid import UUID, uuid4

import httpx
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import FlowCreate, FlowRunCreate
from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES
from prefect.states import Pending, to_state_create

# Delays between attempts at one Prefect write, before jitter (x0.5-1.5): about 3 s in all.
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_RETRY_STATUSES = {408, 429, 500, 502, 503, 504}


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


class FlowRunFactory:
    """Creates Pending flow runs; thread-safe."""

    def __init__(self, delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self._shared = SharedPrefectClient()
        self._flow_ids: dict[str, UUID] = {}
        self._delays = delays
        context = get_settings_context()
        self._own_retries = SettingsContext(
            profile=context.profile,
            settings=context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0}))

    def _api(self) -> SyncPrefectClient:
        return self._shared.get()

    def _post(self, path: Literal["/flows/", "/flow_runs/"], body: dict[str, Any]) -> Any:
        """POST with our retry schedule; the answer's JSON. Raises the last error when every attempt failed."""
        for delay in (*self._delays, None):
            try:
                with self._own_retries:
                    response = self._api().request("POST", path, json=body)
                return response.json()
            except Exception as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                transient = status in _RETRY_STATUSES or isinstance(exc, OSError | httpx.TransportError)
                if delay is None or not transient:
                    raise
            time.sleep(delay * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def _flow_id(self, flow: Flow) -> UUID:
        flow_id = self._flow_ids.get(flow.name)
        if flow_id is None:
            answer = self._post("/flows/", FlowCreate(name=flow.name).model_dump(mode="json"))
            flow_id = self._flow_ids[flow.name] = UUID(answer["id"])
        return flow_id

    def create(self, flow: Flow, params: dict[str, Any], name: str, tags: list[str]) -> FlowRun:
        """A Pending flow run of ``flow``, ready for ``prefect.flow_engine.run_flow``.

        The idempotency key is new for each call and the same across its retries: a retried create answers
        the run the first attempt made, and a later call (a job sent again) makes a new one.
        """
        create = FlowRunCreate(flow_id=self._flow_id(flow), flow_version=flow.version, name=name,
                               parameters=params, context={}, tags=tags, state=to_state_create(Pending()),
                               idempotency_key=f"cicd-worker:{uuid4()}",
                               empirical_policy=FlowRunPolicy(retries=flow.retries,
                                                              retry_delay=int(flow.retry_delay_seconds or 0)))
        return FlowRun.model_validate(self._post("/flow_runs/", create.model_dump(mode="json")))

    def close(self) -> None:
        self._shared.close()
