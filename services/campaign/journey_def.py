"""What a campaign is, as data: its trigger, entry rules, goal, exit rules and the journey's steps.

A journey is a list of steps with ids; each step names the step that follows (``next``, or one target
per outcome for ``wait_for_event``, ``branch`` and ``split``); a missing ``next`` ends the journey.
Validated on save: ids unique, every target exists, the first step is where users enter.

Steps:
- ``send``: a template (its channel) to the profile, subject to consent, quiet hours and frequency caps;
- ``delay``: wait ``seconds``;
- ``wait_until``: the next ``time`` (HH:MM) on an allowed weekday in the user's time zone;
- ``wait_until_attribute``: the date in a profile trait plus ``offset_seconds`` (e.g. a day before a
  renewal); ``on_missing`` when the trait is absent or that moment has passed;
- ``wait_for_event``: until ``event`` (optionally with a property equal to the trigger's, e.g. the same
  ``cart_id``) → ``on_event``, or ``timeout_seconds`` → ``on_timeout``;
- ``branch``: a condition on traits, segment membership, an event since entry, or engagement with an
  earlier send step → ``yes`` / ``no``;
- ``split``: A/B/n by weight, stable per profile → each variant's ``next``;
- ``update_attribute``: set profile traits (through ingest, as an identify from the campaign);
- ``webhook``: POST the journey's context to a URL;
- ``exit``: end here.
"""

import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter
from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, model_validator

from shared.validation import (
    FieldError,
    IsoDatetime,
    JsonBool,
    JsonFloat,
    JsonInt,
    StorableModel,
    bounded_json_int,
    ordered_number,
)

MAX_STEPS = 100
MAX_WAIT_SECONDS = 366 * 86400  # the longest delay, timeout, goal window, entry period or date offset


class StepError(FieldError):
    """A journey's graph is wrong at a place (``at``, as validation errors name places: ``steps.2.next``): a
    :class:`FieldError` naming that path, so every reader of the error (the API's 422, ``tenure apply``) says it."""

    def __init__(self, at: str, message: str):
        super().__init__(tuple(at.split(".")), message)
        self.at = at


STORED = {"stored": True}  # the validation context of a definition read back from the database (journeys.parse)


def _with_offset(value: datetime, info: ValidationInfo) -> datetime:
    """A moment of a definition (a split's ``winner_at``, a one-off ``at``) has a UTC offset: without one it is
    no moment (which zone?), and compared with the worker's clock it failed every journey reaching it. One stored
    before that was refused is read as UTC (the date filter reads a time without an offset so too), so those
    journeys run."""
    if value.tzinfo is not None:
        return value
    if (info.context or {}).get("stored"):
        return value.replace(tzinfo=UTC)
    raise ValueError("needs a UTC offset: ISO 8601 with offset, e.g. 2026-12-15T09:00:00+01:00 or "
                     "2026-12-15T08:00:00Z")


Moment = Annotated[IsoDatetime, AfterValidator(_with_offset)]


class _Model(StorableModel):
    """Names, values, traits and URLs of a journey are stored (jsonb) and used by workers: a NUL or a lone
    surrogate in any of them is refused at its field (see StorableModel)."""

    model_config = ConfigDict(extra="forbid")


_VALUE = "the value compared with (JSON: text, number, boolean; a list for `in`; not used by `exists`)"


class PropertyFilter(_Model):
    property: str = Field(min_length=1, examples=["plan"], description="dots reach into nested objects")
    op: Literal["equals", "not_equals", "exists", "gt", "gte", "lt", "lte", "contains", "in"] = "equals"
    value: Any = Field(None, description=_VALUE)


class EventTrigger(_Model):
    type: Literal["event"] = "event"
    event: str = Field(min_length=1, examples=["Signed Up"])
    where: list[PropertyFilter] = Field(default_factory=list, description="every filter must match")
    max_age_seconds: JsonInt = Field(
        86400, ge=0, description="ignore events that happened longer ago than this (imports and backfills do not "
                                 "start journeys); 0: any age")


Stage = Literal["onboarding", "engaged", "loyal", "advocacy", "reactivated", "at_risk", "churned"]
STAGES: tuple[str, ...] = get_args(Stage)


