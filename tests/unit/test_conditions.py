from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.segment.conditions import ProfileFacts, compare, evaluate, events_of, has_window, parse

TODAY = date(2026, 11, 24)

leaf = st.one_of(
    st.builds(lambda v: {"type": "trait", "trait": "plan", "op": "equals", "value": v},
              st.sampled_from(["free", "pro"])),
    st.builds(lambda n, d: {"type": "performed", "event": "Order Completed", "op": "at_least", "count": n,
                            "within_days": d},
              st.integers(0, 4), st.one_of(st.none(), st.integers(1, 40))),
)
trees = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.builds(lambda cs: {"type": "and", "children": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda cs: {"type": "or", "children": cs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda c: {"type": "not", "child": c}, children),
    ),
    max_leaves=8,
)
facts = st.builds(
    lambda plan, days: ProfileFacts(
        traits={"plan": plan} if plan else {},
        counts={"Order Completed": {TODAY - timedelta(days=d): 1 for d in days}},
    ),
    st.sampled_from([None, "free", "pro"]),
    st.sets(st.integers(0, 60), max_size=6),
)


@given(tree=trees, f=facts)
def test_double_negation(tree: dict, f: ProfileFacts) -> None:
    node = parse(tree)
    assert evaluate(parse({"type": "not", "child": {"type": "not", "child": tree}}), f, TODAY) == evaluate(
        node, f, TODAY)


@given(a=trees, b=trees, f=facts)
def test_de_morgan(a: dict, b: dict, f: ProfileFacts) -> None:
    left = parse({"type": "not", "child": {"type": "and", "children": [a, b]}})
    right = parse({"type": "or", "children": [{"type": "not", "child": a}, {"type": "not", "child": b}]})
    assert evaluate(left, f, TODAY) == evaluate(right, f, TODAY)


def test_window_includes_today_and_excludes_day_n() -> None:
    node = parse({"type": "performed", "event": "Login", "op": "at_least", "count": 1, "within_days": 7})
    assert evaluate(node, ProfileFacts(counts={"Login": {TODAY - timedelta(days=6): 1}}), TODAY)
    assert not evaluate(node, ProfileFacts(counts={"Login": {TODAY - timedelta(days=7): 1}}), TODAY)


def test_counts_and_operators() -> None:
    f = ProfileFacts(traits={"age": 30, "email": "a@b.c"}, counts={"Buy": {TODAY: 2}})
    assert evaluate(parse({"type": "performed", "event": "Buy", "op": "exactly", "count": 2}), f, TODAY)
    assert not evaluate(parse({"type": "performed", "event": "Buy", "op": "at_most", "count": 1}), f, TODAY)
    assert evaluate(parse({"type": "trait", "trait": "age", "op": "gte", "value": 30}), f, TODAY)
    assert not evaluate(parse({"type": "trait", "trait": "age", "op": "gt", "value": "x"}), f, TODAY)
    assert evaluate(parse({"type": "trait", "trait": "email", "op": "contains", "value": "@"}), f, TODAY)
    assert not evaluate(parse({"type": "trait", "trait": "missing", "op": "exists"}), f, TODAY)


def test_events_of_lists_dependencies() -> None:
    node = parse({"type": "or", "children": [{"type": "performed", "event": "A"},
                                             {"type": "not", "child": {"type": "performed", "event": "B"}}]})
    assert sorted(events_of(node)) == ["A", "B"]


def test_invalid_definition_names_the_node() -> None:
    with pytest.raises(ValidationError) as info:
        parse({"type": "and", "children": [{"type": "trait", "trait": "plan", "op": "resembles"}]})
    assert "children" in str(info.value) and "op" in str(info.value)


def test_random_bucket_is_stable_and_close_to_its_share() -> None:
    import uuid

    node = parse({"type": "random_bucket", "percent": 20, "seed": "holdout-1"})
    ids = [str(uuid.UUID(int=i)) for i in range(5000)]
    picked = [i for i in ids if evaluate(node, ProfileFacts(profile_id=i), TODAY)]
    assert 900 < len(picked) < 1100
    assert picked == [i for i in ids if evaluate(node, ProfileFacts(profile_id=i), TODAY)]
    other = parse({"type": "random_bucket", "percent": 20, "seed": "holdout-2"})
    overlap = {i for i in ids if evaluate(other, ProfileFacts(profile_id=i), TODAY)} & set(picked)
    assert 100 < len(overlap) < 300  # independent draws overlap by ~20 % of 20 %


# --- the richer condition kinds (pure: no database) ---------------------------------------------

DAY = date(2026, 11, 27)


def _at(days_ago: float) -> datetime:
    return datetime(2026, 11, 27, 12, tzinfo=UTC) - timedelta(days=days_ago)


