"""Running journeys: entering users, waking them when their timer is due, moving them on events.

Everything a journey waits for is a row in ``campaign.journeys``: ``wake_at`` for timers (delays,
local-time waits, event timeouts, deferred sends) and ``wait`` for the awaited event. Due journeys are
claimed with ``FOR UPDATE SKIP LOCKED`` and run in the transaction that holds them, so replicas never
run the same journey, a crash rolls back to the last committed step, and restarts lose no waiting
user. A send step writes a ``sends`` row keyed by (journey, step), so re-running a step can never
produce a second message. The clock is a parameter (``now``), which is how tests move time.
"""

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import httpx
import structlog
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from services.campaign import experiments, ingest_client, timing
from services.campaign import journey_def as jd
from shared import metrics, netguard
from shared import workspace_config as wc
from shared.auth import WORKSPACE_HEADER
from shared.db import dicts
from shared.errors import UpstreamUnavailable
from shared.feed import feed_time
from shared.http import InternalClient
from shared.jsonutil import dumps, get_path
from shared.lifecycle_ids import stage_segment_id
from shared.settings import Settings

log = structlog.get_logger()

OPEN = ("active", "waiting")
MAX_STEPS_PER_WAKE = 50
RETRY_AFTER = timedelta(minutes=5)
SEND_LEASE_S = 120  # a claimed send is the claimer's this long; then the dispatcher's poll takes it again
ENGAGEMENT_EVENTS = {"Email Opened": "opened", "Email Link Clicked": "clicked"}
# delivery's events about a message a journey sent (they name its journey and step): "<mark>:<step>" in the
# journey's `seen`, counted in the campaign's funnel; only opens and clicks are engagement (send-time optimisation).
# An unsubscribe through the message's own link (its unsubscribe or preference page) names it too.
MESSAGE_EVENTS = {**ENGAGEMENT_EVENTS, "Email Delivered": "delivered", "SMS Delivered": "delivered",
                  "Email Bounced": "bounced", "Unsubscribed": "unsubscribed"}
_journey_adapter = TypeAdapter(jd.Journey)


def parse(definition: dict[str, Any]) -> jd.Journey:
    """A stored definition (saved by this release or an earlier one, whose checks may have been laxer)."""
    return _journey_adapter.validate_python(definition, context=jd.STORED)


def parse_new(definition: dict[str, Any]) -> jd.Journey:
    """A definition about to be saved: held to today's rules."""
    return _journey_adapter.validate_python(definition)


def _bucket(*parts: object) -> float:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


@dataclass
class Policy:
    """Workspace settings that shape sending (``core.workspaces.settings``)."""

    timezone: str | None = None
    quiet_hours: dict[str, dict[str, str]] = field(default_factory=dict)  # channel -> {start, end, action}
    frequency_caps: list[dict[str, Any]] = field(default_factory=list)  # {channel, max, period_days, action}

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "Policy":
        """Quiet hours and caps the send steps can apply; an entry that is not one (stored before the settings
        were checked, or straight into the table) is left out rather than failing every send that reads it."""
        s = settings or {}
        qh = s.get("quiet_hours") if isinstance(s.get("quiet_hours"), dict) else {}
        caps = s.get("frequency_caps") if isinstance(s.get("frequency_caps"), list) else []
        tz = s.get("timezone") if isinstance(s.get("timezone"), str) else None
        return cls(timezone=tz,
                   quiet_hours={ch: q for ch, v in qh.items() if (q := _read(wc.QuietHours, v)) is not None},
                   frequency_caps=[c for v in caps if (c := _read(wc.FrequencyCap, v)) is not None])


def _read(model: type[BaseModel], value: Any) -> dict[str, Any] | None:
    """``value`` as ``model`` reads it (the fields it sets); None if it is not one. Lax: a "7" (days) or a "2"
    (sends), which older releases stored as given, reads as 7 or 2 — and is then a number, so a cap written
    ``"max": "2"`` or ``2.0`` caps (it used to be passed over as no cap at all)."""
    try:
        return model.model_validate(value, strict=False).model_dump(exclude_unset=True)
    except ValidationError:
        return None


# ---------------------------------------------------------------------------------------------- entry


_LOG_BUFFER = "tenure.journey_log"  # Session.info key


async def _log(session: AsyncSession, j: dict[str, Any], kind: str, detail: str | None = None,
               step: str | None = None) -> None:
    """A line of the journey's path. Buffered in the session and written in one statement when its
    transaction commits (a batch logs several lines per user: one round trip each was ~15 % of the
    worker's time); a rolled-back transaction drops them with everything else."""
    _log_buffer(session).append(
        {"j": str(j["id"]), "ws": str(j["workspace_id"]), "c": str(j["campaign_id"]), "p": str(j["profile_id"]),
         "s": step if step is not None else j.get("step"), "k": kind, "d": detail})


def _log_buffer(session: AsyncSession | Session) -> list[dict[str, Any]]:
    return session.info.setdefault(_LOG_BUFFER, [])  # type: ignore[no-any-return]