class SegmentRef(_Model):
    """A saved segment (``segment_id``) or a lifecycle stage (``stage``)."""

    segment_id: uuid.UUID | None = None
    stage: Stage | None = None

    @model_validator(mode="after")
    def _one_target(self) -> "SegmentRef":
        if (self.segment_id is None) == (self.stage is None):
            raise ValueError("give segment_id or stage")
        return self

    def label(self) -> str:
        return f"stage {self.stage}" if self.stage else f"segment {self.segment_id}"


class SegmentTrigger(SegmentRef):
    """Entering (or leaving) a segment; lifecycle stages are segments too (``stage`` instead of an id)."""

    type: Literal["segment_entered", "segment_exited"] = "segment_entered"


class ScheduleTrigger(_Model):
    """A broadcast to a segment's members: once (``at``) or recurring (``cron``, in ``timezone``)."""

    type: Literal["schedule"] = "schedule"
    segment_id: uuid.UUID = Field(description="the audience: the segment's members when it fires")
    at: Moment | None = Field(None, description="one-off: when (ISO 8601 with offset); to come when saved, and "
                                                     "skipped, not sent late, if missed by more than an hour")
    cron: str | None = Field(None, examples=["0 9 * * 1"], description="recurring: a 5-field cron expression")
    timezone: str = Field("UTC", examples=["Europe/Paris"], description="the zone the cron expression is read in")

    @model_validator(mode="after")
    def _when(self) -> "ScheduleTrigger":
        if self.at is None and self.cron is None:
            raise FieldError("at", "give at (one-off) or cron (recurring)")
        if self.at is not None and self.cron is not None:
            raise FieldError("cron", "give at (one-off) or cron (recurring), not both")
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise FieldError("cron", f"{self.cron!r} is not a valid cron expression")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise FieldError("timezone", f"unknown time zone {self.timezone!r}") from None
        return self


class ApiTrigger(_Model):
    """Only ``POST /v1/campaigns/{id}/trigger`` (transactional messages with data)."""

    type: Literal["api"] = "api"


Trigger = Annotated[EventTrigger | SegmentTrigger | ScheduleTrigger | ApiTrigger, Field(discriminator="type")]


EntryRule = Literal["once", "once_per_period", "every_time"]


class Entry(_Model):
    rule: EntryRule | None = Field(
        None, description="once (ever), once_per_period or every_time. Omitted: every_time for `api` and `schedule` "
                          "triggers (each call, each slot) and the `template_id` shorthand; once for `event` and "
                          "`segment_*` triggers")
    period_seconds: bounded_json_int(ge=60) | None = Field(
        None, description="with once_per_period (at most 366 days)")
    holdout_percent: JsonFloat = Field(0, ge=0, le=100, description="share of entrants who get nothing (lift)")

    @model_validator(mode="after")
    def _period(self) -> "Entry":
        if self.rule == "once_per_period" and not self.period_seconds:
            raise FieldError("period_seconds", "once_per_period needs period_seconds")
        return self


class Goal(_Model):
    event: str = Field(min_length=1, examples=["Order Completed"])
    within_seconds: JsonInt = Field(7 * 86400, ge=60, description="the conversion window (at most 366 days)")
    exit_on_conversion: JsonBool = True


class _Step(_Model):
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$",
                    )


class SendStep(_Step):
    type: Literal["send"] = "send"
    template_id: uuid.UUID
    next: str | None = None
    optimize_send_time: JsonBool = Field(False, description="wait (up to a day) for the hour this user most often "
                                                        "opens or clicks; too little history: send now")


class DelayStep(_Step):
    type: Literal["delay"] = "delay"
    seconds: JsonInt = Field(ge=0, le=MAX_WAIT_SECONDS)
    next: str | None = None


class WaitUntilStep(_Step):
    type: Literal["wait_until"] = "wait_until"
    time: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", examples=["09:00"], description="local HH:MM")
    weekdays: list[JsonInt] = Field(default_factory=lambda: list(range(7)), description="0 = Monday … 6 = Sunday")
    next: str | None = None

    @model_validator(mode="after")
    def _days(self) -> "WaitUntilStep":
        if not self.weekdays or any(d < 0 or d > 6 for d in self.weekdays):
            raise FieldError("weekdays", "weekdays must be a non-empty list of 0 (Monday) … 6 (Sunday)")
        return self


