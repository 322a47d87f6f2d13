from datetime import UTC, date, datetime

from services.segment.attributes import LeadScoreRules, PurchaseRules, derive, order_id


def test_order_value_follows_workspace_rules() -> None:
    default = PurchaseRules.from_settings({})
    assert default.order_value({"type": "track", "event": "Order Completed", "properties": {"revenue": "19.9"}}) == 19.9
    assert default.order_value({"type": "track", "event": "Order Completed", "properties": {}}) == 0.0
    assert default.order_value({"type": "track", "event": "Viewed"}) is None
    custom = PurchaseRules.from_settings({"purchase_events": ["Paid"], "revenue_property": "total"})
    assert custom.order_value({"type": "track", "event": "Paid", "properties": {"total": 5}}) == 5.0
    assert custom.order_value({"type": "track", "event": "Order Completed", "properties": {"total": 5}}) is None


def test_derived_attributes() -> None:
    t = datetime(2026, 9, 1, tzinfo=UTC)
    attrs = derive({"order_count": 4, "revenue": 100, "first_order_at": t, "last_order_at": t, "first_seen": t,
                    "last_seen": datetime(2026, 11, 20, tzinfo=UTC)}, date(2026, 11, 30))
    assert attrs["average_order_value"] == 25.0 and attrs["total_revenue"] == 100.0
    assert attrs["days_since_last_activity"] == 10 and attrs["days_since_last_order"] == 90
    assert attrs["orders_per_month"] == round(4 / 3, 3)
    empty = derive(None, date(2026, 11, 30))
    assert empty["order_count"] == 0 and empty["average_order_value"] is None


def test_settings_the_check_would_refuse_read_as_defaults() -> None:
    """Settings stored before they were checked (or straight into the table) must not fail the fold or the
    lead score: a rule the comparison cannot run is skipped, a malformed purchase list is the default."""
    rules = LeadScoreRules.from_settings({"lead_score": {"events": {"Demo": 20, "Bad": "x"}, "traits": [
        {"trait": "title", "op": "starts_with", "value": None, "points": 5},
        {"trait": "title", "op": "in", "value": "VP", "points": 5},
        {"trait": "title", "op": "within_last_days", "value": 3, "points": 5},
        {"trait": "title", "op": "starts_with", "value": "VP", "points": 7},
        {"trait": "plan", "op": "not_in", "value": ["free"], "points": 1}]}})
    assert rules.score({"Demo": {date(2026, 1, 1): 2}, "Bad": {date(2026, 1, 1): 1}},
                       {"title": "VP Sales", "plan": "pro"}) == 48
    assert LeadScoreRules.from_settings({"lead_score": None}) == LeadScoreRules()
    for events in (None, [], [{"name": "Paid"}], "Paid"):
        assert PurchaseRules.from_settings({"purchase_events": events}).events == PurchaseRules().events


def test_a_refund_takes_revenue_else_total_else_its_orders_value() -> None:
    rules = PurchaseRules()

    def refund(props: dict, order_value: float | None = None) -> float | None:
        return rules.refund_value({"type": "track", "event": "Order Refunded", "properties": props}, order_value)

    assert refund({"order_id": "A", "revenue": -10, "total": 99}, 50.0) == 10.0
    assert refund({"order_id": "A", "total": "30"}, 50.0) == 30.0
    assert refund({"order_id": "A", "total": "NaN"}, 50.0) == 50.0
    assert refund({"order_id": "A"}, 50.0) == 50.0 and refund({"order_id": "Z"}) == 0.0
    assert rules.refund_value({"type": "track", "event": "Order Completed", "properties": {"total": 5}}) is None


def test_orders_are_named_by_their_order_id() -> None:
    def oid(value: object) -> str | None:
        return order_id({"properties": {"order_id": value}})

    assert (oid("A-1"), oid(7), oid(""), oid(None), oid(True), oid({"x": 1})) == ("A-1", "7", None, None, None, None)
