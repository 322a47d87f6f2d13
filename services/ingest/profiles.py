"""Profiles and the identity map: which profile a ``userId`` / ``anonymousId`` belongs to, and merges.

Identity creation is serialised per identity with transaction-scoped advisory locks (taken in a fixed
order, so two batches never deadlock), which makes concurrent first sightings of the same user resolve
to one profile.

Two profiles are merged (the second into the first) when a message proves they are one person:
- ``alias``: ``previousId`` (an anonymous or older user id) becomes ``userId`` (a ``previousId`` never seen
  is recorded both as a userId and as an anonymousId of the user, the two ways it may come back);
- a message carrying both ``userId`` and ``anonymousId`` whose ids belong to different profiles, when the
  anonymous profile has no user id of its own (a shared device with two known users is not merged).
A userId seen for the first time joins the profile of its message's ``anonymousId`` only when that profile
is anonymous: on a shared device whose profile already belongs to another user, the new user gets a
profile of their own (and the device's anonymousId stays with the first user).
A merge moves identities, events and group memberships, combines traits (newest per trait wins), keeps
the old profile as a redirect (``merged_into``), records the merge in ``profile_merges`` and appends a
``merge`` event to the log so the other services can fold their own state.
"""

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import traits as trait_merge
from shared.db import fetch_page
from shared.errors import NotFound
from shared.jsonutil import dumps

if TYPE_CHECKING:
    from services.ingest.tracking import Envelope

Key = tuple[str, str]  # (kind, value)


def _keys(env: "Envelope") -> list[Key]:
    keys: list[Key] = []
    if env.user_id:
        keys.append(("user_id", env.user_id))
    if env.anonymous_id:
        keys.append(("anonymous_id", env.anonymous_id))
    return keys


# Lookups by many keys probe the unique key once per key (a lateral subquery with ``limit 1`` the planner cannot
# turn into a join): before a table's first ANALYZE (a new install, a first import) the planner guesses any
# ``workspace_id = :ws`` matches 0.5 % of the rows and reads the whole workspace through another index instead,
# 2 s for 200 profiles at 50k (tests/integration/test_query_plans.py).
LOAD_IDENTITIES = """
    select k.kind, k.value, i.profile_id
      from jsonb_to_recordset(CAST(:keys AS jsonb)) as k(kind text, value text)
     cross join lateral (select i.profile_id from ingest.identities i
                          where i.workspace_id = :ws and i.kind = k.kind and i.value = k.value limit 1) i
"""


async def _load(session: AsyncSession, ws: uuid.UUID, keys: set[Key]) -> dict[Key, uuid.UUID]:
    if not keys:
        return {}
    rows = await session.execute(
        text(LOAD_IDENTITIES),
        {"ws": ws, "keys": dumps([{"kind": k, "value": v} for k, v in keys])},  # one JSON document: cheap to send
    )
    return {(kind, value): pid for kind, value, pid in rows}  # unpacked: 0.6 µs a row, by attribute 2.7


async def _lock_keys(session: AsyncSession, ws: uuid.UUID, keys: set[Key]) -> None:
    """Take every key's advisory lock in one round trip, in sorted order (so two batches never deadlock)."""
    if not keys:
        return
    await session.execute(
        text("select pg_advisory_xact_lock(hashtextextended(k.key, 0)) "
             "from (select key from jsonb_array_elements_text(CAST(:keys AS jsonb)) with ordinality as j(key, n) "
             "order by n) as k"),
        {"keys": dumps(sorted(f"{ws}:{kind}:{value}" for kind, value in keys))},
    )