class WaitUntilAttributeStep(_Step):
    type: Literal["wait_until_attribute"] = "wait_until_attribute"
    trait: str = Field(min_length=1, examples=["renewal_date"],
                       description="the profile trait holding the date: ISO 8601 (a date, or a time without an "
                                   "offset, in the user's time zone) or Unix time (s, or ms beyond 2e10)")
    offset_seconds: JsonInt = Field(0, description="e.g. -86400: a day before (at most 366 days either way); whole "
                                                   "days are calendar days in the user's zone, across DST changes")
    next: str | None = None
    on_missing: str | None = Field(None, description="when the trait is absent or the moment has passed")


class Match(_Model):
    property: str = Field(min_length=1, examples=["cart_id"],
                          description="property of the awaited event (dots reach into nested objects)")
    trigger_property: str = Field(min_length=1, examples=["cart_id"],
                                  description="property of the triggering event it must equal")


class WaitForEventStep(_Step):
    type: Literal["wait_for_event"] = "wait_for_event"
    event: str = Field(min_length=1, examples=["Order Completed"])
    match: Match | None = None
    timeout_seconds: JsonInt = Field(ge=1, le=MAX_WAIT_SECONDS)
    on_event: str | None = None
    on_timeout: str | None = None


class TraitCondition(_Model):
    type: Literal["trait"] = "trait"
    trait: str = Field(min_length=1)
    op: Literal["equals", "not_equals", "exists", "gt", "gte", "lt", "lte", "contains", "in"] = "equals"
    value: Any = Field(None, description=_VALUE)


class SegmentCondition(_Model):
    type: Literal["segment"] = "segment"
    segment_id: uuid.UUID


class EventSinceEntryCondition(_Model):
    type: Literal["performed_since_entry"] = "performed_since_entry"
    event: str = Field(min_length=1)


class EngagementCondition(_Model):
    """Engagement with the message an earlier ``send`` step of this journey sent."""

    type: Literal["engaged"] = "engaged"
    step: str = Field(min_length=1, description="id of an earlier send step")
    action: Literal["delivered", "opened", "clicked"] = Field(
        "opened", description="delivered: delivery sent the message (or saw it delivered, or it was opened)")


BranchCondition = Annotated[TraitCondition | SegmentCondition | EventSinceEntryCondition | EngagementCondition,
                            Field(discriminator="type")]


class BranchStep(_Step):
    type: Literal["branch"] = "branch"
    condition: BranchCondition
    yes: str | None = None
    no: str | None = None


class Variant(_Model):
    name: str = Field(min_length=1, max_length=50, examples=["A"],
                      description="the variant's name, unique in the split (journeys and stats report it)")
    weight: JsonFloat = Field(gt=0)
    next: str | None = None


class SplitStep(_Step):
    """A/B/n by weight, stable per profile. With ``winner_after`` or ``winner_at``, once that many users have
    entered the split or that time has come (the first of the two), the variant leading then
    (``experiments.ranked``) is decided, once and for good, and everyone after goes to it."""

    type: Literal["split"] = "split"
    variants: list[Variant] = Field(min_length=2, max_length=10)
    winner_after: bounded_json_int(ge=2) | None = Field(
        None, description="entrants before the winner takes the rest")
    winner_at: Moment | None = Field(
        None, examples=["2026-12-15T09:00:00+01:00"],
        description="when the winner takes the rest (ISO 8601 with offset), if `winner_after` entrants have not "
                    "come first. The winner: the best goal conversion rate so far; on a tie, the best click rate, "
                    "then open rate, of its messages, then the variant listed first")

    @model_validator(mode="after")
    def _names(self) -> "SplitStep":
        if len({v.name for v in self.variants}) != len(self.variants):
            raise FieldError("variants", "variant names must be unique")
        return self


class UpdateAttributeStep(_Step):
    type: Literal["update_attribute"] = "update_attribute"
    traits: dict[str, Any] = Field(min_length=1, examples=[{"onboarding_done": True}])
    next: str | None = None


