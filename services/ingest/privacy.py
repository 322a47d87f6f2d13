"""Privacy requests (GDPR / CCPA): erasure and export of one user, across every service.

Erasure removes the profile (and every profile merged into it), its identities, events, group
memberships and merge history here, in one transaction, and records an audit row. The other services
are then asked to erase what they hold (``propagate``, run by the worker until each has answered, backing off
from a service that fails), and the audit row keeps each service's status and counts, or its last error.

The user is every profile the reference names (``profiles.subject_profiles``): by email, every profile holding
that address, whatever its case (profiles are never merged by email, so one person may have several). A
reference no profile has is not an error: the request is recorded and propagated all the same (see
``erase``), since the other services may hold records under the id, and a "forget me, don't track me" must
still suppress it. Export gathers the same profiles.

The audit row keeps the reference as sent (``subject``) only while the request is pending; completing it
replaces it with ``subject_digest`` (a SHA-256 salted with the request's id), so the record no longer names the
person but can still answer "was this the request about X?" for whoever already knows X. Retries do not need
it: they send the profile ids and the ``identities`` the row keeps until completion.

Every erasure keeps hashes of the user's ids (userId, anonymousIds, email) in ``suppressions``, and events
naming any of them (an alias's previousId too) are dropped at the door (``suppressed`` in the answer) while the
request is pending: the other services may still send events about the person (delivery's feedback, a
campaign's update) and an SDK may retry one sent just before, which would otherwise create a profile for them
again. When every service has erased, the hashes go, unless the request asked for ``suppress``: then they stay
for good. A request a service keeps refusing stays pending, and its ids suppressed, until that service erases.

Ordering against tracking's group commit: an erasure first takes its workspace's erasure lock
exclusively (``_ERASURE_LOCK``), and tracking's probe (``suppressed``) takes it in shared mode before it
looks for suppressions, holding it to its commit. So the erasure waits for every group already past the
probe and then deletes what they wrote, and a group that probes meanwhile waits and then sees the hashes.
"""

import asyncio
import hashlib
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest.profiles import get_profile, subject_profiles, with_merged_ids
from shared import metrics
from shared.auth import WORKSPACE_HEADER
from shared.db import fetch_one, row_dict
from shared.errors import NotFound
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



