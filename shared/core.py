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
from datetime import datetime
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
    await session.execute(sa.insert(api_keys), [_new_key_row(wid, kind, raw) for kind, raw in keys.items()])
    return CreatedWorkspace(wid, name, keys[KeyKind.write], keys[KeyKind.secret])


def _new_key_row(workspace_id: uuid.UUID, kind: KeyKind, raw: str) -> dict[str, Any]:
    """The row of a new key: its hash, and its first characters to tell it apart (the key itself is not kept)."""
    return {"id": uuid.uuid4(), "workspace_id": workspace_id, "kind": kind.value, "key_hash": hash_key(raw),
            "hint": raw[:7] + "…", "created_at": utc_now()}


@dataclass(frozen=True)
class KeyInfo:
    """A key as an operator sees it: never the key itself, which is shown once, at creation."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    kind: KeyKind
    hint: str
    created_at: datetime
    revoked_at: datetime | None


class KeyNotFound(LookupError):
    pass


class LastSecretKey(ValueError):
    """Revoking it would lock the workspace out of every management API."""


def _key_info(row: Any) -> KeyInfo:
    return KeyInfo(row.id, row.workspace_id, KeyKind(row.kind), row.hint, row.created_at, row.revoked_at)


async def list_keys(session: AsyncSession, workspace_id: uuid.UUID) -> list[KeyInfo]:
    """A workspace's keys, revoked ones included, oldest first; :class:`KeyNotFound` if there is no such
    workspace."""
    if not await workspace_exists(session, workspace_id):
        raise KeyNotFound(f"no workspace {workspace_id}")
    rows = await session.execute(sa.select(api_keys).where(api_keys.c.workspace_id == workspace_id)
                                 .order_by(api_keys.c.created_at, api_keys.c.id))
    return [_key_info(r) for r in rows]


async def add_key(session: AsyncSession, workspace_id: uuid.UUID, kind: KeyKind) -> tuple[KeyInfo, str]:
    """A new key of ``kind`` beside the workspace's others (to rotate: add, deploy it, revoke the old one).
    The caller owns the transaction; raises :class:`KeyNotFound` if there is no such workspace."""
    if not await workspace_exists(session, workspace_id):
        raise KeyNotFound(f"no workspace {workspace_id}")
    raw = new_key(kind)
    row = (await session.execute(sa.insert(api_keys).values(_new_key_row(workspace_id, kind, raw))
                                 .returning(*api_keys.c))).one()
    return _key_info(row), raw


async def revoke_key(session: AsyncSession, ref: str, *, force: bool = False) -> KeyInfo:
    """Revoke a key named by its id or by the key itself (what an operator holds when one has leaked). Revoking
    again changes nothing. The workspace's last active secret key is kept unless ``force``: without one, nothing
    but this command reaches its management APIs. The caller owns the transaction."""
    try:
        where = api_keys.c.id == uuid.UUID(ref)
    except ValueError:
        where = api_keys.c.key_hash == hash_key(ref)
    row = (await session.execute(sa.select(api_keys).where(where).with_for_update())).first()
    if row is None:
        raise KeyNotFound("no such key (give a key id from `tenure workspace keys`, or the key itself)")
    if row.revoked_at is not None:
        return _key_info(row)
    if row.kind == KeyKind.secret and not force:
        # (locks the workspace's secret keys: two revocations at once cannot each leave the other as the last)
        others = (await session.execute(sa.select(api_keys.c.id).where(
            api_keys.c.workspace_id == row.workspace_id, api_keys.c.kind == KeyKind.secret.value,
            api_keys.c.revoked_at.is_(None), api_keys.c.id != row.id).with_for_update())).all()
        if not others:
            raise LastSecretKey("this is the workspace's last secret key: add another first "
                                "(`tenure workspace add-key WORKSPACE --kind secret`), or pass --force")
    revoked = (await session.execute(sa.update(api_keys).where(api_keys.c.id == row.id)
                                     .values(revoked_at=utc_now()).returning(*api_keys.c))).one()
    return _key_info(revoked)


async def lookup_key(session: AsyncSession, raw: str) -> KeyRecord | None:
    row = (
        await session.execute(
            sa.select(api_keys.c.workspace_id, api_keys.c.kind).where(
                api_keys.c.key_hash == hash_key(raw), api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    return KeyRecord(row.workspace_id, KeyKind(row.kind)) if row else None


async def workspace_exists(session: AsyncSession, workspace_id: uuid.UUID) -> bool:
    return (await session.execute(sa.select(sa.literal(1)).where(workspaces.c.id == workspace_id))).first() is not None


@dataclass(frozen=True)
class WorkspaceInfo:
    id: uuid.UUID
    name: str
    created_at: datetime
    active_keys: int  # write and secret keys not revoked
    settings: dict[str, Any]


async def list_workspaces(session: AsyncSession) -> list[WorkspaceInfo]:
    """Every workspace, oldest first, with how many keys it has in use (none: nothing but the CLI reaches it)."""
    rows = await session.execute(sa.text(
        "select w.id, w.name, w.created_at, w.settings, "
        "(select count(*) from core.api_keys k where k.workspace_id = w.id and k.revoked_at is null) as active_keys "
        "from core.workspaces w order by w.created_at, w.id"))
    return [WorkspaceInfo(r.id, r.name, r.created_at, r.active_keys, r.settings or {}) for r in rows]


async def workspace_name(session: AsyncSession, workspace_id: uuid.UUID) -> str | None:
    """The workspace's name; None when there is no such workspace."""
    return (await session.execute(sa.select(workspaces.c.name).where(workspaces.c.id == workspace_id))).scalar()


async def workspace_settings(session: AsyncSession, workspace_id: uuid.UUID) -> dict[str, Any]:
    """A workspace's ``settings`` document (retention, lifecycle, topics, quiet hours, …); empty if none."""
    raw = (await session.execute(sa.text("select settings from core.workspaces where id = :ws"),
                                 {"ws": workspace_id})).scalar()
    return dict(raw or {})