@event.listens_for(Session, "before_commit")
def _write_log(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the outer commit writes
        return
    rows = session.info.pop(_LOG_BUFFER, None)
    if rows:  # (sync API: SQLAlchemy runs this hook inside the AsyncSession's greenlet)
        session.execute(text(
            "insert into campaign.journey_log (journey_id, workspace_id, campaign_id, profile_id, step, kind, detail) "
            "select j, ws, c, p, s, k, d from rows from (jsonb_to_recordset(CAST(:rows AS jsonb)) "
            "as (j uuid, ws uuid, c uuid, p uuid, s text, k text, d text)) "
            "with ordinality as r(j, ws, c, p, s, k, d, n) order by n"), {"rows": dumps(rows)})


@event.listens_for(Session, "after_transaction_end")
def _drop_log(session: Session, transaction: SessionTransaction) -> None:
    # Only when the whole transaction ends (committed: written already; rolled back: dropped with it). A
    # savepoint rolled back (one failing journey of a batch) also fires "after_rollback", which used to
    # drop the other journeys' lines too; that caller trims its own lines instead.
    if transaction.parent is None:
        session.info.pop(_LOG_BUFFER, None)


def _shifted(at: datetime, seconds: int) -> datetime:
    """``at`` moved by ``seconds``, stopping at the ends of the calendar: a duration saved before they were
    bounded (a goal window of a billion years) must not fail every entry of its campaign."""
    try:
        return at + timedelta(seconds=seconds)
    except OverflowError:
        return (datetime.max if seconds > 0 else datetime.min).replace(tzinfo=UTC)


@dataclass
class Candidate:
    """A profile a trigger would enter into a campaign's journey."""

    campaign: dict[str, Any]
    journey: jd.Journey
    profile_id: uuid.UUID
    occurrence: str  # what triggered it: idempotent per (campaign, profile, occurrence)
    trigger_data: dict[str, Any]
    at: datetime | None = None  # when the trigger happened (the event's time); default: now


async def enter(session: AsyncSession, campaign: dict[str, Any], journey: jd.Journey, profile_id: uuid.UUID,
                occurrence: str, trigger_data: dict[str, Any], now: datetime, *, at: datetime | None = None
                ) -> uuid.UUID | None:
    """Enter a profile if the entry rule allows; the new journey's id, or None (see ``enter_many``)."""
    (jid,) = await enter_many(session, [Candidate(campaign, journey, profile_id, occurrence, trigger_data, at)], now)
    return jid


async def enter_many(session: AsyncSession, candidates: list[Candidate], now: datetime) -> list[uuid.UUID | None]:
    """Enter each candidate the entry rule allows, in order; per candidate the new journey's id or None.
    Idempotent per (campaign, profile, occurrence).

    Three statements whatever the number (a page of a feed enters hundreds): the entry locks of every
    (campaign, profile), taken in one order so concurrent consumers cannot deadlock; the earlier entries
    the rules look at; one insert. Candidates of the same page count for each other (a second trigger
    in the page is refused under "once"). ``at`` (the trigger's time) is when the journey was entered:
    later events count for goals and waits even when they arrive in the same page as the trigger."""
    if not candidates:
        return []
    ats = [min(c.at or now, now) for c in candidates]
    keys = sorted({f"journey-entry:{c.campaign['id']}:{c.profile_id}" for c in candidates})
    await session.execute(text(  # (the sorted subquery is not flattened: locks are taken in hash order)
        "select count(pg_advisory_xact_lock(h)) from (select distinct hashtextextended(k, 0) as h "
        "from unnest(CAST(:keys AS text[])) as k order by 1) s"), {"keys": keys})
    checks = [{"i": n, "c": str(c.campaign["id"]), "p": str(c.profile_id), "occ": c.occurrence,
               "ruled": c.journey.entry.rule != "every_time",
               "since": _shifted(at, -(c.journey.entry.period_seconds or 0)).isoformat()
               if c.journey.entry.rule == "once_per_period" else None}
              for n, (c, at) in enumerate(zip(candidates, ats, strict=True))]
    refused: set[int] = set()  # a replayed occurrence, or one the entry rule refuses given earlier entries
    for r in await session.execute(text(
            "select r.i from jsonb_to_recordset(CAST(:rows AS jsonb)) "
            "as r(i int, c uuid, p uuid, occ text, ruled boolean, since timestamptz) "
            "where exists (select 1 from campaign.journeys j where j.campaign_id = r.c and j.profile_id = r.p "
            "and (j.occurrence = r.occ or (r.ruled and (r.since is null or j.entered_at > r.since))))"),
            {"rows": dumps(checks)}):
        refused.add(r.i)
    page: dict[tuple[Any, uuid.UUID], list[datetime]] = {}  # entries made by this call, per (campaign, profile)
    taken: set[tuple[Any, uuid.UUID, str]] = set()  # occurrences entered by this call
    rows: list[dict[str, Any]] = []
    for n, (c, at) in enumerate(zip(candidates, ats, strict=True)):
        rule, cid = c.journey.entry, c.campaign["id"]
        earlier = page.get((cid, c.profile_id), [])
        if n in refused or (cid, c.profile_id, c.occurrence) in taken or (rule.rule == "once" and earlier) or (
                rule.rule == "once_per_period" and any(e > _shifted(at, -(rule.period_seconds or 0))
                                                       for e in earlier)):
            continue
        holdout = rule.holdout_percent > 0 and _bucket("holdout", cid, c.profile_id) < rule.holdout_percent
        rows.append({"n": n, "id": str(uuid.uuid4()), "ws": str(c.campaign["workspace_id"]), "c": str(cid),
                     "v": c.campaign["version"], "p": str(c.profile_id), "occ": c.occurrence,
                     "status": "holdout" if holdout else "active", "step": None if holdout else c.journey.steps[0].id,
                     "wake": None if holdout else now.isoformat(), "data": c.trigger_data,
                     "deadline": _shifted(at, c.journey.goal.within_seconds).isoformat()
                     if c.journey.goal else None, "entered": at.isoformat()})
        page.setdefault((cid, c.profile_id), []).append(at)
        taken.add((cid, c.profile_id, c.occurrence))
    if not rows:
        return [None] * len(candidates)
    inserted = {r.id for r in await session.execute(text(
        "insert into campaign.journeys (id, workspace_id, campaign_id, version, profile_id, occurrence, status, "
        "step, wake_at, trigger_data, goal_deadline, entered_at) "
        "select id, ws, c, v, p, occ, status, step, wake, data, deadline, entered "
        "from rows from (jsonb_to_recordset(CAST(:rows AS jsonb)) as (id uuid, ws uuid, c uuid, v int, p uuid, "
        "occ text, status text, step text, wake timestamptz, data jsonb, deadline timestamptz, entered timestamptz)) "
        "with ordinality as r(id, ws, c, v, p, occ, status, step, wake, data, deadline, entered, n) order by n "
        "on conflict (campaign_id, profile_id, occurrence) do nothing returning id"), {"rows": dumps(rows)})}
    out: list[uuid.UUID | None] = [None] * len(candidates)
    for row in rows:
        jid = uuid.UUID(row["id"])
        if jid not in inserted:
            continue  # (a replayed trigger: that occurrence entered before)
        c = candidates[row["n"]]
        out[row["n"]] = jid
        j = {"id": jid, "workspace_id": c.campaign["workspace_id"], "campaign_id": c.campaign["id"],
             "profile_id": c.profile_id, "step": None}
        holdout = row["status"] == "holdout"
        await _log(session, j, "holdout" if holdout else "entered",
                   f"holdout ({c.journey.entry.holdout_percent:g} % get nothing)" if holdout
                   else f"trigger {c.occurrence}")
    return out


# --------------------------------------------------------------------------------------------- events


def _filters_match(filters: list[jd.PropertyFilter], props: dict[str, Any]) -> bool:
    return all(jd.compare(f.op, get_path(props, f.property), f.value) for f in filters)


def trigger_matches(journey: jd.Journey, ws: uuid.UUID, item: dict[str, Any], feed: str) -> bool:
    trig = journey.trigger
    if feed == "events":
        return (isinstance(trig, jd.EventTrigger) and item.get("type") == "track" and item.get("event") == trig.event
                and _filters_match(trig.where, item.get("properties") or {}))
    if feed == "transitions" and isinstance(trig, jd.SegmentTrigger):
        wanted = str(trig.segment_id) if trig.segment_id else str(stage_segment_id(ws, trig.stage or ""))
        kind = "entered" if trig.type == "segment_entered" else "exited"
        return item.get("segment_id") == wanted and item.get("kind") == kind
    return False


async def on_events(session: AsyncSession, events: list[dict[str, Any]], now: datetime,
                    versions: "VersionCache") -> int:
    """Events move open journeys of their profiles: awaited events, goals, exit events, engagement — the
    last also for a journey that has ended (its message is opened after its last step). Returns how many
    journeys were woken."""
    by_profile: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in events:
        if e.get("type") == "track" and e.get("event"):
            by_profile.setdefault((e["workspace_id"], e["profile_id"]), []).append(e)
    if not by_profile:
        return 0
    await _fold_engagement_hours(session, [e for es in by_profile.values() for e in es
                                           if e["event"] in ENGAGEMENT_EVENTS])
    keys = list(by_profile)
    engaged = sorted({jid for es in by_profile.values() for e in es if e["event"] in MESSAGE_EVENTS
                      and (jid := _uuid((e.get("properties") or {}).get("journey_id")))})
    rows = dicts(await session.execute(
        text("select j.* from campaign.journeys j join unnest(CAST(:ws AS uuid[]), CAST(:p AS uuid[])) as k(ws, p) "
             "on j.workspace_id = k.ws and j.profile_id = k.p "
             "where j.status in ('active', 'waiting', 'holdout') "
             "or (j.converted_at is null and j.goal_deadline > :now) or j.id = any(CAST(:engaged AS uuid[])) "
             "order by j.id for update of j"),
        {"ws": [k[0] for k in keys], "p": [k[1] for k in keys], "now": now, "engaged": engaged}))
    woken = 0
    for j in rows:
        journey = await versions.get(session, j["campaign_id"], j["version"])
        for e in sorted(by_profile[(str(j["workspace_id"]), str(j["profile_id"]))], key=lambda e: e["timestamp"]):
            woken += await _apply_event(session, j, journey, e, now)
    return woken


async def follow_merges(session: AsyncSession, merges: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]], now: datetime,
                        versions: "VersionCache") -> int:
    """Ingest merged profile ``old`` into ``new`` (its ``merge`` event; ``merges`` holds (workspace, old, new)):
    the old profile's journeys move to the survivor with their log, sends and engagement hours, so the
    survivor's events reach them and entry rules and frequency caps count both. Where the entry rule then finds
    the person entered twice (both had entered a "once" campaign), the later open journey ends (``exited``,
    "merged"): one journey continues. Idempotent: a replayed page finds nothing left to move. Returns how many
    journeys moved."""
    moved = 0
    for ws, old, new in merges:
        p = {"ws": ws, "old": old, "new": new}
        campaigns = sorted(set((await session.execute(text(
            "select campaign_id from campaign.journeys where workspace_id = :ws and profile_id = :old"), p)).scalars()))
        if campaigns:  # the entry locks of both, as enter_many takes them: no entry races the move
            await session.execute(text(
                "select count(pg_advisory_xact_lock(h)) from (select distinct hashtextextended(k, 0) as h "
                "from unnest(CAST(:keys AS text[])) as k order by 1) s"),
                {"keys": sorted(f"journey-entry:{c}:{pid}" for c in campaigns for pid in (old, new))})
        ids = set((await session.execute(text(
            "update campaign.journeys j set profile_id = :new, updated_at = now() "
            "where j.workspace_id = :ws and j.profile_id = :old and not exists (select 1 from campaign.journeys o "
            "where o.campaign_id = j.campaign_id and o.profile_id = :new and o.occurrence = j.occurrence) "
            "returning j.id"), p)).scalars())
        moved += len(ids)
        for sql in (
            "update campaign.journey_log set profile_id = :new where workspace_id = :ws and profile_id = :old "
            "and journey_id in (select id from campaign.journeys where profile_id = :new)",
            "update campaign.sends set profile_id = :new where workspace_id = :ws and profile_id = :old",
            "insert into campaign.engagement_hours (workspace_id, profile_id, hour, n) "
            "select workspace_id, :new, hour, n from campaign.engagement_hours where workspace_id = :ws "
            "and profile_id = :old on conflict (workspace_id, profile_id, hour) "
            "do update set n = campaign.engagement_hours.n + excluded.n",
            "delete from campaign.engagement_hours where workspace_id = :ws and profile_id = :old",
            "update campaign.trigger_keys set profile_id = :new where workspace_id = :ws and profile_id = :old",
        ):
            await session.execute(text(sql), p)
        if ids:
            await _one_entry_per_rule(session, ws, new, old, ids, now, versions)
    return moved


