"""Local time for sending: the user's zone, the next allowed local time, quiet hours (pure functions)."""

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone(traits: dict[str, Any], workspace_zone: str | None) -> ZoneInfo:
    """The profile's ``timezone`` trait, else the workspace's, else UTC (unknown names are ignored)."""
    for name in (traits.get("timezone"), workspace_zone):
        if isinstance(name, str) and name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _hm(value: str) -> time:
    h, m = value.split(":")
    return time(int(h), int(m))


def next_local_time(now: datetime, tz: ZoneInfo, at: str, weekdays: list[int]) -> datetime:
    """The first moment at or after ``now`` that is ``at`` (HH:MM) local time on an allowed weekday."""
    local = now.astimezone(tz)
    target = _hm(at)
    for days in range(8):
        day = (local + timedelta(days=days)).date()
        if day.weekday() not in weekdays:
            continue
        # a local time skipped by a DST jump resolves forward (fold=0 + normalisation through UTC)
        candidate = datetime.combine(day, target, tzinfo=tz).astimezone(UTC)
        if candidate >= now:
            return candidate
    raise AssertionError("weekdays is never empty")


def quiet_until(now: datetime, tz: ZoneInfo, start: str, end: str) -> datetime | None:
    """If ``now`` falls in the local quiet window [start, end) — which may span midnight — the moment
    it ends (UTC); otherwise None."""
    local = now.astimezone(tz)
    s, e = _hm(start), _hm(end)
    t = local.time().replace(second=0, microsecond=0)
    if s == e:
        return None
    inside = (s <= t < e) if s < e else (t >= s or t < e)
    if not inside:
        return None
    day = local.date() if (s < e or t < e) else local.date() + timedelta(days=1)
    end = datetime.combine(day, e, tzinfo=tz).astimezone(UTC)
    if end.astimezone(tz).time() != e:  # the end is a time the clocks skip: quiet ends when they jump past it
        before = datetime.combine(day, e, tzinfo=tz).replace(fold=1).astimezone(UTC)  # (the gap's start side)
        while end - before > timedelta(seconds=1):  # the first moment whose local time is past the end
            mid = before + (end - before) / 2
            past = mid.astimezone(tz).replace(tzinfo=None) >= datetime.combine(day, e)
            before, end = (before, mid) if past else (mid, end)
        end = end.replace(microsecond=0)
    if end <= now:  # the end falls in an hour the clocks repeat: take its second occurrence
        end = datetime.combine(day, e, tzinfo=tz).replace(fold=1).astimezone(UTC)
    return end if end > now else now + timedelta(minutes=1)


UNIX_MS_BEYOND = 2e10  # a Unix time beyond this (in 2603 as seconds) is in milliseconds, as the tracking API reads it


def parse_moment(value: Any, tz: ZoneInfo) -> datetime | None:
    """A trait holding a date or date-time (ISO 8601) or a Unix time (seconds or milliseconds; a number or its
    digits) as an aware UTC datetime; a date (midnight) or a time without an offset is read in ``tz``, the
    user's zone. Anything else (text that is no date, a boolean) is None."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        return None
    try:
        if isinstance(value, (int, float)) or value.isascii() and value.isdigit():
            seconds = float(value)
            return datetime.fromtimestamp(seconds / 1000 if abs(seconds) > UNIX_MS_BEYOND else seconds, UTC)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (dt.replace(tzinfo=tz) if dt.tzinfo is None else dt).astimezone(UTC)
    except (ValueError, OverflowError, OSError):  # (not a date; or 9999-12-31 west of UTC: past the calendar's end)
        return None


def shift(moment: datetime, seconds: int, tz: ZoneInfo) -> datetime:
    """``moment`` moved by ``seconds``: the whole days of them on the calendar of ``tz`` (a day before a renewal
    at midnight is midnight the day before, also when the clocks change in between: 23 or 25 hours), the rest as
    elapsed time. A local time the clocks skip resolves forward; one they repeat keeps the moment's side. Stops
    at the ends of the calendar."""
    days = int(seconds / 86400)  # (toward zero: -90000 s is a day and an hour before)
    rest = seconds - days * 86400
    try:
        local = moment.astimezone(tz)
        wall = local.replace(tzinfo=None) + timedelta(days=days)
        return wall.replace(tzinfo=tz, fold=local.fold).astimezone(UTC) + timedelta(seconds=rest)
    except OverflowError:  # (at the calendar's ends, where the local date cannot be written): elapsed time
        try:
            return moment + timedelta(seconds=seconds)
        except OverflowError:
            return (datetime.max if seconds > 0 else datetime.min).replace(tzinfo=UTC)
