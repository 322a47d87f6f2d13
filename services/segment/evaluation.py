"""Incremental evaluation: fold ingest's event feed into per-profile aggregates, then re-evaluate only
the profiles those events touched. One page of the feed is one transaction: aggregates, the dirty
marks of the touched profiles and the consumer's cursor commit together, so a crash replays a page and
never double-counts; re-evaluation then takes the dirty profiles partition by partition
(partitioning.py), writing memberships and transitions in the transaction that clears the marks.
"""

import asyncio
import hashlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.segment import attributes, conditions, partitioning, set_evaluation
from services.segment import lifecycle as lifecycle_mod
from services.segment.attributes import PurchaseRules
from shared import metrics, profile_merges
from shared import traits as trait_merge
from shared.core import workspace_settings
from shared.db import driver_connection, uuid_array
from shared.errors import NotFound, UpstreamUnavailable
from shared.feed import feed_time, lock_consumer, save_consumer
from shared.http import InternalClient
from shared.jsonutil import dumps, loads
from shared.metrics import workspace_failed

log = structlog.get_logger()
SCHEMA = "segment"

Affected = dict[uuid.UUID, set[uuid.UUID]]

# folding occurrences of an event on a day into those counted (new events, or a merge): the day's first and last
# (a time not known, of a day counted before segment_0008, is the start of the day, as conditions reads it)
_COUNTS_FOLD = """on conflict (workspace_id, profile_id, event, day) do update set
        count = c.count + excluded.count,
        first_at = least(coalesce(c.first_at, c.day::timestamp at time zone 'UTC'),
                         coalesce(excluded.first_at, c.day::timestamp at time zone 'UTC')),
        last_at = greatest(coalesce(c.last_at, c.day::timestamp at time zone 'UTC'),
                           coalesce(excluded.last_at, c.day::timestamp at time zone 'UTC'))"""

# folding one profile's statistics into another's (new events, or a merge)
_STATS_FOLD = """on conflict (workspace_id, profile_id) do update set
        first_seen = least(p.first_seen, excluded.first_seen),
        last_seen = greatest(p.last_seen, excluded.last_seen),
        order_count = p.order_count + excluded.order_count,
        revenue = p.revenue + excluded.revenue,
        first_order_at = least(p.first_order_at, excluded.first_order_at),
        last_order_at = greatest(p.last_order_at, excluded.last_order_at),
        last_nps = case when excluded.last_nps_at is not null
                         and (p.last_nps_at is null or excluded.last_nps_at >= p.last_nps_at)
                        then excluded.last_nps else p.last_nps end,
        last_nps_at = greatest(p.last_nps_at, excluded.last_nps_at)"""


@dataclass
class PageResult:
    events: int = 0
    cursor: str = ""
    behind: int = 0  # committed events after this page, held back by the feed's horizon or the page size

    @property
    def read(self) -> int:
        return self.events



_RAW_TYPES = ("track", "page", "screen")


async def apply_events(session: AsyncSession, events: list[dict[str, Any]]) -> Affected:
    counts: dict[tuple[uuid.UUID, uuid.UUID, str, date], int] = defaultdict(int)
    times: dict[tuple[uuid.UUID, uuid.UUID, str, date], tuple[datetime, datetime]] = {}  # first, last that day
    traits: dict[tuple[uuid.UUID, uuid.UUID], list[trait_merge.Update]] = {}
    account_traits: dict[tuple[uuid.UUID, str], list[trait_merge.Update]] = {}
    account_members: set[tuple[uuid.UUID, uuid.UUID, str]] = set()
    raw: list[dict[str, Any]] = []
    affected: Affected = defaultdict(set)
    merges: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, dict[str, Any], dict[str, str]]] = []
    stats: dict[tuple[uuid.UUID, uuid.UUID], _Stats] = {}
    rules = await _purchase_rules(session, {uuid.UUID(e["workspace_id"]) for e in events})
    orders = await _Orders.load(session, events, rules)
    for e in sorted(events, key=lambda e: e["timestamp"]):
        ws, pid = uuid.UUID(e["workspace_id"]), uuid.UUID(e["profile_id"])
        affected[ws].add(pid)
        at = attributes.event_time(e)
        value = rules[ws].order_value(e)
        refund: float | None = None
        if value is not None:
            refund = orders.order(e, value, at)  # what refunds that came before it take off it
            if refund is None:
                # the same order again (a re-send with a new messageId): seen, but neither an order nor an occurrence
                stats.setdefault((ws, pid), _Stats()).add(at, None, seen=attributes.is_activity(e))
                continue
        elif rules[ws].is_refund(e):
            refund = orders.refund(e, rules[ws].refund_amount(e))
        if e["type"] != "merge":
            stats.setdefault((ws, pid), _Stats()).add(at, value, rules[ws].nps_score(e),
                                                      seen=attributes.is_activity(e), refund=refund)
        if e["type"] == "merge":
            from_ = uuid.UUID(e["properties"]["merged_profile_id"])
            affected[ws].add(from_)
            merges.append((ws, pid, from_, e.get("traits") or {}, e["properties"].get("trait_times") or {}))
        elif e["type"] == "identify" and e.get("traits"):
            traits.setdefault((ws, pid), []).append((_ts_key(e["timestamp"]), e["traits"]))
        elif e["type"] == "group" and (e.get("properties") or {}).get("groupId"):
            gid = str(e["properties"]["groupId"])
            account_members.add((ws, pid, gid))
            if e.get("traits"):
                account_traits.setdefault((ws, gid), []).append((_ts_key(e["timestamp"]), e["traits"]))
        elif e.get("event"):
            key = (ws, pid, e["event"], at.date())
            counts[key] += 1
            first, last = times.get(key, (at, at))
            times[key] = (min(first, at), max(last, at))
            if e["type"] in _RAW_TYPES:
                raw.append({"ws": e["workspace_id"], "pid": e["profile_id"], "ev": e["event"], "at": at,
                            "mid": e.get("message_id") or str(uuid.uuid4()), "props": e.get("properties") or {}})
    if counts:
        keys = list(counts)
        await session.execute(
            text(
                """
                insert into segment.event_counts as c (workspace_id, profile_id, event, day, count, first_at, last_at)
                select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:ev AS text[]),
                                     CAST(:day AS date[]), CAST(:n AS int[]), CAST(:first AS timestamptz[]),
                                     CAST(:last AS timestamptz[]))
                """ + _COUNTS_FOLD
            ),
            {"ws": [k[0] for k in keys], "pid": [k[1] for k in keys], "ev": [k[2] for k in keys],
             "day": [k[3] for k in keys], "n": [counts[k] for k in keys], "first": [times[k][0] for k in keys],
             "last": [times[k][1] for k in keys]},
        )
    if raw:
        await session.execute(
            text(
                """
                insert into segment.profile_events (workspace_id, profile_id, event, at, message_id, properties)
                select r.ws, r.pid, r.ev, r.at, r.mid, coalesce(r.props, '{}')
                  from jsonb_to_recordset(CAST(:rows AS jsonb))
                       as r(ws uuid, pid uuid, ev text, at timestamptz, mid text, props jsonb)
                on conflict do nothing
                """
            ),
            {"rows": dumps(raw)},
        )
    await orders.save(session)
    if traits:
        await _merge_traits(session, traits)
    if account_members or account_traits:
        for ws, members in (await _apply_accounts(session, account_members, account_traits)).items():
            affected[ws] |= members
    if stats:
        await _fold_stats(session, stats)
    for ws, into, from_, merged_traits, merged_times in merges:
        await merge_profiles(session, ws, into, from_, merged_traits, merged_times)
    return affected


OrderKey = tuple[uuid.UUID, uuid.UUID, str]  # (workspace, profile, order id)


@dataclass
class _Order:
    """One row of ``segment.profile_orders``: an order id a profile ordered, or one a refund named first."""

    value: float | None  # None: not ordered yet (a refund named it first)
    refunded: float = 0.0  # taken off the revenue so far; for one not ordered yet, the amounts refunds stated
    refund_all: bool = False  # not ordered yet, and a refund stating no amount (the whole order) named it
    event: str | None = None
    at: datetime | None = None