async def _one_entry_per_rule(session: AsyncSession, ws: uuid.UUID, pid: uuid.UUID, old: uuid.UUID,
                              moved: set[uuid.UUID], now: datetime, versions: "VersionCache") -> None:
    """The survivor's journeys in the campaigns a merge brought journeys into, checked against each journey's
    entry rule as if one person had entered them all in order: an open journey the rule would have refused,
    because of a journey from the other profile, ends."""
    rows = dicts(await session.execute(text(
        "select j.* from campaign.journeys j where j.workspace_id = :ws and j.profile_id = :pid and j.campaign_id in "
        "(select campaign_id from campaign.journeys where id = any(CAST(:moved AS uuid[]))) "
        "order by j.campaign_id, j.entered_at, j.id for update of j"),
        {"ws": ws, "pid": pid, "moved": list(moved)}))
    kept: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for j in rows:
        rule = (await versions.get(session, j["campaign_id"], j["version"])).entry
        earlier = kept.setdefault(j["campaign_id"], [])
        clash = None
        if rule.rule == "once":
            clash = next((e for e in earlier if (e["id"] in moved) != (j["id"] in moved)), None)
        elif rule.rule == "once_per_period":
            since = _shifted(j["entered_at"], -(rule.period_seconds or 0))
            clash = next((e for e in earlier if (e["id"] in moved) != (j["id"] in moved) and e["entered_at"] > since),
                         None)
        if clash is None or j["status"] not in ("active", "waiting"):
            earlier.append(j)
            continue
        await _update(session, j["id"], {"status": "exited", "ended_at": now, "wake_at": None, "wait": None})
        whose = "this profile" if j["id"] in moved else "the profile merged into this one"
        await _log(session, j, "exited", f"merged: profile {old} became this one, and {whose} had entered before "
                                         f"(journey {clash['id']}, {rule.rule})")


async def on_transitions(session: AsyncSession, transitions: list[dict[str, Any]], now: datetime,
                         versions: "VersionCache") -> int:
    """Leaving a segment or a stage ends the open journeys whose version exits on leaving it
    (``exit_on_leaving``), entering one those that exit on entering it (``exit_on_entering``) — unless they were
    entered after that transition. Returns how many ended."""
    moves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in transitions:
        if t.get("kind") in ("exited", "entered"):
            moves.setdefault((t["workspace_id"], t["profile_id"]), []).append(t)
    if not moves:
        return 0
    keys = list(moves)
    rows = dicts(await session.execute(
        text("select j.* from campaign.journeys j join unnest(CAST(:ws AS uuid[]), CAST(:p AS uuid[])) as k(ws, p) "
             "on j.workspace_id = k.ws and j.profile_id = k.p where j.status in ('active', 'waiting') "
             "order by j.id for update of j"),
        {"ws": [k[0] for k in keys], "p": [k[1] for k in keys]}))
    ended = 0
    for j in rows:
        journey = await versions.get(session, j["campaign_id"], j["version"])
        for kind, rule, said in (("exited", journey.exit_on_leaving, "left"),
                                 ("entered", journey.exit_on_entering, "entered")):
            refs = {str(ref.segment_id or stage_segment_id(j["workspace_id"], ref.stage or "")): ref for ref in rule}
            hit = next((t for t in moves[(str(j["workspace_id"]), str(j["profile_id"]))] if t.get("kind") == kind
                        and t.get("segment_id") in refs and _transition_time(t, now) >= j["entered_at"]), None)
            if hit is not None:
                await _update(session, j["id"], {"status": "exited", "ended_at": now, "wake_at": None, "wait": None})
                await _log(session, j, "exited", f"{said} {refs[hit['segment_id']].label()}")
                ended += 1
                break
    return ended


def _transition_time(t: dict[str, Any], default: datetime) -> datetime:
    at = t.get("at")
    if isinstance(at, datetime):
        return at
    return feed_time(str(at)) if at else default


def _uuid(value: Any) -> str | None:
    """``value`` if it is a UUID (event properties are whatever the sender wrote)."""
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


