"""Incremental evaluation: fold ingest's event feed into per-profile aggregates, then re-evaluate only
the profiles those events touched. One page of the feed is one transaction: aggregates, memberships,
transitions and the consumer's cursor commit together, so a crash replays a page and never
double-counts.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.segment import attributes, conditions
from services.segment import lifecycle as lifecycle_mod
from services.segment.attributes import PurchaseRules
from shared import traits as trait_merge
from shared.errors import UpstreamUnavailable
from shared.feed import lock_consumer, save_consumer
from shared.http import InternalClient
from shared.jsonutil import dumps

log = structlog.get_logger()

Affected = dict[uuid.UUID, set[uuid.UUID]]

# folding one profile's statistics into another's (new events, or a merge)
_STATS_FOLD = """on conflict (workspace_id, profile_id) do update set
        first_seen = least(p.first_seen, excluded.first_seen),
        last_seen = greatest(p.last_seen, excluded.last_seen),
        order_count = p.order_count + excluded.order_count,
        revenue = p.revenue + excluded.revenue,
        first_order_at = least(p.first_order_at, excluded.first_order_at),
        last_order_at = greatest(p.last_order_at, excluded.last_order_at)"""  # workspace -> profiles


@dataclass
class PageResult:
    events: int = 0
    transitions: int = 0
    cursor: str = ""



def _parse_ts(v: str) -> datetime:
    return datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone(UTC)


async def apply_events(session: AsyncSession, events: list[dict[str, Any]]) -> Affected:
    counts: dict[tuple[uuid.UUID, uuid.UUID, str, date], int] = defaultdict(int)
    traits: dict[tuple[uuid.UUID, uuid.UUID], list[trait_merge.Update]] = {}
    affected: Affected = defaultdict(set)
    merges: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, dict[str, Any], dict[str, str]]] = []
    stats: dict[tuple[uuid.UUID, uuid.UUID], _Stats] = {}
    rules = await _purchase_rules(session, {uuid.UUID(e["workspace_id"]) for e in events})
    for e in sorted(events, key=lambda e: e["timestamp"]):
        ws, pid = uuid.UUID(e["workspace_id"]), uuid.UUID(e["profile_id"])
        affected[ws].add(pid)
        if e["type"] != "merge":
            stats.setdefault((ws, pid), _Stats()).add(_parse_ts(e["timestamp"]), rules[ws].order_value(e))
        if e["type"] == "merge":
            from_ = uuid.UUID(e["properties"]["merged_profile_id"])
            affected[ws].add(from_)
            merges.append((ws, pid, from_, e.get("traits") or {}, e["properties"].get("trait_times") or {}))
        elif e["type"] == "identify" and e.get("traits"):
            traits.setdefault((ws, pid), []).append((_ts_key(e["timestamp"]), e["traits"]))
        elif e.get("event"):
            counts[(ws, pid, e["event"], _parse_ts(e["timestamp"]).date())] += 1
    if counts:
        keys = list(counts)
        await session.execute(
            text(
                """
                insert into segment.event_counts (workspace_id, profile_id, event, day, count)
                select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:ev AS text[]),
                                     CAST(:day AS date[]), CAST(:n AS int[]))
                on conflict (workspace_id, profile_id, event, day)
                do update set count = segment.event_counts.count + excluded.count
                """
            ),
            {"ws": [k[0] for k in keys], "pid": [k[1] for k in keys], "ev": [k[2] for k in keys],
             "day": [k[3] for k in keys], "n": [counts[k] for k in keys]},
        )
    if traits:
        await _merge_traits(session, traits)
    if stats:
        await _fold_stats(session, stats)
    for ws, into, from_, merged_traits, merged_times in merges:
        await merge_profiles(session, ws, into, from_, merged_traits, merged_times)
    return affected


def _ts_key(raw: str) -> str:
    return _parse_ts(raw).isoformat(timespec="microseconds")


async def _merge_traits(session: AsyncSession, updates: dict[tuple[uuid.UUID, uuid.UUID], list[Any]]) -> None:
    """Per trait, the newest value wins (the rule ingest uses, shared/traits.py), whatever order the
    events arrive in — so folding the feed page by page equals computing from all events at once."""
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
    """Ingest merged ``from_`` into ``into``: fold its counts, take the merged traits, drop its facts.

    Re-evaluating both afterwards makes ``from_`` exit its segments and ``into`` enter what it now meets.
    """
    params = {"ws": ws, "into": into, "from": from_}
    await session.execute(text(
        """
        insert into segment.event_counts (workspace_id, profile_id, event, day, count)
        select workspace_id, :into, event, day, count from segment.event_counts
         where workspace_id = :ws and profile_id = :from
        on conflict (workspace_id, profile_id, event, day)
        do update set count = segment.event_counts.count + excluded.count
        """), params)
    await session.execute(text("delete from segment.event_counts where workspace_id = :ws and profile_id = :from"),
                          params)
    await session.execute(text(
        f"""
        insert into segment.profile_stats as p (workspace_id, profile_id, first_seen, last_seen, order_count,
                                                revenue, first_order_at, last_order_at)
        select workspace_id, :into, first_seen, last_seen, order_count, revenue, first_order_at, last_order_at
          from segment.profile_stats where workspace_id = :ws and profile_id = :from
        {_STATS_FOLD}
        """), params)
    await session.execute(text("delete from segment.profile_stats where workspace_id = :ws and profile_id = :from"),
                          params)
    await session.execute(text("delete from segment.profile_traits where workspace_id = :ws and profile_id = :from"),
                          params)
    await session.execute(text(
        """
        insert into segment.profile_traits (workspace_id, profile_id, traits, trait_times)
        values (:ws, :into, CAST(:t AS jsonb), CAST(:tt AS jsonb))
        on conflict (workspace_id, profile_id)
        do update set traits = excluded.traits, trait_times = excluded.trait_times, updated_at = now()
        """), {**params, "t": dumps(merged_traits), "tt": dumps(merged_times)})


@dataclass
class _Stats:
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    orders: int = 0
    revenue: float = 0.0
    first_order: datetime | None = None
    last_order: datetime | None = None

    def add(self, at: datetime, order_value: float | None) -> None:
        self.first_seen = min(self.first_seen or at, at)
        self.last_seen = max(self.last_seen or at, at)
        if order_value is not None:
            self.orders += 1
            self.revenue += order_value
            self.first_order = min(self.first_order or at, at)
            self.last_order = max(self.last_order or at, at)


async def _purchase_rules(session: AsyncSession, workspaces: set[uuid.UUID]) -> dict[uuid.UUID, PurchaseRules]:
    rows = await session.execute(text("select id, settings from core.workspaces where id = any(CAST(:ws AS uuid[]))"),
                                 {"ws": list(workspaces)})
    found = {ws: PurchaseRules.from_settings(settings) for ws, settings in rows}
    return {ws: found.get(ws, PurchaseRules()) for ws in workspaces}


_FOLD_STATS = f"""
    insert into segment.profile_stats as p (workspace_id, profile_id, first_seen, last_seen, order_count, revenue,
                                            first_order_at, last_order_at)
    select * from unnest(CAST(:ws AS uuid[]), CAST(:pid AS uuid[]), CAST(:fs AS timestamptz[]),
                         CAST(:ls AS timestamptz[]), CAST(:n AS int[]), CAST(:rev AS numeric[]),
                         CAST(:fo AS timestamptz[]), CAST(:lo AS timestamptz[]))
    {_STATS_FOLD}
