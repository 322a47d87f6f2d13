"""`tenure workspace configure --set/--unset`: workspace settings are checked as a whole before anything
is written, so a malformed value is refused with its field named instead of quietly breaking the sends,
stages or pages that read it."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text

from services.campaign.journeys import Policy
from services.segment.lifecycle import LifecycleSettings

TENURE = str(Path(sys.executable).parent / "tenure")


def _configure(settings, ws, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TENURE, "workspace", "configure", str(ws), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TENURE_DATABASE_URL": settings.database_url,
                                           "TENURE_REDIS_URL": settings.redis_url, "COLUMNS": "200"})


async def _stored(sessionmaker, ws) -> dict:
    async with sessionmaker() as s:
        return (await s.execute(text("select settings from core.workspaces where id = :ws"), {"ws": ws})).scalar()


async def test_settings_are_validated_then_written(workspace, sessionmaker, settings) -> None:
    ws = workspace.workspace_id
    quiet = {"sms": {"start": "21:00", "end": "08:00"}}
    r = _configure(settings, ws, "--set", f"quiet_hours={json.dumps(quiet)}", "--set", "timezone=Europe/Paris",
                   "--set", 'lifecycle={"at_risk_days": 14, "churned_days": 60}', "--retention-days", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    stored = await _stored(sessionmaker, ws)
    assert json.loads(r.stdout) == stored
    assert stored["quiet_hours"] == quiet and stored["timezone"] == "Europe/Paris" and stored["retention_days"] == 30
    # what the services read from it
    assert Policy.from_settings(stored).quiet_hours["sms"]["start"] == "21:00"
    assert LifecycleSettings.from_settings(stored).churned_days == 60

    for bad, field in (
        ('quiet_hours={"sms": {"start": "9pm", "end": "08:00"}}', "quiet_hours.sms.start"),
        ('frequency_caps=[{"channel": "email", "max": "two"}]', "frequency_caps.0.max"),
        ("timezone=Mars/Olympus", "timezone"),
        ('lifecycle={"at_risk_days": 90, "churned_days": 30}', "lifecycle"),
        ('topics=[{"id": "Offers!", "label": {"en": "Offers"}}]', "topics.0.id"),
    ):
        r = _configure(settings, ws, "--set", bad)
        assert r.returncode == 2 and field in r.stderr, (bad, r.stdout, r.stderr)
        assert "nothing was changed" in r.stderr
        assert await _stored(sessionmaker, ws) == stored
    # delivery's own: double opt-in for marketing email, and the postal address its footer carries
    r = _configure(settings, ws, "--set", "double_opt_in=true", "--set", "postal_address=1 Main St, Springfield")
    assert r.returncode == 0, r.stdout + r.stderr
    stored = await _stored(sessionmaker, ws)
    assert stored["double_opt_in"] is True and stored["postal_address"] == "1 Main St, Springfield"
    r = _configure(settings, ws, "--set", 'double_opt_in="yes"')
    assert r.returncode == 2 and "double_opt_in" in r.stderr and await _stored(sessionmaker, ws) == stored
    r = _configure(settings, ws, "--unset", "double_opt_in", "--unset", "postal_address")
    assert r.returncode == 0, r.stdout + r.stderr
    stored = await _stored(sessionmaker, ws)
    r = _configure(settings, ws, "--set", "quiet_hour={}")  # a misspelt key is refused, not stored
    assert r.returncode == 2 and "quiet_hours" in r.stderr
    assert await _stored(sessionmaker, ws) == stored

    r = _configure(settings, ws, "--unset", "quiet_hours", "--retention-days", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert await _stored(sessionmaker, ws) == {"timezone": "Europe/Paris",
                                               "lifecycle": {"at_risk_days": 14, "churned_days": 60}}


async def test_null_inside_a_section_is_refused_by_name_not_a_crash_later(apps, workspace, sessionmaker,
                                                                         settings) -> None:
    """``lifecycle={"at_risk_days": null}`` passed the check, then every stage evaluation of the workspace
    failed with a TypeError (the daily re-check stopped at it, for the workspaces after it too). So did ``"14"`` (the
    check read it as 14, the document kept the string), a ``starts_with`` lead-score rule without a text, and
    a loyal-orders count beyond what SQL compares. Inside a section null is refused like any value of the wrong
    type, with the key named, as quiet hours and frequency caps already did; at the top level null removes
    the key (the default)."""
    ws = workspace.workspace_id
    r = _configure(settings, ws, "--set", 'lifecycle={"churned_days": 120}', "--set", "timezone=Europe/Paris")
    assert r.returncode == 0, r.stdout + r.stderr
    stored = await _stored(sessionmaker, ws)
    keys = ("activation_events", "advocacy_events", "loyal_orders", "at_risk_days", "churned_days",
            "reactivated_days", "promoter_nps")
    r = _configure(settings, ws, "--set", f"lifecycle={json.dumps(dict.fromkeys(keys))}")
    assert r.returncode == 2 and "nothing was changed" in r.stderr, r.stderr
    for key in keys:
        assert f"lifecycle.{key}: Value error, cannot be null: leave the key out to use the default (" in r.stderr
    assert "lifecycle.at_risk_days: Value error, cannot be null: leave the key out to use the default (30)" in r.stderr
    every_section = {  # each key once: all of these are reported by one run
        "lifecycle": ('{"at_risk_days": "14", "loyal_orders": 10000000000, "promoter_nps": true}',
                      ["lifecycle.at_risk_days", "lifecycle.loyal_orders", "lifecycle.promoter_nps"]),
        "quiet_hours": ('{"sms": {"start": "21:00", "end": "08:00", "action": null}, "email": null}',
                        ["quiet_hours.sms.action", "quiet_hours.email"]),
        "frequency_caps": ('[{"channel": "email", "max": 2, "period_days": null}, {"channel": "sms", "max": "2"}]',
                           ["frequency_caps.0.period_days", "frequency_caps.1.max"]),
        "lead_score": ('{"events": null, "traits": [{"trait": "title", "op": "starts_with", "value": null, '
                       '"points": 5}]}', ["lead_score.events", "lead_score.traits.0"]),
        "topics": ('[{"id": "offers", "label": null}]', ["topics.0.label"]),
        "retention_days": ("1000000000", ["retention_days"]),
        "sms_help_text": ('"Help\\u0000me"', ["sms_help_text"]),
    }
    r = _configure(settings, ws, *[a for key, (value, _) in every_section.items() for a in ("--set", f"{key}={value}")])
    assert r.returncode == 2 and "nothing was changed" in r.stderr, r.stderr
    for _, fields in every_section.values():
        for field in fields:
            assert f"{field}: " in r.stderr, (field, r.stderr)
    assert "NUL character" in r.stderr
    assert await _stored(sessionmaker, ws) == stored
    r = _configure(settings, ws, "--set", "timezone=null")  # the top level: null removes the key
    assert r.returncode == 0 and await _stored(sessionmaker, ws) == {"lifecycle": {"churned_days": 120}}

    # a document stored before the check (or straight into the table): nothing that reads it crashes, each
    # bad value reads as its default, and the next configure names what to fix
    bad = {"lifecycle": {"at_risk_days": None, "churned_days": "60", "loyal_orders": True, "promoter_nps": None,
                         "activation_events": None, "advocacy_events": None, "reactivated_days": None},
           "lead_score": {"events": {"Demo Requested": 20},
                          "traits": [{"trait": "title", "op": "starts_with", "value": None, "points": 5},
                                     {"trait": "title", "op": "contains", "value": "VP", "points": 10}]},
           "quiet_hours": {"sms": None, "email": {"start": "21:00", "end": "08:00"}},
           "frequency_caps": [{"channel": "email", "max": 2, "period_days": None}, {"channel": "sms", "max": 1}]}
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update core.workspaces set settings = CAST(:s AS jsonb) where id = :ws"),
                        {"s": json.dumps(bad), "ws": ws})
    assert LifecycleSettings.from_settings(bad) == LifecycleSettings()
    policy = Policy.from_settings(bad)
    assert list(policy.quiet_hours) == ["email"] and policy.frequency_caps == [{"channel": "sms", "max": 1}]

    from datetime import UTC, datetime, timedelta

    from services.segment import evaluation

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    pid = uuid.uuid4()
    now = datetime.now(UTC)
    events = [{"workspace_id": str(ws), "profile_id": str(pid), "type": kind, "event": event,
               "message_id": uuid.uuid4().hex, "properties": {}, "traits": traits,
               "timestamp": (now - timedelta(days=days)).isoformat()}
              for kind, event, traits, days in (("identify", None, {"title": "VP Sales"}, 40),
                                                ("track", "Demo Requested", {}, 40),
                                                ("track", "Order Completed", {}, 40))]
    async with sessionmaker() as s, s.begin():  # what the segment worker does with new events
        affected = await evaluation.apply_events(s, events)
        assert await evaluation.reevaluate(s, ws, affected[ws]) >= 1
    r = await apps["segment"].get(f"/v1/lifecycle/{pid}", headers=h)
    assert r.status_code == 200 and r.json()["stage"] == "at_risk", r.text  # 40 days idle: the default 30
    r = await apps["segment"].get(f"/v1/profiles/{pid}/attributes", headers=h)
    assert r.status_code == 200 and r.json()["lead_score"] == 30, r.text  # the rule without a text is skipped
    # the daily re-check (every profile of the workspace, stages only) runs too
    today = now.date() + timedelta(days=60)
    assert await evaluation.evaluate_all(sessionmaker, ws, segment_ids=set(), lifecycle=True, today=today) == 2
    assert (await apps["segment"].get(f"/v1/lifecycle/{pid}", headers=h)).json()["stage"] == "churned"

    r = _configure(settings, ws, "--set", "timezone=UTC")
    assert r.returncode == 2 and "lifecycle.at_risk_days: " in r.stderr and "lifecycle.churned_days: " in r.stderr
