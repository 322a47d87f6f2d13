"""The internal privacy endpoints every service exposes to ingest (which owns privacy requests).

Each service supplies two domain functions over its own schema; this module turns them into routes:

- ``POST /v1/privacy/erasure`` ``{"profile_ids": [...], "identities": [...]}``: delete everything held
  about those profiles; idempotent (erasing twice erases nothing more) and answers what it removed.
  ``profile_ids`` is empty when ingest holds no profile for the user: a service that keeps records by
  profile only then answers that it removed nothing.
- ``GET /v1/privacy/export?profile_id=...&identity=...``: everything held about those profiles and ids, as
  JSON (no ``profile_id`` when ingest holds no profile, as for an erasure).

``identities`` are the user's own ids (userId, anonymousId, email, phone), for records a service keys by
them rather than by profile: a service that has such records passes ``by_identity`` (campaign's program
outbox), or, when what it finds by profile and by id must be put together (delivery: a person's messages,
then the opens, events and consent records of those messages and addresses), builds its routes with
``person_privacy_router`` from functions that take both.

Both take the internal token and the ``X-Tenure-Workspace`` header.
"""

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import InternalDep
from shared.db import SessionDep
from shared.errors import COMMON_ERRORS, ValidationFailed
from shared.validation import StorableText

EraseFn = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID]], Awaitable[dict[str, int]]]
ExportFn = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID]], Awaitable[dict[str, Any]]]
EraseIdsFn = Callable[[AsyncSession, uuid.UUID, list[str]], Awaitable[dict[str, int]]]
ExportIdsFn = Callable[[AsyncSession, uuid.UUID, list[str]], Awaitable[dict[str, Any]]]
# (session, workspace, profile ids, the user's own ids)
ErasePersonFn = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID], list[str]], Awaitable[dict[str, int]]]
ExportPersonFn = Callable[[AsyncSession, uuid.UUID, list[uuid.UUID], list[str]], Awaitable[dict[str, Any]]]


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # as every write body: an unknown field is a 422, never dropped

    profile_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000,
                                         description="none when ingest holds no profile for the user (an erasure "
                                                     "of an id it never saw, or no longer holds): then only "
                                                     "records kept under `identities` can be found",
                                         examples=[["6f1c9a52-3c1e-4d8e-9b1a-2f0c7e5d4a10"]])
    identities: list[StorableText] = Field(default_factory=list, max_length=1_000_000,
                                  description="the user's ids (userId, anonymousId, email, phone)",
                                  examples=[["u-42", "b5f1c2d0-device", "ada@example.com", "+33612345678"]])

    @model_validator(mode="after")
    def _names_someone(self) -> "ErasureRequest":
        if not self.profile_ids and not self.identities:
            raise ValueError("name the user: profile_ids, identities or both")
        return self


class ErasureResult(BaseModel):
    removed: dict[str, int] = Field(description="rows removed, per kind")


def privacy_router(service: str, erase: EraseFn, export: ExportFn,
                   by_identity: tuple[EraseIdsFn, ExportIdsFn] | None = None) -> APIRouter:
    async def erase_person(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], ids: list[str]
                           ) -> dict[str, int]:
        removed = await erase(session, ws, pids)
        if by_identity and ids:
            removed |= await by_identity[0](session, ws, ids)
        return removed

    async def export_person(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], ids: list[str]
                            ) -> dict[str, Any]:
        out = await export(session, ws, pids)
        if by_identity and ids:
            out |= await by_identity[1](session, ws, ids)
        return out

    return person_privacy_router(service, erase_person, export_person)


def person_privacy_router(service: str, erase: ErasePersonFn, export: ExportPersonFn,
                          erase_responses: dict[int | str, dict[str, Any]] | None = None) -> APIRouter:
    """The routes, from functions given both the profile ids and the user's ids (possibly none) at once;
    ``erase_responses``: the erasure's answers beyond the common ones (delivery's 409 while a message is out)."""
    router = APIRouter(prefix="/v1/privacy", tags=["privacy"])

    @router.post("/erasure", response_model=ErasureResult, operation_id=f"{service}_erase_profiles",
                 summary="Erase what this service holds about profiles (internal)",
                 responses={**COMMON_ERRORS, **(erase_responses or {})})
    async def erase_route(body: ErasureRequest, principal: InternalDep, session: SessionDep) -> dict[str, Any]:
        ws = principal.require_workspace()
        async with session.begin():
            return {"removed": await erase(session, ws, body.profile_ids, list(body.identities))}

    @router.get("/export", operation_id=f"{service}_export_profiles",
                summary="Everything this service holds about profiles (internal)", responses=COMMON_ERRORS)
    async def export_route(principal: InternalDep, session: SessionDep,
                           profile_id: Annotated[list[uuid.UUID], Query(
                               default_factory=list, description="none when ingest holds no profile for the user")],
                           identity: Annotated[list[StorableText],
                                               Query(default_factory=list, description="the user's own ids")]
                           ) -> dict[str, Any]:
        ws = principal.require_workspace()
        if not profile_id and not identity:
            raise ValidationFailed("name the user: profile_id, identity or both")
        async with session.begin():
            return await export(session, ws, profile_id, list(identity))

    return router
