"""The internal privacy endpoints every service exposes to ingest (which owns privacy requests).

Each service supplies two domain functions over its own schema; this module turns them into routes:

- ``POST /v1/privacy/erasure`` ``{"profile_ids": [...]}``: delete everything held about those profiles;
  idempotent (erasing twice erases nothing more) and answers what it removed.
- ``GET /v1/privacy/export?profile_id=...``: everything held about those profiles, as JSON.

Both take the internal token and the ``X-Tenure-Workspace`` header.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import InternalDep
from shared.db import SessionDep
from shared.errors import COMMON_ERRORS

EraseFn = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID]], Awaitable[dict[str, int]]]
ExportFn = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID]], Awaitable[dict[str, Any]]]


class ErasureRequest(BaseModel):
    profile_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class ErasureResult(BaseModel):
    removed: dict[str, int] = Field(description="rows removed, per kind")


def privacy_router(service: str, erase: EraseFn, export: ExportFn) -> APIRouter:
    router = APIRouter(prefix="/v1/privacy", tags=["privacy"])

    @router.post("/erasure", response_model=ErasureResult, operation_id=f"{service}_erase_profiles",
                 summary="Erase what this service holds about profiles (internal)", responses=COMMON_ERRORS)
    async def erase_route(body: ErasureRequest, principal: InternalDep, session: SessionDep) -> dict[str, Any]:
        ws = principal.require_workspace()
        async with session.begin():
            return {"removed": await erase(session, ws, body.profile_ids)}

    @router.get("/export", operation_id=f"{service}_export_profiles",
                summary="Everything this service holds about profiles (internal)", responses=COMMON_ERRORS)
    async def export_route(principal: InternalDep, session: SessionDep,
                           profile_id: Annotated[list[uuid.UUID], Query(min_length=1)]) -> dict[str, Any]:
        ws = principal.require_workspace()
        async with session.begin():
            return await export(session, ws, profile_id)

    return router
