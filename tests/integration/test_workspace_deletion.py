"""`tenure workspace delete`: a customer leaves, and nothing of their workspace stays in any service."""

import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import text

from tests.e2e.test_cli import _tenure
from tests.integration.test_journeys import World


async def _rows_of(sessionmaker, ws: uuid.UUID) -> dict[str, int]:
    """Rows naming the workspace in every table of every service that has a ``workspace_id`` (found in the catalog,
    as a table added later would be), and the workspace and its keys."""
    async with sessionmaker() as s:
        tables = [f"{a}.{b}" for a, b in (await s.execute(text(
            "select table_schema, table_name from information_schema.columns where column_name = 'workspace_id' "
            "and table_schema in ('core', 'ingest', 'segment', 'campaign', 'delivery')"))).all()]
        counts = {t: (await s.execute(text(f"select count(*) from {t} where workspace_id = :ws"), {"ws": ws})).scalar()
                  for t in tables}
        counts["core.workspaces"] = (await s.execute(text("select count(*) from core.workspaces where id = :ws"),
                                                     {"ws": ws})).scalar()
    return counts


async def test_deleting_a_workspace_leaves_nothing_of_it_in_any_service(
        apps, settings, sessionmaker, mailbox, internal_client, workspace, monkeypatch) -> None:
    from shared import auth

    monkeypatch.setattr(auth, "CACHE_TTL_S", 0.0)
    made = _tenure(settings, "workspace", "create", "leaving", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    wid = uuid.UUID(created["workspace_id"])
    leaving = World(apps, SimpleNamespace(workspace_id=wid, write_key=created["write_key"],
                                          secret_key=created["secret_key"]), sessionmaker, internal_client)
    leaving.deliver = True
    staying = World(apps, workspace, sessionmaker, internal_client)

    # the workspace's data in every service: profiles and events, a segment, a campaign that mailed someone,
    # a suppression; the other workspace has a profile of its own
    now = datetime.now(UTC)
    seg = await apps["segment"].post("/v1/segments", headers=leaving.h, json={
        "name": "pro", "definition": {"type": "trait", "trait": "plan", "value": "pro"}})
    assert seg.status_code == 201, seg.text
    tpl = await leaving.template("welcome", "Welcome {{ profile.first_name }}")
    await leaving.campaign(trigger={"type": "event", "event": "Signed Up"}, template_id=tpl)
    pid = await leaving.identify("ada", email=f"ada-{wid.hex[:6]}@leaving.example", first_name="Ada", plan="pro")
    await leaving.track("ada", "Signed Up", now)
    await leaving.fold_segments(pid)
    await leaving.pump(now)
    assert [m["subject"] for m in await leaving.mail(f"ada-{wid.hex[:6]}@leaving.example")] == ["Welcome Ada"]
    r = await apps["delivery"].post("/v1/suppressions", headers=leaving.h, json={"address": "gone@leaving.example"})
    assert r.status_code in (200, 201), r.text
    bob = await staying.identify(f"bob-{wid.hex[:6]}", email=f"bob-{wid.hex[:6]}@staying.example")
    before = await _rows_of(sessionmaker, wid)
    held = {t for t, n in before.items() if n}
    assert {"ingest.profiles", "ingest.events", "segment.memberships", "campaign.journeys", "campaign.sends",
            "delivery.messages", "delivery.suppressions", "core.api_keys"} <= held, before
    async with sessionmaker() as s:
        messages = [r for r, in await s.execute(text("select id from delivery.messages where workspace_id = :ws"),
                                                {"ws": wid})]
        assert (await s.execute(text("select count(*) from delivery.attempts where message_id = any(:ids)"),
                                {"ids": messages})).scalar() >= 1

    listed = _tenure(settings, "workspace", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = next(w for w in json.loads(listed.stdout) if w["id"] == str(wid))
    assert (mine["name"], mine["active_keys"], mine["settings"]) == ("leaving", 2, {})
    table = _tenure(settings, "workspace", "list")
    assert str(wid) in table.stdout and "leaving" in table.stdout

    # not without --yes when there is no terminal to ask on: nothing is deleted
    refused = _tenure(settings, "workspace", "delete", str(wid))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert await _rows_of(sessionmaker, wid) == before

    done = _tenure(settings, "workspace", "delete", str(wid), "--yes", "--json", "--settle-seconds", "0")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["workspace_id"] == str(wid)
    assert held - {"core.workspaces", "core.api_keys"} <= set(answer["deleted"]) and answer["deleted"][
        "delivery.attempts"] >= 1, answer
    assert set((await _rows_of(sessionmaker, wid)).values()) == {0}
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from delivery.attempts where message_id = any(:ids)"),
                                {"ids": messages})).scalar() == 0
    # its keys are refused; the other workspace is untouched
    gone = await apps["ingest"].post("/v1/track", auth=leaving.wk, json={"userId": "ada", "event": "Back"})
    assert gone.status_code == 401
    assert (await apps["ingest"].get(f"/v1/profiles/{bob}", headers=staying.h)).status_code == 200
    assert str(wid) not in _tenure(settings, "workspace", "list", "--json").stdout
    again = _tenure(settings, "workspace", "delete", str(wid), "--yes", "--settle-seconds", "0")
    assert again.returncode == 1 and "no workspace" in again.stderr


async def test_what_a_cached_key_still_writes_after_the_revocation_is_swept_before_the_workspace_goes(
        apps, sessionmaker, monkeypatch) -> None:
    """A service trusts a key it checked within CACHE_TTL_S: events sent with it right after the revocation are
    still stored. The deletion waits out that time before its last sweep, so they go too."""
    import asyncio

    from shared import auth
    from shared.core import create_workspace
    from shared.workspace_deletion import delete_workspace

    monkeypatch.setattr(auth, "CACHE_TTL_S", 3.0)  # (long enough for a loaded machine to use the cached key)
    async with sessionmaker() as s, s.begin():
        ws = await create_workspace(s, "cached-key")
    wk = (ws.write_key, "")

    async def track(i: int) -> int:
        return (await apps["ingest"].post("/v1/track", auth=wk, json={"userId": f"u{i}", "event": "E"})).status_code

    assert await track(0) == 200  # ingest has the key in its cache now
    deletion = asyncio.create_task(delete_workspace(sessionmaker, ws.workspace_id, settle_s=4.0))
    answers = []
    while not deletion.done():
        answers.append(await track(len(answers) + 1))
        await asyncio.sleep(0.02)
    deleted = await deletion
    assert 200 in answers and answers[-1] == 401, answers  # taken while cached, refused once it lapsed
    assert deleted["ingest.events"] == 1 + answers.count(200)
    assert set((await _rows_of(sessionmaker, ws.workspace_id)).values()) == {0}