class WebhookStep(_Step):
    type: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://", examples=["https://example.com/hooks/tenure"],
                     description="the http(s) URL delivery POSTs the journey's context to (campaign_id, "
                                 "journey_id, step, profile, trigger), signed with Tenure-Signature")
    next: str | None = None


class ExitStep(_Step):
    type: Literal["exit"] = "exit"


Step = Annotated[SendStep | DelayStep | WaitUntilStep | WaitUntilAttributeStep | WaitForEventStep | BranchStep
                 | SplitStep | UpdateAttributeStep | WebhookStep | ExitStep, Field(discriminator="type")]


class Journey(_Model):
    """The versioned part of a campaign."""

    trigger: Trigger
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    entry: Entry = Field(default_factory=Entry)
    goal: Goal | None = None
    exit_on: list[str] = Field(default_factory=list, description="events that end the journey at once")
    exit_on_leaving: list[SegmentRef] = Field(
        default_factory=list, max_length=20,
        description="segments or lifecycle stages: leaving any of them ends the journey at once (a churn-prevention "
                    "journey for at-risk users ends when they are active again)",
        examples=[[{"stage": "at_risk"}]])
    exit_on_entering: list[SegmentRef] = Field(
        default_factory=list, max_length=20,
        description="segments or lifecycle stages: entering any of them ends the journey at once (a trial "
                    "nurture ends when the user enters \"paying customers\")",
        examples=[[{"segment_id": "6f1c9a52-3c1e-4d8e-9b1a-2f0c7e5d4a10"}]])
    message_type: Literal["marketing", "transactional"] = "marketing"
    topic: str | None = Field(None, max_length=100, examples=["offers"],
                              description="subscription topic, one of the workspace's `topics`: people who opted "
                                          "out of it get nothing")

    @model_validator(mode="after")
    def _default_rule(self) -> "Journey":
        if self.entry.rule is None:
            self.entry.rule = default_entry_rule(self.trigger)
        return self

    @model_validator(mode="after")
    def _graph(self) -> "Journey":
        ids = [s.id for s in self.steps]
        for i, sid in enumerate(ids):
            if sid in ids[:i]:
                raise StepError(f"steps.{i}.id", f"step id {sid!r} is used twice (also steps.{ids.index(sid)})")
        known = set(ids)
        for i, s in enumerate(self.steps):
            for name, target in target_fields(s):
                if target is not None and target not in known:
                    raise StepError(f"steps.{i}.{name}", f"step {s.id!r} points to unknown step {target!r}")
            if isinstance(s, BranchStep) and isinstance(s.condition, EngagementCondition):
                ref = next((x for x in self.steps if x.id == s.condition.step), None)
                if not isinstance(ref, SendStep):
                    raise StepError(f"steps.{i}.condition.step", f"step {s.id!r}: {s.condition.step!r} is not a send "
                                                                 "step")
        return self

    def step(self, step_id: str) -> Any:
        if (found := self.find(step_id)) is None:
            raise LookupError(f"no step {step_id!r} in this version")
        return found

    def find(self, step_id: str) -> Any | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def calls_out(self) -> bool:
        """Some step acts outside the database (a webhook, a profile update sent to ingest): running it
        twice would act twice."""
        return any(isinstance(s, (UpdateAttributeStep, WebhookStep)) for s in self.steps)

    def template_ids(self) -> set[uuid.UUID]:
        return {s.template_id for s in self.steps if isinstance(s, SendStep)}


def default_entry_rule(trigger: Any) -> EntryRule:
    """The entry rule of a journey that sets none: an API call (a password reset, a receipt) or a broadcast
    slot is a new occasion each time; an event or a segment entry enters a user once ever."""
    return "every_time" if isinstance(trigger, (ApiTrigger, ScheduleTrigger)) else "once"


def unreachable(journey: Journey) -> list[str]:
    """Steps no path from the first step leads to: usually a forgotten ``next`` (steps do not fall through
    to the one listed below them). Refused on save; stored journeys are not re-judged."""
    seen = _reachable(journey, [journey.steps[0].id] if journey.steps else [])
    return [s.id for s in journey.steps if s.id not in seen]


