"""Computed attributes: per-profile statistics folded from events, and the values derived from them.

Stored (``segment.profile_stats``): first/last seen, order count, revenue, first/last order. Derived
on read (pure, here): ``order_count``, ``total_revenue`` (CLTV so far), ``average_order_value``,
``orders_per_month`` (purchase frequency since the first order), ``first_seen``, ``last_seen``,
``days_since_last_activity``, ``days_since_last_order``.

Also ``last_nps`` (the newest answer to the NPS survey event, ``score`` property; else the ``nps``
trait; values outside 0–10 are no answer) and ``lead_score``: points per occurrence of weighted events plus
points for matching traits.

Which events are purchases, and which property holds their value, are per-workspace settings
(``core.workspaces.settings``: ``purchase_events``, ``revenue_property``) with Segment's ecommerce
spec as the default, and so are refunds (``refund_events``, default ``Order Refunded``: their amount comes off
the revenue); so are the NPS event (``nps_event``, default ``NPS Survey Submitted``) and the
lead score rules (``lead_score``: ``{"events": {"Demo Requested": 20}, "traits": [{"trait": "title",
"op": "contains", "value": "VP", "points": 10}]}``).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any

from services.segment.conditions import amount, compare, finite_number  # (compare: the trait operators segments use)
from shared.feed import feed_time

DEFAULT_PURCHASE_EVENTS = ("Order Completed",)
DEFAULT_REFUND_EVENTS = ("Order Refunded",)  # as programs' refund_event (services/campaign/programs/config.py)
DEFAULT_NPS_EVENT = "NPS Survey Submitted"
DEFAULT_REVENUE_PROPERTY = "revenue"
ATTRIBUTES = ("order_count", "total_revenue", "average_order_value", "orders_per_month", "first_seen",
              "last_seen", "days_since_last_activity", "days_since_last_order", "last_nps", "lead_score")


@dataclass(frozen=True)
class PurchaseRules:
    events: frozenset[str] = frozenset(DEFAULT_PURCHASE_EVENTS)
    revenue_property: str = DEFAULT_REVENUE_PROPERTY
    nps_event: str = DEFAULT_NPS_EVENT
    refund_events: frozenset[str] = frozenset(DEFAULT_REFUND_EVENTS)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "PurchaseRules":
        settings = settings or {}
        events = settings.get("purchase_events")
        prop = settings.get("revenue_property")
        nps = settings.get("nps_event")
        refunds = settings.get("refund_events")
        return cls(
            events=frozenset(events) if isinstance(events, list) and events and all(isinstance(e, str) for e in events)
            else frozenset(DEFAULT_PURCHASE_EVENTS),
            revenue_property=prop if isinstance(prop, str) and prop else DEFAULT_REVENUE_PROPERTY,
            nps_event=nps if isinstance(nps, str) and nps else DEFAULT_NPS_EVENT,
            refund_events=frozenset(refunds) if isinstance(refunds, list) and all(isinstance(e, str) for e in refunds)
            else frozenset(DEFAULT_REFUND_EVENTS),
        )

    def nps_score(self, event: dict[str, Any]) -> float | None:
        """The score of an NPS survey answer (0–10: a number, or text holding one as for amounts — "4", as a form
        posts it, was no answer though a revenue of "4" counted), or None if the event is not one."""
        if event.get("type") != "track" or event.get("event") != self.nps_event:
            return None
        score = finite_number((event.get("properties") or {}).get("score"))
        return score if score is not None and 0 <= score <= 10 else None

    def order_value(self, event: dict[str, Any]) -> float | None:
        """The revenue of a purchase event, or None if the event is not a purchase."""
        if event.get("type") != "track" or event.get("event") not in self.events:
            return None
        return self._amount(event)

    def is_refund(self, event: dict[str, Any]) -> bool:
        return event.get("type") == "track" and event.get("event") in self.refund_events \
            and event.get("event") not in self.events

    def refund_value(self, event: dict[str, Any], order_value: float | None = None) -> float | None:
        """The amount a refund event takes off the revenue, whatever its sign, or None if the event is not a
        refund. As Segment's ecommerce spec has it: its revenue property, else its ``total``, else the value of
        the order it names (``order_value``: of its ``order_id``, when that order was seen), else 0. The order
        stays counted: a partial refund is common, and the customer did buy. Without this, CLTV and average
        order value kept every refunded amount, while the loyalty program took its points back; a refund
        carrying only ``order_id`` and ``total`` took nothing off."""
        if not self.is_refund(event):
            return None
        amount = self.refund_amount(event)
        return abs(order_value or 0.0) if amount is None else amount

    def refund_amount(self, event: dict[str, Any]) -> float | None:
        """The amount a refund event states (its revenue property, else its ``total``), whatever its sign; None
        when it states none: the whole order it names is refunded (what is left of it: evaluation._Orders caps
        the refunds of an order at its value, so a re-sent full refund takes nothing more off)."""
        props = event.get("properties") or {}
        for key in (self.revenue_property, "total"):
            if (amount := _amount(props.get(key))) is not None:
                return abs(amount)
        return None

    def _amount(self, event: dict[str, Any]) -> float:
        return _amount((event.get("properties") or {}).get(self.revenue_property)) or 0.0


def order_id(event: dict[str, Any]) -> str | None:
    """The ``order_id`` property of an order or refund event (Segment's ecommerce spec), as text; None without
    one. Orders are counted once per order id: an SDK's re-send or an app's second ``Order Completed`` for one
    order (a new messageId, so ingest keeps both) counted it twice in order count, CLTV and frequency."""
    value = (event.get("properties") or {}).get("order_id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def _amount(value: Any) -> float | None:
    """A finite amount from a property (a number, or text holding one); None without a usable one (it counts as
    0: an order stays counted)."""
    # text reads as NaN or an infinity ("NaN", "Infinity", "1e999"): one such purchase made the revenue
    # NaN / infinite for good, and every evaluation, search and metric of the profile failed; so did an
    # amount of 1e27 or more (no cents fit in 28 digits: ``money``), or two of 1e308 (their float sum is
    # infinite), failing the whole workspace's re-evaluation page after page: none reaches conditions.MAX_AMOUNT
    return amount(value)


@dataclass(frozen=True)
class LeadScoreRules:
    events: tuple[tuple[str, float], ...] = ()  # (event, points per occurrence)
    traits: tuple[tuple[str, str, Any, float], ...] = ()  # (trait, op, value, points)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> "LeadScoreRules":
        raw = (settings or {}).get("lead_score") or {}
        if not isinstance(raw, dict):
            return cls()
        events = raw.get("events") if isinstance(raw.get("events"), dict) else {}
        traits = raw.get("traits") if isinstance(raw.get("traits"), list) else []
        return cls(
            events=tuple((str(k), float(v)) for k, v in events.items() if _is_number(v)),
            traits=tuple((str(t["trait"]), str(t.get("op", "equals")), t.get("value"), float(t["points"]))
                         for t in traits if isinstance(t, dict) and "trait" in t and _is_number(t.get("points"))
                         and _fits(str(t.get("op", "equals")), t.get("value"))),
        )

    def score(self, counts: Mapping[str, Mapping[date, int]], traits: Mapping[str, Any]) -> float:
        points = sum(p * sum(counts.get(ev, {}).values()) for ev, p in self.events)
        points += sum(p for trait, op, value, p in self.traits if compare(op, traits.get(trait), value))
        # a float even with no rules (the empty sums are the int 0): search answers it as computed, and 0 there
        # was 0.0 in GET …/attributes
        return round(float(points), 2)


_LEAD_OPS = frozenset({"equals", "not_equals", "exists", "not_exists", "contains", "starts_with", "in", "not_in",
                       "gt", "gte", "lt", "lte"})


def _fits(op: str, value: Any) -> bool:
    """A lead-score trait rule the comparison can run (as shared/workspace_config.py checks them): rules
    stored before that check, or written straight into the table, are skipped rather than failing the score."""
    if op in ("in", "not_in"):
        return isinstance(value, list)
    if op == "starts_with":
        return isinstance(value, str)
    return op in _LEAD_OPS


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ``context.library.name`` of the events Tenure's own services send ingest about a person: delivery's reports on
# the messages it sent (services/delivery/consent.py), journeys' attribute updates (services/campaign/journeys.py)
# and programs' events (services/campaign/programs/outbox.py)
OWN_LIBRARIES = frozenset({"tenure-delivery", "tenure-campaign", "tenure-programs"})


# Segment's call types that record something the person did; identify, group and alias record who they are
ACTIVITY_TYPES = frozenset({"track", "page", "screen"})


def is_activity(event: dict[str, Any]) -> bool:
    """Whether an event is something the person did, and so moves their first / last seen (recency, at-risk,
    churned). What Tenure itself records about them is not: delivery's ``Email Delivered``, ``Email Bounced``,
    ``SMS Delivered``, opens, clicks and subscription changes, a journey's attribute update, a program's
    ``Loyalty Tier Changed``. A win-back email delivered to a churned customer made them ``reactivated``, and a
    customer mailed every week never became at risk. They still count as events (``performed``,
    ``email_engagement``, advocacy events such as ``Referral Converted``).

    Nor is an ``identify``, ``group`` or ``alias``: they say who someone is, and are as often sent by a back
    office as by the person's app (a nightly CRM sync identified every customer, so none ever became at risk).
    Someone only identified so far has been seen once, then (evaluation._Stats.seen_from): first and last seen
    are that call's time until they do something, with no days since last activity (null: so no ``at_risk``,
    ``churned`` or ``reactivated`` stage). Their traits count as ever (``trait`` conditions)."""
    if event.get("type") not in ACTIVITY_TYPES:
        return False
    context = event.get("context")
    library = context.get("library") if isinstance(context, dict) else None
    return not (isinstance(library, dict) and library.get("name") in OWN_LIBRARIES)


def event_time(event: dict[str, Any]) -> datetime:
    """When an event happened, for segment's aggregates: its timestamp, but never after ingest received it. A
    client clock set years ahead made ``days_since_last_activity`` negative and kept the profile active (and
    in "ordered in the last 7 days") until that date came; ingest keeps such timestamps as sent."""
    at = feed_time(event["timestamp"])
    received = event.get("received_at")
    if received:
        at = min(at, feed_time(received))
    return at


def trait_nps(traits: Mapping[str, Any]) -> float | None:
    """The ``nps`` trait as an NPS answer: a number on the 0–10 scale, else None. A trait of 42 or -3 (another
    scale, a typo) is no answer — as for survey events and the NPS metric — and made the profile a promoter
    (``advocacy`` stage, ``last_nps`` ≥ 9) though the metric left it out."""
    nps = traits.get("nps")
    if isinstance(nps, bool) or not isinstance(nps, int | float) or not 0 <= nps <= 10:
        return None
    return float(nps)


def money(amount: Decimal) -> float:
    """An amount in cents, rounded half away from zero on its exact decimal value: PostgreSQL's
    ``round(numeric, 2)``, so full passes computed in SQL (set_evaluation.py) agree to the cent. (Any size:
    revenue stored before amounts were bounded may be huge; an infinite one reads as 0.)"""
    if not amount.is_finite():
        return 0.0
    return float(amount.quantize(Decimal("0.01"), ROUND_HALF_UP, context=_WIDE))


_WIDE = Context(prec=400)  # cents of any float-sized amount


def derive(stats: dict[str, Any] | None, today: date) -> dict[str, Any]:
    """The computed attributes of one profile from its stored statistics (``lead_score`` is added by
    the caller, which has the event counts)."""
    if not stats:
        return {"order_count": 0, "total_revenue": 0.0, "average_order_value": None, "orders_per_month": 0.0,
                "first_seen": None, "last_seen": None, "days_since_last_activity": None,
                "days_since_last_order": None, "last_nps": None}
    orders = int(stats.get("order_count") or 0)
    revenue = Decimal(stats.get("revenue") or 0)
    first_order: datetime | None = stats.get("first_order_at")
    last_order: datetime | None = stats.get("last_order_at")
    # the stored last_seen is the last activity (is_activity); someone only identified so far was seen once,
    # at that call (their first_seen), and has no days since last activity: they never did anything
    active: datetime | None = stats.get("last_seen")
    months = max(1.0, (today - first_order.date()).days / 30.0) if first_order else 1.0
    return {
        "order_count": orders,
        "total_revenue": money(revenue),
        "average_order_value": money(revenue / orders) if orders else None,
        "orders_per_month": round(orders / months, 3) if orders else 0.0,
        "first_seen": stats.get("first_seen"),
        "last_seen": active or stats.get("first_seen"),
        "days_since_last_activity": (today - active.date()).days if active else None,
        "days_since_last_order": (today - last_order.date()).days if last_order else None,
        "last_nps": float(stats["last_nps"]) if stats.get("last_nps") is not None else None,
    }
