"""The ``core`` schema: workspaces and their API keys (owned by ``shared``; services only read it).

Keys are random 32-byte tokens shown once at creation; only their SHA-256 is stored (they are
high-entropy, so a slow hash buys nothing). Two kinds live here:

- ``write``: public-ish, embedded in client apps; accepted only by ingest's tracking endpoints.
- ``secret``: for the management APIs of every service.

The third credential, the internal token for service-to-service calls, is an operator-provisioned
secret (``TENURE_INTERNAL_TOKEN``), not a row: every service must know it before any workspace exists.
"""

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import metadata_for, utc_now

metadata = metadata_for("core")


class KeyKind(StrEnum):
    write = "write"
    secret = "secret"


KEY_PREFIX = {KeyKind.write: "wk_", KeyKind.secret: "sk_"}

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("settings", JSONB,
              nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("workspace_id", UUID(as_uuid=True), sa.ForeignKey("core.workspaces.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("key_hash", sa.LargeBinary, nullable=False, unique=True),
    sa.Column("hint", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind in ('write', 'secret')", name="kind"),
)


def hash_key(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def new_key(kind: KeyKind) -> str:
    return KEY_PREFIX[kind] + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class CreatedWorkspace:
    workspace_id: uuid.UUID
    name: str
    write_key: str
    secret_key: str


@dataclass(frozen=True)
class KeyRecord:
    workspace_id: uuid.UUID
    kind: KeyKind


async def create_workspace(session: AsyncSession, name: str, *, workspace_id: uuid.UUID | None = None
                           ) -> CreatedWorkspace:
    """Insert a workspace with one write key and one secret key. The caller owns the transaction."""
    wid = workspace_id or uuid.uuid4()
    await session.execute(sa.insert(workspaces).values(id=wid, name=name, created_at=utc_now()))
    keys = {kind: new_key(kind) for kind in KeyKind}
    await session.execute(
        sa.insert(api_keys),
        [
            {"id": uuid.uuid4(), "workspace_id": wid, "kind": kind.value, "key_hash": hash_key(raw),
             "hint": raw[:7] + "…", "created_at": utc_now()}
            for kind, raw in keys.items()
        ],
    )
    return CreatedWorkspace(wid, name, keys[KeyKind.write], keys[KeyKind.secret])


async def lookup_key(session: AsyncSession, raw: str) -> KeyRecord | None:
    row = (
        await session.execute(
            sa.select(api_keys.c.workspace_id, api_keys.c.kind).where(
                api_keys.c.key_hash == hash_key(raw), api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    return KeyRecord(row.workspace_id, KeyKind(row.kind)) if row else None


async def workspace_settings(session: AsyncSession, workspace_id: uuid.UUID) -> dict[str, Any]:
    """A workspace's ``settings`` document (retention, lifecycle, topics, quiet hours, …); empty if none."""
    raw = (await session.execute(sa.text("select settings from core.workspaces where id = :ws"),
                                 {"ws": workspace_id})).scalar()
    return dict(raw or {})
