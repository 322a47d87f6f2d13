"""When a marketing text may reach its recipient, in the recipient's time zones (services/delivery/sms_hours.py)."""

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.delivery import sms_hours
from shared.validation import parse_day_window

TCPA = parse_day_window("08:00-21:00")
NUMBERS = ["+12125550199", "+14155550100", "+33612345678", "+18005550100", "+61412345678", "+447700900123"]


def test_a_new_york_number_texted_at_night_is_held_until_eight_there() -> None:
    night = datetime(2026, 11, 29, 3, 35, tzinfo=UTC)  # 22:35 in New York, 19:35 in Los Angeles
    assert sms_hours.held_until("+12125550199", night, TCPA) == datetime(2026, 11, 29, 8, tzinfo=ZoneInfo(
        "America/New_York"))
    assert sms_hours.held_until("+14155550100", night, TCPA) is None
    assert sms_hours.held_until("+33612345678", night, TCPA) == datetime(2026, 11, 29, 8, tzinfo=ZoneInfo(
        "Europe/Paris"))


def test_unknown_zones_no_window_and_bad_numbers_hold_nothing() -> None:
    night = datetime(2026, 11, 29, 3, 35, tzinfo=UTC)
    assert sms_hours.held_until("+447700900123", night, TCPA) is None  # libphonenumber: Etc/Unknown
    assert sms_hours.held_until("+12125550199", night, None) is None
    assert sms_hours.held_until("not a number", night, TCPA) is None


@pytest.mark.parametrize(("raw", "window"), [("08:00-21:00", (time(8), time(21))), ("", None),
                                              ("00:00-24:00", (time(0), time.max))])
def test_windows_parse(raw: str, window: tuple[time, time] | None) -> None:
    assert parse_day_window(raw) == window


@pytest.mark.parametrize("raw", ["8-21", "21:00-08:00", "08:00-08:00", "25:00-26:00", "08:00-24:30"])
def test_bad_windows_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_day_window(raw)


@given(st.sampled_from(NUMBERS), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                                              timezones=st.just(UTC)),
       st.integers(0, 22), st.integers(1, 24))
def test_a_text_goes_at_once_or_at_the_first_instant_every_zone_allows(number, now, start, length) -> None:
    window = (time(start), time.max if start + length >= 24 else time(start + length))
    zones = sms_hours.zones_of(number)

    def allowed(at: datetime) -> bool:  # (the end is excluded: at 21:00 a text is late)
        return all(window[0] <= at.astimezone(z).time() < window[1] or window[1] == time.max
                   and at.astimezone(z).time() >= window[0] for z in zones)

    until = sms_hours.held_until(number, now, window)
    if until is None:
        assert not zones or allowed(now) or not any(allowed(now + timedelta(minutes=m)) for m in range(0, 2880, 15))
    else:
        assert now < until <= now + timedelta(days=2)
        first = zones[0]
        assert allowed(until) or until.astimezone(first).time() == window[0]
        # nothing earlier was allowed (checked on a 15-minute grid; every window starts on the hour)
        assert not any(allowed(now + timedelta(minutes=m)) and now + timedelta(minutes=m) < until
                       for m in range(0, int((until - now).total_seconds() // 60), 15))


@pytest.mark.parametrize(("raw", "ok"), [("08:00-24:00", True), ("08:00-24:30", False), ("21:00-08:00", False),
                                         ("", True)])
def test_the_setting_takes_only_windows_the_sender_can_use(raw: str, ok: bool) -> None:
    """A window the setting took and the worker could not read stopped every batch, email too."""
    from pydantic import ValidationError

    from shared.settings import Settings

    if ok:
        assert parse_day_window(Settings(sms_marketing_hours=raw).sms_marketing_hours) is not None or not raw
    else:
        with pytest.raises(ValidationError):
            Settings(sms_marketing_hours=raw)