def _reachable(journey: Journey, starts: list[str | None]) -> set[str]:
    """The steps ``starts`` are, and every step a path from them leads to."""
    seen: set[str] = set()
    todo = [t for t in starts if t is not None]
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            todo.extend(t for t in targets(journey.step(sid)) if t is not None)
    return seen


def engaged_before_sent(journey: Journey) -> list[tuple[str, str]]:
    """Branches on engagement with a send step no path runs before them: the message cannot exist yet, so the
    branch could only take ``no``. (place, message) for each; refused on save, stored journeys are not re-judged."""
    return [(f"steps.{i}.condition.step", f"step {s.id!r} asks about the message of {s.condition.step!r}, which "
                                          "no path sends before it: the branch would always take `no` (name a send "
                                          "step that comes earlier)")
            for i, s in enumerate(journey.steps)
            if isinstance(s, BranchStep) and isinstance(s.condition, EngagementCondition)
            and s.id not in _reachable(journey, targets(journey.step(s.condition.step)))]


def unmatchable(journey: Journey) -> list[str]:
    """``wait_for_event`` steps that ``match`` on a property of the trigger when the trigger has none (a
    segment or schedule trigger): they could only time out. Refused on save; stored journeys are not
    re-judged."""
    if isinstance(journey.trigger, (EventTrigger, ApiTrigger)):
        return []
    return [s.id for s in journey.steps if isinstance(s, WaitForEventStep) and s.match is not None]


def segments_named(journey: Journey) -> list[tuple[str, uuid.UUID]]:
    """The saved segments a journey names, each with where (as validation errors name places): the
    trigger's (segment or schedule) and those of branch conditions."""
    out: list[tuple[str, uuid.UUID]] = []
    if isinstance(journey.trigger, (SegmentTrigger, ScheduleTrigger)) and journey.trigger.segment_id:
        out.append(("trigger.segment_id", journey.trigger.segment_id))
    for i, s in enumerate(journey.steps):
        if isinstance(s, BranchStep) and isinstance(s.condition, SegmentCondition):
            out.append((f"steps.{i}.condition.segment_id", s.condition.segment_id))
    for rule in ("exit_on_leaving", "exit_on_entering"):
        out += [(f"{rule}.{i}.segment_id", ref.segment_id) for i, ref in enumerate(getattr(journey, rule))
                if ref.segment_id]
    return out


def target_fields(step: Any) -> list[tuple[str, str | None]]:
    """The steps a step may lead to, each with the field naming it (``variants.1.next``)."""
    if isinstance(step, WaitForEventStep):
        return [("on_event", step.on_event), ("on_timeout", step.on_timeout)]
    if isinstance(step, BranchStep):
        return [("yes", step.yes), ("no", step.no)]
    if isinstance(step, SplitStep):
        return [(f"variants.{i}.next", v.next) for i, v in enumerate(step.variants)]
    if isinstance(step, WaitUntilAttributeStep):
        return [("next", step.next), ("on_missing", step.on_missing)]
    if isinstance(step, ExitStep):
        return []
    return [("next", step.next)]


def targets(step: Any) -> list[str | None]:
    return [target for _, target in target_fields(step)]


def _waits(step: Any, field_name: str) -> bool:
    """Whether following this field of the step always waits first (so a loop through it cannot spin)."""
    if isinstance(step, DelayStep):
        return step.seconds > 0
    if isinstance(step, (WaitUntilStep, WaitUntilAttributeStep)):
        return field_name == "next"
    return isinstance(step, WaitForEventStep) and field_name == "on_timeout"


