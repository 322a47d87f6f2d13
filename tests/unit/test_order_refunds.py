"""What refunds naming an order take off the revenue, whatever the order the events arrive in (evaluation._Orders).

The promise: an order of value V, sent once or re-sent, and refunds naming it that state amounts a1..an (each
event delivered counts: ingest drops a re-send with the same messageId, one with a new messageId is one more
refund) leave V - min(V, a1 + ... + an) of it in the revenue, and 0 when any of them states no amount (the whole
order). A refund of an order that never comes (one counted before segment_0006) takes off what it states."""

import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.segment.evaluation import _dec, _Order, _Orders

WS, PID = uuid.uuid4(), uuid.uuid4()
AT = datetime(2026, 11, 1, tzinfo=UTC)

# (kind, amount): ("order", value) — "order" again is a re-send of it —, ("refund", amount or None: the whole order)
Event = tuple[str, float | None]

cents = st.integers(min_value=0, max_value=20_000).map(lambda c: c / 100)
refunds = st.lists(st.tuples(st.just("refund"), st.none() | cents), max_size=6)


def _event(kind: str) -> dict[str, Any]:
    return {"workspace_id": str(WS), "profile_id": str(PID), "type": "track",
            "event": "Order Completed" if kind == "order" else "Order Refunded", "properties": {"order_id": "o-1"}}


def _fold(pages: list[list[Event]]) -> float:
    """The revenue folded page by page, as apply_events folds it: the rows are saved and loaded between pages
    (through the numeric column's rounding)."""
    revenue, rows = 0.0, {}
    for page in pages:
        orders = _Orders(rows={k: _Order(None if o.value is None else float(_dec(o.value)), float(_dec(o.refunded)),
                                         o.refund_all, o.event, o.at) for k, o in rows.items()})
        for kind, amount in page:
            if kind == "order":
                assert amount is not None
                taken = orders.order(_event(kind), amount, AT)
                if taken is not None:
                    revenue += amount - taken
            else:
                revenue -= orders.refund(_event(kind), amount)
        rows = orders.rows
    return revenue


def _pages(draw: st.DrawFn, events: list[Event]) -> list[list[Event]]:
    shuffled = draw(st.permutations(events))
    cuts = sorted(draw(st.sets(st.integers(min_value=0, max_value=len(shuffled)), max_size=4)))
    return [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]


@st.composite
def _arrivals(draw: st.DrawFn) -> tuple[float, list[Event], list[list[Event]]]:
    value = draw(cents)
    refunded = draw(refunds)
    copies = draw(st.integers(min_value=1, max_value=3))  # the order, and its re-sends
    return value, refunded, _pages(draw, [("order", value)] * copies + refunded)


@given(_arrivals())
def test_an_order_and_its_refunds_leave_the_same_revenue_in_any_order(case) -> None:
    value, refunded, pages = case
    stated = [a for _, a in refunded]
    taken = value if None in stated else min(value, sum(a for a in stated if a is not None))
    assert abs(_fold(pages) - (value - taken)) < 1e-6


@given(refunds.flatmap(lambda r: st.permutations(r)))
def test_refunds_of_an_order_that_never_comes_take_off_what_they_state(refunded) -> None:
    stated = sum(a for _, a in refunded if a is not None)
    assert abs(_fold([refunded[:1], refunded[1:]]) + stated) < 1e-6


def test_the_excess_stated_before_the_order_is_given_back() -> None:
    assert _fold([[("refund", 150.0)]]) == -150.0
    assert _fold([[("refund", 150.0)], [("order", 100.0)]]) == 0.0
    assert _fold([[("refund", None), ("refund", 30.0)], [("order", 100.0)], [("refund", 30.0)]]) == 0.0
    assert _fold([[("refund", 30.0)], [("order", 100.0)], [("refund", 30.0)], [("order", 100.0)]]) == 40.0
