from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.segment.lifecycle import STAGES, LifecycleSettings, StageInput, next_stage, performed
from shared.workspace_config import checked

TODAY = date(2026, 11, 24)
CFG = LifecycleSettings()


def stage(idle, orders=0, performed=(), nps=None, previous=None, since=None):
    return next_stage(StageInput(idle, orders, set(performed), nps), previous, since, TODAY, CFG)


def test_the_customer_journey() -> None:
    assert stage(None) is None
    assert stage(0) == "onboarding"
    assert stage(0, orders=1) == "engaged"
    assert stage(0, orders=3) == "loyal"
    assert stage(0, orders=3, performed={"Referral Converted"}) == "advocacy"
    assert stage(0, nps=10) == "advocacy" and stage(0, nps=7) == "onboarding"
    assert stage(30, orders=3) == "at_risk"
    assert stage(90, orders=3) == "churned"
    assert stage(0, orders=3, previous="churned") == "reactivated"
    assert stage(0, orders=3, previous="reactivated", since=TODAY - timedelta(days=29)) == "reactivated"
    assert stage(0, orders=3, previous="reactivated", since=TODAY - timedelta(days=30)) == "loyal"


def test_thresholds_are_settings() -> None:
    cfg = LifecycleSettings.from_settings({"lifecycle": {"at_risk_days": 7, "churned_days": 14, "loyal_orders": 5,
                                                         "activation_events": ["Activated"], "bogus": 1}})
    assert next_stage(StageInput(7, 4, set()), None, None, TODAY, cfg) == "at_risk"
    assert next_stage(StageInput(0, 4, set()), None, None, TODAY, cfg) == "engaged"
    assert next_stage(StageInput(0, 0, {"Activated"}), None, None, TODAY, cfg) == "engaged"


@given(idle=st.one_of(st.none(), st.integers(0, 400)), orders=st.integers(0, 10),
       previous=st.one_of(st.none(), st.sampled_from(STAGES)))
def test_every_seen_profile_has_exactly_one_known_stage(idle, orders, previous) -> None:
    got = stage(idle, orders=orders, previous=previous, since=TODAY)
    assert (got is None) == (idle is None)
    assert got is None or got in STAGES


def test_the_configuration_check_uses_the_stages_defaults() -> None:
    """A workspace that sets one threshold is checked against the other's default, the one its stages use."""
    cfg = LifecycleSettings()
    assert checked({"lifecycle": {"churned_days": cfg.at_risk_days + 1}})
    assert checked({"lifecycle": {"at_risk_days": cfg.churned_days - 1}})
    for lifecycle in ({"churned_days": cfg.at_risk_days}, {"at_risk_days": cfg.churned_days}):
        with pytest.raises(ValidationError, match="must be more than at_risk_days"):
            checked({"lifecycle": lifecycle})


def test_null_or_mistyped_thresholds_read_as_their_defaults() -> None:
    """``{"at_risk_days": null}`` passed the settings check and then made every stage evaluation fail with a
    TypeError; so did ``"14"``, which the check read as 14 and the document kept as a string. The check now
    refuses both, naming the key; a document stored before that (or straight into the table) reads each bad
    key as its default."""
    keys = ("activation_events", "advocacy_events", "loyal_orders", "at_risk_days", "churned_days",
            "reactivated_days", "promoter_nps")
    for bad in (None, "14", True, 14.5, -1, [], {}):
        lifecycle = dict.fromkeys(keys, bad)
        for k in ("activation_events", "advocacy_events"):
            lifecycle[k] = None if bad in ([], {}) else bad  # (an empty list of events is a setting)
        assert LifecycleSettings.from_settings({"lifecycle": lifecycle}) == CFG, bad
        got = next_stage(StageInput(40, 1, set(), 9.5), None, None, TODAY,
                         LifecycleSettings.from_settings({"lifecycle": lifecycle}))
        assert got == "at_risk"
        with pytest.raises(ValidationError) as refused:
            checked({"lifecycle": lifecycle})
        assert {e["loc"] for e in refused.value.errors()} == {("lifecycle", k) for k in keys}, bad
    assert LifecycleSettings.from_settings({"lifecycle": None}) == CFG
    assert LifecycleSettings.from_settings({"lifecycle": ["at_risk_days"]}) == CFG
    mixed = LifecycleSettings.from_settings({"lifecycle": {"at_risk_days": 14.0, "churned_days": None,
                                                           "advocacy_events": [], "loyal_orders": "5"}})
    assert (mixed.at_risk_days, mixed.churned_days, mixed.advocacy_events, mixed.loyal_orders) == (14, 90, (), 3)
    with pytest.raises(ValidationError, match="cannot be null: leave the key out to use the default"):
        checked({"lifecycle": {"at_risk_days": None}})
    assert checked({"lifecycle": {"at_risk_days": 14}, "timezone": None})  # top-level null: not set


def test_the_referred_side_of_a_referral_is_no_advocacy() -> None:
    cfg = LifecycleSettings()
    day = date(2026, 11, 1)
    referred = [(day, {"role": "referred"})]
    counts = {"Referral Converted": {day: 1}, "Order Completed": {day: 1}}
    assert performed(cfg, counts, {"Referral Converted": referred}) == {"Order Completed"}
    counts["Referral Converted"] = {day: 2}  # they referred someone too
    assert performed(cfg, counts, {"Referral Converted": [*referred, (day, {"role": "referrer"})]}) == {
        "Order Completed", "Referral Converted"}
    assert performed(cfg, {"Review Submitted": {day: 1}}, {}) == {"Review Submitted"}


def test_seen_but_never_active_is_in_no_recency_stage() -> None:
    """Someone only identified (seen, no activity: no days since last activity) is onboarding, or what their other
    facts make them, whatever came before: a stage of churned given before activity was told apart is left."""
    for previous in (None, "churned", "reactivated", "at_risk"):
        assert next_stage(StageInput(None, seen=True), previous, TODAY, TODAY, CFG) == "onboarding"
        assert next_stage(StageInput(None, nps=10, seen=True), previous, TODAY, TODAY, CFG) == "advocacy"
    assert next_stage(StageInput(None), None, None, TODAY, CFG) is None
    assert next_stage(StageInput(0, seen=True), "churned", TODAY, TODAY, CFG) == "reactivated"
