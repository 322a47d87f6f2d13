"""Push devices of users (by userId or anonymousId), registered by apps and removed when a provider says
gone: FCM registration tokens, APNs device tokens and Web Push subscriptions (endpoint URL + keys)."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.delivery.apns import is_device_token
from services.delivery.push import Device
from shared.db import fetch_page, row_dict
from shared.errors import InvalidCursor

_COLS = "user_ref as user, platform, token, created_at, last_used_at, webpush_p256dh is not null as web_push"


async def register(session: AsyncSession, ws: uuid.UUID, user: str, platform: str, token: str,
                   p256dh: str | None = None, auth: str | None = None) -> dict[str, Any]:
    """Idempotent; a token that moves to another user (a shared device) follows its latest owner, and a
    re-registered subscription takes its new keys. An APNs device token is hex bytes, written in either case by
    different iOS libraries: it is kept in lower case (one phone registered both ways got every push twice)."""
    if platform == "ios" and is_device_token(token):
        if others := sorted({token, token.upper()} - {token.lower()}):  # the same phone, stored in capitals before
            await session.execute(text("delete from delivery.devices where workspace_id = :ws "
                                       "and token = any(CAST(:t AS text[]))"), {"ws": ws, "t": others})
        token = token.lower()
    row = (await session.execute(text(
        "insert into delivery.devices (workspace_id, token, user_ref, platform, webpush_p256dh, webpush_auth) "
        "values (:ws, :t, :u, :p, :k, :a) "
        "on conflict (workspace_id, token) do update set user_ref = excluded.user_ref, "
        "platform = excluded.platform, webpush_p256dh = excluded.webpush_p256dh, "
        f"webpush_auth = excluded.webpush_auth returning {_COLS}"),
        {"ws": ws, "t": token, "u": user, "p": platform, "k": p256dh, "a": auth})).one()
    return row_dict(row)


async def list_devices(session: AsyncSession, ws: uuid.UUID, user: str, after: str | None, limit: int
                       ) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the user's devices, oldest first; ``after`` is the previous page's last as ``created_at token``
    (the time as ISO 8601, then the token)."""
    since: datetime | None = None
    token = None
    if after:
        stamp, _, token = after.partition(" ")
        try:
            since = datetime.fromisoformat(stamp)
        except ValueError:
            since = None
        if since is None or since.tzinfo is None or not token:
            raise InvalidCursor()
    items, more = await fetch_page(
        session,
        f"select {_COLS} from delivery.devices where workspace_id = :ws and user_ref = :u "
        "and (CAST(:since AS timestamptz) is null or (created_at, token) > (:since, :token)) "
        "order by created_at, token limit :lim",
        {"ws": ws, "u": user, "since": since, "token": token}, limit, key="token")
    return items, f"{items[-1]['created_at'].isoformat()} {items[-1]['token']}" if more else None


async def devices_of(session: AsyncSession, ws: uuid.UUID, user: str) -> list[Device]:
    rows = await session.execute(text(
        "select token, platform, webpush_p256dh, webpush_auth from delivery.devices "
        "where workspace_id = :ws and user_ref = :u order by created_at"), {"ws": ws, "u": user})
    return [Device(r.token, r.platform, r.webpush_p256dh, r.webpush_auth) for r in rows]


async def tokens_of(session: AsyncSession, ws: uuid.UUID, user: str) -> list[str]:
    return [d.token for d in await devices_of(session, ws, user)]


async def forget(session: AsyncSession, ws: uuid.UUID, tokens: list[str]) -> int:
    if not tokens:
        return 0
    res = await session.execute(text("delete from delivery.devices where workspace_id = :ws "
                                     "and token = any(CAST(:t AS text[]))"), {"ws": ws, "t": tokens})
    return int(res.rowcount)  # type: ignore[attr-defined]


async def used(session: AsyncSession, ws: uuid.UUID, tokens: list[str]) -> None:
    if tokens:
        await session.execute(text("update delivery.devices set last_used_at = now() where workspace_id = :ws "
                                   "and token = any(CAST(:t AS text[]))"), {"ws": ws, "t": tokens})


async def receipts(session: AsyncSession, message_id: uuid.UUID) -> dict[str, str]:
    """The devices a push message reached in earlier attempts: token -> the provider's id."""
    rows = await session.execute(text("select token, provider_id from delivery.push_receipts where message_id = :m"),
                                 {"m": message_id})
    return {r.token: r.provider_id for r in rows}


async def record_receipts(session: AsyncSession, message_id: uuid.UUID, reached: dict[str, str]) -> None:
    if reached:
        await session.execute(text(
            "insert into delivery.push_receipts (message_id, token, provider_id) "
            "select :m, t, p from unnest(CAST(:t AS text[]), CAST(:p AS text[])) as r(t, p) "
            "on conflict do nothing"), {"m": message_id, "t": list(reached), "p": list(reached.values())})


def spellings(token: str) -> list[str]:
    """The forms a token given back to us may be stored under: an APNs device token's lower case too."""
    return [token, token.lower()] if is_device_token(token) and token != token.lower() else [token]
