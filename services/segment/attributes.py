"""Computed attributes: per-profile statistics folded from events, and the values derived from them.

Stored (``segment.profile_stats``): first/last seen, order count, revenue, first/last order. Derived
on read (pure, here): ``order_count``, ``total_revenue`` (CLTV so far), ``average_order_value``,
``orders_per_month`` (purchase frequency since the first order), ``first_seen``, ``last_seen``,
``days_since_last_activity``, ``days_since_last_order``.

Which events are purchases, and which property holds their value, are per-workspace settings
(``core.workspaces.settings``: ``purchase_events``, ``revenue_property``) with Segment's ecommerce
spec as the default.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

DEFAULT_PURCHASE_EVENTS = ("Order Completed",)
DEFAULT_REVENUE_PROPERTY = "revenue"
ATTRIBUTES = ("order_count", "total_revenue", "average_order_value", "orders_per_month", "first_seen",
              "last_seen", "days_since_last_activity", "days_since_last_order")


@dataclass(frozen=True)
class PurchaseRules:
    events: frozenset[str] = frozenset(DEFAULT_PURCHASE_EVENTS)
    revenue_property: str = DEFAULT_REVENUE_PROPERTY

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "PurchaseRules":
        settings = settings or {}
        events = settings.get("purchase_events")
        prop = settings.get("revenue_property")
        return cls(
            events=frozenset(events) if isinstance(events, list) and events else frozenset(DEFAULT_PURCHASE_EVENTS),
            revenue_property=prop if isinstance(prop, str) and prop else DEFAULT_REVENUE_PROPERTY,
        )

    def order_value(self, event: dict[str, Any]) -> float | None:
        """The revenue of a purchase event, or None if the event is not a purchase."""
        if event.get("type") != "track" or event.get("event") not in self.events:
            return None
        value = (event.get("properties") or {}).get(self.revenue_property)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return 0.0
        try:
            return float(value)
        except ValueError:
            return 0.0


def derive(stats: dict[str, Any] | None, today: date) -> dict[str, Any]:
    """The computed attributes of one profile from its stored statistics."""
    if not stats:
        return {"order_count": 0, "total_revenue": 0.0, "average_order_value": None, "orders_per_month": 0.0,
                "first_seen": None, "last_seen": None, "days_since_last_activity": None,
                "days_since_last_order": None}
    orders = int(stats.get("order_count") or 0)
    revenue = float(stats.get("revenue") or 0)
    first_order: datetime | None = stats.get("first_order_at")
    last_order: datetime | None = stats.get("last_order_at")
    last_seen: datetime | None = stats.get("last_seen")
    months = max(1.0, (today - first_order.date()).days / 30.0) if first_order else 1.0
    return {
        "order_count": orders,
        "total_revenue": round(revenue, 2),
        "average_order_value": round(revenue / orders, 2) if orders else None,
        "orders_per_month": round(orders / months, 3) if orders else 0.0,
        "first_seen": stats.get("first_seen"),
        "last_seen": last_seen,
        "days_since_last_activity": (today - last_seen.date()).days if last_seen else None,
        "days_since_last_order": (today - last_order.date()).days if last_order else None,
    }
