from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from services.ingest.tracking import corrected_timestamp
from shared.feed import feed_time
from shared.validation import FIRST_INSTANT, LAST_INSTANT, IsoDatetime, IsoOrUnixDatetime

RECEIVED = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
offsets = st.integers(min_value=-10 * 86400, max_value=10 * 86400).map(lambda s: timedelta(seconds=s))


@given(skew=offsets, age=st.integers(min_value=0, max_value=5 * 365 * 86400).map(lambda s: timedelta(seconds=s)))
def test_client_clock_skew_is_removed(skew: timedelta, age: timedelta) -> None:
    # the device clock is off by `skew`; the event happened `age` before the (instant) send
    true_time = RECEIVED - age
    got = corrected_timestamp(RECEIVED, timestamp=None, original_timestamp=true_time + skew,
                              sent_at=RECEIVED + skew)
    assert got == true_time


def test_without_sent_at_client_time_is_kept() -> None:
    t = RECEIVED - timedelta(days=3)
    assert corrected_timestamp(RECEIVED, timestamp=t, original_timestamp=None, sent_at=None) == t


def test_without_any_client_time_event_happened_on_receipt() -> None:
    assert corrected_timestamp(RECEIVED, timestamp=None, original_timestamp=None, sent_at=None) == RECEIVED


def test_naive_times_are_utc() -> None:
    naive = datetime(2026, 1, 1, 8, 0)
    assert corrected_timestamp(RECEIVED, timestamp=naive, original_timestamp=None, sent_at=None) == naive.replace(
        tzinfo=UTC)


def test_absurd_client_clocks_do_not_overflow() -> None:
    far = datetime(9999, 12, 31, tzinfo=UTC)
    ancient = datetime(1, 1, 1, tzinfo=UTC)
    # (the overflow keeps the client's time, which is after receipt: the receipt then)
    assert corrected_timestamp(RECEIVED, timestamp=None, original_timestamp=far, sent_at=ancient) == RECEIVED
    assert corrected_timestamp(RECEIVED, timestamp=None, original_timestamp=ancient, sent_at=far) == ancient


@given(ahead=st.integers(min_value=1, max_value=10 * 365 * 86400).map(lambda s: timedelta(seconds=s)),
       sent=st.sampled_from([None, "skewed", "true"]))
def test_an_event_is_never_dated_after_its_receipt(ahead: timedelta, sent: str | None) -> None:
    """A client clock set ahead with no ``sentAt`` (or a ``timestamp`` after its own ``sentAt``) gives the
    receipt time, not a future one."""
    sent_at = {None: None, "skewed": RECEIVED - timedelta(hours=1), "true": RECEIVED}[sent]
    got = corrected_timestamp(RECEIVED, timestamp=RECEIVED + ahead, original_timestamp=None, sent_at=sent_at)
    assert got == RECEIVED


def test_offsets_past_the_calendar_fall_back_to_receipt() -> None:
    from datetime import timezone

    edge = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert corrected_timestamp(RECEIVED, timestamp=edge, original_timestamp=None, sent_at=None) == RECEIVED


def test_a_timestamp_set_beside_original_timestamp_is_the_event_time() -> None:
    # RudderStack SDKs stamp originalTimestamp at the call and pass a caller's backdated timestamp through
    backdated = RECEIVED - timedelta(days=7)
    got = corrected_timestamp(RECEIVED, timestamp=backdated, original_timestamp=RECEIVED - timedelta(seconds=2),
                              sent_at=RECEIVED - timedelta(seconds=1))
    assert got == backdated


_zones = st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_aware = st.one_of(  # mostly the edges, where an offset can push a time out of years 1 to 9999
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 3), timezones=_zones),
    st.datetimes(min_value=datetime(9999, 12, 29), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=_zones),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=_zones))


@given(value=_aware)
def test_a_date_time_is_accepted_exactly_when_it_exists_in_utc(value: datetime) -> None:
    """...and is not the calendar's first or last instant, which asyncpg sends as -infinity / infinity."""
    try:
        in_range = FIRST_INSTANT < value.astimezone(UTC) < LAST_INSTANT
    except OverflowError:
        in_range = False
    try:
        TypeAdapter(IsoDatetime).validate_python(value.isoformat())
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == in_range


_client = TypeAdapter(IsoOrUnixDatetime)
_common = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9998, 12, 31),
                       timezones=st.integers(min_value=-14 * 60, max_value=14 * 60).map(
                           lambda m: timezone(timedelta(minutes=m))))


def _offset(value: datetime, sep: str = "") -> str:
    minutes = int(value.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{sep}{abs(minutes) % 60:02d}"


@given(value=_common)
def test_iso_basic_rfc_2822_and_postgres_forms_are_the_same_instant(value: datetime) -> None:
    """Every way a client writes one instant reads back as that instant: ISO 8601 extended and basic (with
    fractions), RFC 2822 / 1123 (whole seconds), and PostgreSQL's text (a whole-hour offset written ``+HH``)."""
    whole = value.replace(microsecond=0)
    forms = {
        value.isoformat(): value,
        value.strftime("%Y%m%dT%H%M%S.%f") + _offset(value): value,
        whole.strftime("%Y%m%dT%H%M%S") + _offset(value, ":"): whole,
        format_datetime(whole): whole,
        whole.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"): whole,
    }
    if value.utcoffset().total_seconds() % 3600 == 0:  # type: ignore[union-attr]
        forms[whole.strftime("%Y-%m-%d %H:%M:%S") + _offset(value)[:3]] = whole
    for text, instant in forms.items():
        assert _client.validate_python(text) == instant, text


def test_a_correction_landing_on_the_calendars_first_instant_keeps_the_clients_time() -> None:
    """The first instant would be stored as -infinity (asyncpg): the client's own time is kept instead."""
    original = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
    sent = RECEIVED + timedelta(seconds=1)  # the correction takes exactly one second off
    assert corrected_timestamp(RECEIVED, timestamp=None, original_timestamp=original, sent_at=sent) == original


@given(value=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
def test_a_feed_time_without_an_offset_is_utc(value: datetime) -> None:
    assert feed_time(value.isoformat()) == value.replace(tzinfo=UTC)
    assert feed_time(value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")) == value.replace(tzinfo=UTC)
