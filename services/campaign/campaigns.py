"""Templates, campaigns and the sends they produce (no HTTP here)."""

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.campaign import experiments, ingest_client, journeys, segment_client, templates, timing
from services.campaign import journey_def as jd
from services.campaign.programs import variables as program_vars
from shared import netguard, profile_merges
from shared.core import workspace_settings
from shared.db import Stamp, fetch_newest_first, fetch_one, fetch_page, insert_one_or_conflict, row_dict
from shared.errors import Conflict, NotFound, ValidationFailed, body_error
from shared.http import InternalClient
from shared.jsonutil import dumps
from shared.lifecycle_ids import stage_segment_id
from shared.validation import error_location, error_message
from shared.workspace_config import unknown_topic

_TEMPLATE_COLS = ("id, name, channel, subject, preheader, html, text, deep_link, image, locales, created_at, "
                  "updated_at")
_CAMPAIGN_COLS = ("id, name, status, version, trigger, template_id, message_type, definition, created_at, "
                  "updated_at")
_SEND_COLS = ("id, campaign_id, campaign_version, profile_id, occurrence, status, reason, journey_id, step, "
              "delivery_message_id, created_at")


def checked_template_fields(data: dict[str, Any], snippets: dict[str, str]) -> dict[str, Any]:
    """The default fields of a template, each checked (``snippets``: the workspace's, which it may render). Also
    ``tenure apply``'s check of a file's templates before it writes anything (services/resources.py)."""
    fields = {k: data.get(k) for k in templates.FIELDS}
    if not fields["html"] and not fields["text"]:
        raise ValidationFailed("A template needs an html or a text body")
    _check_locale_keys(data.get("locales") or {})
    loc: list[str] = []
    try:
        templates.validate(fields, snippets, templates.VARIABLES)
        for code, variant in (data.get("locales") or {}).items():
            loc = ["locales", code]
            templates.validate({k: (variant or {}).get(k) for k in templates.FIELDS}, snippets, templates.VARIABLES)
    except templates.TemplateError as exc:
        field = ".".join([*loc, exc.field])
        where = {"line": exc.line, "column": exc.column} if exc.line is not None else {}
        raise ValidationFailed(f"Template {field} is not valid: {exc.message}", field=field, **where,
                               errors=[body_error([*loc, exc.field], exc.message, **where)]) from None
    return fields


_LOCALE_KEY = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")


def _check_locale_keys(locales: dict[str, Any]) -> None:
    """Each variant key is a locale (``fr``, ``fr-CA``, ``pt_BR``), and no two keys name the same variant: ``fr_CA``
    and ``fr-CA`` are one (as profile locales are read), so one of the two would never be sent, whichever the
    stored order put last; a key that is no locale (``""``, ``"French!"``) would never be chosen at all."""
    seen: dict[str, str] = {}
    for code in locales:
        if not _LOCALE_KEY.fullmatch(code):
            raise ValidationFailed(f"Template locales: {code!r} is not a locale", errors=[body_error(
                ["locales", code], f"{code!r} is not a locale: a language code, optionally with a region (fr, fr-CA)")])
        variant = templates.locale_chain(code)[0]
        if variant in seen:
            raise ValidationFailed(f"Template locales: {seen[variant]!r} and {code!r} are the same variant", errors=[
                body_error(["locales", code], f"{seen[variant]!r} and {code!r} are the same variant ({variant}): "
                                              "give it once")])
        seen[variant] = code


async def create_template(session: AsyncSession, ws: uuid.UUID, data: dict[str, Any]) -> dict[str, Any]:
    fields = checked_template_fields(data, await snippets_of(session, ws))
    locales = data.get("locales") or {}
    row = await insert_one_or_conflict(
        session,
        f"insert into campaign.templates (id, workspace_id, name, channel, subject, preheader, html, text, deep_link, "
        f"image, locales) values (:id, :ws, :name, :channel, :subject, :preheader, :html, :text, :deep_link, :image, "
        f"CAST(:locales AS jsonb)) "
        f"returning {_TEMPLATE_COLS}",
        {"id": uuid.uuid4(), "ws": ws, "name": data["name"], "channel": data.get("channel", "email"), **fields,
         "locales": dumps(locales)},
        f"A template named {data['name']!r} already exists",
    )
    return row_dict(row)


async def update_template(session: AsyncSession, ws: uuid.UUID, template_id: uuid.UUID, data: dict[str, Any]
                          ) -> dict[str, Any]:
    """Replace a template's content (sends not yet rendered use the new content)."""
    fields = checked_template_fields(data, await snippets_of(session, ws))
    row = await insert_one_or_conflict(
        session,
        f"update campaign.templates set name = :name, channel = :channel, subject = :subject, preheader = :preheader, "
        f"html = :html, text = :text, deep_link = :deep_link, image = :image, locales = CAST(:locales AS jsonb), "
        f"updated_at = now() "
        f"where workspace_id = :ws and id = :id "
        f"returning {_TEMPLATE_COLS}",
        {"id": template_id, "ws": ws, "name": data["name"], "channel": data.get("channel", "email"), **fields,
         "locales": dumps(data.get("locales") or {})},
        f"A template named {data['name']!r} already exists",
        missing=f"No template {template_id}",
    )
    return row_dict(row)