async def _fold_engagement_hours(session: AsyncSession, events: list[dict[str, Any]]) -> None:
    """Count opens and clicks per profile per hour of the day (UTC), for send-time optimisation."""
    counts: dict[tuple[str, str, int], int] = {}
    for e in events:
        key = (e["workspace_id"], e["profile_id"], _event_time(e).hour)
        counts[key] = counts.get(key, 0) + 1
    if counts:
        keys = sorted(counts)
        await session.execute(text(
            "insert into campaign.engagement_hours (workspace_id, profile_id, hour, n) "
            "select * from unnest(CAST(:ws AS uuid[]), CAST(:p AS uuid[]), CAST(:h AS int[]), CAST(:n AS int[])) "
            "on conflict (workspace_id, profile_id, hour) do update set n = campaign.engagement_hours.n + excluded.n"),
            {"ws": [k[0] for k in keys], "p": [k[1] for k in keys], "h": [k[2] for k in keys],
             "n": [counts[k] for k in keys]})


def _event_time(e: dict[str, Any]) -> datetime:
    ts = e["timestamp"]
    return ts if isinstance(ts, datetime) else feed_time(str(ts))


async def _apply_event(session: AsyncSession, j: dict[str, Any], journey: jd.Journey, e: dict[str, Any],
                       now: datetime) -> int:
    name, props = e["event"], e.get("properties") or {}
    at = _event_time(e)
    if at < j["entered_at"] or j["occurrence"] == f"event:{e.get('message_id')}":
        return 0  # before entry, or the trigger itself
    updates: dict[str, Any] = {}
    woken = 0
    seen = set(j.get("seen") or [])
    mark = MESSAGE_EVENTS.get(name)
    if mark and props.get("journey_id") == str(j["id"]) and props.get("step"):
        seen.add(f"{mark}:{props['step']}")
    seen.add(f"event:{name}")
    for prop in _match_properties(journey, name):
        if (value := get_path(props, prop)) is not None:
            seen.add(_seen_key(name, prop, value))
    if journey.goal and name == journey.goal.event and j["converted_at"] is None and j["goal_deadline"] \
            and at <= j["goal_deadline"]:
        updates["converted_at"] = j["converted_at"] = now
        revenue = props.get("revenue")
        if isinstance(revenue, int | float) and not isinstance(revenue, bool):
            updates["converted_value"] = revenue
        await _log(session, j, "converted", f"{name} within the goal window")
        if journey.goal.exit_on_conversion and j["status"] in OPEN:
            updates.update(status="exited", ended_at=now, wake_at=None, wait=None)
            j["status"] = "exited"
            await _log(session, j, "exited", "converted")
    if name in journey.exit_on and j["status"] in OPEN:
        updates.update(status="exited", ended_at=now, wake_at=None, wait=None)
        j["status"] = "exited"
        await _log(session, j, "exited", f"exit event {name}")
    wait = j.get("wait") or {}
    if j["status"] == "waiting" and wait.get("event") == name and (j["wake_at"] is None or at <= j["wake_at"]) and (
            wait.get("match_property") is None or get_path(props, wait["match_property"]) == wait.get("match_value")):
        updates.update(status="active", step=wait.get("on_event"), wake_at=now, wait=None)
        j.update(status="active", step=wait.get("on_event"), wait=None)
        await _log(session, j, "event", f"{name} arrived", step=wait.get("step"))
        woken = 1
    if sorted(seen) != sorted(j.get("seen") or []):
        updates["seen"] = sorted(seen)
        j["seen"] = sorted(seen)
    if updates:
        await _update(session, j["id"], updates)
    return woken


def _match_properties(journey: jd.Journey, event: str) -> set[str]:
    return {s.match.property for s in journey.steps
            if isinstance(s, jd.WaitForEventStep) and s.event == event and s.match is not None}


def _seen_key(event: str, prop: str | None = None, value: Any = None) -> str:
    return f"event:{event}" if prop is None else f"event:{event}|{prop}={dumps(value, sort_keys=True)}"


async def _update(session: AsyncSession, jid: uuid.UUID, values: dict[str, Any]) -> None:
    sets, params = [], {"id": jid}
    for k, v in values.items():
        if k in ("wait", "seen", "trigger_data"):
            sets.append(f"{k} = CAST(:{k} AS jsonb)")
            params[k] = None if v is None else dumps(v)
        else:
            sets.append(f"{k} = :{k}")
            params[k] = v
    await session.execute(text(f"update campaign.journeys set {', '.join(sets)}, updated_at = now() where id = :id"),
                          params)


# the journey columns a timer run sets; a deferred update names which of them it sets (the others are kept)
_RUN_COLUMNS = {"status": "text", "step": "text", "wake_at": "timestamptz", "wait": "jsonb", "variant": "text",
                "ended_at": "timestamptz"}
_UPDATE_MANY = text(
    "update campaign.journeys j set "
    + ", ".join(f"{c} = case when r.d ? '{c}' then " + (f"nullif(r.d->'{c}', 'null'::jsonb)" if t == "jsonb" else
                                                      f"CAST(r.d->>'{c}' AS {t})") + f" else j.{c} end"
                for c, t in _RUN_COLUMNS.items())
    + ", updated_at = now() from (select CAST(e->>'id' AS uuid) as id, e->'set' as d "
      "from jsonb_array_elements(CAST(:rows AS jsonb)) as e) as r where j.id = r.id")
# a pending send is written claimed when its run hands it to delivery itself (``_Deferred.claim``): one attempt
# taken and the dispatcher's lease, so the dispatcher's poll skips it unless the run dies before handing it over
_INSERT_SENDS = text(
    "insert into campaign.sends (id, workspace_id, campaign_id, campaign_version, template_id, profile_id, "
    "occurrence, idempotency_key, status, reason, trigger_data, journey_id, step, channel, attempts, next_attempt_at) "
    "select r.id, r.ws, r.c, r.v, r.t, r.p, r.occ, r.key, r.status, r.reason, r.data, r.j, r.step, r.ch, "
    "case when :claim and r.status = 'pending' then 1 else 0 end, "
    "case when :claim and r.status = 'pending' then now() + make_interval(secs => :lease) else now() end "
    "from jsonb_to_recordset(CAST(:rows AS jsonb)) as r(id uuid, ws uuid, c uuid, v int, t uuid, p uuid, occ text, "
    "key text, status text, reason text, data jsonb, j uuid, step text, ch text) "
    "on conflict (workspace_id, idempotency_key) do nothing returning idempotency_key")


@dataclass
class _Deferred:
    """The sends and journey updates of a run, written one statement each when it ends: the whole batch's
    when it runs without savepoints, else each journey's inside its savepoint.

    A journey's own writes are only read back by the dispatcher, after the batch commits, and by the
    frequency caps and A/B winners of later journeys in the batch, which flush first. A send's log line
    takes its place in the path when the send is decided and is corrected at the flush if the send
    turns out to exist already (a replayed step).

    With ``claim``, pending sends are written already claimed for the dispatcher (``dispatch.LEASE_S``) and
    listed in ``claimed``: the caller hands them to delivery once its transaction has committed."""

    sends: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (row, its log line)
    updates: list[dict[str, Any]] = field(default_factory=list)
    replayed: int = 0  # deferred sends that already existed (counted as created when decided)
    claim: bool = False
    claimed: list[dict[str, Any]] = field(default_factory=list)  # the rows of pending sends written claimed

    async def flush(self, session: AsyncSession) -> None:
        """Write what is pending."""
        if self.sends:
            rows = [row for row, _ in self.sends]
            created = set((await session.execute(_INSERT_SENDS, {"rows": dumps(rows), "claim": self.claim,
                                                                 "lease": SEND_LEASE_S})).scalars())
            for row, line in self.sends:
                if row["key"] in created:
                    created.discard(row["key"])  # (the same step twice in one run: the second is a replay)
                    if self.claim and row["status"] == "pending":
                        self.claimed.append(row)
                elif row["status"] == "pending":
                    line.update(k="skipped", d="already sent (replayed step)")
                    self.replayed += 1
            self.sends.clear()
        if self.updates:
            await session.execute(_UPDATE_MANY, {"rows": dumps(self.updates)})
            self.updates.clear()


