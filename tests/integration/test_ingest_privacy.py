"""Erasure through ingest's HTTP API while the other services have not erased yet: events about the person that
reach ingest meanwhile (delivery's feedback, a campaign's attribute update, an SDK's retry) are dropped, and
once every service has erased the same ids are welcome again (unless the erasure asked for suppression)."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
from sqlalchemy import text

from services.delivery import feedback, links
from services.ingest import privacy, tracking
from shared.embedded import free_port
from shared.http import InternalClient
from shared.testing import internal_headers

DROPPED = {"success": True, "accepted": 0, "duplicates": 0, "suppressed": 1, "rejected": []}
ACCEPTED = {"success": True, "accepted": 1, "duplicates": 0, "suppressed": 0, "rejected": []}


@contextlib.asynccontextmanager
async def _delivery_down(apps, settings) -> AsyncIterator[InternalClient]:
    """An InternalClient as ingest's worker has it while delivery is unreachable (nothing listens at its URL);
    segment and campaign answer."""
    nowhere = settings.model_copy(update={"delivery_url": f"http://127.0.0.1:{free_port()}"})
    mounts = {settings.url_of(s): apps[s]._transport for s in ("segment", "campaign")}  # type: ignore[attr-defined]
    async with httpx.AsyncClient(mounts=mounts, timeout=5) as http:
        yield InternalClient(nowhere, http)


async def _propagate(sessionmaker, internal) -> None:
    # (every pending request of the run, not only this test's: earlier tests may leave some)
    await privacy.propagate(sessionmaker, internal, limit=1000)


async def _request(apps, h, rid: str) -> dict:
    return (await apps["ingest"].get(f"/v1/privacy/requests/{rid}", headers=h)).json()


async def _events_naming(sessionmaker, ws, *ids: str) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text(
            "select count(*) from ingest.events where workspace_id = :ws and (user_id = any(:ids) "
            "or anonymous_id = any(:ids) or traits->>'email' = any(:ids))"), {"ws": ws, "ids": list(ids)})).scalar_one()


async def test_events_for_a_user_being_erased_are_dropped_until_every_service_has_erased(
        apps, workspace, sessionmaker, settings, internal_client) -> None:
    ingest, ws = apps["ingest"], workspace.workspace_id
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    user, device, email = f"leaving-{tag}", f"device-{tag}", f"leaving-{tag}@example.com"
    r = await ingest.post("/v1/identify", auth=wk, json={"userId": user, "anonymousId": device,
                                                          "traits": {"email": email}, "messageId": f"id-{tag}"})
    assert r.json() == ACCEPTED
    assert (await ingest.post("/v1/track", auth=wk, json={"userId": user, "event": "Signed Up",
                                                          "messageId": f"signup-{tag}"})).json() == ACCEPTED
    pid = (await ingest.get(f"/v1/profiles/{user}", headers=h)).json()["id"]
    # an email to them, opened: delivery holds an "Email Opened" for ingest, not forwarded yet
    sent = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": email, "subject": "S", "text": "x",
        "metadata": {"userId": user, "profile_id": pid}})
    assert sent.status_code == 202, sent.text
    pixel = links.Links.for_message("", settings.signing_secret, ws, uuid.UUID(sent.json()["id"])).pixel
    assert (await apps["delivery"].get(pixel, headers={"User-Agent": "Mozilla/5.0"})).status_code == 200

    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})  # no suppression asked
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    async with _delivery_down(apps, settings) as internal:
        await _propagate(sessionmaker, internal)
    req = await _request(apps, h, rid)
    assert req["status"] == "pending" and req["services"]["delivery"]["status"] == "pending", req
    assert req["services"]["delivery"]["error"] == "ConnectError"
    assert {req["services"][s]["status"] for s in ("segment", "campaign")} == {"done"}

    # meanwhile: delivery forwards the open (it has not erased it yet), ...
    while await feedback.forward(sessionmaker, internal_client):
        pass
    # ... a campaign's attribute update arrives, an SDK retries a message sent before the erasure, the app
    # sends more from the device and under the email: all dropped, answered as any suppressed message
    for path, auth, headers, body in (
        ("/v1/identify", None, internal_headers(ws), {"userId": user, "traits": {"plan": "gold"},
                                                      "messageId": f"journey-{tag}"}),
        ("/v1/track", wk, None, {"userId": user, "event": "Signed Up", "messageId": f"signup-{tag}"}),
        ("/v1/track", wk, None, {"anonymousId": device, "event": "App Opened"}),
        ("/v1/identify", wk, None, {"userId": f"new-account-{tag}", "traits": {"email": email}}),
    ):
        r = await ingest.post(path, auth=auth, headers=headers, json=body)
        assert r.status_code == 200 and r.json() == DROPPED, (path, body, r.text)
    # in a batch, only their messages are dropped
    r = await ingest.post("/v1/batch", auth=wk, json={"batch": [
        {"type": "track", "userId": user, "event": "Clicked"},
        {"type": "track", "userId": f"someone-else-{tag}", "event": "Clicked"}]})
    assert r.json() == {**DROPPED, "accepted": 1}
    for ref in (user, device, email, f"new-account-{tag}"):
        assert (await ingest.get(f"/v1/profiles/{ref}", headers=h)).status_code == 404, ref
    assert await _events_naming(sessionmaker, ws, user, device, email) == 0

    # delivery is back: the request completes, and the same ids are welcome again (a fresh profile)
    await _propagate(sessionmaker, internal_client)
    req = await _request(apps, h, rid)
    assert req["status"] == "completed" and req["services"]["delivery"]["status"] == "done", req
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from ingest.suppressions where request_id = :r"),
                                {"r": rid})).scalar_one() == 0
    r = await ingest.post("/v1/track", auth=wk, json={"userId": user, "event": "Came Back"})
    assert r.json() == ACCEPTED
    again = (await ingest.get(f"/v1/profiles/{user}", headers=h)).json()
    assert again["id"] != pid and again["traits"] == {}
    events = (await ingest.get(f"/v1/profiles/{user}/events", headers=h)).json()["events"]
    assert [e["event"] for e in events] == ["Came Back"]
    assert (await ingest.post("/v1/track", auth=wk, json={"anonymousId": device, "event": "App Opened"})
            ).json() == ACCEPTED


async def test_with_suppress_the_ids_stay_suppressed_after_every_service_has_erased(
        apps, workspace, sessionmaker, internal_client) -> None:
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    user = f"gone-{uuid.uuid4().hex[:6]}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user, "suppress": True})
    await _propagate(sessionmaker, internal_client)
    assert (await _request(apps, h, r.json()["id"]))["status"] == "completed"
    assert (await ingest.post("/v1/track", auth=wk, json={"userId": user, "event": "Back"})).json() == DROPPED
    assert (await ingest.get(f"/v1/profiles/{user}", headers=h)).status_code == 404


async def test_an_id_two_pending_erasures_share_stays_suppressed_until_both_have_completed(
        apps, workspace, sessionmaker, internal_client) -> None:
    """Two profiles with one email, erased one after the other: the email is dropped until the second
    request completes, not only the first."""
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    first, second, email = f"first-{tag}", f"second-{tag}", f"shared-{tag}@example.com"
    for user in (first, second):
        assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user, "traits": {"email": email}})
                ).json() == ACCEPTED
    rids = []
    for user in (first, second):
        r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})
        assert r.status_code == 202, r.text
        rids.append(r.json()["id"])
    async with sessionmaker() as holder, holder.begin():  # the second request is being worked on elsewhere
        await holder.execute(text("select 1 from ingest.privacy_requests where id = :id for update"),
                             {"id": rids[1]})
        await _propagate(sessionmaker, internal_client)
    assert [(await _request(apps, h, rid))["status"] for rid in rids] == ["completed", "pending"]
    assert (await ingest.post("/v1/track", auth=wk, json={"userId": first, "event": "Back"})).json() == ACCEPTED
    signup = {"userId": f"third-{tag}", "traits": {"email": email}}
    assert (await ingest.post("/v1/identify", auth=wk, json=signup)).json() == DROPPED
    await _propagate(sessionmaker, internal_client)
    assert (await _request(apps, h, rids[1]))["status"] == "completed"
    assert (await ingest.post("/v1/identify", auth=wk, json=signup)).json() == ACCEPTED


async def test_an_event_sent_while_the_erasure_commits_waits_for_it_and_is_dropped(
        apps, workspace, sessionmaker) -> None:
    ingest, ws = apps["ingest"], workspace.workspace_id
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    user = f"racing-{uuid.uuid4().hex[:6]}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    async with sessionmaker() as eraser, eraser.begin():
        await privacy.erase(eraser, ws, user, suppress=False)  # done here, not committed yet
        sending = asyncio.create_task(ingest.post("/v1/track", auth=wk, json={"userId": user, "event": "Late"}))
        await asyncio.sleep(0.3)
        assert not sending.done()  # waiting for the erasure
    r = await sending
    assert r.status_code == 200 and r.json() == DROPPED
    assert (await ingest.get(f"/v1/profiles/{user}", headers=h)).status_code == 404
    assert await _events_naming(sessionmaker, ws, user) == 0


async def test_an_erasure_waits_for_events_being_committed_and_erases_them_too(
        apps, workspace, sessionmaker) -> None:
    """Events the group committer has accepted but not committed yet (here: a tracking transaction still
    open, with a new device of the user) are erased with the rest, not left behind."""
    ingest, ws = apps["ingest"], workspace.workspace_id
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    user, device = f"busy-{tag}", f"tablet-{tag}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    now = datetime.now(UTC)
    late = tracking.Envelope(message_id=f"late-{tag}", type="track", event="Late", user_id=user,
                             anonymous_id=device, properties={}, traits={}, context={}, timestamp=now, sent_at=None)
    async with sessionmaker() as writer, writer.begin():
        assert (await tracking.record(writer, ws, [late], now)).accepted == 1
        erasing = asyncio.create_task(ingest.post("/v1/privacy/erasure", headers=h, json={"user": user}))
        await asyncio.sleep(0.3)
        assert not erasing.done()  # waiting for the events being committed
    r = await erasing
    assert r.status_code == 202, r.text
    assert r.json()["removed"]["events"] == 2 and r.json()["removed"]["identities"] == 2
    for ref in (user, device):
        assert (await ingest.get(f"/v1/profiles/{ref}", headers=h)).status_code == 404, ref
    assert await _events_naming(sessionmaker, ws, user, device) == 0
    assert (await ingest.post("/v1/track", auth=wk, json={"anonymousId": device, "event": "x"})).json() == DROPPED


async def test_upgrading_suppresses_the_ids_of_erasures_still_pending(apps, workspace, sessionmaker,
                                                                     settings) -> None:
    """Erasures made before ingest_0003 without ``suppress`` kept no hashes; those still pending get them
    from the ids their audit row holds."""
    from alembic import command

    from shared.migrate import alembic_config

    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    user = f"old-{uuid.uuid4().hex[:6]}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user, "traits": {"email": f"{user}@x.io"}})
            ).json() == ACCEPTED
    assert (await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})).status_code == 202
    cfg = alembic_config("ingest", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "ingest_0002")
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from ingest.suppressions where workspace_id = :ws"),
                                {"ws": workspace.workspace_id})).scalar_one() == 0
    await asyncio.to_thread(command.upgrade, cfg, "head")
    for body in ({"userId": user, "event": "Back"}, {"userId": "another", "traits": {"email": f"{user}@x.io"}}):
        assert (await ingest.post("/v1/track" if "event" in body else "/v1/identify", auth=wk, json=body)
                ).json() == DROPPED