async def list_templates(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                         ) -> tuple[list[dict[str, Any]], str | None]:
    return await fetch_page(
        session,
        f"select {_TEMPLATE_COLS} from campaign.templates where workspace_id = :ws "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "after": after}, limit,
    )


async def get_template(session: AsyncSession, ws: uuid.UUID, template_id: uuid.UUID) -> dict[str, Any]:
    return await fetch_one(
        session,
        f"select {_TEMPLATE_COLS} from campaign.templates where workspace_id = :ws and id = :id",
        {"ws": ws, "id": template_id},
        missing=f"No template {template_id}",
    )


def journey_from(data: dict[str, Any]) -> jd.Journey:
    """The journey a create/update body describes: ``steps`` (a journey), or a bare ``template_id`` (one
    send step, every time the trigger happens unless ``entry.rule`` says otherwise)."""
    definition = {k: data[k] for k in ("trigger", "steps", "entry", "goal", "exit_on", "exit_on_leaving",
                                       "exit_on_entering", "message_type", "topic")
                  if data.get(k) is not None}
    if "steps" in definition and data.get("template_id"):
        raise ValidationFailed("Give steps or a template_id, not both (template_id is the shorthand for one send "
                               "step)", errors=[body_error("template_id", "not with steps")])
    shorthand = "steps" not in definition
    if shorthand:
        if not data.get("template_id"):
            raise ValidationFailed("A campaign needs steps or a template_id", errors=[
                body_error("steps", "give steps, or a template_id (the shorthand for one send step)", "missing")])
        definition["steps"] = [{"id": "send", "type": "send", "template_id": str(data["template_id"])}]
        entry = definition.get("entry") or {}
        definition["entry"] = {**entry, "rule": entry.get("rule") or "every_time"}
    try:
        journey = journeys.parse_new(definition)
    except ValidationError as exc:
        # (the shorthand's one step is the body's template_id: its errors name that)
        errors = [body_error(["template_id"] if shorthand and e["loc"][:1] == ("steps",)
                             else error_location(e, definition), error_message(e), e["type"])
                  for e in exc.errors(include_url=False)]
        raise ValidationFailed("The campaign is not valid", errors=errors) from None
    ids = [s.id for s in journey.steps]
    if loops := jd.instant_loops(journey):
        raise ValidationFailed("The campaign is not valid", errors=[
            body_error(at, f"steps {' → '.join(repr(s) for s in cycle)} loop without waiting: a user would run "
                           "them forever (put a delay or a wait in the loop, or end it)")
            for at, cycle in loops])
    if far := jd.out_of_range(journey):
        raise ValidationFailed("The campaign is not valid", errors=[body_error(at, msg) for at, msg in far])
    if lost := jd.unreachable(journey):
        raise ValidationFailed("The campaign is not valid", errors=[
            body_error(f"steps.{ids.index(sid)}", f"step {sid!r} is unreachable: no step leads to it (steps do not "
                                                 "fall through; set `next` on the step before it)")
            for sid in lost])
    if early := jd.engaged_before_sent(journey):
        raise ValidationFailed("The campaign is not valid", errors=[body_error(at, msg) for at, msg in early])
    if blind := jd.unmatchable(journey):
        raise ValidationFailed("The campaign is not valid", errors=[
            body_error(f"steps.{ids.index(sid)}.match", f"step {sid!r} matches on a property of the trigger, but "
                                                       f"a {journey.trigger.type} trigger has none: it could only "
                                                       "time out (drop `match`, or trigger on an event or the API)")
            for sid in blind])
    return journey


async def _check_segments(internal: InternalClient | None, ws: uuid.UUID, journey: jd.Journey) -> None:
    """The segments a journey names exist (asked of segment); a segment trigger may also name a lifecycle
    stage by its segment id (GET /v1/lifecycle), and so may ``exit_on_leaving``/``exit_on_entering``. 422 naming
    each place."""
    named = jd.segments_named(journey)
    stages = {stage_segment_id(ws, st) for st in jd.STAGES}
    exits = ("exit_on_leaving.", "exit_on_entering.")
    may_be_stage = ("trigger.segment_id", *exits) if isinstance(journey.trigger, jd.SegmentTrigger) else exits
    wanted = [(at, sid) for at, sid in named if not (at.startswith(may_be_stage) and sid in stages)]
    if not wanted:
        return
    if internal is None:
        raise TypeError("a journey that names segments is checked with segment (internal client)")
    missing = await segment_client.missing_segments(internal, ws, [sid for _, sid in wanted])
    if missing:
        raise ValidationFailed("The campaign is not valid", errors=[
            body_error(at, f"no segment {sid} in this workspace", "not_found") for at, sid in wanted if sid in missing])


async def _check_templates(session: AsyncSession, ws: uuid.UUID, journey: jd.Journey, shorthand: bool = False
                           ) -> None:
    """The templates the send steps name exist: else a 404 naming each place (``template_id`` for the shorthand)."""
    wanted = journey.template_ids()
    found = set((await session.execute(
        text("select id from campaign.templates where workspace_id = :ws and id = any(CAST(:ids AS uuid[]))"),
        {"ws": ws, "ids": list(wanted)})).scalars())
    if wanted - found:
        raise NotFound(f"No template {sorted(str(t) for t in wanted - found)[0]}", errors=[
            body_error("template_id" if shorthand else f"steps.{i}.template_id",
                       f"no template {s.template_id} in this workspace", "not_found")
            for i, s in enumerate(journey.steps) if isinstance(s, jd.SendStep) and s.template_id not in found])


