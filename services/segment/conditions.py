"""Segment definitions as data, and their evaluation as a pure function of one profile's facts.

A definition is a tree of nodes discriminated on ``type``:

- ``and`` / ``or`` with ``children``; ``not`` with ``child``;
- ``trait``: compare a profile trait (``equals``, ``not_equals``, ``exists``, ``not_exists``, ``contains``,
  ``starts_with``, ``in``, ``not_in``, ``gt``/``gte``/``lt``/``lte``, dates: ``before``, ``after``,
  ``within_last_days``); ``account_trait``: the same over the traits of the accounts (groups) the
  profile belongs to — true if any account matches;
- ``performed``: the profile performed ``event`` ``at_least`` / ``at_most`` / ``exactly`` ``count``
  times, optionally ``within_days`` or ``between`` two dates, optionally only events whose properties
  match every filter in ``where``;
- ``performed_time``: when the ``first`` / ``last`` ``event`` happened: ``before`` / ``after`` an instant (a
  date-time, or a date: the start of that UTC day, as for traits), ``within_last_days`` or ``over_days_ago`` N
  days (never performed: false);
- ``aggregate``: ``sum`` / ``avg`` / ``min`` / ``max`` / ``count`` of a numeric ``property`` of ``event``
  over a window, compared with ``op`` / ``value`` (e.g. revenue in the last 90 days ≥ 500);
- ``last_event_property``: a property of the most recent ``event`` (e.g. last viewed product's category);
- ``keyed``: follows one entity through its events: some value of property ``key`` appears on ``event``
  and never on a ``without`` event at or after it (a cart with ``Product Added`` but no
  ``Order Completed``), optionally only for entities started ``within_days``;
- ``email_engagement``: opened / clicked an email (``Email Opened`` / ``Email Link Clicked`` events, which
  delivery feeds back into ingest) at least ``count`` times within ``within_days``;
- ``stage``: the profile's lifecycle stage; ``segment``: membership of another segment; ``list``:
  membership of a manual list;
- ``random_bucket``: a stable random ``percent`` of profiles (for holdouts);
- ``attribute``: compare a computed attribute (order count, revenue, average order value, purchase
  frequency, first / last seen, days since last activity / order, lead score, last NPS; see attributes.py).

Unfiltered counts come from per-day aggregates (fast); property filters, aggregates, last-event
properties and keyed conditions read the profile's stored events of the events they name.
Evaluation takes plain values so it is unit- and property-tested without a database.
"""

import hashlib
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from shared.jsonutil import get_path
from shared.validation import IsoDate, JsonFloat, JsonInt, numeric_text, ordered_number, unstorable

EMAIL_OPENED = "Email Opened"
EMAIL_CLICKED = "Email Link Clicked"
STAGE_NAMES = ("onboarding", "engaged", "loyal", "advocacy", "reactivated", "at_risk", "churned")


