"""Full passes as set operations: segments made only of common condition kinds are compiled to one SQL
statement per chunk of profiles, which computes the chunk's memberships, compares them with the stored
ones and writes the entries, exits and transitions, without shipping any fact to Python.

A backfill or a daily re-check over every profile is where this matters: per profile, Python
evaluation (conditions.py) costs reading the facts over the wire and evaluating them one by one, which
at a million profiles is minutes; PostgreSQL aggregating the same rows where they lie is several times
cheaper. Live re-evaluation of the profiles an event touched stays in Python (a few profiles at a
time, every kind of condition), so both must give the same answer: the statement mirrors
``conditions.compare`` (Python's equality and ordering across JSON types, bools counting as 0/1) and
``attributes.derive``, and a property test (tests/integration/test_set_evaluation.py) holds the two to
the same memberships on random definitions and profiles.

Compiled: ``and`` / ``or`` / ``not``; ``trait`` with every operator but the date ones (``before``,
``after``, ``within_last_days``) against a string, number, bool or null (lists of those for ``in``);
``performed`` without property filters; ``performed_time``; ``email_engagement``; ``attribute`` (but
``orders_per_month`` and ``lead_score``); ``random_bucket``; ``list``. Everything else — date traits,
property filters, aggregates over stored events, keyed conditions, accounts, stages, other segments —
makes the whole segment ``compilable() == False`` and keeps it on the Python path, as does a definition
too large for one statement (``MAX_COLUMNS``, ``MAX_PARAMS``).

Numbers compare as exact decimals here and as Python numbers there; they differ only for integers beyond
2**53 compared with fractional numbers, which no trait or threshold is in practice.
"""

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from services.segment import conditions as c
from shared.validation import NUMERIC_TEXT, numeric_text

# computed attributes (attributes.derive) over ``s``: a profile_stats row with the profile's ``traits``
_COMPILED_ATTRIBUTES = {
    "order_count": "s.order_count::numeric",
    "total_revenue": "round(s.revenue, 2)",
    "average_order_value": "case when s.order_count <> 0 then round(s.revenue / s.order_count, 2) end",
    "days_since_last_activity": "({today} - (s.last_seen at time zone 'UTC')::date)::numeric",
    "days_since_last_order": "({today} - (s.last_order_at at time zone 'UTC')::date)::numeric",
    # the trait answers only on the NPS scale (attributes.trait_nps; metrics.py reads it the same way)
    "last_nps": "coalesce(s.last_nps, case when jsonb_typeof(s.traits -> 'nps') = 'number' "
                "and (s.traits -> 'nps')::numeric between 0 and 10 then (s.traits -> 'nps')::numeric end)",
}
_SUBJECT = "\x00subject\x00"
_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_COUNT = {"at_least": ">=", "at_most": "<=", "exactly": "="}


class NotCompilable(Exception):
    """The node needs per-profile Python evaluation."""


# What one statement may hold, below PostgreSQL's limits: 1664 entries in a select list (the statement's rows
# carry one column per distinct per-day count its definitions need, beside profile_stats' own ten) and 32767
# parameters (the protocol counts them in 16 bits). A definition needing more (thousands of conditions) is
# evaluated in Python; segments share a statement only while their costs, added up, stay below both.
MAX_COLUMNS = 1500
MAX_PARAMS = 32000


def _cost(node: Any) -> tuple[int, int]:
    """(columns, parameters) ``node`` adds to a statement at most (less where it shares them with others)."""
    st = _Statement(date.today())
    st.condition(node)
    return len(st.columns), len(st.params)


def compilable(node: Any) -> bool:
    try:
        columns, params = _cost(node)
    except NotCompilable:
        return False
    return columns <= MAX_COLUMNS and params <= MAX_PARAMS