class VersionCache:
    """Campaign versions parsed once per batch."""

    def __init__(self) -> None:
        self._cache: dict[tuple[uuid.UUID, int], jd.Journey] = {}

    async def get(self, session: AsyncSession, campaign_id: uuid.UUID, version: int) -> jd.Journey:
        key = (campaign_id, version)
        if key not in self._cache:
            definition = (await session.execute(
                text("select definition from campaign.campaign_versions where campaign_id = :c and version = :v"),
                {"c": campaign_id, "v": version})).scalar_one()
            self._cache[key] = parse(definition)
        return self._cache[key]


# --------------------------------------------------------------------------------------------- timers


@dataclass
class Context:
    """What running a journey's steps needs besides the row."""

    session: AsyncSession
    internal: InternalClient
    http: httpx.AsyncClient
    now: datetime
    policy: Policy
    profile: dict[str, Any]
    settings: Settings
    channels: dict[uuid.UUID, str] = field(default_factory=dict)  # template id -> channel, for one batch
    deferred: _Deferred = field(default_factory=_Deferred)  # sends and journey updates, until flushed


class _IsolateAndRetry(Exception):
    """A journey failed in a batch run without savepoints: the batch rolled back whole."""


class Advanced(NamedTuple):
    """What one ``advance_due`` did."""

    journeys: int  # journeys run
    sends: int  # sends created
    claimed: list[dict[str, Any]]  # with ``claim_sends``: the sends it created, claimed (``_claimed_send``)
    profiles: dict[str, Any]  # their profiles as looked up for the run ("workspace:profile" -> profile)


async def advance_due(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient,
                      http: httpx.AsyncClient, *, now: datetime | None = None, limit: int = 200,
                      claim_sends: bool = False) -> Advanced:
    """Run the journeys whose timer is due (one claimed batch, one transaction).

    With ``claim_sends`` the sends it decides are written already claimed and returned with the profiles the
    run looked up, for the caller to hand to delivery (``dispatch.dispatch_claimed``) without the dispatcher's
    poll, its claim and a second profile lookup; if the caller dies first, the lease runs out and the poll
    takes them.

    A failing journey must roll back alone, which a savepoint per journey gives — two more round trips
    each, and past 64 of them a transaction's subtransactions overflow PostgreSQL's per-backend cache,
    which slows every other session's visibility checks. So a batch whose journeys only touch the
    database runs without savepoints; if one of them fails, the whole batch rolls back and runs again
    with a savepoint per journey. A batch with a step that acts outside (a webhook, a profile update)
    always takes the isolated path, so nothing outside is done twice."""
    now = now or datetime.now(UTC)
    try:
        return await _advance(sessionmaker, internal, http, now, limit, isolate=False, claim=claim_sends)
    except _IsolateAndRetry as exc:
        log.info("campaign.batch_isolated", error=f"{type(exc.__cause__).__name__}: {exc.__cause__}")
        return await _advance(sessionmaker, internal, http, now, limit, isolate=True, claim=claim_sends)


# the journeys a worker should run now (a paused campaign's wait), for the scrape-time gauge of due work: read from
# the front of ix_journeys_due, at most DUE_CAP of them, before their campaigns are looked at (a paused campaign's
# million due journeys walked whole at every scrape otherwise)
DUE_ROWS = ("select d.wake_at as due_at from (select j.wake_at, j.campaign_id from campaign.journeys j "
            "where j.status in ('active', 'waiting') and j.wake_at <= now() order by j.wake_at "
            f"limit {metrics.DUE_CAP}) d join campaign.campaigns c on c.id = d.campaign_id and c.status = 'active' "
            "order by d.wake_at")


async def _advance(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient, http: httpx.AsyncClient,
                   now: datetime, limit: int, *, isolate: bool, claim: bool) -> Advanced:
    versions = VersionCache()
    channels: dict[uuid.UUID, str] = {}
    sends = 0
    claimed: list[dict[str, Any]] = []
    async with sessionmaker() as session, session.begin():
        rows = dicts(await session.execute(
            text("select j.*, w.settings as ws_settings from campaign.journeys j "
                 "join campaign.campaigns c on c.id = j.campaign_id and c.status = 'active' "
                 "left join core.workspaces w on w.id = j.workspace_id "
                 "where j.status in ('active', 'waiting') and j.wake_at <= :now "
                 "order by j.wake_at limit :lim for update of j skip locked"),
            {"now": now, "lim": limit}))
        found = await _profiles(internal, rows)
        batch = [(r, await versions.get(session, r["campaign_id"], r["version"])) for r in rows]
        isolate = isolate or any(journey.calls_out() for _, journey in batch)
        deferred = _Deferred(claim=claim)  # the batch's, when it runs without savepoints
        for j, journey in batch:
            profile = found.get(str(j["profile_id"]))
            if profile is None:
                await _update(session, j["id"], {"status": "exited", "ended_at": now, "wake_at": None})
                await _log(session, j, "exited", "profile no longer exists")
                continue
            ctx = Context(session, internal, http, now, Policy.from_settings(j.pop("ws_settings")), profile,
                          internal.settings, channels, _Deferred(claim=claim) if isolate else deferred)
            if not isolate:
                try:
                    sends += await run(ctx, j, journey)
                except Exception as exc:  # noqa: BLE001 - the batch rolls back, and runs again isolated
                    raise _IsolateAndRetry from exc
                continue
            logged = len(_log_buffer(session))
            try:
                async with session.begin_nested():  # a failing journey rolls back alone
                    decided = await run(ctx, j, journey)
                    await ctx.deferred.flush(session)
                sends += decided - ctx.deferred.replayed
                claimed.extend(ctx.deferred.claimed)  # (its savepoint held)
            except Exception as exc:  # noqa: BLE001 - retried later; the others go on
                del _log_buffer(session)[logged:]  # its lines roll back with it
                log.warning("campaign.journey_failed", journey_id=str(j["id"]), error=f"{type(exc).__name__}: {exc}")
                await _update(session, j["id"], {"wake_at": now + RETRY_AFTER})
                await _log(session, j, "error", f"{type(exc).__name__}: {exc}"[:500] + "; retried in 5 minutes")
        if not isolate:
            try:
                await deferred.flush(session)
            except Exception as exc:  # noqa: BLE001 - as a journey's own failure: rerun isolated
                raise _IsolateAndRetry from exc
            sends -= deferred.replayed
            claimed.extend(deferred.claimed)
    # (only now that the transaction has committed are the claimed sends there to hand over)
    return Advanced(len(rows), sends, [_claimed_send(row) for row in claimed],
                    {f"{row['ws']}:{row['p']}": found[str(row["p"])] for row in claimed})