async def _check_webhooks(internal: InternalClient | None, journey: jd.Journey) -> None:
    """Delivery's rule for a webhook's URL (``shared.netguard``: no private, loopback or link-local address unless
    ``webhook_allow_private``), on save: such a step was saved, and then every call was refused at run time. A host
    that does not resolve now is left for the run (a name to come, or a passing DNS fault). 422 naming each step."""
    if internal is None:
        return
    errors = []
    for i, step in enumerate(journey.steps):
        if isinstance(step, jd.WebhookStep):
            try:
                await netguard.check_public(step.url, allow_private=internal.settings.webhook_allow_private)
            except netguard.Unresolved:
                continue
            except netguard.BlockedURL as exc:
                errors.append(body_error(f"steps.{i}.url", f"delivery refuses this webhook: {exc}"))
    if errors:
        raise ValidationFailed("The campaign is not valid", errors=errors)


async def _check_topic(session: AsyncSession, ws: uuid.UUID, journey: jd.Journey) -> None:
    """The topic is one of the workspace's (``topics``, as delivery's preference page lists them): delivery refuses
    a message on another, so every send would fail — and a typo (``offerz``) would reach those who opted out of
    offers. 422 naming ``topic``."""
    if journey.topic is not None and (problem := unknown_topic(await workspace_settings(session, ws), journey.topic)):
        raise ValidationFailed(f"The campaign is not valid: {problem}", errors=[body_error("topic", problem)])


AT_LEEWAY = timedelta(minutes=1)  # a one-off schedule's ``at`` this far in the past is clock skew, not a mistake


def _check_schedule(journey: jd.Journey, now: datetime, current: jd.Journey | None = None) -> None:
    """A one-off schedule's ``at`` is not in the past when it is set (it would fire at once, to the whole
    audience); an edit that keeps the stored ``at`` is not re-judged (the slot fired, or was skipped)."""
    at = journey.trigger.at if isinstance(journey.trigger, jd.ScheduleTrigger) else None
    if at is None or (current is not None and isinstance(current.trigger, jd.ScheduleTrigger)
                      and current.trigger.at == at):
        return
    if at < now - AT_LEEWAY:
        raise ValidationFailed("The campaign is not valid", errors=[
            body_error("trigger.at", f"{at.isoformat()} is in the past: a one-off schedule needs a time to come")])


def _first_template(journey: jd.Journey) -> uuid.UUID | None:
    return next((s.template_id for s in journey.steps if isinstance(s, jd.SendStep)), None)


async def create_campaign(session: AsyncSession, ws: uuid.UUID, data: dict[str, Any], *,
                          internal: InternalClient | None = None, now: datetime | None = None) -> dict[str, Any]:
    """A campaign at version 1 (``internal``: to ask segment about the segments it names, if any)."""
    journey = journey_from(data)
    _check_schedule(journey, now or datetime.now(UTC))
    await _check_segments(internal, ws, journey)
    await _check_webhooks(internal, journey)
    await _check_templates(session, ws, journey, shorthand=not data.get("steps"))
    await _check_topic(session, ws, journey)
    definition = journey.model_dump(mode="json", exclude_none=True)
    cid = uuid.uuid4()
    row = await insert_one_or_conflict(
        session,
        f"insert into campaign.campaigns (id, workspace_id, name, status, trigger, template_id, message_type, "
        f"definition) values (:id, :ws, :name, :status, CAST(:trigger AS jsonb), :tid, :mt, CAST(:d AS jsonb)) "
        f"returning {_CAMPAIGN_COLS}",
        {"id": cid, "ws": ws, "name": data["name"], "status": data.get("status", "active"),
         "trigger": dumps(definition["trigger"]), "tid": _first_template(journey), "mt": journey.message_type,
         "d": dumps(definition)},
        f"A campaign named {data['name']!r} already exists",
    )
    await session.execute(
        text("insert into campaign.campaign_versions (campaign_id, version, workspace_id, definition) "
             "values (:c, 1, :ws, CAST(:d AS jsonb))"), {"c": cid, "ws": ws, "d": dumps(definition)})
    return row_dict(row)