class _Node(BaseModel):
    # NaN and infinities (JSON bodies may carry NaN, Infinity or 1e999) would be stored as null
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _finite(value: Any) -> Any:
    """A comparison value without NaN or infinities, also inside lists and objects (for ``value: Any``)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("'value' must be a finite number (not NaN or Infinity)")
        stack.extend(v if isinstance(v, list) else v.values() if isinstance(v, dict) else ())
    return value


def _storable(value: Any) -> Any:
    """Names and values reach PostgreSQL (the stored definition is jsonb; SQL evaluation binds them as
    text): one holding a NUL (``\\u0000``) or a lone surrogate is refused here, at its field, not by a 500."""
    if (problem := unstorable(value)) is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_storable)]  # a trait, event or property name, a key, a seed
Value = Annotated[Any, AfterValidator(_storable)]  # a value compared with (a string, number, list, object …)


class AndNode(_Node):
    type: Literal["and"] = "and"
    children: list["Condition"] = Field(min_length=1)


class OrNode(_Node):
    type: Literal["or"] = "or"
    children: list["Condition"] = Field(min_length=1)


class NotNode(_Node):
    type: Literal["not"] = "not"
    child: "Condition"


TraitOp = Literal["equals", "not_equals", "exists", "not_exists", "contains", "starts_with", "in", "not_in",
                  "gt", "gte", "lt", "lte", "before", "after", "within_last_days"]
NumberOp = Literal["equals", "not_equals", "gt", "gte", "lt", "lte"]


def _value_fits_op(op: str, value: Any) -> None:
    """What every operator of ``compare`` needs of the value it compares with (checked on save: a value
    ``compare`` cannot use would fail every evaluation of the workspace)."""
    v = _finite(value)
    if op in ("in", "not_in") and not isinstance(v, list):
        raise ValueError(f"{op!r} needs a list value")
    if op == "within_last_days" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError("'within_last_days' needs a whole number of days >= 1")
    if op in ("before", "after") and _as_datetime(v) is None:
        raise ValueError(f"{op!r} needs an ISO 8601 date or date-time value")
    if op in ("starts_with",) and not isinstance(v, str):
        raise ValueError(f"{op!r} needs a string value")


class _Compared(_Node):
    op: TraitOp = "equals"
    value: Value = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> "_Compared":
        _value_fits_op(self.op, self.value)
        return self


class TraitNode(_Compared):
    type: Literal["trait"] = "trait"
    trait: Text = Field(min_length=1, examples=["plan"])


class AccountTraitNode(_Compared):
    """B2B: a trait of an account (``group`` call) the profile belongs to, e.g. industry, employees, plan."""

    type: Literal["account_trait"] = "account_trait"
    trait: Text = Field(min_length=1, examples=["industry"])


class PropertyFilter(_Compared):
    """``property`` (dots reach into nested objects) compared like a trait."""

    property: Text = Field(min_length=1, examples=["category"])


class Between(_Node):
    start: IsoDate
    end: IsoDate = Field(description="inclusive")

    @model_validator(mode="after")
    def _ordered(self) -> "Between":
        if self.end < self.start:
            raise ValueError("end is before start")
        return self


class _Windowed(_Node):
    within_days: JsonInt | None = Field(default=None, ge=1, le=3650,
                                        description="only the last N days (UTC, incl. today)")
    between: Between | None = Field(default=None, description="only events on these (UTC) days")

    @model_validator(mode="after")
    def _one_window(self) -> "_Windowed":
        if self.within_days is not None and self.between is not None:
            raise ValueError("give within_days or between, not both")
        return self

    def in_window(self, day: date, today: date) -> bool:
        if self.between is not None:
            return self.between.start <= day <= self.between.end
        if self.within_days is not None:
            return today - timedelta(days=self.within_days - 1) <= day <= today
        return True


class PerformedNode(_Windowed):
    type: Literal["performed"] = "performed"
    event: Text = Field(min_length=1, examples=["Order Completed"])
    op: Literal["at_least", "at_most", "exactly"] = "at_least"
    count: JsonInt = Field(default=1, ge=0)
    where: list[PropertyFilter] = Field(default_factory=list, description="every filter must match")


class PerformedTimeNode(_Node):
    """When a profile first / last performed an event: ``before`` / ``after`` compare its instant with the value's
    (a date is the start of that UTC day, as for traits); ``within_last_days`` / ``over_days_ago`` count (UTC)
    days."""

    type: Literal["performed_time"] = "performed_time"
    event: Text = Field(min_length=1, examples=["Signed Up"])
    which: Literal["first", "last"] = "last"
    op: Literal["before", "after", "within_last_days", "over_days_ago"]
    value: Value

    @model_validator(mode="after")
    def _value_fits_op(self) -> "PerformedTimeNode":
        if self.op in ("before", "after"):
            if _as_datetime(self.value) is None:
                raise ValueError(f"{self.op!r} needs an ISO 8601 date or date-time value")
        elif isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0:
            raise ValueError(f"{self.op!r} needs a whole number of days")
        return self


class AggregateNode(_Windowed):
    """sum / avg / min / max / count of a numeric event property over a window."""

    type: Literal["aggregate"] = "aggregate"
    event: Text = Field(min_length=1, examples=["Order Completed"])
    property: Text = Field(min_length=1, examples=["revenue"])
    function: Literal["sum", "avg", "min", "max", "count"] = "sum"
    op: NumberOp = "gte"
    value: JsonFloat
    where: list[PropertyFilter] = Field(default_factory=list)


class LastEventPropertyNode(_Compared):
    """A property of the most recent ``event`` (false if never performed)."""

    type: Literal["last_event_property"] = "last_event_property"
    event: Text = Field(min_length=1, examples=["Product Viewed"])
    property: Text = Field(min_length=1, examples=["category"])


class KeyedNode(_Node):
    """Some entity (``key`` property value) went through ``event`` and never through ``without`` since."""

    type: Literal["keyed"] = "keyed"
    key: Text = Field(min_length=1, examples=["cart_id"])
    event: Text = Field(min_length=1, examples=["Product Added"])
    without: Text = Field(min_length=1, examples=["Order Completed"])
    within_days: JsonInt | None = Field(default=None, ge=1, le=3650)


class EmailEngagementNode(_Node):
    type: Literal["email_engagement"] = "email_engagement"
    action: Literal["opened", "clicked"] = "opened"
    count: JsonInt = Field(default=1, ge=1)
    within_days: JsonInt | None = Field(default=None, ge=1, le=3650)


class StageNode(_Node):
    type: Literal["stage"] = "stage"
    stage: Literal["onboarding", "engaged", "loyal", "advocacy", "reactivated", "at_risk", "churned"]


class SegmentRefNode(_Node):
    """Membership of another segment of the same workspace (cycles are refused on save)."""

    type: Literal["segment"] = "segment"
    segment_id: uuid.UUID


class ListNode(_Node):
    """Membership of a manual list (ids uploaded through the API or as CSV)."""

    type: Literal["list"] = "list"
    list_id: uuid.UUID


class AttributeNode(_Node):
    """A computed attribute (see attributes.py), e.g. ``order_count`` ``gte`` 2, ``total_revenue`` ``gt`` 500."""

    type: Literal["attribute"] = "attribute"
    attribute: Literal["order_count", "total_revenue", "average_order_value", "orders_per_month", "first_seen",
                       "last_seen", "days_since_last_activity", "days_since_last_order", "lead_score", "last_nps"]
    op: TraitOp = "gte"
    value: Value = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> "AttributeNode":
        _value_fits_op(self.op, self.value)  # as for traits (first_seen / last_seen take the date operators)
        return self


DATE_ATTRIBUTES = frozenset({"first_seen", "last_seen"})
_DATE_OPS = frozenset({"before", "after", "within_last_days"})
_ORDER_OPS = frozenset({"gt", "gte", "lt", "lte"})
_EQUALITY_OPS = frozenset({"equals", "not_equals", "in", "not_in"})


def value_problem(op: str, value: Any) -> str | None:
    """Why a comparison value could never match meaningfully under ``op`` (checked on save, not on load, as
    :func:`attribute_op_problem`: a stored one must still evaluate), else None. ``gt`` ``{"x": 1}`` or ``gt``
    null, and ``in`` ``[[1], [2]]`` or ``[{"a": 1}]``, were saved and matched no one: an order needs a number,
    a text or a date, and a list's items are compared as single values."""
    if op in _ORDER_OPS and (value is None or isinstance(value, list | dict)):
        return f"{op!r} needs a number, a text or a date value"
    if op in ("in", "not_in") and isinstance(value, list) and any(isinstance(v, list | dict) for v in value):
        return f"{op!r} needs a list of numbers, texts, booleans or null (not of lists or objects)"
    return None


