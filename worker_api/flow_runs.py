"""Creating Prefect flow runs cheaply: one long-lived API client and the flow ids cached.

``client.create_flow_run`` upserts the flow on every call (two API round trips); a worker creates runs
of two flows only, so their ids are looked up once.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import FlowCreate, FlowRunCreate
from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
from prefect.states import Pending, to_state_create


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

    def __init__(self) -> None:
        self._shared = SharedPrefectClient()
        self._flow_ids: dict[str, UUID] = {}

    def _api(self) -> SyncPrefectClient:
        return self._shared.get()

    def _flow_id(self, flow: Flow) -> UUID:
        flow_id = self._flow_ids.get(flow.name)
        if flow_id is None:
            response = self._api().request("POST", "/flows/", json=FlowCreate(name=flow.name).model_dump(mode="json"))
            flow_id = self._flow_ids[flow.name] = UUID(response.json()["id"])
        return flow_id

    def create(self, flow: Flow, params: dict[str, Any], name: str, tags: list[str]) -> FlowRun:
        """A Pending flow run of ``flow``, ready for ``prefect.flow_engine.run_flow``."""
        create = FlowRunCreate(flow_id=self._flow_id(flow), flow_version=flow.version, name=name,
                               parameters=params, context={}, tags=tags, state=to_state_create(Pending()),
                               empirical_policy=FlowRunPolicy(retries=flow.retries,
                                                              retry_delay=int(flow.retry_delay_seconds or 0)))
        response = self._api().request("POST", "/flow_runs/", json=create.model_dump(mode="json"))
        return FlowRun.model_validate(response.json())

    def close(self) -> None:
        self._shared.close()
