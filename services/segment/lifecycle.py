"""Lifecycle stages: where each customer is in the lifecycle, as a pure function of their facts.

Stages, first match wins:

1. ``churned``: no activity for ``churned_days`` (default 90);
2. ``at_risk``: no activity for ``at_risk_days`` (default 30);
3. ``reactivated``: came back after being churned, for ``reactivated_days`` (default 30) after returning;
4. ``advocacy``: performed an advocacy event (default ``Referral Converted``, ``Review Submitted``; not the
   referred side of a referral, ``role`` ``referred``) or last NPS score ≥ 9 (trait ``nps``);
5. ``loyal``: ``loyal_orders`` (default 3) purchases or more;
6. ``engaged``: activated (performed an activation event, default a purchase);
7. ``onboarding``: everyone else who has been seen.

Stages 1–3 need activity: someone only identified so far (seen, never active) is in none of them.

Activity is the person's own events (attributes.is_activity: not what Tenure's services record about them,
such as delivery's reports on the messages sent to them), at their timestamp but never after ingest received
them (attributes.event_time).

Thresholds and event names are per-workspace settings (``core.workspaces.settings["lifecycle"]``); their
defaults are defined once, in shared/workspace_config.py, which also checks the settings before they are
written. A key that is left out, null or not of its type (stored before that check, or straight into the
table) falls back to its default on its own, so one bad value never stops stage evaluation.
Stage changes are written as transitions of a per-workspace stage segment (a stable id per stage,
:func:`stage_segment_id`), so campaigns trigger on "entered at_risk" like on any segment.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from shared.lifecycle_ids import stage_segment_id
from shared.workspace_config import (
    ACTIVATION_EVENTS,
    ADVOCACY_EVENTS,
    AT_RISK_DAYS,
    CHURNED_DAYS,
    LOYAL_ORDERS,
    MAX_LOYAL_ORDERS,
    PROMOTER_NPS,
    REACTIVATED_DAYS,
)

STAGES = ("onboarding", "engaged", "loyal", "advocacy", "reactivated", "at_risk", "churned")
__all__ = ["STAGES", "LifecycleSettings", "StageInput", "next_stage", "stage_segment_id"]


@dataclass(frozen=True)
class LifecycleSettings:
    activation_events: tuple[str, ...] = ACTIVATION_EVENTS
    advocacy_events: tuple[str, ...] = ADVOCACY_EVENTS
    loyal_orders: int = LOYAL_ORDERS
    at_risk_days: int = AT_RISK_DAYS
    churned_days: int = CHURNED_DAYS
    reactivated_days: int = REACTIVATED_DAYS
    promoter_nps: int = PROMOTER_NPS

    @classmethod
    def from_settings(cls, workspace_settings: dict[str, Any] | None) -> "LifecycleSettings":
        """The workspace's settings, each key that is missing, null or not of its type at its default."""
        raw = (workspace_settings or {}).get("lifecycle")
        raw = raw if isinstance(raw, dict) else {}
        known: dict[str, Any] = {}
        for k in ("activation_events", "advocacy_events"):
            events = raw.get(k)
            if isinstance(events, list) and all(isinstance(e, str) and e for e in events):
                known[k] = tuple(events)
        for k, (low, high) in _NUMBERS.items():
            n = raw.get(k)
            if isinstance(n, float) and n.is_integer():  # 14.0: an integer as some JSON writers put it
                n = int(n)
            if isinstance(n, int) and not isinstance(n, bool) and low <= n <= high:
                known[k] = n
        return cls(**known)

    def events(self) -> set[str]:
        return set(self.activation_events) | set(self.advocacy_events)


# the integer settings and their ranges (as shared/workspace_config.py checks them)
_NUMBERS = {"loyal_orders": (1, MAX_LOYAL_ORDERS), "at_risk_days": (1, 2**63), "churned_days": (1, 2**63),
            "reactivated_days": (1, 2**63), "promoter_nps": (0, 10)}


def performed(cfg: LifecycleSettings, counts: Mapping[str, Mapping[date, int]],
              events: Mapping[str, Sequence[tuple[Any, Mapping[str, Any]]]]) -> set[str]:
    """The stage events (activation, advocacy) a profile performed: per-day ``counts``, less, for advocacy events,
    the stored occurrences (``events``) where the profile is the referred side (``role`` ``referred``: programs
    send ``Referral Converted`` to both sides, docs/programs.md). The referred customer was made an advocate."""
    out = set()
    for ev in cfg.events():
        n = sum(counts.get(ev, {}).values())
        if ev in cfg.advocacy_events and ev not in cfg.activation_events:
            n -= sum(1 for _, props in events.get(ev, ()) if props.get("role") == "referred")
        if n > 0:
            out.add(ev)
    return out


@dataclass
class StageInput:
    days_since_last_activity: int | None
    order_count: int = 0
    performed: set[str] = field(default_factory=set)  # event names ever performed (of the ones that matter)
    nps: Any = None
    seen: bool = False  # seen at all, activity or not (an identify counts); activity implies it


def next_stage(facts: StageInput, previous: str | None, previous_since: date | None, today: date,
               cfg: LifecycleSettings) -> str | None:
    """The profile's stage today, given its previous stage (None if never seen: no stage).

    Recency (``churned``, ``at_risk``, ``reactivated``) is read from activity alone: someone seen but who never
    did anything (only identified: a CRM back-fill dated months ago) is in none of them, however old the call,
    so their first event does not "reactivate" them. (One earlier made churned for that reason, before activity
    was told apart, leaves ``churned`` for the stage their other facts give.)"""
    idle = facts.days_since_last_activity
    if idle is None and not facts.seen:
        return None
    if idle is not None:
        if idle >= cfg.churned_days:
            return "churned"
        if idle >= cfg.at_risk_days:
            return "at_risk"
        if previous == "churned":
            return "reactivated"
        if previous == "reactivated" and previous_since and (today - previous_since).days < cfg.reactivated_days:
            return "reactivated"
    nps = facts.nps if isinstance(facts.nps, int | float) and not isinstance(facts.nps, bool) else None
    if facts.performed & set(cfg.advocacy_events) or (nps is not None and nps >= cfg.promoter_nps):
        return "advocacy"
    if facts.order_count >= cfg.loyal_orders:
        return "loyal"
    if facts.performed & set(cfg.activation_events) or facts.order_count > 0:
        return "engaged"
    return "onboarding"