def compared_values(node: Any) -> Iterator[tuple[str, str, Any]]:
    """(place below the node, op, value) of each comparison a node holds: its own and its ``where`` filters'."""
    if isinstance(node, _Compared | AttributeNode):
        yield "value", node.op, node.value
    for i, f in enumerate(getattr(node, "where", None) or ()):
        yield f"where.{i}.value", f.op, f.value


def attribute_op_problem(node: AttributeNode) -> str | None:
    """Why an ``attribute`` condition could never match (checked on save, not on load: a stored one must still
    evaluate), else None. ``order_count`` ``within_last_days`` 30 or ``first_seen`` ``gte`` 5 were saved and
    matched no one."""
    if node.attribute in DATE_ATTRIBUTES:
        if node.op in ("contains", "starts_with"):
            return f"{node.attribute!r} is a date: {node.op!r} does not apply to it"
        if node.op in _EQUALITY_OPS:  # an instant to the microsecond: "equals 2026-11-01" matched no one
            return (f"{node.attribute!r} is an instant: {node.op!r} would compare it to the microsecond; for a day "
                    f"use gte that day and lt the next (or before, after, within_last_days)")
        if node.op in _ORDER_OPS and _as_datetime(node.value) is None:
            return f"{node.op!r} on {node.attribute!r} needs an ISO 8601 date or date-time value"
    elif node.op in _DATE_OPS | {"contains", "starts_with"}:
        return f"{node.attribute!r} is a number: {node.op!r} does not apply to it"
    return None