def _claimed_send(row: dict[str, Any]) -> dict[str, Any]:
    """A send row written claimed, in the shape ``dispatch.claim`` returns but for the campaign's message type and
    topic and the workspace's time zone, which ``dispatch.dispatch_claimed`` reads as the claim does."""
    return {"id": row["id"], "workspace_id": row["ws"], "campaign_id": row["c"], "template_id": row["t"],
            "profile_id": row["p"], "idempotency_key": row["key"], "trigger_data": row["data"], "attempts": 1,
            "journey_id": row["j"], "step": row["step"]}


async def _profiles(internal: InternalClient, journeys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The journeys' profiles from ingest, one request per workspace (merges followed)."""
    by_ws: dict[str, list[str]] = {}
    for j in journeys:
        by_ws.setdefault(str(j["workspace_id"]), []).append(str(j["profile_id"]))
    found: dict[str, dict[str, Any]] = {}
    for ws, ids in by_ws.items():
        found.update(await ingest_client.lookup_profiles(internal, ws, ids))
    return found


async def run(ctx: Context, j: dict[str, Any], journey: jd.Journey) -> int:
    """Execute steps from the journey's current one until it waits or ends; returns sends created."""
    sends = 0
    updates: dict[str, Any] = {}
    if j["status"] == "active" and j.get("wait"):  # a marker from a deferral (send-time optimisation)
        j["sto_done"] = (j.get("wait") or {}).get("sto")
        updates["wait"] = None
    if j["status"] == "waiting":  # its timer fired: the awaited event did not come
        wait = j.get("wait") or {}
        await _log(ctx.session, j, "timeout", f"no {wait.get('event')} in time", step=wait.get("step"))
        j["step"], j["status"] = wait.get("on_timeout"), "active"
        updates.update(status="active", wait=None)
    for _ in range(MAX_STEPS_PER_WAKE):
        step_id = j["step"]
        if step_id is None:
            updates.update(status="completed", step=None, ended_at=ctx.now, wake_at=None)
            await _log(ctx.session, j, "completed")
            break
        step = journey.find(step_id)
        if step is None:  # (a row changed by hand, or moved by the old migrate with its old version's wait):
            # retrying cannot help, and would log an error every 5 minutes for ever — it ends, saying why
            updates.update(status="exited", step=step_id, ended_at=ctx.now, wake_at=None, wait=None)
            await _log(ctx.session, j, "exited", f"version {j['version']} of the campaign has no step {step_id!r}",
                       step=step_id)
            break
        outcome = await _run_step(ctx, j, journey, step)
        sends += outcome.sends
        if outcome.wake_at is not None or outcome.wait is not None:
            updates.update(step=outcome.next_step, wake_at=outcome.wake_at, status=outcome.status)
            if outcome.wait is not None:
                updates["wait"] = outcome.wait
            if outcome.variant:
                updates["variant"] = outcome.variant
            break
        if outcome.status == "exited":
            updates.update(status="exited", step=step_id, ended_at=ctx.now, wake_at=None)
            break
        if outcome.variant:
            updates["variant"] = j["variant"] = outcome.variant
        j["step"] = outcome.next_step
    else:  # a loop of zero-delay steps: park it for a minute rather than spin
        updates.update(step=j["step"], wake_at=ctx.now + timedelta(minutes=1))
        await _log(ctx.session, j, "deferred", f"over {MAX_STEPS_PER_WAKE} steps without waiting")
    assert updates.keys() <= _RUN_COLUMNS.keys(), f"_UPDATE_MANY does not set {updates.keys() - _RUN_COLUMNS.keys()}"
    ctx.deferred.updates.append({"id": str(j["id"]), "set": updates})
    return sends


@dataclass
class StepOutcome:
    next_step: str | None = None
    wake_at: datetime | None = None  # set: the journey sleeps until then (at next_step)
    wait: dict[str, Any] | None = None  # set: the journey waits for an event
    status: str = "active"
    sends: int = 0
    variant: str | None = None


def waiting_for(step: jd.WaitForEventStep, trigger_data: dict[str, Any] | None) -> dict[str, Any]:
    """A journey's ``wait`` at this step: the event it waits for (matched on the trigger's key) and where it goes
    when it comes or times out."""
    wait: dict[str, Any] = {"event": step.event, "step": step.id, "on_event": step.on_event,
                            "on_timeout": step.on_timeout, "match_property": None, "match_value": None}
    if step.match:
        wait["match_property"] = step.match.property
        wait["match_value"] = get_path((trigger_data or {}).get("properties") or {}, step.match.trigger_property)
    return wait


def already_happened(wait: dict[str, Any], seen: list[str] | None) -> bool:
    """Whether the event a ``wait`` (``waiting_for``) is for already happened since the journey's entry, as its
    ``seen`` says (matched on the trigger's key when the wait has one)."""
    return _seen_key(wait["event"], wait["match_property"], wait["match_value"]) in (seen or [])


async def _run_step(ctx: Context, j: dict[str, Any], journey: jd.Journey, step: Any) -> StepOutcome:
    traits = ctx.profile.get("traits") or {}
    tz = timing.zone(traits, ctx.policy.timezone)
    if isinstance(step, jd.SendStep):
        return await _send(ctx, j, journey, step, tz)
    if isinstance(step, jd.DelayStep):
        if step.seconds == 0:
            return StepOutcome(step.next)
        await _log(ctx.session, j, "waiting", f"delay {step.seconds} s", step=step.id)
        return StepOutcome(step.next, wake_at=ctx.now + timedelta(seconds=step.seconds))
    if isinstance(step, jd.WaitUntilStep):
        at = timing.next_local_time(ctx.now, tz, step.time, step.weekdays)
        await _log(ctx.session, j, "waiting", f"until {step.time} {tz.key} ({at.isoformat()})", step=step.id)
        return StepOutcome(step.next, wake_at=at)
    if isinstance(step, jd.WaitUntilAttributeStep):
        moment = timing.parse_moment(traits.get(step.trait), tz)
        at = None if moment is None else timing.shift(moment, step.offset_seconds, tz)
        if at is None or at < ctx.now:
            await _log(ctx.session, j, "branch", f"{step.trait} missing or past", step=step.id)
            return StepOutcome(step.on_missing)
        await _log(ctx.session, j, "waiting", f"until {step.trait} {step.offset_seconds:+d} s ({at.isoformat()})",
                   step=step.id)
        return StepOutcome(step.next, wake_at=at)
    if isinstance(step, jd.WaitForEventStep):
        wait = waiting_for(step, j.get("trigger_data"))
        if step.match and wait["match_value"] is None:  # nothing to match on: it can only time out
            await _log(ctx.session, j, "timeout", f"the trigger has no {step.match.trigger_property}", step=step.id)
            return StepOutcome(step.on_timeout)
        # an awaited event that already happened since entry counts (it may share the trigger's page)
        if already_happened(wait, j.get("seen")):
            await _log(ctx.session, j, "event", f"{step.event} already happened", step=step.id)
            return StepOutcome(step.on_event)
        await _log(ctx.session, j, "waiting", f"for {step.event} (timeout {step.timeout_seconds} s)", step=step.id)
        return StepOutcome(step.id, wake_at=ctx.now + timedelta(seconds=step.timeout_seconds), wait=wait,
                           status="waiting")
    if isinstance(step, jd.BranchStep):
        result = await _condition(ctx, j, step.condition, traits)
        await _log(ctx.session, j, "branch", "yes" if result else "no", step=step.id)
        return StepOutcome(step.yes if result else step.no)
    if isinstance(step, jd.SplitStep):
        variant = await _winner(ctx, j, step) if step.winner_after or step.winner_at else None
        if variant is None:
            variant = jd.pick_variant(step.variants, _bucket("split", j["campaign_id"], step.id, j["profile_id"]) / 100)
            await _log(ctx.session, j, "split", variant.name, step=step.id)
        return StepOutcome(variant.next, variant=variant.name)
    if isinstance(step, jd.UpdateAttributeStep):
        await _identify(ctx, j, step)
        return StepOutcome(step.next)
    if isinstance(step, jd.WebhookStep):
        await _webhook(ctx, j, step)
        return StepOutcome(step.next)
    if isinstance(step, jd.ExitStep):
        await _log(ctx.session, j, "exited", "exit step", step=step.id)
        return StepOutcome(step.id, status="exited")
    raise TypeError(f"unknown step {step!r}")


async def _winner(ctx: Context, j: dict[str, Any], step: jd.SplitStep) -> jd.Variant | None:
    """The split's winner once decided (None before). When ``winner_after`` users have entered or ``winner_at``
    has come, whichever is first, the variant leading then (``experiments.ranked``: goal conversion rate, a tie by
    click rate, then open rate, then the variant listed first) is recorded once for good
    (``campaign.split_winners``; the first transaction to decide it wins a race), and every later entrant gets it."""
    p = {"c": j["campaign_id"], "s": step.id, "names": [v.name for v in step.variants]}
    decided = (await ctx.session.execute(text(
        "select variant, reason from campaign.split_winners where campaign_id = :c and step = :s"), p)).first()
    if decided is None:
        if step.winner_at and ctx.now >= step.winner_at:
            reason = f"at {step.winner_at.isoformat()}"
        elif step.winner_after:
            await ctx.deferred.flush(ctx.session)  # (the variants this batch assigned count too)
            entered = (await ctx.session.execute(text(
                "select count(*) from campaign.journeys where campaign_id = :c "
                "and variant = any(CAST(:names AS text[]))"), p)).scalar_one()
            if entered < step.winner_after:
                return None
            reason = f"after {step.winner_after} entrants"
        else:
            return None
        await ctx.deferred.flush(ctx.session)
        best = experiments.ranked(await _arms(ctx.session, p, step))[0]
        await ctx.session.execute(text(
            "insert into campaign.split_winners (campaign_id, step, variant, reason, decided_at) "
            "values (:c, :s, :v, :r, :now) on conflict do nothing"), {**p, "v": best.name, "r": reason, "now": ctx.now})
        decided = (await ctx.session.execute(text(
            "select variant, reason from campaign.split_winners where campaign_id = :c and step = :s"), p)).one()
    winner = next((v for v in step.variants if v.name == decided.variant), None)
    if winner is not None:
        await _log(ctx.session, j, "split", f"{winner.name} (the winner, decided {decided.reason})", step=step.id)
    return winner


async def _arms(session: AsyncSession, p: dict[str, Any], step: jd.SplitStep) -> list[experiments.Arm]:
    """The split's variants as they stand, in the order listed: entrants, goal conversions, and the entrants who
    clicked or opened a message the variant sent."""
    counts = {r.variant: r for r in (await session.execute(text(
        "select variant, count(*) as n, count(converted_at) as conv from campaign.journeys "
        "where campaign_id = :c and variant = any(CAST(:names AS text[])) group by variant"), p)).all()}
    engaged = {r.variant: r for r in (await session.execute(text(
        "select j.variant, count(distinct j.id) filter (where j.seen ? ('clicked:' || s.step)) as clicked, "
        "count(distinct j.id) filter (where j.seen ? ('opened:' || s.step)) as opened "
        "from campaign.sends s join campaign.journeys j on j.id = s.journey_id where s.campaign_id = :c "
        "and j.variant = any(CAST(:names AS text[])) and s.trigger_data->>'variant' = j.variant "
        "group by j.variant"), p)).all()}
    return [experiments.Arm(v.name, counts[v.name].n if v.name in counts else 0,
                            counts[v.name].conv if v.name in counts else 0,
                            engaged[v.name].clicked if v.name in engaged else 0,
                            engaged[v.name].opened if v.name in engaged else 0) for v in step.variants]


async def _condition(ctx: Context, j: dict[str, Any], cond: Any, traits: dict[str, Any]) -> bool:
    if isinstance(cond, jd.TraitCondition):
        return jd.compare(cond.op, traits.get(cond.trait), cond.value)
    if isinstance(cond, jd.EventSinceEntryCondition):
        return f"event:{cond.event}" in (j.get("seen") or [])
    if isinstance(cond, jd.EngagementCondition):
        seen = j.get("seen") or []
        if cond.action == "delivered":  # (an open or a click says so too)
            return any(f"{a}:{cond.step}" in seen for a in ("delivered", "opened", "clicked")) \
                and f"bounced:{cond.step}" not in seen or await _delivered(ctx, j, cond.step)
        return f"{cond.action}:{cond.step}" in seen
    resp = await ctx.internal.request("GET", "segment", f"/v1/profiles/{j['profile_id']}/segments",
                                      headers={WORKSPACE_HEADER: str(j["workspace_id"])})
    if resp.status_code == 404:  # segment has not seen the profile yet (its events are still on the way)
        return False
    resp.raise_for_status()
    return str(cond.segment_id) in resp.json()["segment_ids"]


async def _delivered(ctx: Context, j: dict[str, Any], step_id: str) -> bool:
    """Whether delivery sent (or saw delivered) the message a send step of this journey handed it: not when
    it was skipped, is still queued, or was suppressed, bounced or failed."""
    mid = (await ctx.session.execute(text(
        "select delivery_message_id from campaign.sends where workspace_id = :ws and profile_id = :p "
        "and journey_id = :j and step = :s"),
        {"ws": j["workspace_id"], "p": j["profile_id"], "j": j["id"], "s": step_id})).scalar()
    if mid is None:
        return False
    resp = await ctx.internal.request("GET", "delivery", f"/v1/messages/{mid}",
                                      headers={WORKSPACE_HEADER: str(j["workspace_id"])})
    if resp.status_code == 404:
        return False
    resp.raise_for_status()
    return resp.json()["status"] in ("sent", "delivered")


async def _send(ctx: Context, j: dict[str, Any], journey: jd.Journey, step: jd.SendStep, tz: Any) -> StepOutcome:
    """Decide a send: quiet hours and frequency caps (marketing only) may defer or skip it."""
    channel = ctx.channels.get(step.template_id)
    if channel is None:
        channel = ctx.channels[step.template_id] = (await ctx.session.execute(
            text("select channel from campaign.templates where id = :t"), {"t": step.template_id})).scalar() or "email"
    reason: str | None = None
    if journey.message_type == "marketing":
        quiet = ctx.policy.quiet_hours.get(channel)
        if quiet and quiet.get("start") and quiet.get("end"):
            until = timing.quiet_until(ctx.now, tz, quiet["start"], quiet["end"])
            if until is not None:
                why = f"quiet hours for {channel} ({quiet['start']}-{quiet['end']} {tz.key})"
                if quiet.get("action", "defer") == "defer":
                    await _log(ctx.session, j, "deferred", f"{why}; until {until.isoformat()}", step=step.id)
                    return StepOutcome(step.id, wake_at=until, wait=_keep_sto(j, step))
                reason = why
        if reason is None:
            reason, defer_until = await _capped(ctx, j, channel)
            if defer_until is not None:
                await _log(ctx.session, j, "deferred", f"{reason}; until {defer_until.isoformat()}", step=step.id)
                return StepOutcome(step.id, wake_at=defer_until, wait=_keep_sto(j, step))
    if step.optimize_send_time and reason is None and j.get("sto_done") != step.id:
        best = await _best_hour(ctx, j)
        if best is not None and best != ctx.now.hour:
            at = ctx.now.replace(minute=0, second=0, microsecond=0, hour=best)
            at = at if at > ctx.now else at + timedelta(days=1)
            await _log(ctx.session, j, "deferred", f"send-time optimisation: {best:02d}:00 UTC, when this user "
                       f"most often opens or clicks", step=step.id)
            # once: when it wakes (or quiet hours push it on) it sends rather than deferring again
            return StepOutcome(step.id, wake_at=at, wait={"sto": step.id})
    key = hashlib.sha256(f"{j['campaign_id']}:{j['version']}:{step.id}:{j['id']}".encode()).hexdigest()[:40]
    row = {"id": uuid.uuid4(), "ws": j["workspace_id"], "c": j["campaign_id"], "v": j["version"],
           "t": step.template_id, "p": j["profile_id"], "occ": f"journey:{j['id']}:{step.id}", "key": key,
           "status": "skipped" if reason else "pending", "reason": reason,
           "data": {**(j.get("trigger_data") or {}), "journey_id": str(j["id"]), "step": step.id,
                    "variant": j.get("variant")},
           "j": j["id"], "step": step.id, "ch": channel}
    # written at the flush with the other sends; a replay is found then and its line corrected
    await _log(ctx.session, j, "skipped" if reason else "sent", reason or f"{channel} message queued", step=step.id)
    ctx.deferred.sends.append((row, _log_buffer(ctx.session)[-1]))
    return StepOutcome(step.next, sends=0 if reason else 1)


MIN_ENGAGEMENTS_FOR_STO = 3


def _keep_sto(j: dict[str, Any], step: jd.SendStep) -> dict[str, Any] | None:
    """A send already deferred once for send-time optimisation stays marked through later deferrals."""
    return {"sto": step.id} if j.get("sto_done") == step.id else None


async def _best_hour(ctx: Context, j: dict[str, Any]) -> int | None:
    """The hour (UTC) the profile most often engaged, if it has enough history."""
    rows = (await ctx.session.execute(text(
        "select hour, n from campaign.engagement_hours where workspace_id = :ws and profile_id = :p "
        "order by n desc, hour"), {"ws": j["workspace_id"], "p": j["profile_id"]})).all()
    if sum(r.n for r in rows) < MIN_ENGAGEMENTS_FOR_STO:
        return None
    return int(rows[0].hour)


async def _capped(ctx: Context, j: dict[str, Any], channel: str) -> tuple[str | None, datetime | None]:
    """The first frequency cap this send would break: (reason, None) to skip, (reason, when) to defer.
    Counted under a lock per (profile, channel), held to the end of the transaction that inserts the send,
    so two workers running different campaigns for one person cannot both slip under the cap."""
    if ctx.policy.frequency_caps:
        await ctx.deferred.flush(ctx.session)  # (the sends this batch decided count too)
        await ctx.session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                                  {"k": f"cap:{j['workspace_id']}:{j['profile_id']}:{channel}"})
    for cap in ctx.policy.frequency_caps:
        if cap.get("channel", channel) != channel or not isinstance(cap.get("max"), int):
            continue
        if cap["max"] <= 0:
            return f"frequency cap: no {channel} allowed", None
        period = timedelta(days=float(cap.get("period_days", 7)))
        rows = (await ctx.session.execute(
            text("select s.created_at from campaign.sends s join campaign.campaigns c on c.id = s.campaign_id "
                 "where s.workspace_id = :ws and s.profile_id = :p and s.channel = :ch "
                 "and s.status in ('pending', 'dispatched') and c.message_type = 'marketing' "
                 "and s.created_at > :since order by s.created_at"),
            {"ws": j["workspace_id"], "p": j["profile_id"], "ch": channel, "since": ctx.now - period})).scalars().all()
        if len(rows) >= cap["max"]:
            reason = f"frequency cap: {cap['max']} {channel} per {float(cap.get('period_days', 7)):g} days"
            if cap.get("action", "skip") == "defer":
                return reason, rows[len(rows) - cap["max"]] + period
            return reason, None
    return None, None


