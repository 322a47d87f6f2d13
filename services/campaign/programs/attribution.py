"""Referral attribution: who brought whom.

- A *touch* is the first referral code a visitor's events carry (``properties.referral_code``, or
  ``ref=CODE`` in a landing page's query string: ``context.page.search``, ``properties.search`` or
  ``context.page.url``). First touch wins: later codes do not replace it.
- A *signup* event (``signup_events``) turns the touch into a referral when the code was seen at most
  ``attribution_window_days`` before it, unless it is fraud: the referrer referring themselves, or the
  new account sharing an email, phone or device with the referrer (a duplicate account). Rejected
  referrals are kept with their reason.
- Emails, phones and device ids seen in events are kept as unsalted SHA-256 digests per profile
  (``referral_fingerprints``), normalised (case, ``+tags`` and Gmail dots, phone punctuation), which is
  how a second account of the same person is recognised without storing the values themselves.
"""

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.programs import codes, outbox
from services.campaign.programs.config import ReferralConfig
from shared.jsonutil import obj

log = structlog.get_logger()

CONVERTED = "Referral Converted"
_GMAIL = {"gmail.com", "googlemail.com"}


def normal_email(value: Any) -> str | None:
    if not isinstance(value, str) or "@" not in value:
        return None
    local, _, domain = value.strip().lower().rpartition("@")
    local = local.split("+", 1)[0]
    if domain in _GMAIL:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}" if local and domain else None


def normal_phone(value: Any) -> str | None:
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    digits = "".join(c for c in str(value) if c.isdigit())
    return digits[-10:] if len(digits) >= 7 else None  # national number: +1 555… and 555… are one phone


