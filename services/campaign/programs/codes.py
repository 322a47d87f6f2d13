"""Referral codes and share links.

A code is random (10 characters of an alphabet without look-alikes: about 50 bits, so codes cannot be
enumerated) and stored, so it is stable for its profile. Share links are the program's landing URL with
``ref=CODE`` and the channel it was shared on (email, sms, social), which attribution reads back.
"""

import secrets
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign.programs.config import ReferralConfig
from shared.db import row_dict

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LENGTH = 10
CHANNELS = ("email", "sms", "social")


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalise(raw: Any) -> str | None:
    """A code as typed or pasted (case, spaces and dashes do not matter), or None if it cannot be one."""
    if not isinstance(raw, str):
        return None
    code = raw.strip().upper().replace("-", "").replace(" ", "")
    return code if 4 <= len(code) <= 40 and code.isalnum() else None


def links(config: ReferralConfig, code: str) -> dict[str, str]:
    sep = "&" if "?" in config.landing_url else "?"
    return {ch: f"{config.landing_url}{sep}{urlencode({'ref': code, 'channel': ch})}" for ch in CHANNELS}


def from_query(query: Any) -> tuple[str | None, str | None]:
    """(code, channel) from a landing URL's query string (``?ref=CODE&channel=sms``) or a whole URL."""
    if not isinstance(query, str) or "ref" not in query:
        return None, None
    if "://" in query:
        try:
            query = urlsplit(query).query
        except ValueError:  # not a URL after all (`http://[::1/…`)
            return None, None
    params = parse_qs(query.lstrip("?"))
    code = normalise((params.get("ref") or params.get("referral_code") or [None])[0])
    channel = (params.get("channel") or [None])[0]
    return code, channel if channel in CHANNELS else None


async def get_or_create(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID, who: dict[str, Any]
                        ) -> dict[str, Any]:
    """The profile's code, created on first use (concurrent first uses get the same one)."""
    for _ in range(5):
        row = (await session.execute(text(
            "insert into campaign.referral_codes (id, workspace_id, profile_id, code, user_id, anonymous_id) "
            "values (:id, :ws, :p, :code, :u, :a) on conflict do nothing returning *"),
            {"id": uuid.uuid4(), "ws": ws, "p": profile_id, "code": new_code(), "u": who.get("user_id"),
             "a": who.get("anonymous_id")})).first()
        if row is not None:
            return {**row_dict(row), "created": True}
        existing = await of_profile(session, ws, profile_id)
        if existing is not None:
            return {**existing, "created": False}
        # the random code collided with another profile's: draw again
    raise RuntimeError("could not draw a free referral code")


async def of_profile(session: AsyncSession, ws: uuid.UUID, profile_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await session.execute(text("select * from campaign.referral_codes where workspace_id = :ws "
                                      "and profile_id = :p"), {"ws": ws, "p": profile_id})).first()
    return row_dict(row) if row else None


async def find(session: AsyncSession, ws: uuid.UUID, code: str) -> dict[str, Any] | None:
    """The code's row, its ``profile_id`` the profile it refers for now (a merged-away owner's survivor)."""
    row = (await session.execute(text("select * from campaign.referral_codes where workspace_id = :ws "
                                      "and code = :c"), {"ws": ws, "c": code})).first()
    if row is None:
        return None
    found = row_dict(row)
    if found.get("merged_into"):
        found["profile_id"] = found["merged_into"]
    return found
