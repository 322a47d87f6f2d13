from datetime import UTC, date, datetime

from services.segment.attributes import PurchaseRules, derive


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