def digest(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def fingerprints(item: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, digest) pairs an event tells about its person (a group call's traits are the account's)."""
    ctx = obj(item.get("context"))
    own = obj(item.get("traits")) if item.get("type") != "group" else {}
    traits = {**obj(ctx.get("traits")), **own}
    props = obj(item.get("properties"))
    device = obj(ctx.get("device"))
    found: set[tuple[str, str]] = set()
    for value in (traits.get("email"), props.get("email")):
        if (e := normal_email(value)) is not None:
            found.add(("email", digest("email", e)))
    for value in (traits.get("phone"), props.get("phone")):
        if (p := normal_phone(value)) is not None:
            found.add(("phone", digest("phone", p)))
    for value in (device.get("id"), device.get("advertisingId")):
        if isinstance(value, str) and value.strip():
            found.add(("device", digest("device", value.strip())))
    return found


def profile_fingerprints(traits: dict[str, Any]) -> set[tuple[str, str]]:
    return fingerprints({"traits": traits})


def touch_of(item: dict[str, Any]) -> tuple[str | None, str | None]:
    """(code, channel) an event carries, if any."""
    props = obj(item.get("properties"))
    page = obj(obj(item.get("context")).get("page"))
    code = codes.normalise(props.get("referral_code"))
    if code:
        channel = props.get("referral_channel")
        return code, channel if channel in codes.CHANNELS else None
    for query in (page.get("search"), props.get("search"), page.get("url"), props.get("url")):
        code, channel = codes.from_query(query)
        if code:
            return code, channel
    return None, None


async def record(session: AsyncSession, items: list[dict[str, Any]], at_of: Any) -> None:
    """Fingerprints and first touches of a page's events (batched)."""
    prints: set[tuple[str, str, str, str]] = set()
    candidates: list[tuple[tuple[str, str], tuple[str | None, str, str | None, datetime]]] = []
    for item in items:
        ws, pid = item["workspace_id"], item["profile_id"]
        prints.update((ws, d, pid, kind) for kind, d in fingerprints(item))
        code, channel = touch_of(item)
        if code:
            candidates.append(((ws, pid), (item.get("anonymous_id"), code, channel, at_of(item))))
    touches: dict[tuple[str, str], tuple[str | None, str, str | None, datetime]] = {}
    if candidates:  # only real codes count as a touch: `?ref=producthunt` must not take the first-touch slot
        real = set((await session.execute(text(
            "select workspace_id::text, code from campaign.referral_codes c join unnest(CAST(:ws AS uuid[]), "
            "CAST(:c AS text[])) as t(w, k) on c.workspace_id = t.w and c.code = t.k"),
            {"ws": [k[0] for k, _ in candidates], "c": [t[1] for _, t in candidates]})).tuples())
        for key, touch in candidates:
            if (key[0], touch[1]) in real:
                touches.setdefault(key, touch)
    if prints:
        rows = sorted(prints)
        await session.execute(text(
            "insert into campaign.referral_fingerprints (workspace_id, digest, profile_id, kind) "
            "select * from unnest(CAST(:ws AS uuid[]), CAST(:d AS text[]), CAST(:p AS uuid[]), CAST(:k AS text[])) "
            "on conflict do nothing"),
            {"ws": [r[0] for r in rows], "d": [r[1] for r in rows], "p": [r[2] for r in rows],
             "k": [r[3] for r in rows]})
    for (ws, pid), (anon, code, channel, at) in touches.items():
        await session.execute(text(
            "insert into campaign.referral_touches (workspace_id, profile_id, anonymous_id, code, channel, touched_at) "
            "values (:ws, :p, :a, :c, :ch, :at) on conflict do nothing"),
            {"ws": ws, "p": pid, "a": anon, "c": code, "ch": channel, "at": at})


@dataclass
class Signup:
    item: dict[str, Any]
    at: datetime
    touch: dict[str, Any]
    referrer: dict[str, Any]  # the code's row: profile_id, user_id, anonymous_id


async def pending_signups(session: AsyncSession, config_of: dict[uuid.UUID, ReferralConfig],
                          items: list[dict[str, Any]], at_of: Any) -> list[Signup]:
    """Signup events of not-yet-referred profiles that have a touch with a known code."""
    out: list[Signup] = []
    for item in items:
        ws = uuid.UUID(item["workspace_id"])
        cfg = config_of.get(ws)
        if cfg is None or item.get("type") != "track" or item.get("event") not in cfg.signup_events:
            continue
        pid = uuid.UUID(item["profile_id"])
        if (await session.execute(text("select 1 from campaign.referrals where workspace_id = :ws "
                                       "and referred_profile_id = :p"), {"ws": ws, "p": pid})).first():
            continue  # referred once: first touch, first signup
        touch = (await session.execute(text(
            "select code, channel, touched_at from campaign.referral_touches where workspace_id = :ws "
            "and (profile_id = :p or (CAST(:a AS text) is not null and anonymous_id = :a)) and touched_at <= :at "
            "order by touched_at limit 1"),
            {"ws": ws, "p": pid, "a": item.get("anonymous_id"), "at": at_of(item)})).mappings().first()
        if touch is None:
            continue
        referrer = await codes.find(session, ws, touch["code"])
        if referrer is None:
            log.info("programs.unknown_referral_code", workspace_id=str(ws), code=touch["code"])
            continue
        out.append(Signup(item, at_of(item), dict(touch), referrer))
    return out


async def _prints_of(session: AsyncSession, ws: uuid.UUID, pid: str) -> set[tuple[str, str]]:
    rows = (await session.execute(text("select kind, digest from campaign.referral_fingerprints "
                                       "where workspace_id = :ws and profile_id = :p"), {"ws": ws, "p": pid})).all()
    return {(r.kind, r.digest) for r in rows}


async def fraud_reason(session: AsyncSession, s: Signup, cfg: ReferralConfig, profiles: dict[str, Any]) -> str | None:
    """Why this signup must not count as a referral, or None."""
    ws, referred, referrer = uuid.UUID(s.item["workspace_id"]), s.item["profile_id"], s.referrer["profile_id"]
    live_referred = (profiles.get(referred) or {}).get("id", referred)
    live_referrer = (profiles.get(referrer) or {}).get("id", referrer)
    same_user = s.item.get("user_id") and s.item.get("user_id") == (profiles.get(referrer) or {}).get("user_id")
    if referred == referrer or live_referred == live_referrer or same_user:
        return "self_referral"
    if s.at - s.touch["touched_at"] > timedelta(days=cfg.attribution_window_days):
        return "attribution_window_expired"
    mine = await _prints_of(session, ws, referred) | profile_fingerprints((profiles.get(referred) or {}).get("traits")
                                                                         or {})
    theirs = await _prints_of(session, ws, referrer) | profile_fingerprints(
        (profiles.get(referrer) or {}).get("traits") or {})
    shared = mine & theirs
    for kind in ("email", "phone", "device"):
        if any(k == kind for k, _ in shared):
            return f"duplicate_{kind}"
    return None


async def convert(session: AsyncSession, s: Signup, reason: str | None, profiles: dict[str, Any]) -> bool:
    """Record the referral (or its rejection); returns whether it converted."""
    ws, referred = uuid.UUID(s.item["workspace_id"]), s.item["profile_id"]
    rid = uuid.uuid4()
    row = (await session.execute(text(
        "insert into campaign.referrals (id, workspace_id, referrer_profile_id, referred_profile_id, code, channel, "
        "status, reason, touched_at, converted_at) values (:id, :ws, :rr, :rd, :c, :ch, :st, :r, :t, :at) "
        "on conflict (workspace_id, referred_profile_id) do nothing returning id"),
        {"id": rid, "ws": ws, "rr": s.referrer["profile_id"], "rd": referred, "c": s.touch["code"],
         "ch": s.touch["channel"], "st": "rejected" if reason else "converted", "r": reason,
         "t": s.touch["touched_at"], "at": s.at})).first()
    if row is None or reason:
        if reason:
            log.info("programs.referral_rejected", workspace_id=str(ws), reason=reason)
        return False
    referrer = profiles.get(s.referrer["profile_id"]) or s.referrer
    # each side's event names the other only by the referral's id: the counterpart's userId in it would stay in this
    # person's history (ingest, segment) after the counterpart's erasure, which finds events by their own ids
    props = {"referral_id": str(rid), "code": s.touch["code"], "channel": s.touch["channel"]}
    await outbox.emit(session, ws, referrer, CONVERTED, {**props, "role": "referrer"}, s.at,
                      f"converted:{rid}:referrer")
    await outbox.emit(session, ws, {"user_id": s.item.get("user_id"), "anonymous_id": s.item.get("anonymous_id")},
                      CONVERTED, {**props, "role": "referred"}, s.at, f"converted:{rid}:referred")
    return True