async def update_campaign(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, data: dict[str, Any], *,
                          internal: InternalClient | None = None, now: datetime | None = None) -> dict[str, Any]:
    """A new version; users already inside finish the version they entered. An omitted ``name``,
    ``message_type`` or ``topic`` (absent from ``data``) keeps the campaign's: a topic dropped by an edit
    would send the campaign to everyone who opted out of it. The journey (trigger, steps, entry, goal,
    exit_on, exit_on_leaving) is replaced."""
    current = await fetch_one(
        session,
        "select status, message_type, definition from campaign.campaigns where workspace_id = :ws and id = :id",
        {"ws": ws, "id": campaign_id},  # (no lock: segment is asked next; the update below is the write)
        missing=f"No campaign {campaign_id}",
    )
    if current["status"] == "archived":  # it exists (GET shows it): a 404 read as "deleted", pause/resume say 409
        raise Conflict(f"Campaign {campaign_id} is archived: an archived campaign is not edited")
    journey = journey_from({**data, "message_type": data.get("message_type") or current["message_type"],
                            "topic": data["topic"] if "topic" in data else (current["definition"] or {}).get("topic")})
    _check_schedule(journey, now or datetime.now(UTC), journeys.parse(current["definition"]))
    await _check_segments(internal, ws, journey)
    await _check_webhooks(internal, journey)
    await _check_templates(session, ws, journey, shorthand=not data.get("steps"))
    await _check_topic(session, ws, journey)
    definition = journey.model_dump(mode="json", exclude_none=True)
    row = await insert_one_or_conflict(
        session,
        f"update campaign.campaigns set name = coalesce(:name, name), trigger = CAST(:trigger AS jsonb), "
        f"template_id = :tid, message_type = :mt, definition = CAST(:d AS jsonb), version = version + 1, "
        f"updated_at = now() where workspace_id = :ws and id = :id and status <> 'archived' "
        f"returning {_CAMPAIGN_COLS}",
        {"id": campaign_id, "ws": ws, "name": data.get("name"), "trigger": dumps(definition["trigger"]),
         "tid": _first_template(journey), "mt": journey.message_type, "d": dumps(definition)},
        f"A campaign named {data.get('name')!r} already exists",
        missing=f"No campaign {campaign_id} (or it is archived)",
    )
    await session.execute(
        text("insert into campaign.campaign_versions (campaign_id, version, workspace_id, definition) "
             "values (:c, :v, :ws, CAST(:d AS jsonb))"),
        {"c": campaign_id, "v": row.version, "ws": ws, "d": dumps(definition)})
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
    """Pause, resume or archive. Archiving is final: an archived campaign is neither paused nor resumed
    (409); archiving it again changes nothing.

    Sends the campaign decided but has not handed to delivery yet follow: a pause holds them (due at
    "infinity"; dispatch also refuses to claim a paused campaign's sends, for one whose retry was written
    meanwhile), a resume makes them due at once, and archiving skips them ("campaign archived")."""
    row = (await session.execute(text(
        f"update campaign.campaigns set status = :s, updated_at = now() "
        f"where workspace_id = :ws and id = :id and (status <> 'archived' or :s = 'archived') "
        f"returning {_CAMPAIGN_COLS}"), {"ws": ws, "id": campaign_id, "s": status})).first()
    if row is None:
        await get_campaign(session, ws, campaign_id)  # (404 when there is no such campaign)
        raise Conflict(f"Campaign {campaign_id} is archived")
    await session.execute(text(_HELD_SENDS[status]), {"c": campaign_id})
    return row_dict(row)


_PENDING = "update campaign.sends set updated_at = now(), {} where campaign_id = :c and status = 'pending'"
_HELD_SENDS = {
    "paused": _PENDING.format("next_attempt_at = 'infinity'"),
    "active": _PENDING.format("next_attempt_at = now()") + " and next_attempt_at = 'infinity'",
    "archived": _PENDING.format("status = 'skipped', reason = 'campaign archived'"),
}


async def list_campaigns(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                         ) -> tuple[list[dict[str, Any]], str | None]:
    return await fetch_page(
        session,
        f"select {_CAMPAIGN_COLS} from campaign.campaigns where workspace_id = :ws "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "after": after}, limit,
    )


async def list_sends(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, after: Stamp | None,
                     limit: int) -> tuple[list[dict[str, Any]], Stamp | None]:
    """The campaign's sends, newest first (``created_at``, then id: a run's sends share their time), after the
    stamp of the previous page's last (ix_sends_campaign reads just the page)."""
    await get_campaign(session, ws, campaign_id)
    return await fetch_newest_first(
        session,
        f"select {_SEND_COLS} from campaign.sends where workspace_id = :ws and campaign_id = :cid "
        f"and (CAST(:after_at AS timestamptz) is null or (created_at, id) < (:after_at, CAST(:after_id AS uuid))) "
        f"order by created_at desc, id desc limit :lim",
        {"ws": ws, "cid": campaign_id}, limit, after,
    )


_JOURNEY_COLS = ("id, campaign_id, version, profile_id, status, step, wake_at, variant, entered_at, ended_at, "
                 "converted_at")


