"""The reference backend application: the contract under ``/api`` and the admin API under ``/admin``.

Errors are answered the way Spring Boot does (``{"timestamp", "status",
"error", "message", "path"}``), and a request body that does not validate is a
400, as Jackson binding failures are in Spring, with pydantic's details under
``errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reference_backend import admin, contract
from reference_backend.context import BackendContext
from reference_backend.faults import DEFAULT_SEED, FaultMiddleware, Faults
from reference_backend.store import Store
from reference_backend.wire import error_body


def create_app(
    db_path: str | Path,
    data_dir: str | Path,
    *,
    live_logs: bool = True,
    status_as_object: bool = False,
    max_artifact_bytes: int | None = None,
    fault_seed: int = DEFAULT_SEED,
) -> FastAPI:
    """Build a backend storing its database at ``db_path`` and artifacts under ``data_dir``.

    ``live_logs=False`` leaves out the ``POST /api/job/logs`` extension (it
    answers 404); ``status_as_object=True`` answers ``{"status": "SUCCESS"}``
    instead of ``"SUCCESS"`` on the status endpoint; ``max_artifact_bytes``
    makes bigger uploads a 413. The database is closed when the app shuts down.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(db_path)
    faults = Faults(fault_seed)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(title="CI/CD reference backend", lifespan=lifespan)
    app.state.backend = BackendContext(
        store=store,
        data_dir=data_dir,
        live_logs=live_logs,
        status_as_object=status_as_object,
        max_artifact_bytes=max_artifact_bytes,
        faults=faults,
    )
    app.include_router(contract.router, prefix="/api")
    if live_logs:
        app.include_router(contract.live_logs_router, prefix="/api")
    app.include_router(admin.router, prefix="/admin")
    app.add_middleware(FaultMiddleware, faults=faults, prefix="/api")
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = error_body(exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail), request.url.path)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
    # "body.status" → "status": name the field as the payload spells it, as Jackson's messages do.
    fields = [".".join(str(part) for part in error.get("loc", ())[1:]) or "body" for error in errors]
    message = "; ".join(f"{field}: {error.get('msg')}" for field, error in zip(fields, errors, strict=True))
    body = error_body(400, "Bad Request", message, request.url.path, field=fields[0] if fields else None, errors=errors)
    return JSONResponse(body, status_code=400)
