"""Templates, campaigns and the sends they produce (no HTTP here)."""

import uuid
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign import templates
from shared.db import is_unique_violation
from shared.errors import Conflict, NotFound, ValidationFailed

_TEMPLATE_COLS = "id, name, channel, subject, html, text, created_at, updated_at"
_CAMPAIGN_COLS = "id, name, status, version, trigger, template_id, message_type, created_at, updated_at"
_SEND_COLS = ("id, campaign_id, campaign_version, profile_id, occurrence, status, reason, "
              "delivery_message_id, created_at")


def _out(row: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in row._mapping.items()}


async def _insert(session: AsyncSession, sql: str, params: dict[str, Any], what: str) -> Any:
    try:
        async with session.begin_nested():
            return (await session.execute(text(sql), params)).one()
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        raise Conflict(f"A {what} named {params['name']!r} already exists") from None


async def create_template(session: AsyncSession, ws: uuid.UUID, data: dict[str, Any]) -> dict[str, Any]:
    fields = {k: data.get(k) for k in ("subject", "html", "text")}
    if not fields["html"] and not fields["text"]:
        raise ValidationFailed("A template needs an html or a text body")
    try:
        templates.validate(fields)
    except templates.TemplateError as exc:
        raise ValidationFailed(f"Template {exc.field} does not parse: {exc.message}", field=exc.field) from None
    row = await _insert(
        session,
        f"insert into campaign.templates (id, workspace_id, name, channel, subject, html, text) "
        f"values (:id, :ws, :name, :channel, :subject, :html, :text) returning {_TEMPLATE_COLS}",
        {"id": uuid.uuid4(), "ws": ws, "name": data["name"], "channel": data.get("channel", "email"), **fields},
        "template",
    )
    return _out(row)


async def get_template(session: AsyncSession, ws: uuid.UUID, template_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(
        text(f"select {_TEMPLATE_COLS} from campaign.templates where workspace_id = :ws and id = :id"),
        {"ws": ws, "id": template_id},
    )).first()
    if row is None:
        raise NotFound(f"No template {template_id}")
    return _out(row)


async def create_campaign(session: AsyncSession, ws: uuid.UUID, data: dict[str, Any]) -> dict[str, Any]:
    try:
        template_id = uuid.UUID(str(data["template_id"]))
    except ValueError:
        raise ValidationFailed("template_id is not a valid id") from None
    await get_template(session, ws, template_id)
    row = await _insert(
        session,
        f"insert into campaign.campaigns (id, workspace_id, name, status, trigger, template_id, message_type) "
        f"values (:id, :ws, :name, :status, CAST(:trigger AS jsonb), :tid, :mt) returning {_CAMPAIGN_COLS}",
        {"id": uuid.uuid4(), "ws": ws, "name": data["name"], "status": data.get("status", "active"),
         "trigger": orjson.dumps(data["trigger"]).decode(), "tid": template_id,
         "mt": data.get("message_type", "marketing")},
        "campaign",
    )
    return _out(row)


async def get_campaign(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(
        text(f"select {_CAMPAIGN_COLS} from campaign.campaigns where workspace_id = :ws and id = :id"),
        {"ws": ws, "id": campaign_id},
    )).first()
    if row is None:
        raise NotFound(f"No campaign {campaign_id}")
    return _out(row)


async def set_status(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, status: str
                     ) -> dict[str, Any]:
    row = (await session.execute(
        text(f"update campaign.campaigns set status = :s, updated_at = now() "
             f"where workspace_id = :ws and id = :id returning {_CAMPAIGN_COLS}"),
        {"ws": ws, "id": campaign_id, "s": status},
    )).first()
    if row is None:
        raise NotFound(f"No campaign {campaign_id}")
    return _out(row)


async def _page(session: AsyncSession, sql: str, params: dict[str, Any], limit: int
                ) -> tuple[list[dict[str, Any]], str | None]:
    rows = (await session.execute(text(sql), {**params, "lim": limit + 1})).all()
    items = [_out(r) for r in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


async def list_campaigns(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                         ) -> tuple[list[dict[str, Any]], str | None]:
    return await _page(
        session,
        f"select {_CAMPAIGN_COLS} from campaign.campaigns where workspace_id = :ws "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "after": after}, limit,
    )


async def list_sends(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, after: str | None,
                     limit: int) -> tuple[list[dict[str, Any]], str | None]:
    await get_campaign(session, ws, campaign_id)
    return await _page(
        session,
        f"select {_SEND_COLS} from campaign.sends where workspace_id = :ws and campaign_id = :cid "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "cid": campaign_id, "after": after}, limit,
    )
