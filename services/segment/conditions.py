"""Segment definitions as data, and their evaluation as a pure function of one profile's facts.

A definition is a tree of nodes discriminated on ``type``:

- ``and`` / ``or`` with ``children``; ``not`` with ``child``;
- ``trait``: compare a profile trait (``equals``, ``not_equals``, ``exists``, ``contains``, ``gt``,
  ``gte``, ``lt``, ``lte``);
- ``performed``: the profile performed ``event`` ``at_least`` / ``at_most`` / ``exactly`` ``count``
  times, optionally within the last ``within_days`` days;
- ``random_bucket``: a stable random ``percent`` of profiles (for holdouts);
- ``attribute``: compare a computed attribute (order count, revenue, average order value, purchase
  frequency, days since last activity / order; see attributes.py).

Evaluation takes plain values (traits and per-day event counts) so it is unit- and property-tested
without a database.
"""

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AndNode(_Node):
    type: Literal["and"] = "and"
    children: list["Condition"] = Field(min_length=1)


class OrNode(_Node):
    type: Literal["or"] = "or"
    children: list["Condition"] = Field(min_length=1)


class NotNode(_Node):
    type: Literal["not"] = "not"
    child: "Condition"


TraitOp = Literal["equals", "not_equals", "exists", "contains", "gt", "gte", "lt", "lte"]


class TraitNode(_Node):
    type: Literal["trait"] = "trait"
    trait: str = Field(min_length=1, examples=["plan"])
    op: TraitOp = "equals"
    value: Any = None


class PerformedNode(_Node):
    type: Literal["performed"] = "performed"
    event: str = Field(min_length=1, examples=["Order Completed"])
    op: Literal["at_least", "at_most", "exactly"] = "at_least"
    count: int = Field(default=1, ge=0)
    within_days: int | None = Field(default=None, ge=1, le=3650)


class AttributeNode(_Node):
    """A computed attribute (see attributes.py), e.g. ``order_count`` ``gte`` 2, ``total_revenue`` ``gt`` 500."""

    type: Literal["attribute"] = "attribute"
    attribute: Literal["order_count", "total_revenue", "average_order_value", "orders_per_month",
                       "days_since_last_activity", "days_since_last_order"]
    op: TraitOp = "gte"
    value: Any = None


class RandomBucketNode(_Node):
    """A stable random share of profiles (holdouts, tests): the same profile always lands in the same bucket."""

    type: Literal["random_bucket"] = "random_bucket"
    percent: float = Field(gt=0, le=100)
    seed: str = Field("", max_length=100, description="change it to draw a different, independent sample")


Condition = Annotated[AndNode | OrNode | NotNode | TraitNode | PerformedNode | AttributeNode | RandomBucketNode,
                      Field(discriminator="type")]


def bucket(profile_id: str, seed: str) -> float:
    """A profile's position in [0, 100), stable for (profile, seed)."""
    digest = hashlib.sha256(f"{seed}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100
condition_adapter: TypeAdapter[Any] = TypeAdapter(Condition)


@dataclass
class ProfileFacts:
    profile_id: str = ""
    traits: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, Mapping[date, int]] = field(default_factory=dict)  # event -> day -> n
    attributes: Mapping[str, Any] = field(default_factory=dict)  # computed attributes (attributes.py)


def parse(definition: dict[str, Any]) -> Any:
    """Validate a definition (raises pydantic.ValidationError naming the failing node)."""
    return condition_adapter.validate_python(definition)


def events_of(node: Any) -> Iterator[str]:
    """Event names a definition depends on (to load only the counts it needs)."""
    if isinstance(node, AndNode | OrNode):
        for c in node.children:
            yield from events_of(c)
    elif isinstance(node, NotNode):
        yield from events_of(node.child)
    elif isinstance(node, PerformedNode):
        yield node.event


def has_window(node: Any) -> bool:
    """True if membership can change with time alone (a ``within_days`` window or a "days since"
    attribute somewhere in the tree)."""
    if isinstance(node, AndNode | OrNode):
        return any(has_window(c) for c in node.children)
    if isinstance(node, NotNode):
        return has_window(node.child)
    if isinstance(node, AttributeNode):
        return node.attribute.startswith("days_since") or node.attribute == "orders_per_month"
    return isinstance(node, PerformedNode) and node.within_days is not None


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not None
    if op == "equals":
        return actual == expected
    if op == "not_equals":
        return actual != expected
    if actual is None:
        return False
    if op == "contains":
        return isinstance(actual, str | list) and expected in actual
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        if op == "lte":
            return bool(actual <= expected)
    except TypeError:
        return False
    raise ValueError(f"unknown operator {op}")


def evaluate(node: Any, facts: ProfileFacts, today: date) -> bool:
    if isinstance(node, AndNode):
        return all(evaluate(c, facts, today) for c in node.children)
    if isinstance(node, OrNode):
        return any(evaluate(c, facts, today) for c in node.children)
    if isinstance(node, NotNode):
        return not evaluate(node.child, facts, today)
    if isinstance(node, TraitNode):
        return _compare(node.op, facts.traits.get(node.trait), node.value)
    if isinstance(node, AttributeNode):
        return _compare(node.op, facts.attributes.get(node.attribute), node.value)
    if isinstance(node, RandomBucketNode):
        return bucket(facts.profile_id, node.seed) < node.percent
    if isinstance(node, PerformedNode):
        days = facts.counts.get(node.event, {})
        if node.within_days is None:
            n = sum(days.values())
        else:
            since = today - timedelta(days=node.within_days - 1)
            n = sum(c for d, c in days.items() if since <= d <= today)
        if node.op == "at_least":
            return n >= node.count
        if node.op == "at_most":
            return n <= node.count
        return n == node.count
    raise TypeError(f"not a condition node: {node!r}")