async def _identify(ctx: Context, j: dict[str, Any], step: jd.UpdateAttributeStep) -> None:
    """Set traits through ingest (an identify from the campaign, idempotent per journey step)."""
    if not ctx.profile.get("user_id") and not ctx.profile.get("anonymous_id"):
        await _log(ctx.session, j, "skipped", "the profile has no userId or anonymousId to update", step=step.id)
        return
    resp = await ctx.internal.request(
        "POST", "ingest", "/v1/identify", retry=True, headers={WORKSPACE_HEADER: str(j["workspace_id"])},
        json={"userId": ctx.profile.get("user_id") or None,
              "anonymousId": None if ctx.profile.get("user_id") else ctx.profile.get("anonymous_id"),
              "traits": step.traits, "messageId": f"journey-{j['id']}-{step.id}",
              "context": {"library": {"name": "tenure-campaign"}}})  # (segment: not the person's activity)
    if resp.status_code != 200:
        raise RuntimeError(f"ingest answered {resp.status_code} to the attribute update")
    await _log(ctx.session, j, "updated", ", ".join(sorted(step.traits)), step=step.id)


async def _webhook(ctx: Context, j: dict[str, Any], step: jd.WebhookStep) -> None:
    """Hand the call to delivery's webhook channel: signed (Tenure-Signature), retried on failure, refused
    for private addresses, and visible in the deliveries log — once per journey step (idempotency key). A URL
    delivery would refuse (a private address, saved before that was checked) is not handed over: the journey's
    log says ``failed`` and why, and the journey goes on."""
    try:  # (delivery's rule, checked here too: its refusal came later, while this log said "queued")
        await netguard.check_public(step.url, allow_private=ctx.settings.webhook_allow_private)
    except netguard.BlockedURL as exc:
        await _log(ctx.session, j, "failed", f"webhook not called: delivery refuses {step.url}: {exc}", step=step.id)
        return
    body = {"campaign_id": str(j["campaign_id"]), "journey_id": str(j["id"]), "step": step.id,
            "profile": ctx.profile, "trigger": j.get("trigger_data")}
    resp = await ctx.internal.request(
        "POST", "delivery", "/v1/messages", retry=True, headers={WORKSPACE_HEADER: str(j["workspace_id"])},
        json={"idempotency_key": f"journey:{j['id']}:{step.id}", "channel": "webhook", "to": step.url,
              "data": body, "message_type": "transactional",
              "metadata": {"campaign_id": str(j["campaign_id"]), "journey_id": str(j["id"]), "step": step.id}})
    if resp.status_code in (200, 202):
        detail = f"queued to {step.url} (delivery message {resp.json()['id']})"
    elif 400 <= resp.status_code < 500:
        detail = f"refused by delivery ({resp.status_code}): {resp.text[:200]}"
    else:
        raise UpstreamUnavailable(f"delivery answered {resp.status_code} to the webhook")  # the journey retries
    await _log(ctx.session, j, "webhook", detail, step=step.id)