@dataclass
class _Orders:
    """The order ids each profile has ordered (``segment.profile_orders``), with each order's value and what
    refunds took off it: an order is counted once however many purchase events name its id
    (attributes.order_id), and the refunds naming an order take off no more than its value in all (a full
    refund re-sent by an SDK took the value off twice: revenue below zero). A refund naming an order not known
    here (it comes in a later page, or is stamped later in this one; or it was counted before segment_0006, and
    never comes) takes off the amount it states at once, as it did before orders were kept, and a refund stating
    none (the whole order) nothing yet; both wait in a row of the order id (``refunded`` what they took), and
    when the order comes its refunds are settled to what they would have taken after it: in all, the amounts
    stated up to its value (the whole of it after a full refund), the excess given back.

    Promise, whatever the order the events come in (pages, a merge): an order of value V and refunds naming it
    that state amounts a1..an (each delivered event counts: a partial refund re-sent with a new messageId is a
    second refund) leave V - min(V, a1 + ... + an) of it in the revenue, and 0 when any of them states no amount.
    The refunds of an order that never comes take off the amounts they state."""

    rows: dict[OrderKey, _Order] = field(default_factory=dict)
    changed: set[OrderKey] = field(default_factory=set)

    @classmethod
    async def load(cls, session: AsyncSession, events: list[dict[str, Any]], rules: dict[uuid.UUID, PurchaseRules]
                   ) -> "_Orders":
        keys = {k for e in events if (k := _order_key(e)) is not None
                and (rules[k[0]].order_value(e) is not None or rules[k[0]].is_refund(e))}
        if not keys:
            return cls()
        k = sorted(keys)
        rows = await session.execute(text(
            "select o.workspace_id, o.profile_id, o.order_id, o.value, o.refunded, o.refund_all, o.event, o.at "
            "from segment.profile_orders o "
            "join unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:oid AS text[])) as u(ws, pid, oid) "
            "on o.workspace_id = u.ws and o.profile_id = u.pid and o.order_id = u.oid"),
            {"ws": [x[0] for x in k], "pid": [x[1] for x in k], "oid": [x[2] for x in k]})
        return cls(rows={(r[0], r[1], r[2]): _Order(None if r[3] is None else float(r[3]), float(r[4]), r[5], r[6],
                                                    r[7]) for r in rows})

    def order(self, event: dict[str, Any], value: float, at: datetime) -> float | None:
        """A purchase event: None if its order was already counted (records it otherwise), else what is still
        to take off the revenue for the refunds that named it before it (0 without one, and always without an
        order id): what they take off it, less what they took already — below 0 when they stated more than its
        value (the excess is given back)."""
        key = _order_key(event)
        if key is None:
            return 0.0
        waiting = self.rows.get(key)
        if waiting is not None and waiting.value is not None:
            return None
        took = waiting.refunded if waiting is not None else 0.0
        owed = _owed(value, took, waiting is not None and waiting.refund_all)
        self.rows[key] = _Order(value, owed, False, event["event"], at)
        self.changed.add(key)
        return owed - took

    def refund(self, event: dict[str, Any], amount: float | None) -> float:
        """A refund event stating ``amount`` (None: the whole order): what it takes off the revenue. Naming a
        counted order, no more than is left of its value; naming one not known, its amount at once (nothing for a
        whole order: its value is unknown) and the order, when it comes, settles the rest; naming none, its
        amount."""
        key = _order_key(event)
        if key is None:
            return amount or 0.0
        o = self.rows.setdefault(key, _Order(None))
        self.changed.add(key)
        if o.value is None:
            if amount is None:
                o.refund_all = True
                return 0.0
            o.refunded += amount
            return amount
        left = max(0.0, o.value - o.refunded)
        taken = left if amount is None else min(amount, left)
        o.refunded += taken
        return taken

    async def save(self, session: AsyncSession) -> None:
        if not self.changed:
            return
        k = sorted(self.changed)
        rows = [self.rows[x] for x in k]
        await session.execute(text(
            "insert into segment.profile_orders (workspace_id, profile_id, order_id, event, value, at, refunded, "
            "refund_all) select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:oid AS text[]), "
            "CAST(:ev AS text[]), CAST(:v AS numeric[]), CAST(:at AS timestamptz[]), CAST(:r AS numeric[]), "
            "CAST(:all AS boolean[])) on conflict (workspace_id, profile_id, order_id) do update set "
            "event = excluded.event, value = excluded.value, at = excluded.at, refunded = excluded.refunded, "
            "refund_all = excluded.refund_all"),
            {"ws": [x[0] for x in k], "pid": [x[1] for x in k], "oid": [x[2] for x in k],
             "ev": [o.event for o in rows], "v": [None if o.value is None else _dec(o.value) for o in rows],
             "at": [o.at for o in rows], "r": [_dec(o.refunded) for o in rows], "all": [o.refund_all for o in rows]})


_Amount = TypeVar("_Amount", float, Decimal)


def _owed(value: _Amount, stated: _Amount, whole: bool) -> _Amount:
    """What the refunds of an order of ``value`` take off it in all: the amounts they stated (``stated``), or the
    whole order (``whole``: one stated none), never more than its value nor below nothing. (Floats while a page is
    folded, Decimals as stored when a merge settles two profiles' rows.)"""
    return max(type(value)(0), value if whole else min(stated, value))


def _dec(amount: float) -> Decimal:
    return Decimal(str(round(amount, 6)))


def _order_key(event: dict[str, Any]) -> OrderKey | None:
    oid = attributes.order_id(event)
    return None if oid is None else (uuid.UUID(event["workspace_id"]), uuid.UUID(event["profile_id"]), oid)


async def _apply_accounts(session: AsyncSession, members: set[tuple[uuid.UUID, uuid.UUID, str]],
                          updates: dict[tuple[uuid.UUID, str], list[trait_merge.Update]]) -> Affected:
    """Record account memberships and merge account traits; every member of an account whose traits
    changed is affected (its ``account_trait`` conditions may now differ)."""
    if members:
        m = sorted(members)
        await session.execute(
            text("insert into segment.account_members (workspace_id, profile_id, group_id) "
                 "select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:gid AS text[])) "
                 "on conflict do nothing"),
            {"ws": [k[0] for k in m], "pid": [k[1] for k in m], "gid": [k[2] for k in m]},
        )
    affected: Affected = defaultdict(set)
    for (ws, gid), ups in sorted(updates.items()):
        await session.execute(
            text("insert into segment.accounts (workspace_id, group_id) values (:ws, :gid) on conflict do nothing"),
            {"ws": ws, "gid": gid})
        row = (await session.execute(
            text("select traits, trait_times from segment.accounts where workspace_id = :ws and group_id = :gid "
                 "for update"), {"ws": ws, "gid": gid})).one()
        new, new_times = trait_merge.merge(row.traits, row.trait_times, ups)
        if (new, new_times) == (row.traits, row.trait_times):
            continue
        await session.execute(
            text("update segment.accounts set traits = CAST(:t AS jsonb), trait_times = CAST(:tt AS jsonb), "
                 "updated_at = now() where workspace_id = :ws and group_id = :gid"),
            {"ws": ws, "gid": gid, "t": dumps(new), "tt": dumps(new_times)})
        affected[ws] |= set((await session.execute(
            text("select profile_id from segment.account_members where workspace_id = :ws and group_id = :gid"),
            {"ws": ws, "gid": gid})).scalars())
    return affected


def _ts_key(raw: str) -> str:
    return feed_time(raw).isoformat(timespec="microseconds")


