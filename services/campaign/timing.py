"""Local time for sending: the user's zone, the next allowed local time, quiet hours (pure functions)."""

from datetime import UTC, date, datetime, time, timedelta
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


def local_moment(day: date, at: time, tz: ZoneInfo) -> datetime:
    """``at`` on ``day`` in ``tz``, as UTC. The one rule for local times the clocks change: a time they skip
    that day is moved forward by the gap, as calendars do (02:30 on the night New York jumps from 02:00 to 03:00
    is 03:30 summer time; in Lord Howe's 30-minute jump 02:15 is 02:45); a time they repeat is its first
    occurrence (``occurrences`` gives both)."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def occurrences(day: date, at: time, tz: ZoneInfo) -> list[datetime]:
    """Every instant that is ``at`` on ``day`` in ``tz`` (UTC, earliest first): one, two on the night the clocks
    go back (01:30 before and after), and for a time they skip the one ``local_moment`` moves it to."""
    first = local_moment(day, at, tz)
    second = datetime.combine(day, at, tzinfo=tz).replace(fold=1).astimezone(UTC)  # (earlier than first in a gap)
    return [first, second] if second > first else [first]


def next_local_time(now: datetime, tz: ZoneInfo, at: str, weekdays: list[int]) -> datetime:
    """The first moment at or after ``now`` that is ``at`` (HH:MM) local time on an allowed weekday. On the
    night the clocks go back both passes count (at 01:10 after the clocks went back, 01:30 is 20 minutes away,
    not tomorrow); a time the clocks skip is moved forward by the gap (``local_moment``)."""
    local = now.astimezone(tz)
    target = _hm(at)
    for days in range(8):
        day = local.date() + timedelta(days=days)
        if day.weekday() not in weekdays:
            continue
        for candidate in occurrences(day, target, tz):
            if candidate >= now:
                return candidate
    raise AssertionError("weekdays is never empty")


def quiet_until(now: datetime, tz: ZoneInfo, start: str, end: str) -> datetime | None:
    """If ``now`` falls in the local quiet window [start, end) — which may span midnight — the moment
    it ends (UTC); otherwise None. An end the clocks skip that night is moved forward by the gap, as
    ``wait_until`` moves its time (``local_moment``: quiet until 02:30 on a spring-forward night lasts until
    03:30 summer time, and a send at 03:10 then is held too); in an hour the clocks repeat, quiet lasts
    through both passes."""
    local = now.astimezone(tz)
    s, e = _hm(start), _hm(end)
    t = local.time().replace(second=0, microsecond=0)
    if s == e:
        return None
    inside = (s <= t < e) if s < e else (t >= s or t < e)
    if not inside:  # the clock reads past the end: still quiet if tonight's end was a skipped time moved forward
        began = local_moment(local.date() - timedelta(days=0 if s < e else 1), s, tz)
        ends = local_moment(local.date(), e, tz)
        moved = ends.astimezone(tz).time() != e
        return ends if moved and began <= now < ends else None
    day = local.date() if (s < e or t < e) else local.date() + timedelta(days=1)
    return next((at for at in occurrences(day, e, tz) if at > now), now + timedelta(minutes=1))


UNIX_MS_BEYOND = 2e10  # a Unix time beyond this (in 2603 as seconds) is in milliseconds, as the tracking API reads it


def parse_moment(value: Any, tz: ZoneInfo) -> datetime | None:
    """A trait holding a date or date-time (ISO 8601) or a Unix time (seconds or milliseconds; a number or its
    digits) as an aware UTC datetime; a date (midnight) or a time without an offset is read in ``tz``, the
    user's zone. Eight digits are a date (``20261231``, ISO 8601's basic form, as segment's conditions read it),
    not seconds into 1970. Anything else (text that is no date, a boolean) is None."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        return None
    try:
        if isinstance(value, (int, float)) or value.isascii() and value.isdigit() and len(value) != 8:
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
