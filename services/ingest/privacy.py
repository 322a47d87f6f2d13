"""Privacy requests (GDPR / CCPA): erasure and export of one user, across every service.

Erasure removes the profile (and every profile merged into it), its identities, events, group
memberships and merge history here, in one transaction, and records an audit row. The other services
are then asked to erase what they hold (``propagate``, run by the worker until each has answered), and
the audit row keeps each service's status and counts.

Every erasure keeps hashes of the user's ids (userId, anonymousIds, email) in ``suppressions``, and events
naming any of them are dropped at the door (``suppressed`` in the answer) while the request is pending: the
other services may still send events about the person (delivery's feedback, a campaign's update) and an
SDK may retry one sent just before, which would otherwise create a profile for them again. When every
service has erased, the hashes go, unless the request asked for ``suppress``: then they stay for good. A
request a service keeps refusing stays pending, and its ids suppressed, until that service erases.

Ordering against tracking's group commit: an erasure first takes its workspace's erasure lock
exclusively (``_ERASURE_LOCK``), and tracking's probe (``suppressed``) takes it in shared mode before it
looks for suppressions, holding it to its commit. So the erasure waits for every group already past the
probe and then deletes what they wrote, and a group that probes meanwhile waits and then sees the hashes.
"""

import hashlib
import uuid
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.profiles import get_profile, resolve_ref
from shared.auth import WORKSPACE_HEADER
from shared.db import fetch_one, row_dict
from shared.http import InternalClient
from shared.jsonutil import dumps

log = structlog.get_logger()

OTHER_SERVICES = ("segment", "campaign", "delivery")
# the same key as ingest.suppression_probe() (migration ingest_0003): keep them equal
_ERASURE_LOCK = text(
    "select pg_advisory_xact_lock(hashtextextended('ingest.erasure:' || CAST(CAST(:ws AS uuid) AS text), 0))")
_COLS = "id, kind, subject, profile_ids, suppress, status, services, removed, created_at, completed_at"


def id_hash(kind: str, value: str) -> bytes:
    """The stored form of a suppressed id. Emails are hashed lowercased: ``Ada@Example.com`` is Ada too."""
    return hashlib.sha256(f"{kind}:{value.lower() if kind == 'email' else value}".encode()).digest()


def _probe_hashes(kind: str, value: str) -> set[bytes]:
    """Hashes that suppress (kind, value): erasures before emails were lowercased hashed them as sent."""
    hashes = {id_hash(kind, value)}
    if kind == "email":
        hashes.add(hashlib.sha256(f"{kind}:{value}".encode()).digest())
    return hashes



