"""Handing decided sends to delivery: render each with its profile, post with its idempotency key.

Sends are claimed with a lease (``next_attempt_at`` pushed forward under ``FOR UPDATE SKIP LOCKED``),
so replicas never work on the same send and a crashed worker's sends come back after the lease.
Delivery stores each message under the same idempotency key, so a send posted twice (a crash between
delivery's answer and our commit) is still one message.

Most sends never wait for the poll: the journey run that decides them writes them already claimed and
hands them over as soon as it commits (``dispatch_claimed``), with the profiles it looked up.
"""

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.campaign import campaigns, ingest_client, journeys, segment_client, templates, timing
from services.campaign.programs import variables as program_vars
from shared.auth import WORKSPACE_HEADER
from shared.db import Outage, dicts, retry_while_unreachable
from shared.errors import UpstreamUnavailable
from shared.http import InternalClient
from shared.jsonutil import dumps, loads
from shared.validation import as_language_tag, is_language_tag

log = structlog.get_logger()

LEASE_S = journeys.SEND_LEASE_S
MAX_ATTEMPTS = 10


@dataclass
class Outcome:
    status: str  # dispatched | skipped | failed | pending (retry later)
    reason: str | None = None
    delivery_message_id: str | None = None


async def claim(session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            f"""
            update campaign.sends s
               set attempts = s.attempts + 1, next_attempt_at = now() + interval '{LEASE_S} seconds',
                   updated_at = now()
             where s.id in (select p.id from campaign.sends p
                             where p.status = 'pending' and p.next_attempt_at <= now()
                               and not exists (select 1 from campaign.campaigns c
                                                where c.id = p.campaign_id and c.status = 'paused')
                             order by p.next_attempt_at for update of p skip locked limit :lim)
            returning s.id, s.workspace_id, s.campaign_id, s.template_id, s.profile_id, s.idempotency_key,
                      s.trigger_data, s.attempts, s.journey_id, s.step,
                      (select message_type from campaign.campaigns c where c.id = s.campaign_id) as message_type,
                      (select definition->>'topic' from campaign.campaigns c where c.id = s.campaign_id) as topic,
                      (select w.settings->'timezone' from core.workspaces w where w.id = s.workspace_id)
                          as workspace_timezone
            """
        ),
        {"lim": limit},
    )
    return dicts(rows)


