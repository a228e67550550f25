"""Per-app state shared by the routes, declared once as a FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from reference_backend.faults import Faults
from reference_backend.store import Store


@dataclass(frozen=True)
class BackendContext:
    """What one backend instance is made of: its store, files, behaviour flags and faults."""

    store: Store
    data_dir: Path
    live_logs: bool
    status_as_object: bool
    max_artifact_bytes: int | None
    faults: Faults


def _context(request: Request) -> BackendContext:
    ctx: BackendContext = request.app.state.backend
    return ctx


Context = Annotated[BackendContext, Depends(_context)]
"""Route parameter type giving the backend instance the request belongs to."""


def not_found(what: str, ident: str) -> HTTPException:
    """The 404 raised for an unknown id."""
    return HTTPException(status_code=404, detail=f"{what} {ident} not found")
