"""Templates, campaigns and the sends they produce (no HTTP here)."""

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign import templates
from shared.db import fetch_one, fetch_page, insert_one_or_conflict, row_dict
from shared.errors import ValidationFailed
from shared.jsonutil import dumps

_TEMPLATE_COLS = "id, name, channel, subject, html, text, created_at, updated_at"
_CAMPAIGN_COLS = "id, name, status, version, trigger, template_id, message_type, created_at, updated_at"
_SEND_COLS = ("id, campaign_id, campaign_version, profile_id, occurrence, status, reason, "
              "delivery_message_id, created_at")


async def create_template(session: AsyncSession, ws: uuid.UUID, data: dict[str, Any]) -> dict[str, Any]:
    fields = {k: data.get(k) for k in ("subject", "html", "text")}
    if not fields["html"] and not fields["text"]:
        raise ValidationFailed("A template needs an html or a text body")
    try:
        templates.validate(fields)
    except templates.TemplateError as exc:
        raise ValidationFailed(f"Template {exc.field} does not parse: {exc.message}", field=exc.field) from None
    row = await insert_one_or_conflict(
        session,
        f"insert into campaign.templates (id, workspace_id, name, channel, subject, html, text) "
        f"values (:id, :ws, :name, :channel, :subject, :html, :text) returning {_TEMPLATE_COLS}",
        {"id": uuid.uuid4(), "ws": ws, "name": data["name"], "channel": data.get("channel", "email"), **fields},
        f"A template named {data['name']!r} already exists",
    )
    return row_dict(row)


async def get_template(session: AsyncSession, ws: uuid.UUID, template_id: uuid.UUID) -> dict[str, Any]:
    return await fetch_one(
        session,
        f"select {_TEMPLATE_COLS} from campaign.templates where workspace_id = :ws and id = :id",
        {"ws": ws, "id": template_id},
        missing=f"No template {template_id}",
    )


async def create_campaign(session: AsyncSession, ws: uuid.UUID, data: dict[str, Any]) -> dict[str, Any]:
    try:
        template_id = uuid.UUID(str(data["template_id"]))
    except ValueError:
        raise ValidationFailed("template_id is not a valid id") from None
    await get_template(session, ws, template_id)
    row = await insert_one_or_conflict(
        session,
        f"insert into campaign.campaigns (id, workspace_id, name, status, trigger, template_id, message_type) "
        f"values (:id, :ws, :name, :status, CAST(:trigger AS jsonb), :tid, :mt) returning {_CAMPAIGN_COLS}",
        {"id": uuid.uuid4(), "ws": ws, "name": data["name"], "status": data.get("status", "active"),
         "trigger": dumps(data["trigger"]), "tid": template_id,
         "mt": data.get("message_type", "marketing")},
        f"A campaign named {data['name']!r} already exists",
    )
    return row_dict(row)


async def get_campaign(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    return await fetch_one(
        session,
        f"select {_CAMPAIGN_COLS} from campaign.campaigns where workspace_id = :ws and id = :id",
        {"ws": ws, "id": campaign_id},
        missing=f"No campaign {campaign_id}",
    )


async def set_status(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, status: str
                     ) -> dict[str, Any]:
    return await fetch_one(
        session,
        f"update campaign.campaigns set status = :s, updated_at = now() "
             f"where workspace_id = :ws and id = :id returning {_CAMPAIGN_COLS}",
        {"ws": ws, "id": campaign_id, "s": status},
        missing=f"No campaign {campaign_id}",
    )


async def list_campaigns(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                         ) -> tuple[list[dict[str, Any]], str | None]:
    return await fetch_page(
        session,
        f"select {_CAMPAIGN_COLS} from campaign.campaigns where workspace_id = :ws "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "after": after}, limit,
    )


async def list_sends(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, after: str | None,
                     limit: int) -> tuple[list[dict[str, Any]], str | None]:
    await get_campaign(session, ws, campaign_id)
    return await fetch_page(
        session,
        f"select {_SEND_COLS} from campaign.sends where workspace_id = :ws and campaign_id = :cid "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "cid": campaign_id, "after": after}, limit,
    )