async def _contacts(session: AsyncSession, params: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """The (email, phone) traits of the profiles ``params["p"]``: delivery holds messages, opt-ins and devices by
    address, so both go to the other services with the person's ids."""
    rows = await session.execute(
        text("select traits->>'email', traits->>'phone' from ingest.profiles "
             "where id = any(CAST(:p AS uuid[])) and (traits ? 'email' or traits ? 'phone')"),
        params,
    )
    return [(e or None, ph or None) for e, ph in rows.all()]


def _addresses(contacts: list[tuple[str | None, str | None]]) -> set[str]:
    """The emails and phone numbers among :func:`_contacts`."""
    return {a for pair in contacts for a in pair if a}


def subject_digest(request_id: uuid.UUID, subject: str) -> str:
    """What a completed request keeps of its subject: ``sha256:`` and the hex SHA-256 of ``"{request id}:{subject}"``
    (the reference exactly as sent). Salted with the request id, a digest cannot be looked up in a table
    built once for every request, nor matched across requests (migration ingest_0007 computes the same in SQL)."""
    return "sha256:" + hashlib.sha256(f"{request_id}:{subject}".encode()).hexdigest()


async def erase(session: AsyncSession, ws: uuid.UUID, ref: str, *, suppress: bool) -> dict[str, Any]:
    """Erase a user here and open the audit record; the caller commits, then wakes the worker.

    A reference no profile has (never seen, or erased already) erases nothing here and still opens the record:
    its ``identities`` are the reference itself, which the other services look their records up by (delivery's
    messages sent under a userId and its devices, campaign's queued events), with no profile ids (segment holds
    records by profile only, so finds nothing); and the reference is suppressed as a userId, an anonymousId and
    an email (which of them it is cannot be known), until completion or, with ``suppress``, for good."""
    # first: wait for tracking transactions of the workspace already past their probe (their writes are then
    # visible and erased below), and hold later ones until this commits (they then see the suppressions)
    await session.execute(_ERASURE_LOCK, {"ws": ws})
    pids = await with_merged_ids(session, ws, await subject_profiles(session, ws, ref))
    params = {"ws": ws, "p": pids}
    idents = [tuple(r) for r in (await session.execute(
        text("select kind, value from ingest.identities "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
        params,
    )).all()]
    contacts = await _contacts(session, params)  # (before the profiles go)
    emails = [e for e, _ in contacts if e]
    if not pids:  # nothing held here: the reference is all there is, as any id it may be (see the docstring)
        idents = [(kind, ref) for kind in ("user_id", "anonymous_id", "email")]
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
         "ids": dumps(sorted({v for _, v in idents} | _addresses(contacts))),
         "services": dumps({s: {"status": "pending", "attempts": 0} for s in OTHER_SERVICES}),
         "removed": dumps(removed)},
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


async def suppressed(session: AsyncSession, ws: uuid.UUID, ids: Callable[[], set[tuple[str, str]]]
                     ) -> set[tuple[str, str]]:
    """Which of (kind, value) — ``ids()``, collected only when needed — belong to users being erased, or erased
    with suppression.

    Call it before writing anything for these ids, in the transaction that writes them: it orders the
    transaction against erasures of the workspace (see the module docstring). Most workspaces have no
    erasure pending and none with suppression: one index probe spares collecting and hashing every id of
    every event."""
    if not (await session.execute(_PROBE, {"ws": ws})).scalar() or not (ids := ids()):
        return set()
    by_hash = {h: (k, v) for k, v in ids for h in _probe_hashes(k, v)}
    rows = await session.execute(
        text("select id_hash from ingest.suppressions where workspace_id = :ws and id_hash = any(CAST(:h AS bytea[]))"),
        {"ws": ws, "h": list(by_hash)},
    )
    return {by_hash[bytes(r[0])] for r in rows}


# Propagation (``propagate``) never holds a transaction across an HTTP call: a transaction that holds a
# transaction id holds back every consumer of the event feed until it ends (shared/feed.py). Requests are
# claimed in a short transaction (a lease, ``claimed_until``, and a fence, ``claims``, raised by every claim),
# the calls are made with none open, and each service's answer is recorded in its own short transaction
# that only the claim's holder can make: a worker whose lease ran out and was taken over records nothing.
BATCH = 5  # requests worked on at once, each calling its services at once: well inside the HTTP client's pool
BACKOFF_BASE_S = 10.0  # the wait after a service's first failure for a request; doubles after each failure
BACKOFF_CAP_S = 3600.0


@dataclass
class _Claim:
    id: uuid.UUID
    workspace_id: uuid.UUID
    claims: int  # the fence: a later claim of the same request raises it
    profile_ids: list[str]
    identities: list[str] | None
    services: dict[str, Any]
    now: datetime  # the database's clock at the claim


@dataclass
class _Backoff:
    base_s: float
    cap_s: float

    def delay_s(self, attempts: int) -> float:
        """Doubling from ``base_s``, at most ``cap_s``, less up to 20 % (requests that failed together, when a
        service went down, do not all come back at the same moment)."""
        return min(self.cap_s, self.base_s * 2 ** min(attempts - 1, 30)) * random.uniform(0.8, 1.0)


def _due_at(entry: dict[str, Any], now: datetime) -> datetime:
    due = entry.get("next_attempt_at")
    return datetime.fromisoformat(due) if due else now


async def propagate(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, limit: int = 20, *,
                    backoff_base_s: float = BACKOFF_BASE_S, backoff_cap_s: float = BACKOFF_CAP_S,
                    lease_s: float | None = None, stop: Callable[[], bool] | None = None) -> int:
    """Ask the other services to erase, for up to ``limit`` pending requests due for an attempt; returns how many
    requests completed.

    Each service of a request is asked once per run, and only when due: after a failure (an error answer, no
    answer within twice the HTTP timeout) it is next asked after an exponential back-off, recorded with the
    error and the attempt count in the request's ``services``; a service that has erased is not asked again.
    Requests are claimed ``BATCH`` at a time for ``lease_s`` (default: long enough for the slowest call), and
    the run stops between batches once ``stop()`` is true (the worker is shutting down)."""
    call_timeout_s = 2 * internal.settings.http_timeout_s
    lease = lease_s if lease_s is not None else 2 * call_timeout_s + 30
    backoff = _Backoff(backoff_base_s, backoff_cap_s)
    seen: list[uuid.UUID] = []  # each request once per run, even when it is due again at once
    completed = 0
    while len(seen) < limit and not (stop and stop()):
        claimed = await _claim(sessionmaker, min(BATCH, limit - len(seen)), lease, seen)
        if not claimed:
            break
        seen += [c.id for c in claimed]
        async with asyncio.TaskGroup() as tg:
            runs = [tg.create_task(_work(sessionmaker, internal, c, call_timeout_s, backoff, lease)) for c in claimed]
        completed += sum(r.result() for r in runs)
        await _release(sessionmaker, claimed)
    return completed


async def _claim(sessionmaker: async_sessionmaker[AsyncSession], n: int, lease_s: float,
                 seen: list[uuid.UUID]) -> list[_Claim]:
    async with sessionmaker() as session, session.begin():
        rows = await session.execute(
            text("update ingest.privacy_requests r "
                 "set claims = r.claims + 1, claimed_until = now() + make_interval(secs => :lease) "
                 "where r.id in (select id from ingest.privacy_requests "
                 "               where status = 'pending' and next_attempt_at <= now() "
                 "                 and (claimed_until is null or claimed_until < now()) "
                 "                 and id <> all(CAST(:seen AS uuid[])) "
                 "               order by next_attempt_at limit :n for update skip locked) "
                 "returning r.id, r.workspace_id, r.claims, r.profile_ids, r.identities, r.services, now() as now"),
            {"n": n, "lease": lease_s, "seen": seen},
        )
        return [_Claim(**r) for r in rows.mappings()]


async def _work(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, claim: _Claim,
                call_timeout_s: float, backoff: _Backoff, lease_s: float) -> bool:
    """Ask every service of ``claim`` that is due, at once; True if the request completed."""
    pending = {s: e for s in OTHER_SERVICES if (e := claim.services.get(s, {})).get("status") != "done"}
    # (none due: a row written otherwise, e.g. by hand; asking them all puts it right)
    due = [s for s, entry in pending.items() if _due_at(entry, claim.now) <= claim.now] or list(pending)
    ctx = {"privacy_request_id": str(claim.id), "workspace_id": str(claim.workspace_id)}

    async def ask(svc: str) -> bool:
        removed, error = await _ask(internal, claim, svc, call_timeout_s)
        metrics.PRIVACY_ERASURE_CALLS.labels(svc, "error" if error else "ok").inc()
        state, entry = await _record(sessionmaker, claim, svc, removed, error, backoff, lease_s)
        if state == "lost":
            log.warning("privacy.claim_lost", **ctx, service=svc, error=error)
        elif error:
            log.warning("privacy.erasure_failed", **ctx, service=svc, error=error, attempts=entry["attempts"],
                        next_attempt_at=entry["next_attempt_at"])
        if state == "completed":
            log.info("privacy.completed", **ctx)
        return state == "completed"

    async with asyncio.TaskGroup() as tg:
        asks = [tg.create_task(ask(s)) for s in due]
    return any(a.result() for a in asks)


async def _ask(internal: InternalClient, claim: _Claim, svc: str, timeout_s: float
               ) -> tuple[dict[str, Any] | None, str | None]:
    """One call (the back-off is the retry): (rows removed, None), or (None, what went wrong)."""
    try:
        async with asyncio.timeout(timeout_s):  # the HTTP timeouts bound each read, not a server that trickles
            resp = await internal.request("POST", svc, "/v1/privacy/erasure", retry=False,
                                          json={"profile_ids": claim.profile_ids, "identities": claim.identities or []},
                                          headers={WORKSPACE_HEADER: str(claim.workspace_id)})
            if resp.status_code != 200:
                return None, _refusal(resp)
            return dict(resp.json()["removed"]), None
    except TimeoutError:
        return None, f"no answer within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - recorded; asked again after the back-off
        return None, type(exc).__name__


def _refusal(resp: httpx.Response) -> str:
    """``answered STATUS``, with the service's reason from its problem document (an erasure waiting for a send)."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"answered {resp.status_code}" + (f": {detail[:300]}" if isinstance(detail, str) and detail else "")


async def _record(sessionmaker: async_sessionmaker[AsyncSession], claim: _Claim, svc: str,
                  removed: dict[str, Any] | None, error: str | None, backoff: _Backoff, lease_s: float
                  ) -> tuple[str, dict[str, Any]]:
    """Record one service's answer if the claim is still this worker's: ("lost", {}) otherwise; else
    ("completed" | "pending", the service's new entry). Completing deletes the request's suppressions (unless it
    asked for ``suppress``) in the same transaction, so the ids are welcome again exactly when it is completed."""
    async with sessionmaker() as session, session.begin():
        row = (await session.execute(
            text("select workspace_id, subject, services, suppress, now() as now from ingest.privacy_requests "
                 "where id = :id and claims = :n and status = 'pending' for update"),
            {"id": claim.id, "n": claim.claims},
        )).first()
        if row is None:  # taken over after the lease ran out (the other worker records), or completed by it
            return "lost", {}
        services, now = dict(row.services), row.now
        attempts = int(services.get(svc, {}).get("attempts", 0)) + 1
        if error is None:
            entry = {"status": "done", "removed": removed, "attempts": attempts, "last_attempt_at": now.isoformat()}
        else:
            entry = {"status": "pending", "error": error, "attempts": attempts, "last_attempt_at": now.isoformat(),
                     "next_attempt_at": (now + timedelta(seconds=backoff.delay_s(attempts))).isoformat()}
        services[svc] = entry
        pending = [services.get(s, {}) for s in OTHER_SERVICES if services.get(s, {}).get("status") != "done"]
        if pending:
            await session.execute(
                text("update ingest.privacy_requests set services = CAST(:s AS jsonb), next_attempt_at = :next, "
                     "claimed_until = now() + make_interval(secs => :lease) where id = :id"),
                {"s": dumps(services), "next": min(_due_at(e, now) for e in pending), "lease": lease_s,
                 "id": claim.id})
            return "pending", entry
        # every service has erased: the ids the row kept go too (the subject becomes its digest), and the
        # suppressions unless asked to stay
        await session.execute(
            text("update ingest.privacy_requests set services = CAST(:s AS jsonb), status = 'completed', "
                 "completed_at = now(), subject = :subject, identities = null, profile_ids = '[]'::jsonb, "
                 "claimed_until = null where id = :id"),
            {"s": dumps(services), "id": claim.id, "subject": subject_digest(claim.id, row.subject)})
        if not row.suppress:
            await session.execute(text("delete from ingest.suppressions where workspace_id = :ws and request_id = :id"),
                                  {"ws": row.workspace_id, "id": claim.id})
        return "completed", entry


async def _release(sessionmaker: async_sessionmaker[AsyncSession], claims: list[_Claim]) -> None:
    """End the leases of a batch (its requests are due again at their ``next_attempt_at``), unless taken over."""
    async with sessionmaker() as session, session.begin():
        await session.execute(
            text("update ingest.privacy_requests r set claimed_until = null "
                 "from unnest(CAST(:ids AS uuid[]), CAST(:ns AS int[])) as c(id, n) "
                 "where r.id = c.id and r.claims = c.n and r.claimed_until is not null"),
            {"ids": [c.id for c in claims], "ns": [c.claims for c in claims]})


async def pending_erasures(session: AsyncSession) -> tuple[int, float]:
    """How many erasures are pending, in every workspace, and the age in seconds of the oldest (0 if none)."""
    row = (await session.execute(text(
        "select count(*), coalesce(extract(epoch from now() - min(created_at)), 0) "
        "from ingest.privacy_requests where status = 'pending'"))).one()
    return int(row[0]), float(row[1])


async def export(session: AsyncSession, internal: InternalClient, ws: uuid.UUID, ref: str) -> dict[str, Any]:
    """Everything Tenure holds about a user (every profile ``ref`` names, as an erasure finds them): ingest's
    records plus each other service's. ``profile`` is the one a lookup of ``ref`` finds, ``other_profiles`` the
    others (by email: every other profile with that address); identities and events are those of them all.

    A reference no profile has is asked of the other services as it is (as an erasure passes it): someone only
    delivery knows — receipts to an address no identify ever named — gets what is held about them, with
    ``profile`` null. Only when no service holds anything is it a 404."""
    subjects = await subject_profiles(session, ws, ref)
    profiles = [await get_profile(session, ws, str(p)) for p in subjects]
    pids = await with_merged_ids(session, ws, subjects)
    params = {"ws": ws, "p": pids}
    identities = (await session.execute(
        text("select kind, value, profile_id, created_at from ingest.identities "
             "where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by created_at"), params,
    )).mappings().all()
    events = (await session.execute(
        text("select message_id, type, event, profile_id, properties, traits, context, timestamp, received_at "
             "from ingest.events where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[])) order by seq"),
        params,
    )).mappings().all()
    out: dict[str, Any] = {"profile": profiles[0] if profiles else None, "other_profiles": profiles[1:],
                           "identities": [dict(r) for r in identities], "events": [dict(r) for r in events]}
    # the same ids an erasure passes (identities, email and phone; the reference itself when no profile has it),
    # so both reach the same records
    ids = sorted({r["value"] for r in identities} | _addresses(await _contacts(session, params))) if pids else [ref]
    for svc in OTHER_SERVICES:
        resp = await internal.request("GET", svc, "/v1/privacy/export", headers={WORKSPACE_HEADER: str(ws)},
                                      params={"profile_id": [str(p) for p in pids], "identity": ids})
        out[svc] = resp.json() if resp.status_code == 200 else {"error": f"{svc} answered {resp.status_code}"}
    if not pids and not any(_holds_anything(out[svc]) for svc in OTHER_SERVICES):
        raise NotFound(f"Nothing is held about {ref!r} in this workspace (no profile, and no other service holds "
                       "records under it)")
    return out


def _holds_anything(part: Any) -> bool:
    """Whether a service's export holds a record (any non-empty list in it), or could not be asked."""
    if isinstance(part, dict):
        return "error" in part or any(_holds_anything(v) for v in part.values())
    return isinstance(part, list) and bool(part)