class RandomBucketNode(_Node):
    """A stable random share of profiles (holdouts, tests): the same profile always lands in the same bucket."""

    type: Literal["random_bucket"] = "random_bucket"
    percent: JsonFloat = Field(gt=0, le=100)
    # required on save (segments.validate_definition): without one, every holdout drew the same profiles; a
    # definition stored before that has its "" and still loads
    seed: Text = Field("", max_length=100, description="names the draw: the same seed draws the same profiles, "
                                                       "another an independent sample")


Condition = Annotated[
    AndNode | OrNode | NotNode | TraitNode | AccountTraitNode | PerformedNode | PerformedTimeNode | AggregateNode
    | LastEventPropertyNode | KeyedNode | EmailEngagementNode | StageNode | SegmentRefNode | ListNode
    | AttributeNode | RandomBucketNode,
    Field(discriminator="type"),
]


def bucket(profile_id: str, seed: str) -> float:
    """A profile's position in [0, 100), stable for (profile, seed)."""
    digest = hashlib.sha256(f"{seed}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100
condition_adapter: TypeAdapter[Any] = TypeAdapter(Condition)

RawEvent = tuple[datetime, Mapping[str, Any]]  # (UTC time, properties)


@dataclass
class ProfileFacts:
    profile_id: str = ""
    traits: Mapping[str, Any] = field(default_factory=dict)
    counts: Mapping[str, Mapping[date, int]] = field(default_factory=dict)  # event -> day -> n
    # event -> (first, last) occurrence; an event counted but missing here: the start of its first / last day
    times: Mapping[str, tuple[datetime, datetime]] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)  # computed attributes (attributes.py)
    events: Mapping[str, Sequence[RawEvent]] = field(default_factory=dict)  # event -> occurrences, oldest first
    accounts: Sequence[Mapping[str, Any]] = field(default_factory=list)  # traits of each account (group)
    segments: set[str] = field(default_factory=set)  # ids of segments the profile is in
    lists: set[str] = field(default_factory=set)  # ids of manual lists the profile is on
    stage: str | None = None


def parse(definition: dict[str, Any]) -> Any:
    """Validate a definition (raises pydantic.ValidationError naming the failing node)."""
    return condition_adapter.validate_python(definition)


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, AndNode | OrNode):
        for c in node.children:
            yield from walk(c)
    elif isinstance(node, NotNode):
        yield from walk(node.child)