async def _merge_traits(session: AsyncSession, updates: dict[tuple[uuid.UUID, uuid.UUID], list[Any]]) -> None:
    """Per trait, the newest value wins (the rule ingest uses, shared/traits.py), whatever order events of
    different times arrive in — so folding the feed page by page equals computing from all events at once; of
    equal times the later in the event log wins, as in ingest."""
    keys = sorted(updates)
    await session.execute(
        text("insert into segment.profile_traits (workspace_id, profile_id) "
             "select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[])) on conflict do nothing"),
        {"ws": [k[0] for k in keys], "pid": [k[1] for k in keys]},
    )
    rows = await session.execute(
        text("select t.workspace_id, t.profile_id, t.traits, t.trait_times from segment.profile_traits t "
             "join unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[])) as u(ws, pid) "
             "on t.workspace_id = u.ws and t.profile_id = u.pid order by 1, 2 for update of t"),
        {"ws": [k[0] for k in keys], "pid": [k[1] for k in keys]},
    )
    merged = {(ws, pid): trait_merge.merge(t, tt, updates[(ws, pid)]) for ws, pid, t, tt in rows}
    await session.execute(
        text(
            """
            update segment.profile_traits p
               set traits = u.t::jsonb, trait_times = u.tt::jsonb, updated_at = now()
              from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:t AS text[]), CAST(:tt AS text[]))
                   as u(ws, pid, t, tt)
             where p.workspace_id = u.ws and p.profile_id = u.pid
            """
        ),
        {"ws": [k[0] for k in merged], "pid": [k[1] for k in merged],
         "t": [dumps(v[0]) for v in merged.values()], "tt": [dumps(v[1]) for v in merged.values()]},
    )


async def merge_profiles(session: AsyncSession, ws: uuid.UUID, into: uuid.UUID, from_: uuid.UUID,
                         merged_traits: dict[str, Any], merged_times: dict[str, str]) -> None:
    """Ingest merged ``from_`` into ``into``: fold its counts, combine the merged traits, drop its facts.

    Re-evaluating both afterwards makes ``from_`` exit its segments and ``into`` enter what it now meets; the
    per-profile routes answer ``from_``'s id with ``into``'s state from now on (profile_merges).
    """
    params = {"ws": ws, "into": into, "from": from_}
    await profile_merges.record(session, SCHEMA, [(ws, from_, into)])
    await _drop_shared_orders(session, params)
    same = await _merge_orders(session, params)
    await session.execute(text(
        """
        insert into segment.event_counts as c (workspace_id, profile_id, event, day, count, first_at, last_at)
        select workspace_id, :into, event, day, count, first_at, last_at from segment.event_counts
         where workspace_id = :ws and profile_id = :from
        """ + _COUNTS_FOLD), params)
    await session.execute(text("delete from segment.event_counts where workspace_id = :ws and profile_id = :from"),
                          params)
    for table, key in (("profile_events", "event, at, message_id, properties"), ("account_members", "group_id"),
                       ("list_members", "list_id, added_at"),
                       ("profile_orders", "order_id, event, value, at, refunded, refund_all")):
        await session.execute(text(
            f"insert into segment.{table} (workspace_id, profile_id, {key}) "
            f"select workspace_id, :into, {key} from segment.{table} where workspace_id = :ws and profile_id = :from "
            f"on conflict do nothing"), params)
        await session.execute(text(f"delete from segment.{table} where workspace_id = :ws and profile_id = :from"),
                              params)
    await session.execute(text(
        f"""
        insert into segment.profile_stats as p (workspace_id, profile_id, first_seen, last_seen, order_count,
                                                revenue, first_order_at, last_order_at, last_nps, last_nps_at)
        select workspace_id, :into, first_seen, last_seen, order_count, revenue, first_order_at, last_order_at,
               last_nps, last_nps_at
          from segment.profile_stats where workspace_id = :ws and profile_id = :from
        {_STATS_FOLD}
        """), params)
    if same != (0, Decimal(0)):
        await session.execute(text(
            "update segment.profile_stats set order_count = greatest(order_count - :n, 0), revenue = revenue - :v "
            "where workspace_id = :ws and profile_id = :into"), {**params, "n": same[0], "v": same[1]})
    await session.execute(text("delete from segment.profile_stats where workspace_id = :ws and profile_id = :from"),
                          params)
    await session.execute(text("delete from segment.profile_traits where workspace_id = :ws and profile_id = :from"),
                          params)
    # combined with what ``into`` holds, newest per trait: an identify applied here after ingest merged (the
    # login's own traits, folded before the page's merges) is newer than the merge's copy and must stay
    current = (await session.execute(text(
        "select traits, trait_times from segment.profile_traits where workspace_id = :ws and profile_id = :into "
        "for update"), params)).one_or_none()
    traits, times = trait_merge.merge_profiles((current.traits, current.trait_times) if current else ({}, {}),
                                               (merged_traits, merged_times))
    await session.execute(text(
        """
        insert into segment.profile_traits (workspace_id, profile_id, traits, trait_times)
        values (:ws, :into, CAST(:t AS jsonb), CAST(:tt AS jsonb))
        on conflict (workspace_id, profile_id)
        do update set traits = excluded.traits, trait_times = excluded.trait_times, updated_at = now()
        """), {**params, "t": dumps(traits), "tt": dumps(times)})


_SHARED_ORDERS = """
    select f.order_id, f.event, f.at, f.value from segment.profile_orders f join segment.profile_orders i
        on i.workspace_id = f.workspace_id and i.profile_id = :into and i.order_id = f.order_id
     where f.workspace_id = :ws and f.profile_id = :from and f.value is not null and i.value is not null"""


async def _drop_shared_orders(session: AsyncSession, params: dict[str, Any]) -> None:
    """Before a merge, take the orders both profiles hold (bought on the device, re-sent after login) out of the
    merged-away profile's occurrences (per-day count, stored event). Each order counts once in the survivor, as
    in one profile."""
    shared = (await session.execute(text(_SHARED_ORDERS), params)).all()
    if not shared:
        return
    await session.execute(text(
        f"""
        update segment.event_counts c set count = c.count - d.n
          from (select event, (at at time zone 'UTC')::date as day, count(*) as n from ({_SHARED_ORDERS}) s
                 group by 1, 2) d
         where c.workspace_id = :ws and c.profile_id = :from and c.event = d.event and c.day = d.day
        """), params)
    await session.execute(text("delete from segment.event_counts where workspace_id = :ws and profile_id = :from "
                               "and count <= 0"), params)
    await session.execute(text(
        f"""
        delete from segment.profile_events e using ({_SHARED_ORDERS}) s
         where e.workspace_id = :ws and e.profile_id = :from and e.event = s.event
           and e.properties ->> 'order_id' = s.order_id
        """), params)


async def _merge_orders(session: AsyncSession, params: dict[str, Any]) -> tuple[int, Decimal]:
    """Before a merge, combine the rows of the order ids both profiles hold into the survivor's, as one profile
    would hold them (the merged-away profile's other rows move as they are); returns the orders and revenue to
    take off the survivor's statistics once folded. An order both hold counts once, its refunds together at
    most its value; a refund one of them holds for an order not seen yet is settled against the other's order (what
    it took already counted: the excess over the order's value is given back)."""
    rows = (await session.execute(text(
        "select f.order_id, f.value, f.refunded, f.refund_all, f.event, f.at, "
        "       i.value as i_value, i.refunded as i_refunded, i.refund_all as i_refund_all "
        "  from segment.profile_orders f join segment.profile_orders i "
        "    on i.workspace_id = f.workspace_id and i.profile_id = :into and i.order_id = f.order_id "
        " where f.workspace_id = :ws and f.profile_id = :from"), params)).all()
    orders, revenue = 0, Decimal(0)
    for r in rows:
        f_value, i_value = _num(r.value), _num(r.i_value)
        took = Decimal(r.refunded) + Decimal(r.i_refunded)  # taken off by each side's refunds (folded together)
        whole = (f_value is None and r.refund_all) or (i_value is None and r.i_refund_all)
        value = i_value if i_value is not None else f_value
        if value is None:  # refunds of an order neither has seen: they wait together
            new = (None, took, whole, None, None)
        else:  # the order of either (the survivor's copy kept), its refunds settled as for one profile
            if f_value is not None and i_value is not None:  # counted by both: the merged-away copy goes
                orders += 1
                revenue += f_value
            owed = _owed(value, took, whole)
            revenue += owed - took
            new = (value, owed, False, *((r.event, r.at) if i_value is None else (None, None)))
        await session.execute(text(
            "update segment.profile_orders set value = :v, refunded = :r, refund_all = :all, "
            "event = coalesce(:ev, event), at = coalesce(CAST(:at AS timestamptz), at) "
            "where workspace_id = :ws and profile_id = :into and order_id = :oid"),
            {**params, "oid": r.order_id, "v": new[0], "r": new[1], "all": new[2], "ev": new[3], "at": new[4]})
        await session.execute(text(
            "delete from segment.profile_orders where workspace_id = :ws and profile_id = :from and order_id = :oid"),
            {**params, "oid": r.order_id})
    return orders, revenue