def _scalar_kind(value: Any) -> str:
    """How a definition's value compares: as text, as a number (bools are 0 and 1, as in Python), or null."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bool) or isinstance(value, int) or isinstance(value, float) and math.isfinite(value):
        return "num"
    raise NotCompilable(f"value {value!r}")


def _by_kind(values: list[Any]) -> dict[str, list[Any]]:
    kinds: dict[str, list[Any]] = {"str": [], "num": [], "null": []}
    for value in values:
        kinds[_scalar_kind(value)].append(value)
    return kinds


def _presence_or_membership(subject: str, op: str, value: Any, found: Callable[[list[Any]], str]) -> str | None:
    """The operators every kind of value shares (``exists``, ``equals``, ``in`` and their negations), with
    ``found(values)`` saying whether the subject equals one of ``values``; None for any other operator."""
    if op == "exists":
        return f"({subject} is not null)"
    if op == "not_exists":
        return f"({subject} is null)"
    if op in ("equals", "not_equals"):
        eq = found([value])
        return eq if op == "equals" else f"(not {eq})"
    if op == "in":  # Python: a missing value is in no list, not even one holding null
        return found([x for x in value if x is not None])
    if op == "not_in":
        return f"(not {found(value)})"
    return None


_NEVER_REACHED = 2**62  # beyond any count of events and any number of days between two dates


def _clamped(value: Any) -> int:
    """A whole number from a definition, within bigint: past what no count or day difference reaches, every
    comparison with it comes out the same."""
    return max(-_NEVER_REACHED, min(_NEVER_REACHED, int(value)))


def _decimal(value: Any) -> Decimal:
    return Decimal(int(value)) if isinstance(value, bool | int) else Decimal(repr(value))


# For ordering (gt, lt …), as conditions.compare: also a text holding a number (shared.validation.NUMERIC_TEXT)
_NUMERIC_TEXT = "'^(" + NUMERIC_TEXT + ")$'"
_BRACED = _NUMERIC_TEXT.replace("{", "{{").replace("}", "}}")  # inside a template filled by str.format
_ORDERED_NUM_OF = ("(case jsonb_typeof({v}) when 'number' then ({v})::numeric "
                   "when 'boolean' then (case when {v} = 'true'::jsonb then 1 else 0 end)::numeric "
                   "when 'string' then (case when ({v} #>> '{{}}') ~ " + _BRACED
                   + " then ({v} #>> '{{}}')::numeric end) end)")
# A JSON value as a number when Python would compare it as one (numbers, and bools as 0/1), else null.
_NUM_OF = ("(case jsonb_typeof({v}) when 'number' then ({v})::numeric "
           "when 'boolean' then (case when {v} = 'true'::jsonb then 1 else 0 end)::numeric end)")


@dataclass
class _Statement:
    """Parameters and per-profile aggregate columns collected while definitions compile ($1 is the
    workspace; ``reserved`` counts the statement's own parameters). Conditions read ``s``: a profile_stats
    row with the profile's ``traits`` and its per-day counts aggregated into one column per need."""

    today: date
    reserved: int = 2  # $1.. taken by the statement itself
    params: list[Any] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # aggregate expression -> column name
    events: set[str] = field(default_factory=set)

    placeholders: dict[tuple[str, str], str] = field(default_factory=dict)

    def param(self, value: Any, cast: str) -> str:
        """A placeholder for ``value``; the same value gets the same one, so the same aggregate needed by
        several segments (e.g. "App Opened in the last 30 days") is one column, computed once."""
        key = (cast, repr(value))
        if key not in self.placeholders:
            self.params.append(value)
            self.placeholders[key] = f"${len(self.params) + self.reserved}::{cast}"
        return self.placeholders[key]

    def column(self, aggregate: str) -> str:
        if aggregate not in self.columns:
            self.columns[aggregate] = f"a{len(self.columns)}"
        return f"s.{self.columns[aggregate]}"

    def about(self, subject: Callable[[], str], comparison: Callable[[str], str]) -> str:
        """``comparison`` of the SQL value ``subject`` makes; the subject's parameters are added only if the
        comparison reads it (one that is constant, e.g. ``in []``, does not: and a parameter the statement
        never uses has no type, which PostgreSQL refuses)."""
        compared = comparison(_SUBJECT)
        return compared.replace(_SUBJECT, subject()) if _SUBJECT in compared else compared

    # --- conditions ---------------------------------------------------------------------------------

    def condition(self, node: Any) -> str:
        """A SQL boolean that is never null."""
        if isinstance(node, c.AndNode | c.OrNode):
            joiner = " and " if isinstance(node, c.AndNode) else " or "
            return "(" + joiner.join(self.condition(ch) for ch in node.children) + ")"
        if isinstance(node, c.NotNode):
            return f"(not {self.condition(node.child)})"
        if isinstance(node, c.TraitNode):
            return self.about(lambda: f"nullif(s.traits -> {self.param(node.trait, 'text')}, 'null'::jsonb)",
                              lambda v: self.json_compare(v, node.op, node.value))
        if isinstance(node, c.AttributeNode):
            if node.attribute not in _COMPILED_ATTRIBUTES:
                raise NotCompilable(node.attribute)
            expr = _COMPILED_ATTRIBUTES[node.attribute]
            return self.about(lambda: expr.format(today=self.param(self.today, "date")) if "{today}" in expr else expr,
                              lambda x: self.number_compare(x, node.op, node.value))
        if isinstance(node, c.PerformedNode) and not node.where:
            return self.count(node.event, node.op, node.count, node)
        if isinstance(node, c.EmailEngagementNode):
            event = c.EMAIL_OPENED if node.action == "opened" else c.EMAIL_CLICKED
            return self.count(event, "at_least", node.count, c._Windowed(within_days=node.within_days))
        if isinstance(node, c.PerformedTimeNode):
            return self.performed_time(node)
        if isinstance(node, c.RandomBucketNode):
            digest = (f"('x' || left(encode(sha256(convert_to({self.param(node.seed, 'text')} || ':' || "
                      f"s.profile_id::text, 'UTF8')), 'hex'), 16))::bit(64)::bigint")
            unsigned = f"(({digest}::numeric + 18446744073709551616) % 18446744073709551616)"  # one digest a row
            return (f"({unsigned}::float8 / 18446744073709551616::float8 * 100::float8 "
                    f"< {self.param(float(node.percent), 'float8')})")
        if isinstance(node, c.ListNode):
            return (f"exists (select 1 from segment.list_members lm where lm.workspace_id = $1 "
                    f"and lm.list_id = {self.param(node.list_id, 'uuid')} and lm.profile_id = s.profile_id)")
        raise NotCompilable(type(node).__name__)

    def count(self, event: str, op: str, n: int, window: c._Windowed) -> str:
        self.events.add(event)
        where = f"event = {self.param(event, 'text')}"
        if window.between is not None:
            since, until = window.between.start, window.between.end
        elif window.within_days is not None:
            since, until = self.today - timedelta(days=window.within_days - 1), self.today
        else:
            since = until = None
        if since is not None:
            where += f" and day between {self.param(since, 'date')} and {self.param(until, 'date')}"
        col = self.column(f"sum(count) filter (where {where})")
        # a count has no upper bound in a definition (at_least 10**30 is valid, and never true): clamped to what
        # no count reaches, it compares the same as a bigint (numeric made every comparison cast the count)
        return f"(coalesce({col}, 0) {_COUNT[op]} {self.param(_clamped(n), 'bigint')})"

    def performed_time(self, node: c.PerformedTimeNode) -> str:
        self.events.add(node.event)
        fn = "min" if node.which == "first" else "max"
        if node.op in ("within_last_days", "over_days_ago"):
            day = self.column(f"{fn}(day) filter (where event = {self.param(node.event, 'text')} and count > 0)")
            ago = f"({self.param(self.today, 'date')} - {day})"
            cmp = "<" if node.op == "within_last_days" else ">"
            return f"coalesce({ago} {cmp} {self.param(_clamped(node.value), 'bigint')}, false)"  # (any N)
        # instants, as conditions.compare orders a date trait: the first / last occurrence's (a row counted before
        # they were kept, segment_0008, at the start of its day) with the value's (a date: the start of its UTC day)
        bound = c._as_datetime(node.value)
        assert bound is not None  # checked on save
        at = "first_at" if node.which == "first" else "last_at"
        when = self.column(f"{fn}(coalesce({at}, day::timestamp at time zone 'UTC')) "
                           f"filter (where event = {self.param(node.event, 'text')} and count > 0)")
        return f"coalesce({when} {'<' if node.op == 'before' else '>'} {self.param(bound, 'timestamptz')}, false)"

    # --- comparisons (conditions.compare) ------------------------------------------------------------

    def json_compare(self, v: str, op: str, value: Any) -> str:
        """``compare(op, actual, value)`` where ``v`` is the actual JSON value (null when absent)."""
        if (common := _presence_or_membership(v, op, value, lambda values: self.json_in(v, values))) is not None:
            return common
        text = f"({v} #>> '{{}}')"
        is_text = f"jsonb_typeof({v}) = 'string'"
        if op == "starts_with":
            return f"coalesce({is_text} and starts_with({text}, {self.param(value, 'text')}), false)"
        if op == "contains":
            kind = _scalar_kind(value)
            element = self.json_in("nullif(x, 'null'::jsonb)", [value])
            in_array = f"exists (select 1 from jsonb_array_elements({v}) x where {element})"
            if kind == "str":
                in_text = f"strpos({text}, {self.param(value, 'text')}) > 0"
                return (f"coalesce(case jsonb_typeof({v}) when 'string' then {in_text} "
                        f"when 'array' then {in_array} else false end, false)")
            return f"coalesce(jsonb_typeof({v}) = 'array' and {in_array}, false)"
        if op in _ORDER:
            kind = _scalar_kind(value)
            as_text = f"{text} collate \"C\" {_ORDER[op]} {self.param(value, 'text')}" if kind == "str" else ""
            if kind == "str" and numeric_text(value):  # numbers (and numbers as text) compare as numbers
                number = f"{_ORDERED_NUM_OF.format(v=v)} {_ORDER[op]} {self.param(Decimal(value), 'numeric')}"
                return (f"coalesce(case when jsonb_typeof({v}) = 'number' or {is_text} and {text} ~ {_NUMERIC_TEXT} "
                        f"then {number} when {is_text} then {as_text} end, false)")
            if kind == "str":
                return f"coalesce({is_text} and {as_text}, false)"
            if kind == "num":
                num_of = _NUM_OF if isinstance(value, bool) else _ORDERED_NUM_OF  # Python: "1" > True fails
                return f"coalesce({num_of.format(v=v)} {_ORDER[op]} {self.param(_decimal(value), 'numeric')}, false)"
            return "false"  # Python: None cannot be ordered
        raise NotCompilable(op)  # dates: parsed from text with Python's rules, left to Python

    def json_in(self, v: str, values: list[Any]) -> str:
        """True when the JSON value ``v`` equals (Python's ``==``) one of ``values``; never null."""
        kinds = _by_kind(values)
        parts = []
        if kinds["str"]:
            parts.append(f"coalesce(jsonb_typeof({v}) = 'string' and ({v} #>> '{{}}') = "
                         f"any({self.param(kinds['str'], 'text[]')}), false)")
        if kinds["num"]:
            nums = [_decimal(x) for x in kinds["num"]]
            parts.append(f"coalesce({_NUM_OF.format(v=v)} = any({self.param(nums, 'numeric[]')}), false)")
        if kinds["null"]:
            parts.append(f"({v} is null)")
        return "(" + " or ".join(parts) + ")" if parts else "false"

    def number_in(self, x: str, values: list[Any]) -> str:
        """True when the number ``x`` (null for None) equals one of ``values``; a text never does."""
        kinds = _by_kind(values)
        parts = []
        if kinds["num"]:
            parts.append(f"coalesce({x} = any({self.param([_decimal(n) for n in kinds['num']], 'numeric[]')}), false)")
        if kinds["null"]:
            parts.append(f"({x} is null)")
        return "(" + " or ".join(parts) + ")" if parts else "false"

    def number_compare(self, x: str, op: str, value: Any) -> str:
        """``compare(op, actual, value)`` where ``x`` is a numeric SQL expression, null for None."""
        if (common := _presence_or_membership(x, op, value, lambda values: self.number_in(x, values))) is not None:
            return common
        if op in _ORDER:
            if _scalar_kind(value) == "num":
                return f"coalesce({x} {_ORDER[op]} {self.param(_decimal(value), 'numeric')}, false)"
            if isinstance(value, str) and numeric_text(value):  # "5": a number as text compares as one
                return f"coalesce({x} {_ORDER[op]} {self.param(Decimal(value), 'numeric')}, false)"
            return "false"  # Python: a number and a string or None cannot be ordered
        # contains / starts_with / dates: a number is neither text, list nor date
        return "false"


@dataclass(frozen=True)
class Compiled:
    sql: str
    params: tuple[Any, ...]


# Segments per statement of a pass: their memberships are one bit each of a bigint per profile (the sign bit
# left alone).
SEGMENTS_PER_STATEMENT = 62


def compile_passes(segments: list[tuple[uuid.UUID, int, Any]], today: date) -> list[Compiled]:
    """``compile_pass`` statements for ``segments`` (all ``compilable``), in order: as many segments per
    statement as ``SEGMENTS_PER_STATEMENT``, ``MAX_COLUMNS`` and ``MAX_PARAMS`` allow."""
    groups: list[list[tuple[uuid.UUID, int, Any]]] = []
    used = (0, 0)
    for segment in segments:
        columns, params = _cost(segment[2])
        if (not groups or len(groups[-1]) == SEGMENTS_PER_STATEMENT or used[0] + columns > MAX_COLUMNS
                or used[1] + params > MAX_PARAMS):
            groups.append([])
            used = (0, 0)
        groups[-1].append(segment)
        used = (used[0] + columns, used[1] + params)
    return [compile_pass(group, today) for group in groups]


def compile_pass(segments: list[tuple[uuid.UUID, int, Any]], today: date) -> Compiled:
    """One statement evaluating ``segments`` (id, version, parsed definition; all ``compilable``; at most
    ``SEGMENTS_PER_STATEMENT``) for a chunk of profiles: takes $1 = workspace, $2 = profile ids; writes
    memberships and transitions; returns the number of transitions written.

    A profile's memberships, before and after, are bits of one bigint each, and only a profile whose bits
    differ becomes rows (one per change): a profile×segment row for every membership, compared with the
    stored ones by a set difference, cost more than reading the facts (42 → 25 ms per 1,000 profiles and 20
    segments), and a pass that changes little (the daily re-check) now pays almost nothing for it.
    """
    if not 0 < len(segments) <= SEGMENTS_PER_STATEMENT:
        raise ValueError(f"1 to {SEGMENTS_PER_STATEMENT} segments per statement, not {len(segments)}")
    st = _Statement(today)
    bits = " | ".join(f"(({st.condition(node)})::int::bigint << {i})" for i, (_, _, node) in enumerate(segments))
    ids = st.param([s[0] for s in segments], "uuid[]")
    versions = st.param([s[1] for s in segments], "int[]")
    # Every read is an index probe per profile of the chunk ("offset 0" keeps a subquery a loop): with
    # "= any(ids)" the planner sometimes preferred reading the whole table, and with the statistics of a
    # table a first pass is still filling, every membership of the workspace; and with "segment_id = any(ids)"
    # in the probe of memberships, one descent of the primary key per segment (20 per profile: 40 % of a pass
    # that changes nothing, at 1 M profiles) instead of one of (workspace, profile). Conditions read ``s``, a row of
    # ``p``; "materialized": the bits are computed once per profile, not once per segment ``ch`` joins them with.
    sql = f"""
        with p as (
            select s.*, t.traits {_counts_columns(st)}, o.old from unnest($2::uuid[]) as u(pid)
             cross join lateral (select * from segment.profile_stats
                                  where workspace_id = $1 and profile_id = u.pid offset 0) s
              left join lateral (select traits from segment.profile_traits
                                  where workspace_id = $1 and profile_id = u.pid offset 0) t on true
             {_counts(st, "u.pid")}
             cross join lateral (select coalesce(bit_or(1::bigint << (k - 1)), 0) as old
                                   from (select array_position({ids}, segment_id) as k from segment.memberships
                                          where workspace_id = $1 and profile_id = u.pid offset 0) ms
                                  where k is not null) o
        ),
        h as materialized (select s.profile_id, {bits} as new, s.old from p as s),
        ch as (
            select h.profile_id, v.sid, v.version, ((h.new >> (v.i::int - 1)) & 1) = 1 as entered
              from h cross join unnest({ids}, {versions}) with ordinality as v(sid, version, i)
             where h.new <> h.old and (((h.new # h.old) >> (v.i::int - 1)) & 1) = 1
        ),
        ins as (  -- no "on conflict": every writer of memberships holds the chunk's stripe locks (a speculative
                  -- insert cost ~15 % of a first evaluation)
            insert into segment.memberships (workspace_id, segment_id, profile_id)
            select $1, sid, profile_id from ch where entered
        ),
        del as (
            delete from segment.memberships d using ch
             where not ch.entered and d.workspace_id = $1 and d.segment_id = ch.sid and d.profile_id = ch.profile_id
        ),
        t as (
            insert into segment.transitions (workspace_id, segment_id, segment_version, profile_id, kind)
            select $1, sid, version, profile_id, case when entered then 'entered' else 'exited' end from ch
            returning 1
        )
        select count(*) from t
    """
    return Compiled(sql=sql, params=tuple(st.params))


def _counts_columns(st: _Statement) -> str:
    return ", c.*" if st.columns else ""


def _counts(st: _Statement, profile: str) -> str:
    """The per-day counts a statement's conditions need, aggregated per profile into one column per need."""
    if not st.columns:
        return ""
    cols = ", ".join(f"{agg} as {name}" for agg, name in st.columns.items())
    return (f"cross join lateral (select {cols} from segment.event_counts where workspace_id = $1 "
            f"and profile_id = {profile} and event = any({st.param(sorted(st.events), 'text[]')})) c")


def compile_search(node: Any, today: date) -> Compiled:
    """One statement over every profile of a workspace ($1) for a definition: how many match, how many were
    evaluated, and the ids of the first matches after $2 (a profile id, or null), at most $3 of them.
    Previews and searches at a million profiles take seconds this way instead of minutes."""
    st = _Statement(today, reserved=3)
    hit = st.condition(node)
    sql = f"""
        with p as (
            select s.*, t.traits {_counts_columns(st)} from segment.profile_stats s
              left join segment.profile_traits t on t.workspace_id = s.workspace_id and t.profile_id = s.profile_id
             {_counts(st, "s.profile_id")}
             where s.workspace_id = $1
        ),
        hits as (select s.profile_id from p as s where {hit})
        select (select count(*) from hits) as matched,
               (select count(*) from segment.profile_stats where workspace_id = $1) as evaluated,
               array(select profile_id from hits where $2::uuid is null or profile_id > $2::uuid
                      order by profile_id limit $3::int) as ids
    """
    return Compiled(sql=sql, params=tuple(st.params))
