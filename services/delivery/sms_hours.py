"""The hours a marketing text may reach its recipient, in the recipient's own time (pure).

US law (TCPA, 47 CFR 64.1200(c)(1)) allows no telephone solicitation before 8:00 or after 21:00 at the called
party's location, and most countries' rules and carriers' codes ask the same. Campaigns may set stricter quiet
hours of their own (the workspace's ``quiet_hours``); this is the last gate, for every marketing SMS however it
was queued (a campaign, or the API directly). The recipient's time zones come from the number (libphonenumber's
geography: a New York number is America/New_York); a number that spans several zones (a toll-free or a
non-geographic mobile number) must be inside the window in all of them, or, where no instant is, in the first.
A number whose zone is unknown is not held.
"""

from datetime import datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_zones

from shared.validation import DayWindow

Window = DayWindow


@lru_cache(maxsize=4096)
def zones_of(number: str) -> tuple[tzinfo, ...]:
    try:
        names = phone_zones.time_zones_for_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return ()
    zones: list[tzinfo] = []
    for name in names:
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):  # "Etc/Unknown": nothing known of it
            continue
    return tuple(zones)


def _inside(at: datetime, zone: tzinfo, window: Window) -> bool:
    local = at.astimezone(zone).time()
    return window[0] <= local < window[1] or (window[1] == time.max and local >= window[0])


def _next_start(at: datetime, zone: tzinfo, window: Window) -> datetime:
    local = at.astimezone(zone)
    day = local.date() if local.time() < window[0] else local.date() + timedelta(days=1)
    return datetime.combine(day, window[0], tzinfo=zone)


def held_until(number: str, now: datetime, window: Window | None) -> datetime | None:
    """When a marketing text to ``number`` may go, if not now; None: now is fine (or nothing is known)."""
    zones = zones_of(number)
    if window is None or not zones:
        return None
    candidates = sorted({now, *(_next_start(now, z, window) for z in zones)})
    for at in candidates:
        if all(_inside(at, z, window) for z in zones):
            return None if at == now else at
    return None if _inside(now, zones[0], window) else _next_start(now, zones[0], window)