async def _owners(session: AsyncSession, pids: set[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """The userId of each profile (None: anonymous)."""
    if not pids:
        return {}
    rows = await session.execute(text("select id, user_id from ingest.profiles where id = any(CAST(:ids AS uuid[]))"),
                                 {"ids": list(pids)})
    return {r.id: r.user_id for r in rows}


def alias_keys(env: "Envelope") -> list[Key]:
    """Where an alias's ``previousId`` may be known: as a userId or as an anonymousId."""
    prev = env.previous_id
    return [("user_id", prev), ("anonymous_id", prev)] if prev else []


async def resolve_profiles(session: AsyncSession, ws: uuid.UUID, batch: list["Envelope"]) -> None:
    """Set ``profile_id`` on every envelope, creating profiles and identities that are new and merging
    profiles the batch proves to be one person."""
    wanted = {k for env in batch for k in _keys(env)}
    aliases = {k for env in batch for k in alias_keys(env)}
    known = await _load(session, ws, wanted | aliases)
    missing = wanted - known.keys()
    if missing or aliases:
        await _lock_keys(session, ws, missing | aliases)
        known.update(await _load(session, ws, missing | aliases))  # another writer may have created them
    new_profiles: dict[uuid.UUID, str | None] = {}
    new_ids: dict[Key, uuid.UUID] = {}
    named: dict[uuid.UUID, str] = {}
    merges: list[tuple[uuid.UUID, uuid.UUID, str, str]] = []  # (into, from, reason, message_id)
    # whose the profiles are that a new userId would join through its anonymousId (a device's profile)
    owners = await _owners(session, {known[("anonymous_id", env.anonymous_id)] for env in batch
                                     if env.user_id and env.anonymous_id and ("user_id", env.user_id) not in known
                                     and ("anonymous_id", env.anonymous_id) in known})
    for env in batch:
        keys = _keys(env)
        pid = next((known[k] for k in keys if k in known), None)
        if pid is not None and env.user_id and ("user_id", env.user_id) not in known \
                and owners.get(pid) not in (None, env.user_id):
            pid = None  # a shared device: its profile is another user's, a new user gets a profile of their own
        if pid is None:
            pid = uuid.uuid4()
            new_profiles[pid] = owners[pid] = env.user_id or None  # ("" is no userId, as in ``_keys``)
        for k in keys:
            if k not in known:
                known[k] = new_ids[k] = pid
            elif known[k] != pid and k[0] == "anonymous_id" and env.user_id:
                merges.append((pid, known[k], "identify", env.message_id))
        if env.previous_id:
            prev = next((known[k] for k in alias_keys(env) if k in known), None)
            if prev is None:  # never seen: it may come back as either (an SDK's anonymousId, a server's userId)
                for k in alias_keys(env):
                    known[k] = new_ids[k] = pid
            elif prev != pid:
                merges.append((pid, prev, "alias", env.message_id))
        if env.user_id:
            if pid not in new_profiles:
                named.setdefault(pid, env.user_id)
            elif new_profiles[pid] is None:  # created anonymous by an earlier message of this batch
                new_profiles[pid] = env.user_id
            if owners.get(pid) is None:
                owners[pid] = env.user_id
        env.profile_id = pid
    if new_profiles:
        await session.execute(
            text(
                """
                insert into ingest.profiles (id, workspace_id, user_id)
                select u.id, :ws, u.uid from unnest(CAST(:ids AS uuid[]), CAST(:uids AS text[])) as u(id, uid)
                """
            ),
            {"ws": ws, "ids": list(new_profiles), "uids": list(new_profiles.values())},
        )
    if new_ids:
        await session.execute(
            text(
                """
                insert into ingest.identities (workspace_id, kind, value, profile_id)
                select :ws, u.kind, u.value, u.pid
                  from unnest(CAST(:kinds AS text[]), CAST(:vals AS text[]), CAST(:pids AS uuid[]))
                       as u(kind, value, pid)
                """
            ),
            {"ws": ws, "kinds": [k[0] for k in new_ids], "vals": [k[1] for k in new_ids],
             "pids": list(new_ids.values())},
        )
    if named:
        # an anonymous profile that just identified gets its userId
        await session.execute(
            text(
                """
                update ingest.profiles p set user_id = u.uid, updated_at = now()
                  from unnest(CAST(:pids AS uuid[]), CAST(:uids AS text[])) as u(pid, uid)
                 where p.id = u.pid and p.user_id is null
                   and not exists (select 1 from ingest.profiles o where o.workspace_id = :ws and o.user_id = u.uid)
                """
            ),
            {"ws": ws, "pids": list(named), "uids": list(named.values())},
        )
    redirect: dict[uuid.UUID, uuid.UUID] = {}
    for into, from_, reason, message_id in merges:
        into, from_ = redirect.get(into, into), redirect.get(from_, from_)
        if into == from_ or not await merge_profiles(session, ws, into, from_, reason=reason, message_id=message_id,
                                                     only_if_anonymous=reason == "identify"):
            continue
        for k, v in list(redirect.items()):
            if v == from_:
                redirect[k] = into
        redirect[from_] = into
    if redirect:
        for env in batch:
            env.profile_id = redirect.get(env.profile_id, env.profile_id)  # type: ignore[arg-type]


async def merge_profiles(session: AsyncSession, ws: uuid.UUID, into: uuid.UUID, from_: uuid.UUID, *, reason: str,
                         message_id: str | None, only_if_anonymous: bool = False) -> bool:
    """Merge profile ``from_`` into ``into`` (see the module docstring). Returns False if refused.

    Either may have been merged away by another request since this one read it (two logins on one device at once,
    or the identify and the track an SDK sends together after one): the rows are read again under their lock, and a
    merged-away one stands for its survivor, so a profile is merged once, into one profile, and the refusal of a
    device's profile already another user's holds as it does for requests one after the other."""
    rows = {
        r.id: r
        for r in await session.execute(
            text("select id, user_id, traits, trait_times, merged_into from ingest.profiles "
                 "where id = any(CAST(:ids AS uuid[])) order by id for update"),
            {"ids": sorted([into, from_])},
        )
    }
    if into not in rows or from_ not in rows:
        return False
    a, b = rows[into], rows[from_]
    if a.merged_into is not None or b.merged_into is not None:
        into, from_ = a.merged_into or into, b.merged_into or from_
        return into != from_ and await merge_profiles(session, ws, into, from_, reason=reason, message_id=message_id,
                                                      only_if_anonymous=only_if_anonymous)
    if only_if_anonymous and b.user_id is not None and b.user_id != a.user_id:
        return False
    traits, times = trait_merge.merge_profiles((a.traits, a.trait_times), (b.traits, b.trait_times))
    params = {"ws": ws, "into": into, "from": from_}
    await session.execute(
        text("update ingest.profiles set merged_into = :into, user_id = null, updated_at = now() "
             "where id = :from or merged_into = :from"), params)
    await session.execute(
        text("update ingest.profiles set traits = CAST(:t AS jsonb), trait_times = CAST(:tt AS jsonb), "
             "user_id = coalesce(user_id, :uid), updated_at = now() where id = :into"),
        {**params, "t": dumps(traits), "tt": dumps(times), "uid": b.user_id},
    )
    for sql in (
        "update ingest.identities set profile_id = :into where workspace_id = :ws and profile_id = :from",
        "update ingest.events set profile_id = :into where workspace_id = :ws and profile_id = :from",
        "insert into ingest.group_members (workspace_id, group_id, profile_id, joined_at) "
        "select workspace_id, group_id, :into, joined_at from ingest.group_members "
        "where workspace_id = :ws and profile_id = :from on conflict do nothing",
        "delete from ingest.group_members where workspace_id = :ws and profile_id = :from",
    ):
        await session.execute(text(sql), params)
    await session.execute(
        text("insert into ingest.profile_merges (workspace_id, into_profile_id, from_profile_id, reason, message_id) "
             "values (:ws, :into, :from, :reason, :mid)"),
        {**params, "reason": reason, "mid": message_id},
    )
    now = datetime.now(UTC)
    await session.execute(
        text("insert into ingest.events (workspace_id, message_id, type, profile_id, properties, traits, timestamp, "
             "received_at) values (:ws, :mid, 'merge', :into, CAST(:props AS jsonb), CAST(:traits AS jsonb), :now, "
             ":now) on conflict do nothing"),
        # the merged traits travel with the event: consumers combine them with their copy, newest per trait
        {**params, "mid": f"merge:{from_}:{into}",
         "props": dumps({"merged_profile_id": str(from_), "trait_times": times}),
         "traits": dumps(traits), "now": now},
    )
    return True


_UUID_RE = "^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"


async def resolve_refs(session: AsyncSession, ws: uuid.UUID, refs: list[str]) -> dict[str, uuid.UUID]:
    """Live profile ids for many references at once (profile id, ``userId``, ``anonymousId`` or email, in
    that order of precedence; emails match whatever their case, as mail servers treat them); references no
    profile has are left out. Of several profiles holding an email (a visitor who typed it before logging in, a
    shared address), a known user's (with a userId) comes first, then the oldest: always the same one, where the
    order of random ids picked the anonymous profile for one address in three."""
    rows = await session.execute(
        text(
            f"""
            select r.ref, coalesce(
                     (select coalesce(p.merged_into, p.id) from ingest.profiles p
                       where p.workspace_id = :ws and r.ref ~ '{_UUID_RE}' and p.id = (
                             case when r.ref ~ '{_UUID_RE}' then r.ref::uuid end)),
                     (select i.profile_id from ingest.identities i
                       where i.workspace_id = :ws and i.kind = 'user_id' and i.value = r.ref),
                     (select i.profile_id from ingest.identities i
                       where i.workspace_id = :ws and i.kind = 'anonymous_id' and i.value = r.ref),
                     (select p.id from ingest.profiles p
                       where p.workspace_id = :ws and lower(p.traits->>'email') = lower(r.ref)
                         and p.merged_into is null
                       order by p.user_id is null, p.created_at, p.id limit 1)) as pid
              from (select distinct ref from jsonb_array_elements_text(CAST(:refs AS jsonb)) as j(ref)) as r
            """
        ),
        {"ws": ws, "refs": dumps(refs)},
    )
    return {ref: pid for ref, pid in rows if pid is not None}


async def resolve_ref(session: AsyncSession, ws: uuid.UUID, ref: str) -> uuid.UUID:
    """The live profile id for a profile id (following merges), ``userId``, ``anonymousId`` or email."""
    pid = (await resolve_refs(session, ws, [ref])).get(ref)
    if pid is None:
        raise NotFound(f"No profile {ref!r} in this workspace")
    return pid


# (an identity's profile id is unique across workspaces: asking for the workspace too let the planner, without
# statistics, read every anonymous id of the workspace by the primary key's prefix, for each profile)
GET_MANY = """
    select k.id as asked, p.id, p.user_id, p.traits,
           (select min(i.value) from ingest.identities i
             where i.profile_id = p.id and i.kind = 'anonymous_id') as anonymous_id
      from unnest(CAST(:ids AS uuid[])) as k(id)
     cross join lateral (select coalesce(a.merged_into, a.id) as live from ingest.profiles a
                          where a.id = k.id and a.workspace_id = :ws limit 1) a
      join ingest.profiles p on p.id = a.live
"""


async def get_many(session: AsyncSession, ws: uuid.UUID, ids: list[uuid.UUID]) -> dict[str, dict[str, Any]]:
    """Live profiles (ids of merged-away profiles lead to the profile they were merged into), by the id asked
    for; unknown ids are left out."""
    rows = await session.execute(text(GET_MANY), {"ws": ws, "ids": ids})
    return {str(r.asked): {"id": str(r.id), "user_id": r.user_id, "anonymous_id": r.anonymous_id,
                           "traits": r.traits} for r in rows}


async def get_profile(session: AsyncSession, ws: uuid.UUID, ref: str) -> dict[str, Any]:
    """A profile by its id, ``userId``, ``anonymousId`` or email, with its groups and merge history."""
    from services.ingest.groups import groups_of

    pid = await resolve_ref(session, ws, ref)
    row = (await session.execute(
        text("select id, workspace_id, user_id, traits, created_at, updated_at from ingest.profiles where id = :id"),
        {"id": pid},
    )).mappings().one()
    anon = await session.execute(
        text("select value from ingest.identities where profile_id = :pid "  # (pid is this workspace's)
             "and kind = 'anonymous_id' order by created_at, value"),
        {"pid": pid},
    )
    # the whole history: merges into profiles that were themselves merged into this one later (alias a→b, b→c)
    merges = await session.execute(
        text("select from_profile_id, reason, message_id, at from ingest.profile_merges "
             "where workspace_id = :ws and (into_profile_id = :pid or into_profile_id in "
             "(select id from ingest.profiles where workspace_id = :ws and merged_into = :pid)) order by id"),
        {"ws": ws, "pid": pid},
    )
    return {
        "id": str(row["id"]),
        "workspace_id": str(row["workspace_id"]),
        "user_id": row["user_id"],
        "anonymous_ids": [r[0] for r in anon],
        "traits": row["traits"],
        "groups": await groups_of(session, ws, pid),
        "merged_from": [{"profile_id": str(m.from_profile_id), "reason": m.reason, "message_id": m.message_id,
                         "at": m.at} for m in merges],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


async def list_profiles(session: AsyncSession, ws: uuid.UUID, *, user_id: str | None, email: str | None,
                        traits: dict[str, str], q: str | None, after: str | None, limit: int
                        ) -> tuple[list[dict[str, Any]], str | None]:
    """Live profiles (not merged away), filtered, in id order (see :func:`list_query`)."""
    sql, params = list_query(ws, user_id=user_id, email=email, traits=traits, q=q, after=after)
    return await fetch_page(session, sql, params, limit)


def list_query(ws: uuid.UUID, *, user_id: str | None, email: str | None, traits: dict[str, str], q: str | None,
               after: str | None) -> tuple[str, dict[str, Any]]:
    """The statement of :func:`list_profiles` (ending ``limit :lim``) and its parameters.

    ``user_id`` and ``q`` find a userId through the identity map, as :func:`resolve_refs` does: a profile merged
    away leaves its ``user_id`` column empty (an alias's ``previousId``, an older userId) and its identity with the
    survivor, which ``GET /v1/profiles/{ref}`` found and the list did not. ``traits`` compares each trait's value
    as text exactly (numbers and booleans as JSON writes them)."""
    clauses = ["workspace_id = :ws", "merged_into is null",
               "(CAST(:after AS uuid) is null or id > CAST(:after AS uuid))"]
    params: dict[str, Any] = {"ws": ws, "after": after}
    if user_id is not None:
        # one probe of the identity key, then of the primary key
        clauses.append("id = (select i.profile_id from ingest.identities i "
                       "where i.workspace_id = :ws and i.kind = 'user_id' and i.value = :uid)")
        params["uid"] = user_id
    if email is not None:
        clauses.append("lower(traits->>'email') = lower(:email)")
        params["email"] = email
    for i, (name, value) in enumerate(sorted(traits.items())):
        # compared as text: a query string holds only text, and a trait may be a number or a boolean (age=30)
        clauses.append(f"traits->>:tk{i} = :tv{i}")
        params[f"tk{i}"], params[f"tv{i}"] = name, value
    if q:
        # the profile's other userIds (merged in) too: the workspace's matching userIds read once (a hashed subplan),
        # not a probe of the identities per profile that nothing else matched (a rare term: one per profile)
        clauses.append("(user_id ilike :q or (traits->>'email') ilike :q or (traits->>'name') ilike :q "
                       "or (traits->>'first_name') ilike :q or (traits->>'last_name') ilike :q "
                       "or id in (select i.profile_id from ingest.identities i where i.workspace_id = :ws "
                       "and i.kind = 'user_id' and i.value ilike :q))")
        params["q"] = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    sql = ("select id, user_id, traits, created_at, updated_at from ingest.profiles where "
           + " and ".join(clauses) + " order by id limit :lim")
    return sql, params


async def subject_profiles(session: AsyncSession, ws: uuid.UUID, ref: str) -> list[uuid.UUID]:
    """The live profiles a privacy request about ``ref`` concerns: the one ``resolve_ref`` finds first, then every
    other whose email is ``ref`` in any case, in id order (none: an empty list).

    Profiles are never merged by email, so one person may hold several (signed in on a laptop, anonymous on a
    phone whose form gave the same address); a lookup stops at the first, an erasure or export must not. A
    merged-away profile holding the email counts as the profile it was merged into (its row keeps its traits)."""
    first = (await resolve_refs(session, ws, [ref])).get(ref)
    rows = await session.execute(
        text("select distinct coalesce(merged_into, id) as pid from ingest.profiles "
             "where workspace_id = :ws and lower(traits->>'email') = lower(:ref) order by pid"),
        {"ws": ws, "ref": ref},
    )
    found = [first] if first is not None else []
    return found + [p for p in rows.scalars() if p != first]


async def with_merged_ids(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Each of ``pids`` followed by the profiles merged into it. Their records are the person's too: an event whose
    write raced the merge (resolved to the merged-away profile before the merge committed, stored after it moved
    the events) keeps that profile's id, and reading through the merge costs less than a lock on every tracking
    write."""
    rows = await session.execute(
        text("select merged_into, id from ingest.profiles where workspace_id = :ws "
             "and merged_into = any(CAST(:p AS uuid[])) order by id"),
        {"ws": ws, "p": pids},
    )
    merged: dict[uuid.UUID, list[uuid.UUID]] = {}
    for into, pid in rows:
        merged.setdefault(into, []).append(pid)
    return [p for pid in pids for p in (pid, *merged.get(pid, []))]


async def profile_events(session: AsyncSession, ws: uuid.UUID, ref: str, *, after: int | None, limit: int
                         ) -> tuple[list[dict[str, Any]], str | None]:
    """A profile's events (with those of profiles merged into it), newest first, paginated by sequence number."""
    pids = await with_merged_ids(session, ws, [await resolve_ref(session, ws, ref)])
    items, nxt = await fetch_page(
        session,
        # each profile's newest page by its own index scan, then the newest of those: a page stays a page's work
        "select e.* from unnest(CAST(:pids AS uuid[])) as p(id) cross join lateral ("
        " select seq, message_id, type, event, properties, traits, context, timestamp, received_at"
        " from ingest.events where workspace_id = :ws and profile_id = p.id"
        " and (CAST(:after AS bigint) is null or seq < CAST(:after AS bigint)) order by seq desc limit :lim) as e "
        "order by e.seq desc limit :lim",
        {"ws": ws, "pids": pids, "after": after}, limit, key="seq",
    )
    return items, nxt
