"""Delivery HTTP routes: the idempotent send API and the deliveries log."""

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from services.delivery import outbox
from services.delivery.schemas import MessageCreate, MessageList, MessageOut
from shared.auth import WorkspaceDep
from shared.db import AfterDep, SessionDep
from shared.errors import COMMON_ERRORS, ValidationFailed, problem_schema
from shared.settings import Settings

router = APIRouter(prefix="/v1", tags=["messages"])


@router.post(
    "/messages",
    status_code=202,
    response_model=MessageOut,
    operation_id="send_message",
    summary="Queue a message, exactly once per idempotency key",
    description=(
        "Returns 202 when the message is new and 200 (header `Idempotent-Replayed: true`) when the key was "
        "seen before with the same content; the same key with different content is a 409."
    ),
    responses={**COMMON_ERRORS, 200: {"description": "Replay of an earlier request"},
               409: problem_schema("Idempotency key reused with different content")},
)
async def send_message(
    body: MessageCreate,
    ws: WorkspaceDep,
    session: SessionDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(description="alternative to the body field")] = None,
) -> dict[str, Any]:
    if idempotency_key and idempotency_key != body.idempotency_key:
        raise ValidationFailed("Idempotency-Key header and idempotency_key field differ")
    settings: Settings = request.app.state.settings
    data = body.model_dump(exclude={"from_"})
    async with session.begin():
        message, created = await outbox.enqueue(session, ws, data, body.from_ or settings.email_from)
    if created:
        request.app.state.waker.request("delivery", "send_messages")
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return message


@router.get("/messages/{message_id}", response_model=MessageOut, operation_id="get_message",
            summary="One message and its status", responses={**COMMON_ERRORS, 404: problem_schema("No such message")})
async def get_message(message_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await outbox.get_message(session, ws, message_id)


@router.get("/messages", response_model=MessageList, operation_id="list_messages",
            summary="The deliveries log, filtered by status or recipient", responses=COMMON_ERRORS)
async def list_messages(
    ws: WorkspaceDep,
    session: SessionDep,
    after: AfterDep,
    status: Literal["queued", "sending", "sent", "failed"] | None = None,
    to: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    async with session.begin():
        items, nxt = await outbox.list_messages(session, ws, status=status, to=to, after=after, limit=limit)
    return {"messages": items, "next_cursor": nxt}