def events_of(node: Any) -> set[str]:
    """Event names whose per-day counts a definition reads."""
    out: set[str] = set()
    for n in walk(node):
        if isinstance(n, PerformedNode) and not n.where or isinstance(n, PerformedTimeNode):
            out.add(n.event)
        elif isinstance(n, EmailEngagementNode):
            out.add(EMAIL_OPENED if n.action == "opened" else EMAIL_CLICKED)
    return out


def raw_events_of(node: Any) -> set[str]:
    """Event names whose stored occurrences (with properties) a definition reads."""
    out: set[str] = set()
    for n in walk(node):
        if isinstance(n, PerformedNode) and n.where or isinstance(n, AggregateNode | LastEventPropertyNode):
            out.add(n.event)
        elif isinstance(n, KeyedNode):
            out |= {n.event, n.without}
    return out


def segments_of(node: Any) -> set[uuid.UUID]:
    return {n.segment_id for n in walk(node) if isinstance(n, SegmentRefNode)}


def uses(node: Any, kind: type) -> bool:
    return any(isinstance(n, kind) for n in walk(node))


def has_window(node: Any) -> bool:
    """True if membership can change with time alone (a window, a "days since" attribute, a date
    trait compared with today, or a lifecycle stage) — also one inside the property filters of a ``performed`` or
    ``aggregate`` condition or in a ``last_event_property`` comparison: members of "ordered shoes in the last 7
    days" never left when the days passed."""
    for n in _with_filters(walk(node)):
        if isinstance(n, _Windowed) and (n.within_days is not None or n.between is not None):
            return True
        if isinstance(n, KeyedNode | EmailEngagementNode) and n.within_days is not None:
            return True
        if isinstance(n, PerformedTimeNode) and n.op in ("within_last_days", "over_days_ago"):
            return True
        if isinstance(n, _Compared | AttributeNode) and n.op == "within_last_days":
            return True
        if isinstance(n, AttributeNode) and (n.attribute.startswith("days_since") or n.attribute == "orders_per_month"):
            return True
        if isinstance(n, StageNode):
            return True
    return False


def _with_filters(nodes: Iterator[Any]) -> Iterator[Any]:
    """The nodes and the property filters (``where``) of those that have them."""
    for n in nodes:
        yield n
        yield from getattr(n, "where", ())


def _as_datetime(v: Any) -> datetime | None:
    """A date or date-time (ISO 8601 string, date, datetime) as an aware UTC datetime, else None."""
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):
        dt = datetime(v.year, v.month, v.day)
    elif isinstance(v, str) and v:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 is in year 0 in UTC: the nearest instant there is
        return (datetime.min if dt.year == 1 else datetime.max).replace(tzinfo=UTC)


def finite_number(v: Any) -> float | None:
    """A finite number, also from text holding one by the rule trait and ``where`` comparisons follow
    (``shared.validation.NUMERIC_TEXT``: "12.5", "-1e3"); None for anything else. Python's float() alone also took
    "1_000", " 25" and other scripts' digits ("١٢"), and "NaN" and "Infinity"."""
    if isinstance(v, bool) or not isinstance(v, int | float | str) or isinstance(v, str) and not numeric_text(v):
        return None
    try:
        number = float(v)
    except OverflowError:  # an int beyond a float
        return None
    return number if math.isfinite(number) else None


# no amount is worth a quadrillion: one that large is an id or a garbled number (docs/metrics.md)
MAX_AMOUNT = 1e15


def amount(v: Any) -> float | None:
    """An amount from a property (the revenue of an order, a refund, a value an ``aggregate`` reads): a
    ``finite_number`` below ``MAX_AMOUNT`` either way; None without one."""
    number = finite_number(v)
    return number if number is not None and abs(number) < MAX_AMOUNT else None


