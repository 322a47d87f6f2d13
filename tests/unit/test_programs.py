"""Pure parts of the referral and loyalty programs: codes, normalisation, tiers, periods, months, rules."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from services.campaign.programs import attribution, codes, earning, leaderboards, ledger, tiers
from services.campaign.programs.config import EarnRule, LoyaltyConfig, ReferralConfig, Tier


def test_codes_are_random_unambiguous_and_read_back_from_links() -> None:
    drawn = {codes.new_code() for _ in range(200)}
    assert len(drawn) == 200 and all(len(c) == 10 and set(c) <= set(codes.ALPHABET) for c in drawn)
    assert not set("01ILO") & set(codes.ALPHABET)
    links = codes.links(ReferralConfig(landing_url="https://a.example/join?lang=fr"), "ABCDE23456")
    assert links["sms"] == "https://a.example/join?lang=fr&ref=ABCDE23456&channel=sms"
    assert codes.from_query(links["social"]) == ("ABCDE23456", "social")
    assert codes.from_query("?ref=abcde-23456&channel=fax") == ("ABCDE23456", None)
    assert codes.from_query("?utm_source=x") == (None, None) and codes.normalise("ab") is None


def test_emails_and_phones_are_normalised_before_they_are_compared() -> None:
    assert attribution.normal_email(" Jane.Doe+promo@GoogleMail.com") == "janedoe@gmail.com"
    assert attribution.normal_email("jane.doe+x@acme.example") == "jane.doe@acme.example"
    assert attribution.normal_phone("+1 (555) 010-2030") == attribution.normal_phone("555.010.2030")
    assert attribution.normal_phone("12") is None and attribution.normal_email("nope") is None
    a = attribution.fingerprints({"traits": {"email": "A@x.io"}, "context": {"device": {"id": "d1"}}})
    assert {k for k, _ in a} == {"email", "device"} and all(len(d) == 64 for _, d in a)
    assert attribution.touch_of({"context": {"page": {"search": "?ref=ABCDE23456&channel=email"}}}) == (
        "ABCDE23456", "email")
    assert attribution.touch_of({"properties": {"referral_code": "abcde23456"}}) == ("ABCDE23456", None)


TIERS = LoyaltyConfig(tiers=[Tier(name="Gold", threshold=500), Tier(name="Silver", threshold=0),
                             Tier(name="Platinum", threshold=1000)], tier_retain_days=30)
T = datetime(2026, 3, 1, tzinfo=UTC)


def test_tiers_go_up_at_once_and_down_only_after_the_retention_period() -> None:
    assert [t.name for t in TIERS.tiers] == ["Silver", "Gold", "Platinum"]
    assert tiers.decide(None, None, 10, TIERS, T).name == "Silver"
    assert tiers.decide("Silver", T, 1200, TIERS, T).name == "Platinum"
    assert tiers.decide("Platinum", T, 600, TIERS, T + timedelta(days=29)) == "stay"
    assert tiers.decide("Platinum", T, 600, TIERS, T + timedelta(days=30)).name == "Gold"
    assert tiers.decide("Gold", T, 700, TIERS, T + timedelta(days=90)) == "stay"
    assert tiers.progress(700, "Gold", TIERS) == {"benefits": [], "next_tier": "Platinum", "needed_for_next": 300}


def test_periods_and_months() -> None:
    at = datetime(2026, 11, 25, 15, tzinfo=UTC)  # a Wednesday
    assert leaderboards.bounds("week", at) == (datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
    assert leaderboards.bounds("quarter", at) == (datetime(2026, 10, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert leaderboards.bounds("year", at)[1] == datetime(2027, 1, 1, tzinfo=UTC)
    assert leaderboards.bounds("all", at) == (None, None)
    assert ledger.add_months(datetime(2026, 1, 31, tzinfo=UTC), 1) == datetime(2026, 2, 28, tzinfo=UTC)
    assert ledger.add_months(datetime(2026, 11, 30, tzinfo=UTC), 14) == datetime(2028, 1, 30, tzinfo=UTC)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
       st.sampled_from(["week", "month", "quarter", "year"]))
def test_a_moment_lies_in_its_period(at, period) -> None:
    start, end = leaderboards.bounds(period, at)
    assert start <= at < end


def test_earning_rules_give_fixed_plus_per_unit_points_rounded_down() -> None:
    rule = EarnRule(event="Order Completed", per_unit=1.5, points=10)
    assert earning.points_for(rule, {"revenue": 99.99}) == (10 + 149, Decimal("99.99"))
    assert earning.points_for(rule, {"revenue": "bad"}) == (10, None)
    assert earning.points_for(rule, {"revenue": True}) == (10, None)
    assert earning.points_for(rule, {"revenue": -5}) == (10, None)


async def test_an_event_for_a_person_without_ids_is_skipped_with_a_warning_not_a_crash() -> None:
    """The warning once passed ``event=`` to structlog, whose own first argument is the event: a TypeError that
    stopped the whole maintenance run at an account without a userId or anonymousId."""
    import uuid
    from datetime import UTC, datetime

    from services.campaign.programs import outbox

    assert await outbox.emit(None, uuid.uuid4(), {"user_id": None, "anonymous_id": None},  # type: ignore[arg-type]
                             "Loyalty Tier Changed", {}, datetime.now(UTC), "k") is False