def _num(v: Any) -> Decimal | None:
    return None if v is None else Decimal(v)


@dataclass
class _Stats:
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    orders: int = 0
    revenue: float = 0.0
    first_order: datetime | None = None
    last_order: datetime | None = None
    nps: float | None = None
    nps_at: datetime | None = None
    introduced: datetime | None = None  # earliest call that is not activity (identify, group, alias)

    def add(self, at: datetime, order_value: float | None, nps: float | None = None, *, seen: bool = True,
            refund: float | None = None) -> None:
        if nps is not None and (self.nps_at is None or at >= self.nps_at):
            self.nps, self.nps_at = nps, at
        if seen:  # (attributes.is_activity)
            self.first_seen = min(self.first_seen or at, at)
            self.last_seen = max(self.last_seen or at, at)
        else:
            self.introduced = min(self.introduced or at, at)
        if refund:
            self.revenue -= refund
        if order_value is not None:
            self.orders += 1
            self.revenue += order_value
            self.first_order = min(self.first_order or at, at)
            self.last_order = max(self.last_order or at, at)

    @property
    def seen_from(self) -> datetime | None:
        """First seen: the earliest call of any kind (someone identified before doing anything has been seen).
        The stored ``last_seen`` is the last activity alone (null until the first): attributes.derive reads an
        identified-only profile's last seen as its first, and its days since last activity as null. It used to
        store first seen there, so a CRM back-fill dated 100 days ago was churned at once, and its first event
        made it "reactivated" — or "onboarding" had both come in one page of the feed."""
        return min((t for t in (self.first_seen, self.introduced) if t is not None), default=None)


async def _purchase_rules(session: AsyncSession, workspaces: set[uuid.UUID]) -> dict[uuid.UUID, PurchaseRules]:
    rows = await session.execute(text("select id, settings from core.workspaces where id = any(CAST(:ws AS uuid[]))"),
                                 {"ws": list(workspaces)})
    found = {ws: PurchaseRules.from_settings(settings) for ws, settings in rows}
    return {ws: found.get(ws, PurchaseRules()) for ws in workspaces}


_FOLD_STATS = f"""
    insert into segment.profile_stats as p (workspace_id, profile_id, first_seen, last_seen, order_count, revenue,
                                            first_order_at, last_order_at, last_nps, last_nps_at)
    select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:fs AS timestamptz[]),
                         CAST(:ls AS timestamptz[]), CAST(:n AS int[]), CAST(:rev AS numeric[]),
                         CAST(:fo AS timestamptz[]), CAST(:lo AS timestamptz[]), CAST(:nps AS numeric[]),
                         CAST(:npsat AS timestamptz[]))
    {_STATS_FOLD}
"""


async def _fold_stats(session: AsyncSession, stats: dict[tuple[uuid.UUID, uuid.UUID], _Stats]) -> None:
    keys = sorted(stats)
    await session.execute(text(_FOLD_STATS), {
        "ws": [k[0] for k in keys], "pid": [k[1] for k in keys],
        "fs": [stats[k].seen_from for k in keys], "ls": [stats[k].last_seen for k in keys],
        "n": [stats[k].orders for k in keys], "rev": [Decimal(str(round(stats[k].revenue, 6))) for k in keys],
        "fo": [stats[k].first_order for k in keys], "lo": [stats[k].last_order for k in keys],
        "nps": [None if stats[k].nps is None else Decimal(str(stats[k].nps)) for k in keys],
        "npsat": [stats[k].nps_at for k in keys],
    })


@dataclass
class Needs:
    """What a set of definitions reads, so facts are loaded only for that."""

    counts: set[str] = field(default_factory=set)  # event names: per-day counts
    raw: set[str] = field(default_factory=set)  # event names: stored occurrences with properties
    accounts: bool = False
    lists: bool = False

    @classmethod
    def of(cls, nodes: Iterable[Any]) -> "Needs":
        needs = cls()
        for node in nodes:
            needs.counts |= conditions.events_of(node)
            needs.raw |= conditions.raw_events_of(node)
            needs.accounts |= conditions.uses(node, conditions.AccountTraitNode)
            needs.lists |= conditions.uses(node, conditions.ListNode)
        return needs


Memberships = dict[tuple[uuid.UUID, uuid.UUID], datetime]  # (segment id, profile id) -> entered at


async def memberships(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> Memberships:
    rows = await (await driver_connection(session)).fetch(
        "select segment_id, profile_id, entered_at from segment.memberships "
        "where workspace_id = $1 and profile_id = any($2::uuid[])", ws, pids)
    return {(r[0], r[1]): r[2] for r in rows}


async def load_attributes(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], today: date
                          ) -> dict[uuid.UUID, dict[str, Any]]:
    facts = await _load_facts(session, ws, pids, Needs(), today)
    return {pid: dict(facts[pid].attributes) for pid in pids}


async def require_known_profile(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID) -> uuid.UUID:
    """The profile ``profile_id`` lives on as (itself, or the survivor of the merges that took it away: a support
    person asking with an old id gets the person's state, not a 404); NotFound for a profile this workspace has
    nothing about: no event or trait of it has been folded, it is on no list and in no segment (a typo, another
    workspace's profile, an erased one). Its attributes, stage or segments would otherwise read as zeros, null
    and [], like a real profile's. (A profile added to a list before its first event reached this service is
    known: segments reading the list hold it.)"""
    live = await profile_merges.survivor(session, SCHEMA, ws, profile_id)
    known = await session.scalar(
        text("select exists (select 1 from segment.profile_stats where workspace_id = :ws and profile_id = :pid) "
             "or exists (select 1 from segment.profile_traits where workspace_id = :ws and profile_id = :pid) "
             "or exists (select 1 from segment.list_members where workspace_id = :ws and profile_id = :pid) "
             "or exists (select 1 from segment.memberships where workspace_id = :ws and profile_id = :pid)"),
        {"ws": ws, "pid": live})
    if not known:
        raise NotFound(f"No profile {profile_id} in this workspace")
    return live


async def profile_attributes(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID, today: date
                             ) -> dict[str, Any]:
    """A profile's computed attributes (``profile_id`` the survivor's, for a merged-away one), or NotFound for a
    profile this workspace has no facts about."""
    live = await require_known_profile(session, ws, profile_id)
    return {"profile_id": str(live), **(await load_attributes(session, ws, [live], today))[live]}


async def attributes_of_many(session: AsyncSession, ws: uuid.UUID, profile_ids: list[uuid.UUID], today: date
                             ) -> dict[uuid.UUID, dict[str, Any]]:
    """Asked id -> computed attributes of the profile it lives on as (merges followed, ``profile_id`` the
    survivor's), for a batch of sends (campaign's ``attributes`` variable). Unlike :func:`profile_attributes`, a
    profile segment knows nothing of yet is no error: it has the zero values (a customer with no order yet)."""
    rows = await session.execute(text(
        "select profile_id, survivor_id from segment.merged_profiles "
        "where workspace_id = :ws and profile_id = any(CAST(:ids AS uuid[]))"), {"ws": ws, "ids": profile_ids})
    live = {pid: pid for pid in profile_ids} | {r.profile_id: r.survivor_id for r in rows}
    found = await load_attributes(session, ws, list(dict.fromkeys(live.values())), today)
    return {pid: {"profile_id": str(live[pid]), **found[live[pid]]} for pid in profile_ids}