def compare(op: str, actual: Any, expected: Any, today: date | None = None) -> bool:
    if op == "exists":
        return actual is not None
    if op == "not_exists":
        return actual is None
    if op == "equals":
        return bool(actual == expected)
    if op == "not_equals":
        return bool(actual != expected)
    if op == "not_in":
        return actual not in expected
    if actual is None:
        return False
    if op == "in":
        return actual in expected
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        return isinstance(actual, list) and expected in actual
    if op == "starts_with":
        return isinstance(actual, str) and actual.startswith(expected)
    if op in ("before", "after", "within_last_days"):
        when = _as_datetime(actual)
        if when is None:
            return False
        if op == "within_last_days":  # today and the N - 1 days before (no date arithmetic: N may be huge)
            return 0 <= ((today or datetime.now(UTC).date()) - when.date()).days < int(expected)
        bound = _as_datetime(expected)
        assert bound is not None  # checked on save
        return when < bound if op == "before" else when > bound
    if op in ("gt", "gte", "lt", "lte") and isinstance(actual, date):  # first_seen / last_seen: instants
        bound = _as_datetime(expected)
        if bound is None:
            return False
        actual, expected = _as_datetime(actual), bound
    elif op in ("gt", "gte", "lt", "lte") and (a := ordered_number(actual)) is not None \
            and (e := ordered_number(expected)) is not None:
        actual, expected = a, e
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


def _matches(filters: Sequence[PropertyFilter], props: Mapping[str, Any], today: date) -> bool:
    return all(compare(f.op, get_path(props, f.property), f.value, today) for f in filters)


def _count_ok(op: str, n: int, count: int) -> bool:
    if op == "at_least":
        return n >= count
    if op == "at_most":
        return n <= count
    return n == count


def _performed(node: PerformedNode, facts: ProfileFacts, today: date) -> bool:
    if node.where:
        n = sum(1 for at, props in facts.events.get(node.event, ())
                if node.in_window(at.date(), today) and _matches(node.where, props, today))
    else:
        n = sum(c for d, c in facts.counts.get(node.event, {}).items() if node.in_window(d, today))
    return _count_ok(node.op, n, node.count)


def _performed_time(node: PerformedTimeNode, facts: ProfileFacts, today: date) -> bool:
    days = [d for d, c in facts.counts.get(node.event, {}).items() if c > 0]
    if not days:
        return False
    day = min(days) if node.which == "first" else max(days)
    if node.op == "within_last_days":
        return (today - day).days < int(node.value)
    if node.op == "over_days_ago":
        return (today - day).days > int(node.value)
    # instants, as ``compare`` orders a date trait (a date value is the start of its UTC day); an occurrence counted
    # before its instant was kept (segment_0008) is at the start of its day
    first_last = facts.times.get(node.event)
    when = (first_last[0] if node.which == "first" else first_last[1]) if first_last else \
        datetime.combine(day, time(), UTC)
    return compare(node.op, when, node.value)


def _aggregate(node: AggregateNode, facts: ProfileFacts, today: date) -> bool:
    values: list[float] = []
    for at, props in facts.events.get(node.event, ()):
        if node.in_window(at.date(), today) and _matches(node.where, props, today):
            v = amount(get_path(props, node.property))  # read as the revenue reads its amounts
            if v is not None:
                values.append(v)
    if node.function == "count":
        result: float | None = float(len(values))
    elif not values:
        result = 0.0 if node.function == "sum" else None
    elif node.function == "sum":
        result = sum(values)
    elif node.function == "avg":
        result = sum(values) / len(values)
    else:
        result = min(values) if node.function == "min" else max(values)
    return result is not None and compare(node.op, result, node.value)


def _keyed(node: KeyedNode, facts: ProfileFacts, today: date) -> bool:
    started: dict[Any, datetime] = {}
    for at, props in facts.events.get(node.event, ()):
        key = get_path(props, node.key)
        if key is not None and not isinstance(key, dict | list):
            if node.within_days is None or (today - at.date()).days < node.within_days:
                started.setdefault(key, at)
    if not started:
        return False
    closed: set[Any] = set()
    for at, props in facts.events.get(node.without, ()):
        key = get_path(props, node.key)
        if key in started and at >= started[key]:
            closed.add(key)
    return any(k not in closed for k in started)