@pytest.mark.parametrize(("definition", "error"), [
    ({"type": "trait", "trait": "plan", "op": "in", "value": "pro"}, "needs a list"),
    ({"type": "attribute", "attribute": "order_count", "op": "not_in", "value": 3}, "needs a list"),
    ({"type": "trait", "trait": "d", "op": "within_last_days", "value": "7"}, "whole number"),
    ({"type": "trait", "trait": "d", "op": "before", "value": "yesterday"}, "ISO 8601"),
    ({"type": "performed", "event": "A", "within_days": 3, "between": {"start": "2026-01-01", "end": "2026-01-02"}},
     "not both"),
    ({"type": "performed", "event": "A", "between": {"start": "2026-01-02", "end": "2026-01-01"}}, "before start"),
    ({"type": "performed_time", "event": "A", "op": "over_days_ago", "value": -1}, "whole number"),
    ({"type": "aggregate", "event": "A", "property": "p", "op": "contains", "value": 1}, "literal_error"),
    ({"type": "trait", "trait": "t", "value": {"a": ["x", "y\x00"]}}, '["a"][1] contains a NUL character'),
    ({"type": "trait", "trait": "t", "value": {"k\x00": 1}}, 'the key ["k\\u0000"] contains a NUL character'),
])
def test_invalid_definitions_say_why(definition, error) -> None:
    with pytest.raises(ValidationError) as exc:
        parse(definition)
    assert error in str(exc.value) or error in str(exc.value.errors())


def test_missing_values_are_false_except_negations() -> None:
    facts = ProfileFacts(traits={})
    for op, value in (("equals", 1), ("gt", 1), ("in", [1]), ("contains", "a"), ("starts_with", "a"),
                      ("before", "2026-01-01"), ("within_last_days", 3), ("exists", None)):
        assert not evaluate(parse({"type": "trait", "trait": "t", "op": op, "value": value}), facts, DAY)
    for op, value in (("not_equals", 1), ("not_in", [1]), ("not_exists", None)):
        assert evaluate(parse({"type": "trait", "trait": "t", "op": op, "value": value}), facts, DAY)


def test_date_traits_compare_as_dates_whatever_their_format() -> None:
    facts = ProfileFacts(traits={"a": "2026-11-25T08:00:00Z", "b": "2026-11-01", "c": "not a date"})
    within = {"type": "trait", "op": "within_last_days", "value": 3}
    assert evaluate(parse({**within, "trait": "a"}), facts, DAY)
    assert not evaluate(parse({**within, "trait": "b"}), facts, DAY)
    assert not evaluate(parse({**within, "trait": "c"}), facts, DAY)
    assert evaluate(parse({"type": "trait", "trait": "b", "op": "before", "value": "2026-11-02"}), facts, DAY)


def test_aggregates_over_nothing() -> None:
    facts = ProfileFacts(events={"Buy": [(_at(40), {"amount": 10})]})
    agg = {"type": "aggregate", "event": "Buy", "property": "amount", "within_days": 30}
    assert evaluate(parse({**agg, "function": "sum", "op": "equals", "value": 0}), facts, DAY)
    assert not evaluate(parse({**agg, "function": "avg", "op": "lt", "value": 100}), facts, DAY)
    assert evaluate(parse({**agg, "function": "count", "op": "equals", "value": 0}), facts, DAY)


def test_keyed_only_closes_on_a_later_event_for_the_same_key() -> None:
    node = parse({"type": "keyed", "key": "cart", "event": "Add", "without": "Buy"})
    before = ProfileFacts(events={"Add": [(_at(1), {"cart": "x"})], "Buy": [(_at(2), {"cart": "x"})]})
    other = ProfileFacts(events={"Add": [(_at(2), {"cart": "x"})], "Buy": [(_at(1), {"cart": "y"})]})
    closed = ProfileFacts(events={"Add": [(_at(2), {"cart": "x"})], "Buy": [(_at(1), {"cart": "x"})]})
    assert evaluate(node, before, DAY) and evaluate(node, other, DAY)
    assert not evaluate(node, closed, DAY)
    assert not evaluate(node, ProfileFacts(), DAY)


def test_first_and_last_performed_use_days_with_events() -> None:
    facts = ProfileFacts(counts={"Login": {DAY - timedelta(days=10): 1, DAY - timedelta(days=2): 3}})
    first = {"type": "performed_time", "event": "Login", "which": "first"}
    assert evaluate(parse({**first, "op": "over_days_ago", "value": 9}), facts, DAY)
    assert evaluate(parse({**first, "op": "before", "value": "2026-11-18"}), facts, DAY)
    assert evaluate(parse({**first, "which": "last", "op": "within_last_days", "value": 3}), facts, DAY)
    assert not evaluate(parse({**first, "event": "Never", "op": "over_days_ago", "value": 0}), facts, DAY)


def test_windows_inside_filters_and_last_event_properties_need_rechecks() -> None:
    within = {"property": "ends_on", "op": "within_last_days", "value": 3}
    assert has_window(parse({"type": "performed", "event": "Trial Started", "where": [within]}))
    assert has_window(parse({"type": "not", "child": {"type": "aggregate", "event": "Paid", "property": "amount",
                                                      "value": 1, "where": [within]}}))
    assert has_window(parse({"type": "last_event_property", "event": "Renewed", "property": "on",
                             "op": "within_last_days", "value": 3}))
    assert not has_window(parse({"type": "performed", "event": "Trial Started", "where": [
        {"property": "ends_on", "op": "after", "value": "2026-01-01"}]}))


def test_numbers_as_text_and_dates_are_ordered_by_value() -> None:
    assert compare("gt", "42", 40) and compare("lt", "9", "10") and compare("gte", 12, "10")
    assert not compare("gt", "forty", 4) and compare("gt", "b", "a") and not compare("gt", True, "0")
    assert not compare("gt", "NaN", 1) and not compare("gt", "1e999", 1) and not compare("gt", " 42", 1)
    seen = datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert compare("gte", seen, "2026-11-20") and compare("lt", seen, "2026-11-21T00:00:00Z")
    assert not compare("gt", seen, 5)