async def _load_facts(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], needs: Needs,
                      today: date | None = None, *, settings: dict[str, Any] | None = None,
                      current: Memberships | None = None) -> dict[uuid.UUID, conditions.ProfileFacts]:
    today = today or datetime.now(UTC).date()
    settings = await workspace_settings(session, ws) if settings is None else settings
    lead = attributes.LeadScoreRules.from_settings(settings)
    count_events = needs.counts | {ev for ev, _ in lead.events}
    db = await driver_connection(session)  # bulk reads: asyncpg records, no per-row ORM processing
    stats = {r["profile_id"]: dict(r) for r in await db.fetch(
        "select * from segment.profile_stats where workspace_id = $1 and profile_id = any($2::uuid[])", ws, pids)}
    facts = {pid: conditions.ProfileFacts(profile_id=str(pid), traits={}, counts={}, times={},
                                          attributes=attributes.derive(stats.get(pid), today), events={},
                                          accounts=[], segments=set(), lists=set())
             for pid in pids}
    for pid, t in await db.fetch("select profile_id, traits::text from segment.profile_traits "
                                 "where workspace_id = $1 and profile_id = any($2::uuid[])", ws, pids):
        facts[pid].traits = loads(t)
    if count_events:
        # with the first and last occurrence (a day counted before they were kept: its start), as set_evaluation
        rows = await db.fetch(
            "select profile_id, event, array_agg(day), array_agg(count), "
            "min(coalesce(first_at, day::timestamp at time zone 'UTC')) filter (where count > 0), "
            "max(coalesce(last_at, day::timestamp at time zone 'UTC')) filter (where count > 0) "
            "from segment.event_counts "
            "where workspace_id = $1 and profile_id = any($2::uuid[]) and event = any($3::text[]) "
            "group by profile_id, event", ws, pids, sorted(count_events))
        for pid, event, days, ns, first, last in rows:
            facts[pid].counts[event] = dict(zip(days, ns, strict=True))  # type: ignore[index]
            if first is not None:
                facts[pid].times[event] = (first, last)  # type: ignore[index]
    if needs.raw:
        rows = await db.fetch(
            "select profile_id, event, at, properties::text from segment.profile_events "
            "where workspace_id = $1 and profile_id = any($2::uuid[]) and event = any($3::text[]) "
            "order by profile_id, event, at, message_id", ws, pids, sorted(needs.raw))
        for pid, event, at, props in rows:
            facts[pid].events.setdefault(event, []).append((at, loads(props)))  # type: ignore[attr-defined]
    if needs.accounts:
        rows = await db.fetch(
            "select m.profile_id, a.traits::text from segment.account_members m join segment.accounts a "
            "on a.workspace_id = m.workspace_id and a.group_id = m.group_id "
            "where m.workspace_id = $1 and m.profile_id = any($2::uuid[])", ws, pids)
        for pid, t in rows:
            facts[pid].accounts.append(loads(t))  # type: ignore[attr-defined]
    if needs.lists:
        for pid, lid in await db.fetch("select profile_id, list_id from segment.list_members "
                                       "where workspace_id = $1 and profile_id = any($2::uuid[])", ws, pids):
            facts[pid].lists.add(str(lid))
    stage_of = {lifecycle_mod.stage_segment_id(ws, st): st for st in lifecycle_mod.STAGES}
    for (sid, pid), _ in (current or {}).items():
        if pid in facts:
            if sid in stage_of:
                facts[pid].stage = stage_of[sid]
            else:
                facts[pid].segments.add(str(sid))
    for f in facts.values():
        attrs = dict(f.attributes)
        if attrs.get("last_nps") is None:
            attrs["last_nps"] = attributes.trait_nps(f.traits)
        attrs["lead_score"] = lead.score(f.counts, f.traits)
        f.attributes = attrs
    return facts


def _with_dependents(parsed: dict[uuid.UUID, tuple[int, Any]], selected: set[uuid.UUID], stages: bool
                     ) -> set[uuid.UUID]:
    """``selected`` plus every segment that (transitively) reads one of them, or reads the lifecycle
    stage when stages are being recomputed: their memberships may change with them."""
    out = set(selected) & set(parsed)
    grew = True
    while grew:
        grew = False
        for sid, (_, node) in parsed.items():
            if sid not in out and (conditions.segments_of(node) & out
                                   or stages and conditions.uses(node, conditions.StageNode)):
                out.add(sid)
                grew = True
    return out


def _with_stages(segment_ids: set[uuid.UUID] | None, lifecycle: bool | None) -> bool:
    """Stages are recomputed when asked, and by default when every segment is."""
    return segment_ids is None if lifecycle is None else lifecycle


def _selection(parsed: dict[uuid.UUID, tuple[int, Any]], segment_ids: set[uuid.UUID] | None,
               lifecycle: bool | None) -> tuple[bool, set[uuid.UUID]]:
    """Whether stages are recomputed and which segments are: all, or ``segment_ids`` and the segments that
    read them."""
    with_stages = _with_stages(segment_ids, lifecycle)
    return with_stages, set(parsed) if segment_ids is None else _with_dependents(parsed, segment_ids, with_stages)


def evaluation_order(parsed: dict[uuid.UUID, tuple[int, Any]], selected: set[uuid.UUID]) -> list[uuid.UUID]:
    """Segments in an order where each comes after the segments it reads (cycles are refused on save)."""
    order: list[uuid.UUID] = []
    done: set[uuid.UUID] = set()

    def visit(sid: uuid.UUID, path: set[uuid.UUID]) -> None:
        if sid in done or sid in path or sid not in selected:
            return
        for dep in sorted(conditions.segments_of(parsed[sid][1])):
            visit(dep, path | {sid})
        done.add(sid)
        order.append(sid)

    for sid in sorted(selected):
        visit(sid, set())
    return order