Predicate = Callable[[ProfileFacts], bool]


def evaluate(node: Any, facts: ProfileFacts, today: date) -> bool:
    return compile_condition(node, today)(facts)


def compile_condition(node: Any, today: date) -> Predicate:
    """The definition as a function of one profile's facts, for ``today``: the tree is walked once per
    evaluation pass, not once per profile (a full evaluation calls it for every profile)."""
    if isinstance(node, AndNode | OrNode):
        parts = [compile_condition(c, today) for c in node.children]
        if isinstance(node, AndNode):
            return lambda f: all(p(f) for p in parts)
        return lambda f: any(p(f) for p in parts)
    if isinstance(node, NotNode):
        inner = compile_condition(node.child, today)
        return lambda f: not inner(f)
    if isinstance(node, TraitNode):
        trait, op, value = node.trait, node.op, node.value
        return lambda f: compare(op, f.traits.get(trait), value, today)
    if isinstance(node, AttributeNode):
        attr, op, value = node.attribute, node.op, node.value
        return lambda f: compare(op, f.attributes.get(attr), value, today)
    if isinstance(node, PerformedNode) and not node.where:
        return _compile_count(node.event, node.op, node.count, node, today)
    if isinstance(node, EmailEngagementNode):
        window = _Windowed(within_days=node.within_days)
        return _compile_count(EMAIL_OPENED if node.action == "opened" else EMAIL_CLICKED, "at_least", node.count,
                              window, today)
    if isinstance(node, RandomBucketNode):
        seed, percent = node.seed, node.percent
        return lambda f: bucket(f.profile_id, seed) < percent
    if isinstance(node, StageNode):
        stage = node.stage
        return lambda f: f.stage == stage
    if isinstance(node, SegmentRefNode):
        sid = str(node.segment_id)
        return lambda f: sid in f.segments
    if isinstance(node, ListNode):
        lid = str(node.list_id)
        return lambda f: lid in f.lists
    return lambda f: _evaluate_detail(node, f, today)


def _compile_count(event: str, op: str, count: int, window: "_Windowed", today: date) -> Predicate:
    """Per-day counts of ``event`` inside the window, compared with ``count``."""
    if window.between is not None:
        since, until = window.between.start, window.between.end
    elif window.within_days is not None:
        since, until = today - timedelta(days=window.within_days - 1), today
    else:
        since = until = None

    def run(f: ProfileFacts) -> bool:
        days = f.counts.get(event)
        if not days:
            n = 0
        elif since is None:
            n = sum(days.values())
        else:
            n = sum(c for d, c in days.items() if since <= d <= until)  # type: ignore[operator]
        return _count_ok(op, n, count)

    return run


def _evaluate_detail(node: Any, facts: ProfileFacts, today: date) -> bool:
    """Conditions over stored occurrences, accounts and first/last days (less common: not compiled further)."""
    if isinstance(node, AccountTraitNode):
        return any(compare(node.op, a.get(node.trait), node.value, today) for a in facts.accounts)
    if isinstance(node, PerformedNode):
        return _performed(node, facts, today)
    if isinstance(node, PerformedTimeNode):
        return _performed_time(node, facts, today)
    if isinstance(node, AggregateNode):
        return _aggregate(node, facts, today)
    if isinstance(node, LastEventPropertyNode):
        occurrences = facts.events.get(node.event, ())
        return bool(occurrences) and compare(node.op, get_path(occurrences[-1][1], node.property), node.value,
                                             today)
    if isinstance(node, KeyedNode):
        return _keyed(node, facts, today)
    raise TypeError(f"not a condition node: {node!r}")