async def _profile_ids(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.execute(
        text("select id from ingest.profiles where workspace_id = :ws and (id = :pid or merged_into = :pid)"),
        {"ws": ws, "pid": pid},
    )
    return [r[0] for r in rows]


async def _emails(session: AsyncSession, params: dict[str, Any]) -> list[str]:
    """The email traits of the profiles ``params["p"]`` (other services key records by address)."""
    rows = await session.execute(
        text("select traits->>'email' from ingest.profiles where id = any(CAST(:p AS uuid[])) and traits ? 'email'"),
        params,
    )
    return [e for e in rows.scalars().all() if e]


async def erase(session: AsyncSession, ws: uuid.UUID, ref: str, *, suppress: bool) -> dict[str, Any]:
    """Erase a user here and open the audit record; the caller commits, then wakes the worker."""
    # first: wait for tracking transactions of the workspace already past their probe (their writes are then
    # visible and erased below), and hold later ones until this commits (they then see the suppressions)
    await session.execute(_ERASURE_LOCK, {"ws": ws})
    pids = await _profile_ids(session, ws, await resolve_ref(session, ws, ref))
    params = {"ws": ws, "p": pids}
    idents = (await session.execute(
        text("select kind, value from ingest.identities "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
        params,
    )).all()
    emails = await _emails(session, params)
    removed: dict[str, int] = {}
    for table, col in (("events", "profile_id"), ("identities", "profile_id"), ("group_members", "profile_id"),
                       ("profile_merges", "into_profile_id"), ("profiles", "id")):
        res = await session.execute(
            text(f"delete from ingest.{table} where workspace_id = :ws and {col} = any(CAST(:p AS uuid[]))"), params)
        removed[table] = res.rowcount  # type: ignore[attr-defined]
    request_id = uuid.uuid4()
    # suppressed while the request is pending, and afterwards too with ``suppress``
    hashes = {id_hash(k, v) for k, v in idents} | {id_hash("email", e) for e in emails if e}
    await session.execute(
        text("insert into ingest.suppressions (workspace_id, id_hash, request_id) "
             "select :ws, h, :rid from unnest(CAST(:h AS bytea[])) h on conflict do nothing"),
        {"ws": ws, "h": sorted(hashes), "rid": request_id},
    )
    row = (await session.execute(
        text(f"insert into ingest.privacy_requests (id, workspace_id, kind, subject, profile_ids, suppress, status, "
             f"services, removed, identities) values (:id, :ws, 'erasure', :subject, CAST(:pids AS jsonb), :suppress, "
             f"'pending', CAST(:services AS jsonb), CAST(:removed AS jsonb), CAST(:ids AS jsonb)) returning {_COLS}"),
        {"id": request_id, "ws": ws, "subject": ref, "pids": dumps([str(p) for p in pids]), "suppress": suppress,
         "ids": dumps(sorted({v for _, v in idents} | {e for e in emails if e})),
         "services": dumps({s: {"status": "pending"} for s in OTHER_SERVICES}), "removed": dumps(removed)},
    )).one()
    log.info("privacy.erased_here", privacy_request_id=str(request_id), profiles=len(pids), removed=removed)
    return row_dict(row)


async def get_request(session: AsyncSession, ws: uuid.UUID, request_id: uuid.UUID) -> dict[str, Any]:
    return await fetch_one(
        session,
        f"select {_COLS} from ingest.privacy_requests where workspace_id = :ws and id = :id",
        {"ws": ws, "id": request_id},
        missing=f"No privacy request {request_id}",
    )


# takes the workspace's erasure lock (shared, to commit), then looks with a fresh snapshot (migration ingest_0003)
_PROBE = text("select ingest.suppression_probe(:ws)")


async def suppressed(session: AsyncSession, ws: uuid.UUID, ids: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of (kind, value) belong to users being erased, or erased with suppression.

    Call it before writing anything for these ids, in the transaction that writes them: it orders the
    transaction against erasures of the workspace (see the module docstring). Most workspaces have no
    erasure pending and none with suppression: one index probe spares hashing every id of every event."""
    if not ids or not (await session.execute(_PROBE, {"ws": ws})).scalar():
        return set()
    by_hash = {h: (k, v) for k, v in ids for h in _probe_hashes(k, v)}
    rows = await session.execute(
        text("select id_hash from ingest.suppressions where workspace_id = :ws and id_hash = any(CAST(:h AS bytea[]))"),
        {"ws": ws, "h": list(by_hash)},
    )
    return {by_hash[bytes(r[0])] for r in rows}


async def propagate(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, limit: int = 20) -> int:
    """Ask the other services to erase, for pending requests; returns how many requests completed."""
    completed = 0
    async with sessionmaker() as session:
        async with session.begin():
            pending = (await session.execute(
                text("select id, workspace_id, profile_ids, services, identities, suppress "
                     "from ingest.privacy_requests where status = 'pending' order by created_at limit :n "
                     "for update skip locked"), {"n": limit},
            )).all()
            for rid, ws, pids, services, idents, suppress in pending:
                for svc in OTHER_SERVICES:
                    if services.get(svc, {}).get("status") == "done":
                        continue
                    try:
                        resp = await internal.request("POST", svc, "/v1/privacy/erasure", retry=True,
                                                      json={"profile_ids": pids, "identities": idents or []},
                                                      headers={WORKSPACE_HEADER: str(ws)})
                        if resp.status_code == 200:
                            services[svc] = {"status": "done", "removed": resp.json()["removed"]}
                        else:
                            services[svc] = {"status": "pending", "error": f"answered {resp.status_code}"}
                    except Exception as exc:  # noqa: BLE001 - retried on the next run
                        services[svc] = {"status": "pending", "error": type(exc).__name__}
                done = all(services[s]["status"] == "done" for s in OTHER_SERVICES)
                await session.execute(
                    # once every service has erased, the ids themselves go too
                    text("update ingest.privacy_requests set services = CAST(:s AS jsonb), status = :st, "
                         "completed_at = case when :st = 'completed' then now() end, "
                         "identities = case when :st = 'completed' then null else identities end where id = :id"),
                    {"s": dumps(services), "st": "completed" if done else "pending", "id": rid},
                )
                if done and not suppress:  # the ids were suppressed only while services were erasing
                    await session.execute(
                        text("delete from ingest.suppressions where workspace_id = :ws and request_id = :id"),
                        {"ws": ws, "id": rid})
                completed += done
                log.info("privacy.propagated", request_id=str(rid), done=done)
    return completed


async def export(session: AsyncSession, internal: InternalClient, ws: uuid.UUID, ref: str) -> dict[str, Any]:
    """Everything Tenure holds about a user: ingest's records plus each other service's."""
    profile = await get_profile(session, ws, ref)
    pids = await _profile_ids(session, ws, uuid.UUID(profile["id"]))
    params = {"ws": ws, "p": pids}
    identities = (await session.execute(
        text("select kind, value, created_at from ingest.identities "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by created_at"), params,
    )).mappings().all()
    events = (await session.execute(
        text("select message_id, type, event, properties, traits, context, timestamp, received_at "
             "from ingest.events where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by seq"),
        params,
    )).mappings().all()
    out: dict[str, Any] = {"profile": profile, "identities": [dict(r) for r in identities],
                           "events": [dict(r) for r in events]}
    # the same ids an erasure passes (identities and email), so both reach the same records
    ids = sorted({r["value"] for r in identities} | set(await _emails(session, params)))
    for svc in OTHER_SERVICES:
        resp = await internal.request("GET", svc, "/v1/privacy/export", headers={WORKSPACE_HEADER: str(ws)},
                                      params={"profile_id": [str(p) for p in pids], "identity": ids})
        out[svc] = resp.json() if resp.status_code == 200 else {"error": f"{svc} answered {resp.status_code}"}
    return out