async def lock_stripes(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> None:
    """One evaluator per (workspace, stripe of profiles) at a time (replicas, backfill, re-checks):
    memberships are read after the lock, so two evaluators can never both write the same entry or exit."""
    await session.execute(
        text("select pg_advisory_xact_lock(hashtextextended(:ws || ':' || s, 0)) "
             "from unnest(CAST(:stripes AS int[])) with ordinality as u(s, n) order by n"),
        {"ws": f"segment-eval:{ws}", "stripes": partitioning.stripes_of(pids)},
    )


async def parsed_segments(session: AsyncSession, ws: uuid.UUID) -> dict[uuid.UUID, tuple[int, Any]]:
    """The workspace's segments: id -> (version, parsed definition)."""
    return {
        r.id: (r.version, conditions.parse(r.definition))
        for r in await session.execute(
            text("select id, version, definition from segment.segments where workspace_id = :ws"), {"ws": ws})
    }


async def reevaluate(session: AsyncSession, ws: uuid.UUID, pids: Iterable[uuid.UUID], *,
                     today: date | None = None, segment_ids: set[uuid.UUID] | None = None,
                     lifecycle: bool | None = None) -> int:
    """Recompute memberships of ``pids`` in the workspace's segments (all, or ``segment_ids`` and the
    segments that read them) and their lifecycle stage (by default when all segments are evaluated);
    write only real changes."""
    pid_list = sorted(set(pids))
    if not pid_list:
        return 0
    today = today or datetime.now(UTC).date()
    await lock_stripes(session, ws, pid_list)
    parsed = await parsed_segments(session, ws)
    with_stages, selected = _selection(parsed, segment_ids, lifecycle)
    order = evaluation_order(parsed, selected)
    if not order and not with_stages:
        return 0
    settings = await workspace_settings(session, ws)
    cfg = lifecycle_mod.LifecycleSettings.from_settings(settings) if with_stages else None
    needs = Needs.of(parsed[sid][1] for sid in order)
    if cfg:
        needs.counts |= cfg.events()
        needs.raw |= set(cfg.advocacy_events)  # who was the referred side (lifecycle.advocates)
    current = await memberships(session, ws, pid_list)
    facts = await _load_facts(session, ws, pid_list, needs, today, settings=settings, current=current)
    gone = await gone_from_segments(session, ws, pid_list)
    changes: list[Change] = []
    if cfg:
        changes += _stage_changes(cfg, ws, current, facts, today, gone)
    read_by_others = {ref for sid in order for ref in conditions.segments_of(parsed[sid][1])}
    profile_facts = [(pid, facts[pid]) for pid in pid_list]
    for sid in order:
        version, node = parsed[sid]
        predicate = conditions.compile_condition(node, today)
        key, track = str(sid), sid in read_by_others
        for pid, f in profile_facts:
            member = pid not in gone and predicate(f)
            was = (sid, pid) in current
            if member and not was:
                changes.append((sid, version, pid, "entered"))
            elif was and not member:
                changes.append((sid, version, pid, "exited"))
            if track:  # segments evaluated later in this pass read this one's new membership
                (f.segments.add if member else f.segments.discard)(key)
    if not changes:
        return 0
    # arrays go as text literals, parsed by the server in one go (see shared.db.uuid_array)
    entered = [c for c in changes if c[3] == "entered"]
    exited = [c for c in changes if c[3] == "exited"]
    if entered:
        await session.execute(
            text("insert into segment.memberships (workspace_id, segment_id, profile_id) "
                 "select :ws, * from unnest(CAST(CAST(:sids AS text) AS uuid[]), CAST(CAST(:pids AS text) AS uuid[])) "
                 "on conflict do nothing"),
            {"ws": ws, "sids": uuid_array(c[0] for c in entered), "pids": uuid_array(c[2] for c in entered)},
        )
    if exited:
        await session.execute(
            text("delete from segment.memberships m using unnest(CAST(CAST(:sids AS text) AS uuid[]), "
                 "CAST(CAST(:pids AS text) AS uuid[])) as u(sid, pid) "
                 "where m.workspace_id = :ws and m.segment_id = u.sid and m.profile_id = u.pid"),
            {"ws": ws, "sids": uuid_array(c[0] for c in exited), "pids": uuid_array(c[2] for c in exited)},
        )
    await session.execute(
        text("insert into segment.transitions (workspace_id, segment_id, segment_version, profile_id, kind) "
             "select :ws, * from unnest(CAST(CAST(:sids AS text) AS uuid[]), CAST(CAST(:vers AS text) AS int[]), "
             "CAST(CAST(:pids AS text) AS uuid[]), CAST(CAST(:kinds AS text) AS text[]))"),
        {"ws": ws, "sids": uuid_array(c[0] for c in changes), "vers": uuid_array(c[1] for c in changes),
         "pids": uuid_array(c[2] for c in changes), "kinds": uuid_array(c[3] for c in changes)},
    )
    return len(changes)


Change = tuple[uuid.UUID, int, uuid.UUID, str]  # (segment id, version, profile id, "entered" | "exited")


async def gone_from_segments(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Those of ``pids`` that are in no segment and have no stage: merged into another profile (with their facts
    gone, folded into the survivor, they entered every "has not done X" segment and stayed), or of which segment
    holds nothing at all (erased: a profile marked for re-evaluation just before its erasure entered every such
    segment after it, and campaign started journeys for it)."""
    rows = await session.execute(text(
        "select p.id from unnest(CAST(:p AS uuid[])) as p(id) "
        "where exists (select 1 from segment.merged_profiles m where m.workspace_id = :ws and m.profile_id = p.id) "
        "or not (" + " or ".join(f"exists (select 1 from segment.{table} t where t.workspace_id = :ws "
                                 "and t.profile_id = p.id)" for table in _HELD) + ")"),
        {"ws": ws, "p": pids})
    return set(rows.scalars())


# what segment holds of a profile it knows (whatever the profile did, one of these has a row for it)
_HELD = ("profile_stats", "profile_traits", "event_counts", "account_members", "list_members")


def _stage_changes(cfg: lifecycle_mod.LifecycleSettings, ws: uuid.UUID, current: Memberships,
                   facts: dict[uuid.UUID, conditions.ProfileFacts], today: date,
                   gone: frozenset[uuid.UUID] | set[uuid.UUID] = frozenset()) -> list[Change]:
    """Lifecycle stages are memberships of per-stage segments: a stage change is an exit and an entry.
    Sets each profile's new stage in its facts (segments may read it); profiles merged away or erased (``gone``,
    :func:`gone_from_segments`) have none."""
    stage_ids = {lifecycle_mod.stage_segment_id(ws, st): st for st in lifecycle_mod.STAGES}
    previous: dict[uuid.UUID, tuple[uuid.UUID, datetime]] = {
        pid: (sid, at) for (sid, pid), at in current.items() if sid in stage_ids}
    changes = []
    by_stage = {st: sid for sid, st in stage_ids.items()}
    for pid, f in facts.items():
        old = previous.get(pid)
        old_stage = stage_ids[old[0]] if old else None
        stage_input = lifecycle_mod.StageInput(
            days_since_last_activity=f.attributes.get("days_since_last_activity"),
            seen=f.attributes.get("first_seen") is not None,
            order_count=int(f.attributes.get("order_count") or 0),
            performed=lifecycle_mod.performed(cfg, f.counts, f.events),
            nps=f.attributes.get("last_nps"),
        )
        new_stage = None if pid in gone else lifecycle_mod.next_stage(stage_input, old_stage,
                                                                      old[1].date() if old else None, today, cfg)
        f.stage = new_stage
        if new_stage == old_stage:
            continue
        if old:
            changes.append((old[0], 0, pid, "exited"))
        if new_stage:
            changes.append((by_stage[new_stage], 0, pid, "entered"))
    return changes


async def lifecycle_settings(session: AsyncSession, ws: uuid.UUID) -> lifecycle_mod.LifecycleSettings:
    return lifecycle_mod.LifecycleSettings.from_settings(await workspace_settings(session, ws))


async def fetch_events(internal: InternalClient, cursor: str, limit: int) -> dict[str, Any]:
    resp = await internal.request("GET", "ingest", "/v1/events", params={"after": cursor, "limit": limit})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"ingest feed answered {resp.status_code}")
    return dict(loads(resp.content))


async def consume_page(session: AsyncSession, internal: InternalClient, limit: int,
                       consumer: str = "ingest-events") -> PageResult:
    """One page of the event feed, folded in one transaction (the caller's); the profiles it touched are
    marked dirty in that transaction, for re-evaluation partition by partition (partitioning.py)."""
    cursor = await lock_consumer(session, "segment", consumer)
    page = await fetch_events(internal, cursor, limit)
    metrics.record_feed_read("ingest.events", "segment", page.get("behind"))
    events = page["events"]
    result = PageResult(events=len(events), cursor=page["next_cursor"], behind=int(page.get("behind") or 0))
    if not events:
        return result
    await partitioning.mark_dirty(session, await apply_events(session, events))
    await save_consumer(session, "segment", consumer, page["next_cursor"])
    return result


async def known_profiles(session: AsyncSession, ws: uuid.UUID, after: uuid.UUID | None, limit: int
                         ) -> list[uuid.UUID]:
    """Profiles this service has facts about, in id order (for full re-evaluation).

    Every event of a profile folds into ``profile_stats``, so its primary key is the index to walk.
    """
    rows = await session.execute(
        text("select profile_id from segment.profile_stats where workspace_id = :ws "
             "and (CAST(:after AS uuid) is null or profile_id > CAST(:after AS uuid)) "
             "order by profile_id limit :limit"),
        {"ws": ws, "after": after, "limit": limit},
    )
    return [r[0] for r in rows]


EVAL_CHUNK = 1000  # profiles per read of a preview or search
# Profiles per lane and transaction of a pass over all profiles (backfill, daily re-checks): a lane holds
# its stripes while it reads, evaluates and writes its chunk, and a live event of those stripes waits for
# it. 1000 made that wait ~0.5 s per page at 300k users (more at 1M, under I/O); 250 costs ~10 % of a
# quiet full evaluation's speed (more round trips).
PASS_CHUNK = 250
# Profiles per lane and transaction of a pass in SQL (set_evaluation.py): ~60 ms of PostgreSQL per chunk for 20
# segments, so live re-evaluation waits no longer than behind a Python chunk; 250 took 60 % longer at 100k.
SET_CHUNK = 1000
EVAL_LANES = 2
LIVE_YIELD_MAX_S = 1.0  # the longest a background pass waits for live work before each page of profiles


# live work: profiles marked dirty moments ago. Rows older than that are no reason to wait: no worker may be
# re-evaluating their partition right now, and a pass that waited on them waited a full second per page.
_LIVE_WORK_WAITING = text("select exists (select 1 from segment.dirty_profiles "
                          "where marked_at > now() - make_interval(secs => 2))")


async def yield_to_live(sessionmaker: async_sessionmaker[AsyncSession], max_wait_s: float = LIVE_YIELD_MAX_S
                        ) -> None:
    """Background passes give way to live work: while profiles are waiting for re-evaluation (marked dirty
    by the event feed), wait before taking the next page's evaluation stripes.

    A page of a pass holds every stripe (its profiles are spread over all of them), and live re-evaluation
    takes the partitions one after another, each waiting for the stripes it needs: without this, each
    partition of a live page waited for a new page of the pass, several pages in all; now a live page waits
    for at most the page in flight. Bounded, so a steady stream of events slows a pass but cannot stop it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while True:
        async with sessionmaker() as session, session.begin():
            waiting = (await session.execute(_LIVE_WORK_WAITING)).scalar()
        if not waiting or loop.time() >= deadline:
            return
        await asyncio.sleep(0.01)


# For set_evaluation's statements, in their transaction: a plan made for the values of its parameters (the
# definitions' constants folded: 58 instead of 78 ms per 1000 profiles and 20 segments); no JIT compilation
# (the statement's cost passes its threshold at ~1000 profiles; compiling costs more than it saves); and, in
# a pass, an asynchronous commit (6 % of a first evaluation): what a chunk writes is derived data, so a crash may lose
# it but never makes it wrong — the pass's progress row commits after it (so never durable without it: the log
# is flushed in order), and flushing any commit (a consumer's that read the chunk's transitions) flushes the
# chunk's before it.
_SET_STATEMENT_SETTINGS = "set local plan_cache_mode = force_custom_plan; set local jit = off"
_SET_PASS_SETTINGS = _SET_STATEMENT_SETTINGS + "; set local synchronous_commit = off"


async def evaluate_all(sessionmaker: async_sessionmaker[AsyncSession], ws: uuid.UUID, *,
                       segment_ids: set[uuid.UUID] | None, lifecycle: bool | None = None,
                       today: date | None = None, lanes: int = EVAL_LANES) -> int:
    """Re-evaluate every profile known in one workspace (``reevaluate``'s choice of segments and stages),
    one committed transaction per chunk of profiles; returns the transitions written.

    Segments made only of common condition kinds are evaluated first, as set operations in PostgreSQL
    (set_evaluation.py); the rest, and the lifecycle stages, then per profile in Python — after, because
    they may read the first ones' memberships. Only real membership changes are written, so running it
    twice, or after a crash, writes nothing twice.
    """
    async with sessionmaker() as session, session.begin():
        parsed = await parsed_segments(session, ws)
    with_stages, selected = _selection(parsed, segment_ids, lifecycle)
    in_sql = sorted(sid for sid in selected if set_evaluation.compilable(parsed[sid][1]))
    changes = 0
    if in_sql:
        statements: dict[date, list[set_evaluation.Compiled]] = {}

        async def sets(session: AsyncSession, pids: list[uuid.UUID]) -> int:
            day = today or datetime.now(UTC).date()
            if day not in statements:
                statements[day] = set_evaluation.compile_passes([(sid, *parsed[sid]) for sid in in_sql], day)
            await lock_stripes(session, ws, pids)
            db = await driver_connection(session)
            await db.execute(_SET_PASS_SETTINGS)
            return sum([int(await db.fetchval(c.sql, ws, pids, *c.params)) for c in statements[day]])

        changes += await _walk(sessionmaker, ws, await _pass_key(sessionmaker, ws, set(in_sql), False, today),
                               sets, lanes, SET_CHUNK)
    rest = selected - set(in_sql)
    if rest or with_stages:
        async def python(session: AsyncSession, pids: list[uuid.UUID]) -> int:
            return await reevaluate(session, ws, pids, today=today, segment_ids=rest, lifecycle=with_stages)

        changes += await _walk(sessionmaker, ws, await _pass_key(sessionmaker, ws, rest, with_stages, today),
                               python, lanes, PASS_CHUNK)
    return changes


async def _pass_key(sessionmaker: async_sessionmaker[AsyncSession], ws: uuid.UUID, segment_ids: set[uuid.UUID],
                    stages: bool, today: date | None) -> str:
    async with sessionmaker() as session, session.begin():
        return await pass_key(session, ws, segment_ids, stages, today)


LaneWork = Callable[[AsyncSession, list[uuid.UUID]], Awaitable[int]]


async def _walk(sessionmaker: async_sessionmaker[AsyncSession], ws: uuid.UUID, key: str, work: LaneWork,
                lanes: int, chunk: int) -> int:
    """Run ``work`` over every profile known in the workspace, one committed transaction per lane and page.

    Profiles are walked in id order, a page at a time, and each page is split by lock stripe into
    ``lanes`` groups handled concurrently on their own connections: PostgreSQL works on one lane's chunk
    while Python prepares or evaluates another's, and the stripes (hence the locks) of two lanes never
    overlap. Before each page it yields to live re-evaluation (``yield_to_live``). A pass that stopped
    (a deploy, a crash, a timeout) resumes after the last page it committed (``segment.pass_progress``,
    under ``key``): at 1 M profiles a pass takes minutes, and starting over at each restart could keep it
    from finishing.
    """
    changes = 0
    async with sessionmaker() as session, session.begin():
        after: uuid.UUID | None = (await session.execute(
            text("select after from segment.pass_progress where key = :key"), {"key": key})).scalar()
        page = await known_profiles(session, ws, after, chunk * lanes)
    if after is not None:
        log.info("segment.pass_resumed", workspace_id=str(ws), after=str(after))

    async def lane(pids: list[uuid.UUID]) -> int:
        async with sessionmaker() as session, session.begin():
            return await work(session, pids)

    async def next_page(after: uuid.UUID) -> list[uuid.UUID]:
        async with sessionmaker() as session, session.begin():
            return await known_profiles(session, ws, after, chunk * lanes)

    while True:
        await yield_to_live(sessionmaker)
        groups: list[list[uuid.UUID]] = [[] for _ in range(lanes)]
        for pid in page:
            groups[partitioning.stripe_of(pid) % lanes].append(pid)
        last = len(page) < chunk * lanes
        # the next page is read while the lanes work (it follows this one whatever they find)
        *done, following = await asyncio.gather(*(lane(g) for g in groups if g),
                                                asyncio.sleep(0, []) if last else next_page(page[-1]))
        changes += sum(done)
        async with sessionmaker() as session, session.begin():
            if last:
                # done; progress rows of passes that will never resume (their segments were edited since) go too
                await session.execute(
                    text("delete from segment.pass_progress where key = :key "
                         "or (workspace_id = :ws and updated_at < now() - interval '7 days')"), {"key": key, "ws": ws})
                return changes
            # Asynchronous commit, as the chunks': the log is written in order, so this row is never durable
            # without the chunks committed before it (a crash may lose both, and the pass redoes those pages,
            # which changes nothing twice).
            await session.execute(text("set local synchronous_commit = off"))
            await session.execute(
                text("insert into segment.pass_progress (key, workspace_id, after) values (:key, :ws, :after) "
                     "on conflict (key) do update set after = excluded.after, updated_at = now()"),
                {"key": key, "ws": ws, "after": page[-1]})
        page = following


# The stages are defined by the workspace's ``lifecycle`` settings: a digest of them (``w`` a core.workspaces row,
# or nulls) names what a pass recomputed the stages with (workspace_checks.lifecycle_settings, pass_key)
_LIFECYCLE_SETTINGS = "md5(coalesce(w.settings -> 'lifecycle', 'null'::jsonb)::text)"


async def pass_key(session: AsyncSession, ws: uuid.UUID, segment_ids: set[uuid.UUID] | None,
                   lifecycle: bool | None, today: date | None) -> str:
    """Names a pass over every profile, so an interrupted one resumes only as the same pass: same
    segments at the same versions, stages or not (and with the same lifecycle settings), and the same day when
    the day is fixed (re-checks)."""
    versions = (await session.execute(
        text("select id, version from segment.segments where workspace_id = :ws "
             "and (CAST(:ids AS uuid[]) is null or id = any(CAST(:ids AS uuid[]))) order by id"),
        {"ws": ws, "ids": None if segment_ids is None else list(segment_ids)})).all()
    parts = [str(ws), f"stages={_with_stages(segment_ids, lifecycle)}", f"day={today}",
             *(f"{sid}@{version}" for sid, version in versions)]
    if _with_stages(segment_ids, lifecycle):  # stages recomputed with other settings are another pass
        parts.append(str((await session.execute(text(
            f"select {_LIFECYCLE_SETTINGS} from (select) x left join core.workspaces w on w.id = :ws"),
            {"ws": ws})).scalar()))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


async def evaluate_fully(sessionmaker: async_sessionmaker[AsyncSession], ws: uuid.UUID,
                         segment_ids: set[uuid.UUID], *, today: date | None = None) -> int:
    """Evaluate segments of one workspace (and the segments that read them) over every known profile,
    all of them in one pass: each chunk's facts are loaded once."""
    return await evaluate_all(sessionmaker, ws, segment_ids=segment_ids, today=today)


async def recheck_windows(sessionmaker: async_sessionmaker[AsyncSession], today: date | None = None) -> int:
    """Time passes: segments with ``within_days`` windows are re-evaluated once per (UTC) day, so a
    user who goes quiet leaves "active in the last 30 days" without sending any event."""
    today = today or datetime.now(UTC).date()
    changes = 0
    async with sessionmaker() as session, session.begin():
        due = (await session.execute(
            text("select id, workspace_id, definition from segment.segments "
                 "where windows_checked_on is null or windows_checked_on < :today order by id"),
            {"today": today},
        )).all()
    windowed: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    failed: set[uuid.UUID] = set()  # their segments stay due: the next run tries again
    for sid, ws, definition in due:
        try:
            if conditions.has_window(conditions.parse(definition)):
                windowed[ws].add(sid)
        except Exception:  # noqa: BLE001 - a definition this release cannot read must not stop the others
            workspace_failed("segment", "recheck_windows", ws)
            failed.add(ws)
    for ws, sids in windowed.items():
        if ws in failed:
            continue
        try:
            changes += await evaluate_fully(sessionmaker, ws, sids, today=today)
        except Exception:  # noqa: BLE001
            workspace_failed("segment", "recheck_windows", ws)
            failed.add(ws)
    checked = [sid for sid, ws, _ in due if ws not in failed]
    if checked:
        async with sessionmaker() as session, session.begin():
            await session.execute(text("update segment.segments set windows_checked_on = :today "
                                       "where id = any(CAST(:ids AS uuid[]))"),
                                  {"today": today, "ids": checked})
    changes += await recheck_lifecycle(sessionmaker, today)
    if changes:
        log.info("segment.windows_rechecked", segments=len(due), changes=changes)
    return changes


async def recheck_lifecycle(sessionmaker: async_sessionmaker[AsyncSession], today: date, *,
                            changed_only: bool = False) -> int:
    """Every known profile's stage is recomputed once a day per workspace (time alone moves people to at-risk
    and churned), and as soon as the workspace's lifecycle settings differ from those its stages were last
    recomputed with: a new ``loyal_orders`` changed /v1/metrics (which reads it) at once, but no one's stage
    until the next day. ``changed_only``: only the latter (the worker's poll; a workspace recomputed before
    its settings were recorded waits for its daily pass)."""
    changes = 0
    async with sessionmaker() as session, session.begin():
        if changed_only:
            due = (await session.execute(text(
                f"select c.workspace_id, {_LIFECYCLE_SETTINGS} from segment.workspace_checks c "
                f"left join core.workspaces w on w.id = c.workspace_id "
                f"where c.lifecycle_settings <> {_LIFECYCLE_SETTINGS}"))).all()
        else:
            due = (await session.execute(text(
                f"select p.workspace_id, {_LIFECYCLE_SETTINGS} "
                f"from (select distinct workspace_id from segment.profile_stats) p "
                f"left join segment.workspace_checks c on c.workspace_id = p.workspace_id "
                f"left join core.workspaces w on w.id = p.workspace_id "
                f"where c.lifecycle_checked_on is null or c.lifecycle_checked_on < :today "
                f"or c.lifecycle_settings <> {_LIFECYCLE_SETTINGS}"), {"today": today})).all()
    for ws, recomputed_with in due:
        try:
            changes += await evaluate_all(sessionmaker, ws, segment_ids=set(), lifecycle=True, today=today)
        except Exception:  # noqa: BLE001 - left due: the next run tries again, the other workspaces go on
            workspace_failed("segment", "recheck_lifecycle", ws)
            continue
        # the settings read before the pass: changed during it, they are due again
        async with sessionmaker() as session, session.begin():
            await session.execute(text(
                "insert into segment.workspace_checks (workspace_id, lifecycle_checked_on, lifecycle_settings) "
                "values (:ws, :today, :cfg) on conflict (workspace_id) do update set "
                "lifecycle_checked_on = excluded.lifecycle_checked_on, "
                "lifecycle_settings = excluded.lifecycle_settings"),
                {"ws": ws, "today": today, "cfg": recomputed_with})
    return changes


async def preview(session: AsyncSession, ws: uuid.UUID, node: Any, *, sample: int = 10,
                  today: date | None = None) -> dict[str, Any]:
    """How many known profiles a definition matches now, with a sample (of ``sample`` profiles, 0 for just the
    count), without saving anything."""
    page = await search(session, ws, node, after=None, limit=sample, today=today)
    return {"count": page["count"], "sample": [p["profile_id"] for p in page["profiles"]],
            "profiles_evaluated": page["profiles_evaluated"]}


async def search(session: AsyncSession, ws: uuid.UUID, node: Any, *, after: uuid.UUID | None, limit: int,
                 today: date | None = None) -> dict[str, Any]:
    """Known profiles matching a definition, in id order after ``after`` (a page of ``limit``, with
    their traits and computed attributes), and how many match in all. ``next_cursor`` (the page's last profile id:
    the route makes it a cursor) only when a match follows the page."""
    today = today or datetime.now(UTC).date()
    settings = await workspace_settings(session, ws)
    if set_evaluation.compilable(node):
        return await _search_in_sql(session, ws, node, after=after, limit=limit, today=today, settings=settings)
    needs = Needs.of([node])
    predicate = conditions.compile_condition(node, today)
    count = evaluated = 0
    picked: list[dict[str, Any]] = []
    more = False
    cursor: uuid.UUID | None = None
    while True:
        pids = await known_profiles(session, ws, cursor, EVAL_CHUNK)
        current = await memberships(session, ws, pids)  # segments and stage: for the condition and the answer
        facts = await _load_facts(session, ws, pids, needs, today, settings=settings, current=current)
        for pid in pids:
            if predicate(facts[pid]):
                count += 1
                if after is not None and pid <= after:
                    continue
                if len(picked) == limit:
                    more = True
                    continue
                picked.append(_found(facts[pid]))
        evaluated += len(pids)
        if len(pids) < EVAL_CHUNK:
            return {"count": count, "profiles": picked, "profiles_evaluated": evaluated,
                    "next_cursor": picked[-1]["profile_id"] if more and picked else None}
        cursor = pids[-1]


def _found(f: conditions.ProfileFacts) -> dict[str, Any]:
    """A profile as a search answers it."""
    return {"profile_id": f.profile_id, "traits": dict(f.traits), "attributes": dict(f.attributes), "stage": f.stage}


async def _search_in_sql(session: AsyncSession, ws: uuid.UUID, node: Any, *, after: uuid.UUID | None, limit: int,
                         today: date, settings: dict[str, Any]) -> dict[str, Any]:
    """``search`` for a definition set_evaluation compiles: PostgreSQL counts and picks the matches, Python
    loads the facts of the page it returns."""
    compiled = set_evaluation.compile_search(node, today)
    db = await driver_connection(session)
    await db.execute(_SET_STATEMENT_SETTINGS)
    row = await db.fetchrow(compiled.sql, ws, after, limit + 1, *compiled.params)  # one more: is there a next page
    ids: list[uuid.UUID] = list(row["ids"])[:limit]
    facts = await _load_facts(session, ws, ids, Needs(), today, settings=settings,
                              current=await memberships(session, ws, ids))
    picked = [_found(facts[pid]) for pid in ids]
    return {"count": row["matched"], "profiles": picked, "profiles_evaluated": row["evaluated"],
            "next_cursor": picked[-1]["profile_id"] if picked and len(row["ids"]) > limit else None}