def instant_loops(journey: "Journey") -> list[tuple[str, list[str]]]:
    """Loops of steps none of which waits (branches pointing back at each other, a zero delay): a user in one
    would run it forever, 50 steps a minute. Each as (the field closing it, the step ids around it). Refused on
    save; stored journeys are not re-judged. (A loop through a delay or a wait is a reminder cycle: allowed.)"""
    index = {s.id: i for i, s in enumerate(journey.steps)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[tuple[str, list[str]]] = []

    def visit(sid: str) -> None:
        state[sid] = 1
        path.append(sid)
        step = journey.steps[index[sid]]
        for name, target in target_fields(step):
            if target is None or target not in index or _waits(step, name):
                continue
            if state.get(target) == 1:
                found.append((f"steps.{index[sid]}.{name}", path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[sid] = 2

    for s in journey.steps:
        if s.id not in state:
            visit(s.id)
    return found


def cron_problem(expression: str) -> str | None:
    """Why a cron expression croniter takes cannot drive a broadcast, if it cannot: a sixth (seconds) or
    seventh (year) field — ``* * * * * *`` fires every second — or a day that never comes (``0 9 30 2 *``),
    on which every look for the latest slot fails. Refused on save; stored journeys are not re-judged (the
    scheduler skips one it cannot place)."""
    if not expression.strip().startswith("@") and len(expression.split()) != 5:
        return (f"{expression!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week; "
                "no seconds or year field)")
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError):
        return f"{expression!r} never fires (no such date)"
    return None


def out_of_range(journey: "Journey") -> list[tuple[str, str]]:
    """Values the schema takes but a journey cannot run with: a cron expression that fires every second or
    never (``cron_problem``), and durations beyond ``MAX_WAIT_SECONDS`` (a goal window, an entry period, a date
    offset) which, far enough, overflow the date arithmetic of every entry or wake-up, and a split's weights whose
    sum overflows (each is finite, but two of 1e308 add up to infinity). Refused on save; stored journeys are not
    re-judged (``pick_variant`` splits those as their ratio says). Each as (where, why)."""
    limit = f"at most {MAX_WAIT_SECONDS} seconds (366 days)"
    out: list[tuple[str, str]] = []
    if isinstance(journey.trigger, ScheduleTrigger) and journey.trigger.cron and (
            why := cron_problem(journey.trigger.cron)):
        out.append(("trigger.cron", why))
    if journey.goal and journey.goal.within_seconds > MAX_WAIT_SECONDS:
        out.append(("goal.within_seconds", f"{journey.goal.within_seconds} is too long: {limit}"))
    if (journey.entry.period_seconds or 0) > MAX_WAIT_SECONDS:
        out.append(("entry.period_seconds", f"{journey.entry.period_seconds} is too long: {limit}"))
    for i, s in enumerate(journey.steps):
        if isinstance(s, WaitUntilAttributeStep) and abs(s.offset_seconds) > MAX_WAIT_SECONDS:
            out.append((f"steps.{i}.offset_seconds", f"{s.offset_seconds} is too far: {limit} either way"))
        if isinstance(s, SplitStep) and not math.isfinite(total := sum(v.weight for v in s.variants)):
            out.append((f"steps.{i}.variants", f"the weights sum to {total}: they must add up to a finite number "
                                               "(weights are relative: 1 and 3 split as 25 % and 75 %)"))
    return out


def pick_variant(variants: "list[Variant]", point: float) -> "Variant":
    """The variant a point in [0, 1) falls on, the variants laid end to end by weight. Weights are scaled by the
    largest first: weights whose sum overflows (two of 1e308, saved before that was refused) made the total
    infinite and sent every entrant to the last variant; scaled, they split as their ratio says. (Only rounding,
    a point within a hair of 1, can pass the last edge: it belongs to the last variant anyway.)"""
    top = max(v.weight for v in variants)
    scaled = [v.weight / top for v in variants]
    left = point * sum(scaled)
    for variant, weight in zip(variants, scaled, strict=True):
        left -= weight
        if left < 0:
            return variant
    return variants[-1]


def compare(op: str, actual: Any, expected: Any) -> bool:
    """Property and trait comparisons (a missing value only satisfies ``not_equals``). ``gt`` … order a number
    written as text as that number ("19.99" ``gte`` 10), as segment conditions do."""
    if op == "exists":
        return actual is not None
    if op == "not_equals":
        return bool(actual != expected)
    if actual is None:
        return False
    if op == "equals":
        return bool(actual == expected)
    if op == "in":
        return isinstance(expected, list) and actual in expected
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        return isinstance(actual, list) and expected in actual
    if (a := ordered_number(actual)) is not None and (e := ordered_number(expected)) is not None:
        actual, expected = a, e
    try:
        return {"gt": actual > expected, "gte": actual >= expected, "lt": actual < expected,
                "lte": actual <= expected}[op]
    except TypeError:
        return False
