"""Lifecycle stages: where each customer is in the lifecycle, as a pure function of their facts.

Stages, first match wins:

1. ``churned``: no activity for ``churned_days`` (default 90);
2. ``at_risk``: no activity for ``at_risk_days`` (default 30);
3. ``reactivated``: came back after being churned, for ``reactivated_days`` (default 30) after returning;
4. ``advocacy``: performed an advocacy event (default ``Referral Converted``, ``Review Submitted``) or
   last NPS score ≥ 9 (trait ``nps``);
5. ``loyal``: ``loyal_orders`` (default 3) purchases or more;
6. ``engaged``: activated (performed an activation event, default a purchase);
7. ``onboarding``: everyone else who has been seen.

Thresholds and event names are per-workspace settings (``core.workspaces.settings["lifecycle"]``); the
day thresholds' defaults are defined once, in shared/workspace_config.py, which also checks the settings.
Stage changes are written as transitions of a per-workspace stage segment (a stable id per stage,
:func:`stage_segment_id`), so campaigns trigger on "entered at_risk" like on any segment.
"""

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from shared.lifecycle_ids import stage_segment_id
from shared.workspace_config import AT_RISK_DAYS, CHURNED_DAYS, REACTIVATED_DAYS

STAGES = ("onboarding", "engaged", "loyal", "advocacy", "reactivated", "at_risk", "churned")
__all__ = ["STAGES", "LifecycleSettings", "StageInput", "next_stage", "stage_segment_id"]


@dataclass(frozen=True)
class LifecycleSettings:
    activation_events: tuple[str, ...] = ("Order Completed",)
    advocacy_events: tuple[str, ...] = ("Referral Converted", "Review Submitted")
    loyal_orders: int = 3
    at_risk_days: int = AT_RISK_DAYS
    churned_days: int = CHURNED_DAYS
    reactivated_days: int = REACTIVATED_DAYS
    promoter_nps: int = 9

    @classmethod
    def from_settings(cls, workspace_settings: dict[str, Any] | None) -> "LifecycleSettings":
        raw = (workspace_settings or {}).get("lifecycle") or {}
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        for k in ("activation_events", "advocacy_events"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    def events(self) -> set[str]:
        return set(self.activation_events) | set(self.advocacy_events)


@dataclass
class StageInput:
    days_since_last_activity: int | None
    order_count: int = 0
    performed: set[str] = field(default_factory=set)  # event names ever performed (of the ones that matter)
    nps: Any = None


def next_stage(facts: StageInput, previous: str | None, previous_since: date | None, today: date,
               cfg: LifecycleSettings) -> str | None:
    """The profile's stage today, given its previous stage (None if never seen: no stage)."""
    idle = facts.days_since_last_activity
    if idle is None:
        return None
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
