"""`wait_until`'s next local time and quiet hours' end on the nights the clocks change, as properties checked
against a minute-by-minute walk of the user's clock (no zone arithmetic shared with the code under test)."""

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.campaign.timing import next_local_time, quiet_until

# New York (an hour, at 02:00), London (an hour, at 01:00), Lord Howe (30 minutes, at 02:00), Kolkata (none)
ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"]
# instants near which the clocks change in those zones (and a plain day), to draw `now` around
CHANGES = [datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC),
           datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
           datetime(2026, 4, 4, 15, tzinfo=UTC), datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
           datetime(2026, 7, 15, 12, tzinfo=UTC)]
NIGHT_TIMES = ["00:00", "00:30", "01:00", "01:10", "01:30", "01:59", "02:00", "02:15", "02:29", "02:30", "02:45",
               "03:00", "03:30", "23:59"]

nows = st.builds(lambda base, s: base + timedelta(seconds=s), st.sampled_from(CHANGES),
                 st.integers(-3 * 86400, 3 * 86400))
hhmm = st.one_of(st.sampled_from(NIGHT_TIMES), st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23),
                                                         st.integers(0, 59)))
days = st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True)


def _wall(at: datetime, tz: ZoneInfo) -> tuple[int, int, int]:
    local = at.astimezone(tz)
    return local.hour, local.minute, local.weekday()


def _exists(day, at: time, zone: ZoneInfo) -> bool:
    """Whether some minute of ``day`` reads ``at`` on the clock (found by walking the day)."""
    return any(_wall(m, zone)[:2] == (at.hour, at.minute) for m in _minutes(
        datetime.combine(day, time(0), zone), datetime.combine(day + timedelta(days=1), time(0), zone)))


def _gap(at: datetime, zone: ZoneInfo) -> timedelta:
    """How far the clocks jumped forward in the three hours before ``at``."""
    return at.astimezone(zone).utcoffset() - (at - timedelta(hours=3)).astimezone(zone).utcoffset()


def _minutes(start: datetime, stop: datetime):
    """Every whole UTC minute in [start, stop) (all these zones' offsets are whole minutes)."""
    at = start.astimezone(UTC).replace(second=0, microsecond=0)  # (UTC: aware local arithmetic is wall time)
    at += timedelta(minutes=1) if at < start else timedelta(0)
    while at < stop:
        yield at
        at += timedelta(minutes=1)


@settings(max_examples=300, deadline=None)
@given(tz=st.sampled_from(ZONES), now=nows, at=hhmm, weekdays=days)
@example(tz="America/New_York", now=datetime(2026, 11, 1, 6, 10, tzinfo=UTC), at="01:30", weekdays=[6])  # 01:10 EST
@example(tz="America/New_York", now=datetime(2026, 11, 1, 6, 10, tzinfo=UTC), at="01:30", weekdays=list(range(7)))
@example(tz="Australia/Lord_Howe", now=datetime(2026, 4, 4, 15, 10, tzinfo=UTC), at="01:45", weekdays=[6])
def test_wait_until_is_the_first_moment_the_users_clock_reads_the_time(tz, now, at, weekdays) -> None:
    zone = ZoneInfo(tz)
    target = (int(at[:2]), int(at[3:]))
    got = next_local_time(now, zone, at, weekdays)
    assert got >= now
    hour, minute, weekday = _wall(got, zone)
    if (hour, minute) != target:  # only a time the clocks skip that day: moved forward by the gap
        day = got.astimezone(zone).date()
        assert not _exists(day, time(*target), zone)
        assert timedelta(0) < _gap(got, zone) <= timedelta(hours=1)
        assert got.astimezone(zone).replace(tzinfo=None) == datetime.combine(day, time(*target)) + _gap(got, zone)
    assert weekday in weekdays
    # nothing earlier: no minute in [now, got) reads the time on an allowed weekday
    assert not [m for m in _minutes(now, got) if _wall(m, zone)[:2] == target and _wall(m, zone)[2] in weekdays]


@settings(max_examples=300, deadline=None)
@given(tz=st.sampled_from(ZONES), now=nows, start=hhmm, end=hhmm)
def test_quiet_hours_end_at_the_first_minute_the_clock_leaves_them_or_the_moved_skipped_end(tz, now, start,
                                                                                             end) -> None:
    zone = ZoneInfo(tz)
    s, e = time.fromisoformat(start), time.fromisoformat(end)

    def quiet(at: datetime) -> bool:
        t = at.astimezone(zone).time().replace(second=0, microsecond=0)
        return s != e and ((s <= t < e) if s < e else (t >= s or t < e))

    got = quiet_until(now, zone, start, end)
    if got is None:
        assert not quiet(now)
        return
    assert got > now
    day = got.astimezone(zone).date()
    if not _exists(day, e, zone):  # an end the clocks skip that day: moved forward by the gap
        assert got.astimezone(zone).replace(tzinfo=None) == datetime.combine(day, e) + _gap(got, zone)
        assert got - now <= timedelta(days=1, hours=1)
        return
    assert not quiet(got)  # the first minute the clock reads past them ...
    left = next((m for m in _minutes(now, got) if not quiet(m)), None)
    if left is not None:  # ... but for the clocks going back into the window: a dip, then quiet again (both
        # passes of a repeated hour are judged by the clock)
        assert left.astimezone(zone).utcoffset() < now.astimezone(zone).utcoffset()
        assert quiet(got - timedelta(minutes=1))


def test_a_skipped_time_is_moved_forward_by_the_gap_for_waits_and_quiet_hours_alike() -> None:
    """On the night New York jumps from 02:00 to 03:00, "02:30" is 03:30 summer time for `wait_until` and for
    quiet hours' end alike (quiet hours ended at 03:00 while the wait woke at 03:30); a send at 03:10, after the
    jump, is held until then too. On the night the clocks go back, at 01:10 after they did, "01:30" is twenty
    minutes away (it was the next day, or the next week with `weekdays: [6]`)."""
    ny = ZoneInfo("America/New_York")
    spring = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 03:30 EDT
    assert next_local_time(datetime(2026, 3, 8, 6, tzinfo=UTC), ny, "02:30", list(range(7))) == spring
    assert next_local_time(datetime(2026, 3, 8, 7, 10, tzinfo=UTC), ny, "02:30", list(range(7))) == spring
    for now in (datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 8, 7, 10, tzinfo=UTC)):  # 01:00 EST, 03:10
        assert quiet_until(now, ny, "00:00", "02:30") == spring
    assert quiet_until(spring, ny, "00:00", "02:30") is None
    autumn = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST, the second pass
    for weekdays in (list(range(7)), [6]):
        assert next_local_time(autumn, ny, "01:30", weekdays) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)


def test_eight_digits_are_a_date_as_segment_reads_them_not_seconds_into_1970() -> None:
    """A renewal trait "20261231" was read as Unix seconds (1970-08-23) by a journey's date wait, while segment's
    date conditions read it as 31 December 2026."""
    from services.campaign.timing import parse_moment
    from services.segment.conditions import _as_datetime

    tz = ZoneInfo("Europe/Paris")
    assert parse_moment("20261231", tz) == datetime(2026, 12, 30, 23, 0, tzinfo=UTC)  # midnight in Paris
    assert _as_datetime("20261231") == datetime(2026, 12, 31, tzinfo=UTC)  # (segment reads dates in UTC)
    assert parse_moment("1798675200", tz) == datetime(2026, 12, 31, tzinfo=UTC)  # ten digits: seconds
    assert parse_moment("20261399", tz) is None  # no such date