"""


async def _fold_stats(session: AsyncSession, stats: dict[tuple[uuid.UUID, uuid.UUID], _Stats]) -> None:
    keys = sorted(stats)
    await session.execute(text(_FOLD_STATS), {
        "ws": [k[0] for k in keys], "pid": [k[1] for k in keys],
        "fs": [stats[k].first_seen for k in keys], "ls": [stats[k].last_seen for k in keys],
        "n": [stats[k].orders for k in keys], "rev": [Decimal(str(round(stats[k].revenue, 6))) for k in keys],
        "fo": [stats[k].first_order for k in keys], "lo": [stats[k].last_order for k in keys],
    })


async def load_attributes(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], today: date
                          ) -> dict[uuid.UUID, dict[str, Any]]:
    rows = (await session.execute(
        text("select * from segment.profile_stats where workspace_id = :ws and profile_id = any(CAST(:p AS uuid[]))"),
        {"ws": ws, "p": pids},
    )).mappings().all()
    found = {r["profile_id"]: dict(r) for r in rows}
    return {pid: attributes.derive(found.get(pid), today) for pid in pids}


async def _load_facts(session: AsyncSession, ws: uuid.UUID, pids: list[uuid.UUID], events: set[str],
                      today: date | None = None) -> dict[uuid.UUID, conditions.ProfileFacts]:
    attrs = await load_attributes(session, ws, pids, today or datetime.now(UTC).date())
    facts = {pid: conditions.ProfileFacts(profile_id=str(pid), traits={}, counts={}, attributes=attrs[pid])
             for pid in pids}
    rows = await session.execute(
        text("select profile_id, traits from segment.profile_traits "
             "where workspace_id = :ws and profile_id = any(CAST(:pids AS uuid[]))"),
        {"ws": ws, "pids": pids},
    )
    for pid, t in rows:
        facts[pid].traits = t
    if events:
        rows = await session.execute(
            text("select profile_id, event, day, count from segment.event_counts "
                 "where workspace_id = :ws and profile_id = any(CAST(:pids AS uuid[])) "
                 "and event = any(CAST(:events AS text[]))"),
            {"ws": ws, "pids": pids, "events": sorted(events)},
        )
        for pid, event, day, n in rows:
            facts[pid].counts.setdefault(event, {})[day] = n  # type: ignore[index]
    return facts


async def reevaluate(session: AsyncSession, ws: uuid.UUID, pids: Iterable[uuid.UUID], *,
                     today: date | None = None, segment_ids: set[uuid.UUID] | None = None,
                     lifecycle: bool | None = None) -> int:
    """Recompute memberships of ``pids`` in the workspace's segments (all, or ``segment_ids``) and their
    lifecycle stage (by default when all segments are evaluated); write only real changes."""
    pid_list = sorted(set(pids))
    if not pid_list:
        return 0
    today = today or datetime.now(UTC).date()
    with_stages = segment_ids is None if lifecycle is None else lifecycle
    # One evaluator per workspace at a time (feed consumer, backfill, replicas): memberships are read
    # after the lock, so two evaluators can never both write the same entry or exit.
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"segment-eval:{ws}"})
    segs = (await session.execute(
        text("select id, version, definition from segment.segments where workspace_id = :ws"), {"ws": ws}
    )).all()
    if segment_ids is not None:
        segs = [s for s in segs if s.id in segment_ids]
    if not segs and not with_stages:
        return 0
    parsed = [(s.id, s.version, conditions.parse(s.definition)) for s in segs]
    needed = {ev for _, _, node in parsed for ev in conditions.events_of(node)}
    cfg = await lifecycle_settings(session, ws) if with_stages else None
    stage_ids = {lifecycle_mod.stage_segment_id(ws, st): st for st in lifecycle_mod.STAGES} if cfg else {}
    if cfg:
        needed |= cfg.events()
    facts = await _load_facts(session, ws, pid_list, needed, today)
    current = {
        (r.segment_id, r.profile_id): r.entered_at
        for r in await session.execute(
            text("select segment_id, profile_id, entered_at from segment.memberships "
                 "where workspace_id = :ws and profile_id = any(CAST(:pids AS uuid[])) "
                 "and segment_id = any(CAST(:sids AS uuid[]))"),
            {"ws": ws, "pids": pid_list, "sids": [s[0] for s in parsed] + list(stage_ids)},
        )
    }
    changes: list[Change] = []
    for sid, version, node in parsed:
        for pid in pid_list:
            member = conditions.evaluate(node, facts[pid], today)
            was = (sid, pid) in current
            if member and not was:
                changes.append((sid, version, pid, "entered"))
            elif was and not member:
                changes.append((sid, version, pid, "exited"))
    if cfg:
        changes += _stage_changes(cfg, stage_ids, current, facts, today)
    if not changes:
        return 0
    entered = [c for c in changes if c[3] == "entered"]
    exited = [c for c in changes if c[3] == "exited"]
    if entered:
        await session.execute(
            text("insert into segment.memberships (workspace_id, segment_id, profile_id) "
                 "select :ws, * from unnest(CAST(:sids AS uuid[]), CAST(:pids AS uuid[])) on conflict do nothing"),
            {"ws": ws, "sids": [c[0] for c in entered], "pids": [c[2] for c in entered]},
        )
    if exited:
        await session.execute(
            text("delete from segment.memberships m using unnest(CAST(:sids AS uuid[]), CAST(:pids AS uuid[])) "
                 "as u(sid, pid) where m.workspace_id = :ws and m.segment_id = u.sid and m.profile_id = u.pid"),
            {"ws": ws, "sids": [c[0] for c in exited], "pids": [c[2] for c in exited]},
        )
    await session.execute(
        text("insert into segment.transitions (workspace_id, segment_id, segment_version, profile_id, kind) "
             "select :ws, * from unnest(CAST(:sids AS uuid[]), CAST(:vers AS int[]), CAST(:pids AS uuid[]), "
             "CAST(:kinds AS text[]))"),
        {"ws": ws, "sids": [c[0] for c in changes], "vers": [c[1] for c in changes],
         "pids": [c[2] for c in changes], "kinds": [c[3] for c in changes]},
    )
    return len(changes)


Change = tuple[uuid.UUID, int, uuid.UUID, str]  # (segment id, version, profile id, "entered" | "exited")


def _stage_changes(cfg: lifecycle_mod.LifecycleSettings, stage_ids: dict[uuid.UUID, str],
                   current: dict[tuple[uuid.UUID, uuid.UUID], datetime],
                   facts: dict[uuid.UUID, conditions.ProfileFacts], today: date) -> list[Change]:
    """Lifecycle stages are memberships of per-stage segments: a stage change is an exit and an entry."""
    previous: dict[uuid.UUID, tuple[uuid.UUID, datetime]] = {
        pid: (sid, at) for (sid, pid), at in current.items() if sid in stage_ids}
    changes = []
    by_stage = {st: sid for sid, st in stage_ids.items()}
    for pid, f in facts.items():
        old = previous.get(pid)
        old_stage = stage_ids[old[0]] if old else None
        stage_input = lifecycle_mod.StageInput(
            days_since_last_activity=f.attributes.get("days_since_last_activity"),
            order_count=int(f.attributes.get("order_count") or 0),
            performed={ev for ev in cfg.events() if sum(f.counts.get(ev, {}).values()) > 0},
            nps=f.traits.get("nps"),
        )
        new_stage = lifecycle_mod.next_stage(stage_input, old_stage, old[1].date() if old else None, today, cfg)
        if new_stage == old_stage:
            continue
        if old:
            changes.append((old[0], 0, pid, "exited"))
        if new_stage:
            changes.append((by_stage[new_stage], 0, pid, "entered"))
    return changes


async def lifecycle_settings(session: AsyncSession, ws: uuid.UUID) -> lifecycle_mod.LifecycleSettings:
    raw = (await session.execute(text("select settings from core.workspaces where id = :ws"), {"ws": ws})).scalar()
    return lifecycle_mod.LifecycleSettings.from_settings(raw)


async def fetch_events(internal: InternalClient, cursor: str, limit: int) -> dict[str, Any]:
    resp = await internal.request("GET", "ingest", "/v1/events", params={"after": cursor, "limit": limit})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"ingest feed answered {resp.status_code}")
    return dict(resp.json())


async def consume_page(session: AsyncSession, internal: InternalClient, limit: int,
                       consumer: str = "ingest-events") -> PageResult:
    """One page of the event feed, folded in one transaction (the caller's)."""
    cursor = await lock_consumer(session, "segment", consumer)
    page = await fetch_events(internal, cursor, limit)
    events = page["events"]
    result = PageResult(events=len(events), cursor=page["next_cursor"])
    if not events:
        return result
    affected = await apply_events(session, events)
    for ws, pids in affected.items():
        result.transitions += await reevaluate(session, ws, pids)
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


EVAL_CHUNK = 1000


async def evaluate_fully(session: AsyncSession, ws: uuid.UUID, segment_ids: set[uuid.UUID], *,
                         today: date | None = None) -> int:
    """Re-evaluate segments of one workspace over every profile known here, all segments in one pass
    (each chunk's facts are loaded once), one committed transaction per chunk.

    The session must not be in a transaction. Only real membership changes are written, so running it
    twice, or after a crash, writes nothing twice.
    """
    changes = 0
    after: uuid.UUID | None = None
    while True:
        async with session.begin():
            pids = await known_profiles(session, ws, after, EVAL_CHUNK)
            changes += await reevaluate(session, ws, pids, today=today, segment_ids=segment_ids)
        if len(pids) < EVAL_CHUNK:
            return changes
        after = pids[-1]


async def recheck_windows(session: AsyncSession, today: date | None = None) -> int:
    """Time passes: segments with ``within_days`` windows are re-evaluated once per (UTC) day, so a
    user who goes quiet leaves "active in the last 30 days" without sending any event."""
    today = today or datetime.now(UTC).date()
    changes = 0
    async with session.begin():
        due = (await session.execute(
            text("select id, workspace_id, definition from segment.segments "
                 "where windows_checked_on is null or windows_checked_on < :today order by id"),
            {"today": today},
        )).all()
    windowed: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for sid, ws, definition in due:
        if conditions.has_window(conditions.parse(definition)):
            windowed[ws].add(sid)
    for ws, sids in windowed.items():
        changes += await evaluate_fully(session, ws, sids, today=today)
    if due:
        async with session.begin():
            await session.execute(text("update segment.segments set windows_checked_on = :today "
                                       "where id = any(CAST(:ids AS uuid[]))"),
                                  {"today": today, "ids": [d[0] for d in due]})
    changes += await recheck_lifecycle(session, today)
    if changes:
        log.info("segment.windows_rechecked", segments=len(due), changes=changes)
    return changes


async def recheck_lifecycle(session: AsyncSession, today: date) -> int:
    """Once a day per workspace, every known profile's stage is recomputed: time alone moves people
    to at-risk and churned."""
    changes = 0
    async with session.begin():
        due = (await session.execute(
            text("select distinct s.workspace_id from segment.profile_stats s "
                 "left join segment.workspace_checks c on c.workspace_id = s.workspace_id "
                 "where c.lifecycle_checked_on is null or c.lifecycle_checked_on < :today"),
            {"today": today},
        )).scalars().all()
    for ws in due:
        after: uuid.UUID | None = None
        while True:
            async with session.begin():
                pids = await known_profiles(session, ws, after, EVAL_CHUNK)
                changes += await reevaluate(session, ws, pids, today=today, segment_ids=set(), lifecycle=True)
            if len(pids) < EVAL_CHUNK:
                break
            after = pids[-1]
        async with session.begin():
            await session.execute(text(
                "insert into segment.workspace_checks (workspace_id, lifecycle_checked_on) values (:ws, :today) "
                "on conflict (workspace_id) do update set lifecycle_checked_on = excluded.lifecycle_checked_on"),
                {"ws": ws, "today": today})
    return changes


async def preview(session: AsyncSession, ws: uuid.UUID, node: Any, *, sample: int = 10,
                  today: date | None = None) -> dict[str, Any]:
    """How many known profiles a definition matches now, with a sample, without saving anything."""
    today = today or datetime.now(UTC).date()
    needed = set(conditions.events_of(node))
    count = evaluated = 0
    picked: list[str] = []
    after: uuid.UUID | None = None
    while True:
        pids = await known_profiles(session, ws, after, EVAL_CHUNK)
        facts = await _load_facts(session, ws, pids, needed, today)
        for pid in pids:
            if conditions.evaluate(node, facts[pid], today):
                count += 1
                if len(picked) < sample:
                    picked.append(str(pid))
        evaluated += len(pids)
        if len(pids) < EVAL_CHUNK:
            return {"count": count, "sample": picked, "profiles_evaluated": evaluated}
        after = pids[-1]
