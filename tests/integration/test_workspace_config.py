"""`tenure workspace configure --set/--unset`: workspace settings are checked as a whole before anything
is written, so a malformed value is refused with its field named instead of quietly breaking the sends,
stages or pages that read it."""

import json
import os
import subprocess
import sys
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
    r = _configure(settings, ws, "--set", "quiet_hour={}")  # a misspelt key is refused, not stored
    assert r.returncode == 2 and "quiet_hours" in r.stderr
    assert await _stored(sessionmaker, ws) == stored

    r = _configure(settings, ws, "--unset", "quiet_hours", "--retention-days", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert await _stored(sessionmaker, ws) == {"timezone": "Europe/Paris",
                                               "lifecycle": {"at_risk_days": 14, "churned_days": 60}}