async def _templates(session: AsyncSession, template_ids: set[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """The content of a batch's templates (a campaign's sends share a handful), in one query."""
    rows = await session.execute(text("select id, channel, subject, preheader, html, text, deep_link, image, locales "
                                      "from campaign.templates where id = any(CAST(:ids AS uuid[]))"),
                                 {"ids": list(template_ids)})
    return {r["id"]: {k: v for k, v in r.items() if k != "id"} for r in rows.mappings()}


def _retry_or_fail(send: dict[str, Any], reason: str) -> Outcome:
    if send["attempts"] >= MAX_ATTEMPTS:
        return Outcome("failed", f"gave up after {send['attempts']} attempts: {reason}")
    return Outcome("pending", reason)


async def profiles_for(internal: InternalClient, sends: list[dict[str, Any]]) -> dict[str, Any]:
    """Profiles of a batch of sends, one ingest request per workspace; a workspace whose lookup failed maps
    to an error string (its sends are retried later)."""
    by_ws: dict[str, set[str]] = {}
    for send in sends:
        by_ws.setdefault(str(send["workspace_id"]), set()).add(str(send["profile_id"]))
    found: dict[str, Any] = {}
    for ws, ids in by_ws.items():
        try:
            profiles: dict[str, Any] = await ingest_client.lookup_profiles(internal, ws, list(ids))
            error = None
        except UpstreamUnavailable as exc:
            profiles, error = {}, str(exc)
        except Exception as exc:  # noqa: BLE001 - transport trouble: these sends are retried later
            profiles, error = {}, f"ingest unreachable: {type(exc).__name__}"
        for pid in ids:
            found[f"{ws}:{pid}"] = profiles.get(pid) if error is None else error
    return found


async def attributes_for(internal: InternalClient, sends: list[dict[str, Any]], profiles: dict[str, Any],
                         tpls: dict[uuid.UUID, dict[str, Any]], snippets: dict[uuid.UUID, dict[str, str]]
                         ) -> dict[uuid.UUID, Any]:
    """The computed attributes (segment's) of the profiles of the sends whose template reads ``attributes`` (send
    id -> attributes), one request per workspace (and 1,000 profiles); none asked when no template reads them. The
    sends of a workspace whose lookup failed map to why (they are retried later, as when ingest is down: never
    rendered with the values missing)."""
    reading = {(send["workspace_id"], send["template_id"]) for send in sends}
    reading = {key for key in reading if (tpl := tpls.get(key[1])) is not None
               and templates.reads(tpl, templates.ATTRIBUTES, snippets.get(key[0]))}
    by_ws: dict[uuid.UUID, dict[str, list[uuid.UUID]]] = {}  # ws -> profile id as ingest names it now -> sends
    for send in sends:
        profile = profiles.get(f"{send['workspace_id']}:{send['profile_id']}")
        if (send["workspace_id"], send["template_id"]) in reading and isinstance(profile, dict):
            pid = str(profile.get("id") or send["profile_id"])
            by_ws.setdefault(send["workspace_id"], {}).setdefault(pid, []).append(send["id"])
    found: dict[uuid.UUID, Any] = {}
    for ws, asked in by_ws.items():
        try:
            values: dict[str, Any] = await segment_client.profile_attributes(internal, ws, asked)
        except UpstreamUnavailable as exc:
            values = {pid: str(exc) for pid in asked}
        found.update({send_id: values.get(pid, {}) for pid, send_ids in asked.items() for send_id in send_ids})
    return found


def prepare(send: dict[str, Any], tpl: dict[str, Any] | None, profile: dict[str, Any] | str | None,
            snippets: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
            attributes: dict[str, Any] | str | None = None) -> dict[str, Any] | Outcome:
    """The delivery request for a send, or the outcome that ends it here (``tpl``: its template, None if
    it no longer exists; ``profile``: the looked-up profile, None if it does not exist, or why the lookup
    failed; ``extra``: more template variables, e.g. the referral and loyalty programs'; ``attributes``: the
    profile's computed attributes for a template that reads them, or why they could not be had). Dates are shown in
    the user's time zone (``timing.zone``: the profile's, else the workspace's ``workspace_timezone``, as
    sending at local times picks it) and amounts as the profile's ``locale`` writes them."""
    if tpl is None:
        return Outcome("failed", "template no longer exists")
    if profile is None:
        return Outcome("skipped", "profile not found")
    if isinstance(profile, str):
        return _retry_or_fail(send, profile)
    channel = tpl.get("channel") or "email"
    if channel == "push":  # delivery sends to the devices registered under the user's id
        to, trait = profile.get("user_id") or profile.get("anonymous_id"), "userId or anonymousId"
    else:
        trait = "phone" if channel == "sms" else "email"
        to = (profile.get("traits") or {}).get(trait)
    if not to or not isinstance(to, str):
        return Outcome("skipped", f"profile has no {trait} trait")
    if isinstance(attributes, str):
        return _retry_or_fail(send, attributes)
    traits = profile.get("traits") or {}
    fields, _ = templates.for_locale(tpl, traits.get("locale"))
    extra = {**(extra or {}), **({templates.ATTRIBUTES: attributes} if attributes is not None else {})}
    try:
        rendered = templates.render(fields, {**templates.variables_for(profile, send["trigger_data"]), **extra},
                                    snippets, zone=timing.zone(traits, send.get("workspace_timezone")),
                                    locale=traits.get("locale"))
    except templates.TemplateError as exc:
        return Outcome("failed", f"template did not render: {exc}")
    return {
        "idempotency_key": f"campaign:{send['idempotency_key']}",
        "channel": channel,
        "to": to,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
        "message_type": send["message_type"] or "marketing",
        "topic": send.get("topic"),
        # the footer delivery adds and the pages its links open speak the body's language: the recipient's locale
        # when the body is their variant's, none (delivery's default) when it is the default's — a French
        # footer under an English body mixed languages (delivery takes a BCP 47 tag: a POSIX-style fr_FR, as
        # some SDKs report it, goes as fr-FR; a locale that is neither, none)
        **({"locale": tag} if isinstance(locale := traits.get("locale"), str)
           and templates.body_locale(tpl, locale) is not None
           and is_language_tag(tag := as_language_tag(locale)) else {}),
        **({"data": push_data} if channel == "push" and (push_data := {
            k: v for k, v in (("deep_link", rendered.deep_link), ("image", rendered.image)) if v}) else {}),
        "metadata": {"campaign_id": str(send["campaign_id"]), "send_id": str(send["id"]),
                     "profile_id": str(send["profile_id"]),
                     # who opens, clicks and unsubscribes: delivery reports it to ingest under this identity
                     **({"userId": profile["user_id"]} if profile.get("user_id") else
                        {"anonymousId": profile["anonymous_id"]} if profile.get("anonymous_id") else {}),
                     **{k: send["trigger_data"][k] for k in ("journey_id", "step", "variant")
                        if (send.get("trigger_data") or {}).get(k) is not None}},
    }


async def post_batch(internal: InternalClient, ws: uuid.UUID, batch: list[tuple[dict[str, Any], dict[str, Any]]]
                     ) -> list[Outcome]:
    """Hand (send, request) pairs of one workspace to delivery in one request; an outcome per send."""
    try:
        resp = await internal.request("POST", "delivery", "/v1/messages/batch", retry=True,
                                      headers={WORKSPACE_HEADER: str(ws)},
                                      json={"messages": [request for _, request in batch]})
    except Exception as exc:  # noqa: BLE001 - transport trouble: retry later, the keys make it safe
        return [_retry_or_fail(send, f"delivery unreachable: {type(exc).__name__}") for send, _ in batch]
    if resp.status_code != 200:
        if 400 <= resp.status_code < 500 and resp.status_code != 429:
            reason = f"delivery refused the messages ({resp.status_code}): {resp.text[:300]}"
            return [Outcome("failed", reason) for _ in batch]
        return [_retry_or_fail(send, f"delivery answered {resp.status_code}") for send, _ in batch]
    outcomes = []
    for r in loads(resp.content)["results"]:
        message = r.get("message") or {}
        if r["result"] == "suppressed":
            outcomes.append(Outcome("skipped", message.get("last_error") or "suppressed", message.get("id")))
        elif r["result"] == "invalid":
            outcomes.append(Outcome("failed", f"delivery refused the message: {r.get('error', '')}"[:500]))
        elif r["result"] == "conflict":
            # re-rendered content differs from an earlier, successful post of this send: it is already queued
            outcomes.append(Outcome("dispatched", "content changed on retry; kept the first"))
        else:
            outcomes.append(Outcome("dispatched", None, message.get("id")))
    return outcomes


async def program_variables(session: AsyncSession, sends: list[dict[str, Any]], profiles: dict[str, Any],
                            snippets: dict[uuid.UUID, dict[str, str]], tpls: dict[uuid.UUID, dict[str, Any]]
                            ) -> dict[str, dict[str, Any]]:
    """The referral and loyalty variables of the sends' profiles ("ws:profile" -> variables), for the
    templates (``tpls``, as ``_templates`` read them, and their workspace's snippets) that use them."""
    sources = {tid: " ".join(v for v in (t.get("subject"), t.get("preheader"), t.get("html"), t.get("text"),
                                         dumps(t["locales"]) if t.get("locales") else None) if v)
               for tid, t in tpls.items()}
    by_ws: dict[uuid.UUID, dict[str, dict[str, Any]]] = {}
    wanted: dict[uuid.UUID, dict[str, set[str]]] = {}
    for send in sends:
        profile = profiles.get(f"{send['workspace_id']}:{send['profile_id']}")
        need = program_vars.used_by(sources.get(send["template_id"]), *snippets.get(send["workspace_id"], {}).values())
        if isinstance(profile, dict) and need:
            by_ws.setdefault(send["workspace_id"], {})[str(send["profile_id"])] = profile
            wanted.setdefault(send["workspace_id"], {}).setdefault(str(send["profile_id"]), set()).update(need)
    out: dict[str, dict[str, Any]] = {}
    for ws, found in by_ws.items():
        for pid, values in (await program_vars.for_profiles(session, ws, found, wanted=wanted[ws])).items():
            out[f"{ws}:{pid}"] = values
    return out


async def record(session: AsyncSession, done: list[tuple[dict[str, Any], Outcome]]) -> None:
    """The outcomes of a batch of claimed sends, in one statement: a send to retry waits its backoff."""
    rows = [{"id": str(send["id"]), "status": o.status, "reason": o.reason, "mid": o.delivery_message_id,
             "backoff": min(3600, 5 * 2 ** max(0, send["attempts"] - 1))} for send, o in done]
    await session.execute(
        text(
            """
            update campaign.sends s
               set status = r.status, reason = r.reason, delivery_message_id = r.mid, updated_at = now(),
                   next_attempt_at = case when r.status = 'pending'
                                          then now() + make_interval(secs => r.backoff) else s.next_attempt_at end
              from jsonb_to_recordset(CAST(:rows AS jsonb))
                   as r(id uuid, status text, reason text, mid uuid, backoff int)
             where s.id = r.id
            """
        ),
        {"rows": dumps(rows)},
    )


async def dispatch_due(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient,
                       limit: int = 200) -> int:
    """Claim due sends and hand them to delivery; returns how many were claimed."""
    async with sessionmaker() as session, session.begin():
        sends = await claim(session, limit)
    if sends:
        profiles = await profiles_for(internal, sends)
        await _riding_out(len(sends), lambda: _hand_over(sessionmaker, internal, sends, profiles))
    return len(sends)


# How long a hand-over that finds PostgreSQL unreachable waits for it; then its sends come back after their lease
# (``LEASE_S``), as a crashed worker's would.
HAND_OVER_WAIT_S = LEASE_S / 2


async def _riding_out(n: int, hand_over: Callable[[], Awaitable[None]]) -> None:
    """``hand_over`` of ``n`` claimed sends, tried again every second while PostgreSQL is unreachable (a restart, a
    failover), for up to ``HAND_OVER_WAIT_S``: left alone, sends claimed moments before a blip of a few seconds
    would wait out their whole lease. Unlike delivery's recorder it gives up (raises), well inside the lease: a send
    given up on is not lost (it comes back after its lease), and one still being handed over when its lease ran out
    would be claimed and handed over a second time alongside. Trying again is safe: delivery stores each under its
    idempotency key, so a send posted before the blip is posted again as its replay."""
    await retry_while_unreachable(hand_over, give_up_after_s=HAND_OVER_WAIT_S, sends=n, outage=Outage(
        "campaign.hand_over_waiting", "campaign.hand_over_resumed", lasted="waited_s"))


async def dispatch_claimed(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient,
                           sends: list[dict[str, Any]], profiles: dict[str, Any]) -> None:
    """Hand over sends a journey run wrote already claimed (``journeys.advance_due(claim_sends=True)``), with the
    profiles it looked up. As the claim would: the campaign's current message type and topic, the workspace's time
    zone, and nothing of a campaign paused meanwhile (the pause held its sends: a resume makes them due for the
    poll) or archived (which skipped them)."""
    await _riding_out(len(sends), lambda: _dispatch_claimed(sessionmaker, internal, sends, profiles))


async def _dispatch_claimed(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient,
                            sends: list[dict[str, Any]], profiles: dict[str, Any]) -> None:
    async with sessionmaker() as session, session.begin():
        current = {r.id: r for r in (await session.execute(text(
            "select c.id, c.status, c.message_type, c.definition->>'topic' as topic, "
            "w.settings->'timezone' as workspace_timezone from campaign.campaigns c "
            "left join core.workspaces w on w.id = c.workspace_id "
            "where c.id = any(CAST(:ids AS uuid[]))"), {"ids": list({s["campaign_id"] for s in sends})})).all()}
    ready = [{**send, "message_type": c.message_type, "topic": c.topic, "workspace_timezone": c.workspace_timezone}
             for send in sends if (c := current.get(send["campaign_id"])) is not None and c.status == "active"]
    if ready:
        await _hand_over(sessionmaker, internal, ready, profiles)


async def _hand_over(sessionmaker: async_sessionmaker[AsyncSession], internal: InternalClient,
                     sends: list[dict[str, Any]], profiles: dict[str, Any]) -> None:
    """Render claimed sends, post them to delivery and record each one's outcome."""
    outcomes: dict[uuid.UUID, Outcome] = {}
    ready: dict[uuid.UUID, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    async with sessionmaker() as session:
        async with session.begin():
            snippets = {ws: await campaigns.snippets_of(session, ws) for ws in {s["workspace_id"] for s in sends}}
            tpls = await _templates(session, {send["template_id"] for send in sends})
        attributes = await attributes_for(internal, sends, profiles, tpls, snippets)  # (no transaction held open)
        async with session.begin():
            extras = await program_variables(session, sends, profiles, snippets, tpls)
            for send in sends:
                key = f"{send['workspace_id']}:{send['profile_id']}"
                prepared = prepare(send, tpls.get(send["template_id"]), profiles.get(key),
                                   snippets[send["workspace_id"]], extras.get(key), attributes.get(send["id"]))
                if isinstance(prepared, Outcome):
                    outcomes[send["id"]] = prepared
                else:
                    ready.setdefault(send["workspace_id"], []).append((send, prepared))
    for ws, batch in ready.items():
        for start in range(0, len(batch), 500):
            chunk = batch[start:start + 500]
            for (send, _), outcome in zip(chunk, await post_batch(internal, ws, chunk), strict=True):
                outcomes[send["id"]] = outcome
    async with sessionmaker() as session, session.begin():
        await record(session, [(send, outcomes[send["id"]]) for send in sends])
        for send in sends:
            outcome = outcomes[send["id"]]
            if send.get("journey_id") and outcome.status in ("skipped", "failed"):
                # "why didn't X get the email": the journey's path says what happened to its send, in the place
                # of the "sent … queued" line its run wrote when it decided the send (which read as if it went)
                await session.execute(text(
                    "with corrected as (update campaign.journey_log set kind = :kind, detail = :detail "
                    "where journey_id = :j and step is not distinct from :step and kind = 'sent' returning 1) "
                    "insert into campaign.journey_log (journey_id, workspace_id, campaign_id, profile_id, step, "
                    "kind, detail) select :j, :ws, :c, :p, :step, :kind, :detail "
                    "where not exists (select from corrected)"),
                    {"j": send["journey_id"], "ws": send["workspace_id"], "c": send["campaign_id"],
                     "p": send["profile_id"], "step": send.get("step"), "kind": outcome.status,
                     "detail": outcome.reason})
            log.info("campaign.send_" + outcome.status, send_id=str(send["id"]), reason=outcome.reason,
                     delivery_message_id=outcome.delivery_message_id)