async def archive(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    """No more entries; users inside leave (logged)."""
    row = await set_status(session, ws, campaign_id, "archived")
    await session.execute(text(
        "with ended as (update campaign.journeys set status = 'exited', ended_at = now(), wake_at = null, "
        "updated_at = now() where campaign_id = :c and status in ('active', 'waiting') "
        "returning id, workspace_id, campaign_id, profile_id, step) "
        "insert into campaign.journey_log (journey_id, workspace_id, campaign_id, profile_id, step, kind, detail) "
        "select id, workspace_id, campaign_id, profile_id, step, 'exited', 'campaign archived' from ended"),
        {"c": campaign_id})
    return row


async def list_journeys(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, *, status: str | None,
                        step: str | None, after: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    await get_campaign(session, ws, campaign_id)
    return await fetch_page(
        session,
        f"select {_JOURNEY_COLS} from campaign.journeys where workspace_id = :ws and campaign_id = :c "
        f"and (CAST(:status AS text) is null and (CAST(:step AS text) is null or status in ('active', 'waiting')) "
        f"or status = :status) and (CAST(:step AS text) is null or step = :step) "
        f"and (CAST(:after AS uuid) is null or id > CAST(:after AS uuid)) order by id limit :lim",
        {"ws": ws, "c": campaign_id, "status": status, "step": step, "after": after}, limit,
    )


async def stats(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    """The funnel: entered, where people are, sends and skips (by reason), conversions with holdout lift."""
    campaign = await get_campaign(session, ws, campaign_id)
    params = {"ws": ws, "c": campaign_id}
    j = (await session.execute(text(
        "select count(*) filter (where status <> 'holdout') as treated, count(*) filter (where status = 'holdout') "
        "as holdout, count(*) filter (where status <> 'holdout' and converted_at is not null) as treated_converted, "
        "count(*) filter (where status = 'holdout' and converted_at is not null) as holdout_converted, "
        "count(*) filter (where status = 'completed') as completed, count(*) filter (where status = 'exited') "
        "as exited from campaign.journeys where workspace_id = :ws and campaign_id = :c"), params)).mappings().one()
    at_step = {f"{r.step}": r.n for r in await session.execute(text(
        "select step, count(*) as n from campaign.journeys where workspace_id = :ws and campaign_id = :c "
        "and status in ('active', 'waiting') group by step order by step"), params)}
    sends = await session.execute(text(
        "select step, status, reason, count(*) as n from campaign.sends where workspace_id = :ws "
        "and campaign_id = :c group by step, status, reason order by step, status"), params)
    by_step: dict[str, dict[str, Any]] = {}

    def step_entry(step: str) -> dict[str, Any]:
        return by_step.setdefault(step, {"queued": 0, "dispatched": 0, "skipped": {}, "failed": 0, "delivered": 0,
                                         "bounced": 0, "opened": 0, "clicked": 0, "unsubscribed": 0})

    for r in sends:
        entry = step_entry(r.step or "send")
        if r.status == "skipped":
            entry["skipped"][r.reason or "unknown"] = entry["skipped"].get(r.reason or "unknown", 0) + r.n
        elif r.status in ("pending", "dispatched", "failed"):
            entry["queued" if r.status == "pending" else r.status] += r.n
    variants = {r.variant: {"entered": r.n, "sent": 0, "delivered": 0, "opened": 0, "clicked": 0, "converted": r.conv,
                            "revenue": float(r.rev or 0)}
                for r in await session.execute(text(
                    "select variant, count(*) as n, count(converted_at) as conv, sum(converted_value) as rev "
                    "from campaign.journeys where workspace_id = :ws and campaign_id = :c and variant is not null "
                    "group by variant"), params)}
    for r in await session.execute(text(  # the messages each variant sent (after its split), opened, clicked
            "select s.trigger_data->>'variant' as variant, count(*) filter (where s.status = 'dispatched') as sent, "
            "count(*) filter (where j.seen ? ('delivered:' || s.step)) as delivered, "
            "count(*) filter (where j.seen ? ('opened:' || s.step)) as opened, "
            "count(*) filter (where j.seen ? ('clicked:' || s.step)) as clicked "
            "from campaign.sends s join campaign.journeys j on j.id = s.journey_id "
            "where s.workspace_id = :ws and s.campaign_id = :c and s.trigger_data->>'variant' is not null "
            "group by 1"), params):
        if r.variant in variants:
            variants[r.variant].update(sent=r.sent, delivered=r.delivered, opened=r.opened, clicked=r.clicked)
    for r in await session.execute(text(
            "select substring(s from '^[a-z]+') as action, substring(s from ':(.*)$') as step, count(*) as n "
            "from campaign.journeys, jsonb_array_elements_text(seen) as s where workspace_id = :ws "
            "and campaign_id = :c and s ~ '^(delivered|bounced|opened|clicked|unsubscribed):' "
            "group by 1, 2"), params):
        step_entry(r.step)[r.action] = r.n

    listed: dict[str, int] = {}  # the variants in the order the current version lists them (ties go to the first)
    for step in journeys.parse(campaign["definition"]).steps:
        if isinstance(step, jd.SplitStep):
            for v in step.variants:
                listed.setdefault(v.name, len(listed))
    winners = {r.step: {"variant": r.variant, "reason": r.reason, "decided_at": r.decided_at}
               for r in await session.execute(text(
                   "select step, variant, reason, decided_at from campaign.split_winners where campaign_id = :c "
                   "order by step"), params)}

    def rate(part: int, whole: int) -> float | None:
        return round(part * 100.0 / whole, 2) if whole else None

    treated_rate, holdout_rate = rate(j["treated_converted"], j["treated"]), rate(j["holdout_converted"], j["holdout"])
    return {
        "entered": j["treated"] + j["holdout"], "holdout": j["holdout"], "completed": j["completed"],
        "exited": j["exited"], "in_progress_by_step": at_step, "sends_by_step": by_step,
        "converted": j["treated_converted"], "conversion_rate": treated_rate,
        "holdout_converted": j["holdout_converted"], "holdout_conversion_rate": holdout_rate,
        "lift_points": round(treated_rate - holdout_rate, 2) if treated_rate is not None and holdout_rate is not None
        else None,
        "variants": {k: {**v, "conversion_rate": rate(v["converted"], v["entered"])} for k, v in variants.items()},
        "experiment": {**experiments.compare([
            experiments.Arm(k, v["entered"], v["converted"], v["clicked"], v["opened"])
            for k, v in sorted(variants.items(), key=lambda kv: (listed.get(kv[0], len(listed)), kv[0]))]),
            "winners": winners},
        "holdout_p_value": experiments.two_proportion_p_value(
            experiments.Arm("treated", j["treated"], j["treated_converted"]),
            experiments.Arm("holdout", j["holdout"], j["holdout_converted"])),
    }


async def profile_journeys(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID, after: str | None,
                           limit: int) -> tuple[uuid.UUID, list[dict[str, Any]], str | None]:
    """A profile's journeys, newest first, with what happened at each step and why; a page of ``limit``
    after the journey ``after`` (the previous page's last). A merged-away profile's journeys moved to its
    survivor (journeys.follow_merges): asked with the old id, the survivor's, and the survivor's id first."""
    profile_id = await profile_merges.survivor(session, "campaign", ws, profile_id)
    items, nxt = await fetch_page(
        session,
        f"select {_JOURNEY_COLS} from campaign.journeys where workspace_id = :ws and profile_id = :p "
        f"and (CAST(:after AS uuid) is null or (entered_at, id) < (select entered_at, id from campaign.journeys "
        f"where workspace_id = :ws and profile_id = :p and id = CAST(:after AS uuid))) "
        f"order by entered_at desc, id desc limit :lim",
        {"ws": ws, "p": profile_id, "after": after}, limit,
    )
    logs: dict[str, list[dict[str, Any]]] = {j["id"]: [] for j in items}
    for r in await session.execute(text(
            "select journey_id, step, kind, detail, at from campaign.journey_log "
            "where journey_id = any(CAST(:ids AS uuid[])) order by journey_id, seq"), {"ids": list(logs)}):
        logs[str(r.journey_id)].append({"step": r.step, "kind": r.kind, "detail": r.detail, "at": r.at})
    return profile_id, [{**j, "log": logs[j["id"]]} for j in items], nxt


def not_api_triggered(kind: str) -> str:
    """Why a campaign whose trigger is not ``api`` takes no direct entry: a segment's or an event's campaign
    entered by hand sent its message to someone outside its audience and used up their ``once`` entry, and a
    broadcast's is its slot's to send."""
    return (f"The campaign's trigger is {kind!r}: only a campaign whose trigger is 'api' is entered through "
            "POST /v1/campaigns/{id}/trigger")


async def trigger(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID, profile_id: uuid.UUID,
                  data: dict[str, Any], idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """Enter a profile now (the API trigger), once per idempotency key: ``(answer, replayed)``. A key seen before
    with the same profile and data gives the first answer again (``replayed``); with another profile or other
    data it is a 409, never a second journey. The campaign row is locked (share) and its status checked in the
    transaction that enters: a pause or archive commits before or after."""
    row = (await session.execute(text(
        "select id, workspace_id, version, status, definition from campaign.campaigns where workspace_id = :ws "
        "and id = :id for share"), {"ws": ws, "id": campaign_id})).mappings().first()
    if row is None:
        raise NotFound(f"No campaign {campaign_id}")
    campaign = dict(row)
    if idempotency_key:
        key = {"ws": ws, "c": campaign_id, "k": idempotency_key}
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        claimed = (await session.execute(text(  # a concurrent retry waits here for the first to commit
            "insert into campaign.trigger_keys (workspace_id, campaign_id, key, profile_id, digest) "
            "values (:ws, :c, :k, :p, :d) on conflict do nothing returning key"),
            {**key, "p": profile_id, "d": digest})).first()
        if claimed is None:
            first = (await session.execute(text(
                "select profile_id, digest, answer from campaign.trigger_keys "
                "where workspace_id = :ws and campaign_id = :c and key = :k"), key)).one()
            if first.profile_id != profile_id or first.digest != digest:
                raise Conflict("This idempotency key was used for a different trigger of this campaign (another "
                               "user or other data)", idempotency_key=idempotency_key)
            return dict(first.answer), True
    if campaign["status"] != "active":
        raise Conflict(f"The campaign is {campaign['status']}")
    journey = journeys.parse(campaign["definition"])
    if (kind := journey.trigger.type) != "api":
        raise Conflict(not_api_triggered(kind), trigger=kind)
    occurrence = f"api:{idempotency_key}" if idempotency_key else f"api:{uuid.uuid4()}"
    now = datetime.now(UTC)
    jid = await journeys.enter(session, campaign, journey, profile_id, occurrence,
                               {"name": "api", "properties": data, "timestamp": now.isoformat()}, now)
    answer = {"entered": True, "journey_id": str(jid), "reason": None} if jid else {
        "entered": False, "journey_id": None, "reason": "the entry rule or an earlier identical trigger"}
    if idempotency_key:
        await session.execute(text("update campaign.trigger_keys set answer = CAST(:a AS jsonb) where "
                                   "workspace_id = :ws and campaign_id = :c and key = :k"), {**key, "a": dumps(answer)})
    return answer, False


TRIGGER_KEY_DAYS = 30  # how long a trigger's idempotency key replays its first answer (Stripe keeps keys 24 h)
_PRUNE_BATCH = 5_000


async def prune_trigger_keys(sessionmaker: async_sessionmaker[AsyncSession], *, now: datetime | None = None,
                             batch: int = _PRUNE_BATCH) -> int:
    """Forget trigger keys older than :data:`TRIGGER_KEY_DAYS`, in small transactions (writers never wait long).
    A retry after that gets a fresh answer, yet still enters no second journey: the journey's occurrence is
    ``api:<key>``, which its entry dedupes on."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=TRIGGER_KEY_DAYS)
    deleted = 0
    while True:
        async with sessionmaker() as session, session.begin():
            n = (await session.execute(text(
                "delete from campaign.trigger_keys where ctid = any(array(select ctid from campaign.trigger_keys "
                "where created_at < :cutoff limit :n))"), {"cutoff": cutoff, "n": batch})).rowcount  # type: ignore[attr-defined]
        deleted += n
        if n < batch:
            return deleted


async def snippets_of(session: AsyncSession, ws: uuid.UUID) -> dict[str, str]:
    rows = await session.execute(text("select name, content from campaign.snippets where workspace_id = :ws"),
                                 {"ws": ws})
    return {name: content for name, content in rows}


async def put_snippet(session: AsyncSession, ws: uuid.UUID, name: str, content: str) -> dict[str, Any]:
    try:
        templates.validate({"text": content}, {**await snippets_of(session, ws), name: content})
    except templates.TemplateError as exc:
        where = {"line": exc.line, "column": exc.column} if exc.line is not None else {}
        raise ValidationFailed(f"Snippet does not parse: {exc.message}",
                               errors=[body_error("content", exc.message, **where)]) from None
    row = (await session.execute(text(
        "insert into campaign.snippets (workspace_id, name, content) values (:ws, :name, :content) "
        "on conflict (workspace_id, name) do update set content = excluded.content, updated_at = now() "
        "returning name, content, updated_at"), {"ws": ws, "name": name, "content": content})).one()
    return row_dict(row)


async def list_snippets(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                        ) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the workspace's snippets in name order, after the snippet named ``after``."""
    return await fetch_page(
        session,
        "select name, content, updated_at from campaign.snippets where workspace_id = :ws "
        "and (CAST(:after AS text) is null or name > :after) order by name limit :lim",
        {"ws": ws, "after": after}, limit, key="name",
    )


async def render_preview(session: AsyncSession, internal: InternalClient, ws: uuid.UUID, template_id: uuid.UUID,
                         user: str | None, locale: str | None, data: dict[str, Any]) -> dict[str, Any]:
    """A template rendered as a given user (by profile id, userId, anonymousId or email) would get it: their
    variant (or ``locale``'s), dates in their time zone and amounts as that locale writes them, as a send does."""
    tpl = await get_template(session, ws, template_id)
    profile: dict[str, Any] = {"traits": {}}
    if user:
        pid = str(await ingest_client.resolve_user(internal, ws, user))
        profile = (await ingest_client.lookup_profiles(internal, ws, [pid])).get(pid) or profile
    traits = profile.get("traits") or {}
    locale = locale or traits.get("locale")
    fields, used = templates.for_locale(tpl, locale)
    zone = timing.zone(traits, journeys.Policy.from_settings(await workspace_settings(session, ws)).timezone)
    snippets = await snippets_of(session, ws)
    try:
        extra = (await program_vars.for_profiles(session, ws, {profile["id"]: profile})).get(profile["id"], {}) \
            if profile.get("id") else {}
        if profile.get("id") and templates.reads(tpl, templates.ATTRIBUTES, snippets):  # (as a send gets them)
            pid = str(profile["id"])
            extra[templates.ATTRIBUTES] = (await segment_client.profile_attributes(internal, ws, [pid])).get(pid, {})
        out = templates.render(fields, {**templates.variables_for(profile, {"name": "preview", "properties": data}),
                                        **extra}, snippets, zone=zone, locale=locale)
    except templates.TemplateError as exc:
        raise ValidationFailed(f"Template {exc.field} does not render: {exc.message}", field=exc.field) from None
    return {"subject": out.subject, "html": out.html, "text": out.text, "deep_link": out.deep_link,
            "image": out.image, "locale": used,
            "profile_id": profile.get("id"), "channel": tpl["channel"]}


def test_message(template_id: uuid.UUID, rendered: dict[str, Any], to: str) -> dict[str, Any]:
    """Delivery's request for a test send of a rendering (``render_preview``), on the template's channel and
    marked ``[test]``; delivery checks that ``to`` fits the channel."""
    channel = rendered["channel"]
    push = {k: rendered[k] for k in ("deep_link", "image") if rendered.get(k)}
    return {"idempotency_key": f"test:{uuid.uuid4()}", "channel": channel, "to": to,
            "subject": f"[test] {rendered['subject']}" if channel != "sms" else "", "html": rendered["html"],
            "text": f"[test] {rendered['text']}" if channel == "sms" else rendered["text"],
            "message_type": "transactional", **({"data": push} if channel == "push" and push else {}),
            "metadata": {"template_id": str(template_id), "test": True}}


async def migrate(session: AsyncSession, ws: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Move users inside older versions to the current one, at the same step, when the current version can
    continue them there (the others finish their version): a journey about to run a step, when that step still
    exists; a journey waiting for an event, when the step is still a wait for an event — it then waits as the
    current version says (its event, match and targets), until the deadline it already had — or goes on at once
    when that event already happened since entry. The others are reported per version and step, with the reason
    they stay (``not_movable``). An archived campaign is a 409, as its edit, pause and resume are (archiving is
    final, and its users left)."""
    campaign = await get_campaign(session, ws, campaign_id)
    if campaign["status"] == "archived":
        raise Conflict(f"Campaign {campaign_id} is archived: its users left, and an archived campaign is not edited")
    journey = journeys.parse(campaign["definition"])
    p = {"ws": ws, "c": campaign_id, "v": campaign["version"], "vt": f"to version {campaign['version']}"}
    moved = (await session.execute(text(
        "with moved as (update campaign.journeys set version = :v, updated_at = now() "
        "where workspace_id = :ws and campaign_id = :c and version < :v and status = 'active' "
        "and step = any(CAST(:steps AS text[])) returning id, workspace_id, campaign_id, profile_id, step) "
        "insert into campaign.journey_log (journey_id, workspace_id, campaign_id, profile_id, step, kind, detail) "
        "select id, workspace_id, campaign_id, profile_id, step, 'migrated', :vt from moved returning journey_id"),
        {**p, "steps": [s.id for s in journey.steps]})).all()
    waits = {s.id: s for s in journey.steps if isinstance(s, jd.WaitForEventStep)}
    rows = (await session.execute(text(
        "select id, step, trigger_data, seen from campaign.journeys where workspace_id = :ws and campaign_id = :c "
        "and version < :v and status = 'waiting' and step = any(CAST(:steps AS text[])) order by id for update"),
        {**p, "steps": list(waits)})).mappings().all()
    rewaits, arrived = [], []
    for r in rows:
        wait = journeys.waiting_for(waits[r["step"]], r["trigger_data"])
        if wait["match_property"] and wait["match_value"] is None:
            continue  # (a key the trigger lacks: it stays where it can time out)
        # the new version's event came while they waited for the old one's: they go on now, as a user reaching
        # the wait after it would (``journeys.already_happened``)
        (arrived if journeys.already_happened(wait, r["seen"]) else rewaits).append(
            {"id": str(r["id"]), "wait": wait, "next": wait["on_event"]})
    if arrived:
        moved += (await session.execute(text(
            "with moved as (update campaign.journeys j set version = :v, status = 'active', step = r.next, "
            "wake_at = now(), wait = null, updated_at = now() "
            "from jsonb_to_recordset(CAST(:rows AS jsonb)) as r(id uuid, wait jsonb, next text) where j.id = r.id "
            "returning j.id, j.workspace_id, j.campaign_id, j.profile_id, r.wait->>'step' as step, r.wait->>'event' "
            "as event) "
            ", logged as (insert into campaign.journey_log "
            "(journey_id, workspace_id, campaign_id, profile_id, step, kind, detail) "
            "select id, workspace_id, campaign_id, profile_id, step, k, d from moved, "
            "lateral (values (1, 'migrated', :vt), (2, 'event', event || ' already happened')) as l(n, k, d) "
            "order by id, n returning journey_id, kind) "
            "select journey_id from logged where kind = 'migrated'"),
            {**p, "rows": dumps(arrived)})).all()
    if rewaits:
        moved += (await session.execute(text(
            "with moved as (update campaign.journeys j set version = :v, wait = r.wait, updated_at = now() "
            "from jsonb_to_recordset(CAST(:rows AS jsonb)) as r(id uuid, wait jsonb) where j.id = r.id "
            "returning j.id, j.workspace_id, j.campaign_id, j.profile_id, j.step) "
            "insert into campaign.journey_log (journey_id, workspace_id, campaign_id, profile_id, step, kind, detail) "
            "select id, workspace_id, campaign_id, profile_id, step, 'migrated', :vt from moved returning journey_id"),
            {**p, "rows": dumps(rewaits)})).all()
    left = (await session.execute(text(
        "select version, step, status, count(*) as n from campaign.journeys where workspace_id = :ws "
        "and campaign_id = :c and version < :v and status in ('active', 'waiting') group by 1, 2, 3 order by 1, 2, 3"),
        p)).all()
    not_movable = [{"version": r.version, "step": r.step, "users": r.n,
                    "reason": _not_movable(journey, campaign["version"], r.step, r.status)} for r in left]
    return {"moved": len(moved), "kept": sum(r.n for r in left), "not_movable": not_movable,
            "version": campaign["version"]}


def _not_movable(journey: jd.Journey, version: int, step_id: str | None, status: str) -> str:
    """Why ``migrate`` left users at ``step_id`` (``status``) in their version."""
    if step_id is None:
        return "about to complete their version"
    step = next((s for s in journey.steps if s.id == step_id), None)
    if step is None:
        return f"version {version} has no step {step_id!r}"
    if status == "waiting" and not isinstance(step, jd.WaitForEventStep):
        return f"they wait for an event at {step_id!r}, which is no longer a wait for an event in version {version}"
    if status == "waiting" and step.match:
        return (f"version {version} matches {step.match.property!r} on the trigger's "
                f"{step.match.trigger_property!r}, which their trigger lacks")
    return "they entered or moved while this request ran"  # (a concurrent write: nothing else to say)
