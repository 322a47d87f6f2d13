"""Erasure through ingest's HTTP API while the other services have not erased yet: events about the person that
reach ingest meanwhile (delivery's feedback, a campaign's attribute update, an SDK's retry) are dropped, and
once every service has erased the same ids are welcome again (unless the erasure asked for suppression)."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.delivery import feedback, links
from services.ingest import privacy, tracking
from shared.embedded import free_port
from shared.http import InternalClient
from shared.testing import feed_head, http_server, internal_headers

DROPPED = {"success": True, "accepted": 0, "duplicates": 0, "suppressed": 1, "rejected": []}
ACCEPTED = {"success": True, "accepted": 1, "duplicates": 0, "suppressed": 0, "rejected": []}


@contextlib.asynccontextmanager
async def _mesh(apps, settings, **elsewhere: str) -> AsyncIterator[InternalClient]:
    """An InternalClient as ingest's worker has it, with the services named in ``elsewhere`` at those URLs (a
    server of the test's, or nothing at all) and the others answering in process."""
    moved = settings.model_copy(update={f"{svc}_url": url for svc, url in elsewhere.items()})
    mounts = {settings.url_of(s): apps[s]._transport  # type: ignore[attr-defined]
              for s in privacy.OTHER_SERVICES if s not in elsewhere}
    async with httpx.AsyncClient(mounts=mounts, timeout=30) as http:
        yield InternalClient(moved, http)


def _delivery_down(apps, settings) -> contextlib.AbstractAsyncContextManager[InternalClient]:
    """While delivery is unreachable (nothing listens at its URL); segment and campaign answer."""
    return _mesh(apps, settings, delivery=f"http://127.0.0.1:{free_port()}")


async def _propagate(sessionmaker, internal, **kw) -> None:
    # (every pending request of the run, not only this test's: earlier tests may leave some); no back-off
    # unless asked, so that a service back again is asked at once
    await privacy.propagate(sessionmaker, internal, limit=1000, **{"backoff_base_s": 0, **kw})


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


class _Silent:
    """A server on 127.0.0.1 that takes connections and reads what it is sent but never answers (a service that
    hangs); ``hang_up`` closes every connection."""

    def __init__(self) -> None:
        self.received = b""
        self._heard = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "_Silent":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hang_up()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while chunk := await reader.read(65536):
            self.received += chunk
            self._heard.set()

    async def asked_about(self, value: str, within_s: float = 10) -> None:
        async with asyncio.timeout(within_s):
            while value.encode() not in self.received:
                self._heard.clear()
                await self._heard.wait()

    def hang_up(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()


def _unavailable(calls: list[dict[str, Any]]) -> FastAPI:
    """A service during an outage, behind a proxy that answers 503 for it; notes each erasure call's body."""
    app = FastAPI()

    @app.post("/v1/privacy/erasure")
    async def erasure(body: dict[str, Any]) -> JSONResponse:
        calls.append(body)
        return JSONResponse({"title": "Service Unavailable", "status": 503}, status_code=503,
                            media_type="application/problem+json")

    return app


async def _in_feed(ingest, after: str, message_id: str, within_s: float) -> bool:
    """Whether ``message_id`` appears in ingest's event feed after ``after`` within ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        page = (await ingest.get("/v1/events", params={"after": after, "limit": 5000},
                                 headers=internal_headers())).json()
        if any(e["message_id"] == message_id for e in page["events"]):
            return True
        after = page["next_cursor"]
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)


async def _sleep_until(at: datetime) -> None:
    await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.05)


def _gauge(exposition: str, name: str) -> float:
    return next(float(line.split()[1]) for line in exposition.splitlines() if line.startswith(f"{name} "))


async def test_a_service_that_hangs_holds_back_neither_the_event_feed_nor_the_other_services(
        apps, workspace, sessionmaker, settings, internal_client) -> None:
    """Segment takes the erasure call and never answers: events tracked meanwhile reach the event feed that
    segment's and campaign's consumers read (no transaction is open across the call to hold its horizon back),
    campaign's and delivery's answers are recorded meanwhile, and segment's failure once it hangs up."""
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    user = f"slow-{tag}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    await privacy.propagate(sessionmaker, internal_client, 1000)  # earlier tests' requests out of the way
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})
    rid, pid = r.json()["id"], r.json()["profile_ids"][0]
    head = await feed_head(ingest)
    async with _Silent() as segment, _mesh(apps, settings, segment=segment.url) as internal:
        propagating = asyncio.create_task(privacy.propagate(sessionmaker, internal, 1000))
        try:
            await segment.asked_about(pid)
            r = await ingest.post("/v1/track", auth=wk, json={"userId": f"bystander-{tag}", "event": "Meanwhile",
                                                              "messageId": f"meanwhile-{tag}"})
            assert r.json() == ACCEPTED
            assert await _in_feed(ingest, head, f"meanwhile-{tag}", within_s=5), "the feed is held back"
            async with asyncio.timeout(5):
                while {(await _request(apps, h, rid))["services"][s]["status"]
                       for s in ("campaign", "delivery")} != {"done"}:
                    await asyncio.sleep(0.05)
            assert not propagating.done()
        finally:
            segment.hang_up()
            await asyncio.wait_for(propagating, 30)
    req = await _request(apps, h, rid)
    assert req["status"] == "pending", req
    seg = req["services"]["segment"]
    assert seg["status"] == "pending" and seg["attempts"] == 1 and seg["error"], seg
    assert datetime.fromisoformat(seg["next_attempt_at"]) > datetime.fromisoformat(seg["last_attempt_at"])


async def test_a_failing_service_is_asked_again_after_a_growing_wait_and_the_request_completes_once_it_answers(
        apps, workspace, sessionmaker, settings, internal_client) -> None:
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    user = f"retried-{uuid.uuid4().hex[:6]}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})
    rid, pid = r.json()["id"], r.json()["profile_ids"][0]
    calls: list[dict[str, Any]] = []

    def asked() -> int:  # (other tests' pending requests reach the same server)
        return sum(pid in c["profile_ids"] for c in calls)

    with http_server(_unavailable(calls)) as port:
        async with _mesh(apps, settings, delivery=f"http://127.0.0.1:{port}") as failing:
            await _propagate(sessionmaker, failing, backoff_base_s=2)
            req = await _request(apps, h, rid)
            first = req["services"]["delivery"]
            assert req["status"] == "pending" and first["status"] == "pending", req
            assert first["attempts"] == 1 and first["error"] == "answered 503" and asked() == 1, (first, calls)
            assert datetime.fromisoformat(first["next_attempt_at"]) > datetime.now(UTC)
            assert {req["services"][s]["status"] for s in ("segment", "campaign")} == {"done"}
            # not due yet: not asked
            await _propagate(sessionmaker, failing, backoff_base_s=2)
            assert asked() == 1 and (await _request(apps, h, rid))["services"]["delivery"]["attempts"] == 1
            exposition = (await ingest.get("/metrics")).text
            assert _gauge(exposition, "tenure_privacy_erasures_pending") >= 1
            assert _gauge(exposition, "tenure_privacy_oldest_pending_erasure_age_seconds") > 0
            # due: asked again, and the next wait is twice as long (less up to 20 %)
            await _sleep_until(datetime.fromisoformat(first["next_attempt_at"]))
            await _propagate(sessionmaker, failing, backoff_base_s=2)
            second = (await _request(apps, h, rid))["services"]["delivery"]
            assert asked() == 2 and second["attempts"] == 2 and second["error"] == "answered 503", second
            wait = datetime.fromisoformat(second["next_attempt_at"]) - datetime.fromisoformat(second["last_attempt_at"])
            assert timedelta(seconds=3.2) <= wait <= timedelta(seconds=4), wait
    # delivery answers again: asked once due, and the request completes; segment and campaign were asked once
    await _sleep_until(datetime.fromisoformat(second["next_attempt_at"]))
    await _propagate(sessionmaker, internal_client, backoff_base_s=2)
    req = await _request(apps, h, rid)
    assert req["status"] == "completed", req
    assert {k: v for k, v in req["services"]["delivery"].items() if v is not None and k != "last_attempt_at"} == {
        "status": "done", "removed": req["services"]["delivery"]["removed"], "attempts": 3}
    assert [req["services"][s]["attempts"] for s in ("segment", "campaign")] == [1, 1]
    assert (await ingest.post("/v1/track", auth=wk, json={"userId": user, "event": "Back"})).json() == ACCEPTED


async def test_a_worker_whose_claim_ran_out_records_nothing_over_the_worker_that_took_the_request_over(
        apps, workspace, sessionmaker, settings, internal_client) -> None:
    """A worker waits on delivery beyond its lease; another takes the request over and completes it. The first
    one's late failure is not recorded: the request stays completed, its audit record the second worker's."""
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    user = f"contended-{uuid.uuid4().hex[:6]}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    await _propagate(sessionmaker, internal_client)  # earlier tests' requests out of the way
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})
    rid, pid = r.json()["id"], r.json()["profile_ids"][0]
    async with _Silent() as delivery, _mesh(apps, settings, delivery=delivery.url) as slow:
        stale = asyncio.create_task(privacy.propagate(sessionmaker, slow, 1000, lease_s=0.5, backoff_base_s=0))
        try:
            await delivery.asked_about(pid)
            await asyncio.sleep(1)  # its lease runs out
            await _propagate(sessionmaker, internal_client)
            assert (await _request(apps, h, rid))["status"] == "completed"
        finally:
            delivery.hang_up()
            await asyncio.wait_for(stale, 30)
    req = await _request(apps, h, rid)
    assert req["status"] == "completed", req
    assert req["services"]["delivery"]["status"] == "done" and req["services"]["delivery"]["attempts"] == 1, req
    assert req["services"]["delivery"]["error"] is None


async def test_an_alias_whose_previous_id_is_an_erased_id_is_dropped(apps, workspace, sessionmaker,
                                                                     internal_client) -> None:
    """``previousId`` names the erased person as their userId or anonymousId: the alias would link a new id to
    them (and record their id again), so it is dropped like any message naming them; while the erasure is
    pending, and for good with ``suppress``."""
    ingest, ws = apps["ingest"], workspace.workspace_id
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    user, device, kept = f"aliased-{tag}", f"old-device-{tag}", f"kept-{tag}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user, "anonymousId": device})
            ).json() == ACCEPTED
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": kept})).json() == ACCEPTED
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": kept, "suppress": True})
    await _propagate(sessionmaker, internal_client)
    assert (await _request(apps, h, r.json()["id"]))["status"] == "completed"
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})  # pending: not propagated
    assert (await _request(apps, h, r.json()["id"]))["status"] == "pending"
    for prev in (user, device, kept):
        successor = f"successor-of-{prev}"
        r = await ingest.post("/v1/alias", auth=wk, json={"previousId": prev, "userId": successor})
        assert r.status_code == 200 and r.json() == DROPPED, (prev, r.text)
        r = await ingest.post("/v1/batch", auth=wk, json={"batch": [
            {"type": "alias", "previousId": prev, "userId": successor},
            {"type": "track", "userId": f"someone-else-{tag}", "event": "Clicked"}]})
        assert r.json() == {**DROPPED, "accepted": 1}, (prev, r.text)
        assert (await ingest.get(f"/v1/profiles/{successor}", headers=h)).status_code == 404
    for ref in (user, device, kept):
        assert (await ingest.get(f"/v1/profiles/{ref}", headers=h)).status_code == 404, ref
    successors = [f"successor-of-{p}" for p in (user, device, kept)]
    assert await _events_naming(sessionmaker, ws, user, device, kept, *successors) == 0
    # an alias from an id nobody erased is welcome
    r = await ingest.post("/v1/alias", auth=wk, json={"previousId": f"new-device-{tag}", "userId": f"new-{tag}"})
    assert r.json() == ACCEPTED


async def test_an_erasure_by_email_erases_every_profile_with_that_email_in_every_service(
        apps, workspace, sessionmaker, internal_client) -> None:
    """Profiles are never merged by email: the user signed in on a laptop and the anonymous visitor on their phone
    who gave the same address (in another case) in a form are two. An export by the address lists both, and an
    erasure by it erases both, here and in segment, campaign and delivery (checked through their APIs); a
    lookup of the address still finds one profile."""
    from tests.integration.test_identity_across_services import _fold, _pump
    from tests.integration.test_journeys import T0, World

    w, tag = World(apps, workspace, sessionmaker, internal_client), uuid.uuid4().hex[:6]
    ingest, h = apps["ingest"], w.h
    user, phone, email = f"ada-{tag}", f"phone-{tag}", f"ada-{tag}@example.com"
    hello = await w.template("hello", "Hello")
    camp = await w.campaign(trigger={"type": "event", "event": f"Viewed {tag}"},
                            steps=[{"id": "hello", "type": "send", "template_id": hello}])
    for ids, address in (({"userId": user}, email), ({"anonymousId": phone}, email.upper())):
        assert (await ingest.post("/v1/identify", auth=w.wk, json={**ids, "traits": {"email": address}})
                ).json() == ACCEPTED
        assert (await ingest.post("/v1/track", auth=w.wk, json={**ids, "event": f"Viewed {tag}",
                                                                "timestamp": T0.isoformat()})).json() == ACCEPTED
    pids = [(await ingest.get(f"/v1/profiles/{ref}", headers=h)).json()["id"] for ref in (user, phone)]
    assert pids[0] != pids[1]
    assert (await apps["delivery"].post("/v1/devices", headers=h, json={
        "user": phone, "platform": "android", "token": f"token-{tag}"})).status_code == 201
    await _pump(w, T0)
    await _fold(w, *pids)

    async def held() -> dict[str, Any]:
        """What each service's API shows of the two profiles."""
        return {
            "ingest": [(await ingest.get(f"/v1/profiles/{ref}", headers=h)).status_code for ref in (user, phone)],
            "ingest_by_email": [p["id"] for p in (await ingest.get("/v1/profiles", params={"email": email},
                                                                   headers=h)).json()["profiles"]],
            "segment": [(await apps["segment"].get(f"/v1/profiles/{p}/attributes", headers=h)).status_code
                        for p in pids],
            # journeys held, or 404 once campaign holds none and ingest knows no such profile
            "campaign": [len(r.json()["journeys"]) if r.status_code == 200 else r.status_code for r in [
                await apps["campaign"].get(f"/v1/profiles/{p}/journeys", headers=h) for p in pids]],
            "delivery": sorted(m["metadata"].get("profile_id") for m in (await apps["delivery"].get(
                "/v1/messages", headers=h, params={"campaign_id": camp["id"]})).json()["messages"]),
            "devices": len((await apps["delivery"].get("/v1/devices", headers=h, params={"user": phone})
                            ).json()["devices"]),
        }

    assert await held() == {"ingest": [200, 200], "ingest_by_email": sorted(pids), "segment": [200, 200],
                            "campaign": [1, 1], "delivery": sorted(pids), "devices": 1}

    # the export by the address: both profiles, the events and identities of both, the other services' records
    r = await ingest.get(f"/v1/privacy/export/{email}", headers=h)
    assert r.status_code == 200, r.text
    export = r.json()
    assert export["profile"]["id"] == (await ingest.get(f"/v1/profiles/{email}", headers=h)).json()["id"]
    assert sorted([export["profile"]["id"]] + [p["id"] for p in export["other_profiles"]]) == sorted(pids)
    assert sorted((e["event"], e["profile_id"]) for e in export["events"] if e["type"] == "track") == sorted(
        (f"Viewed {tag}", p) for p in pids)
    assert sorted(i["value"] for i in export["identities"]) == sorted([user, phone])
    assert sorted(m["metadata"]["profile_id"] for m in export["delivery"]["messages"]) == sorted(pids)
    assert [d["token"] for d in export["delivery"]["devices"]] == [f"token-{tag}"]
    assert sorted(j["campaign_id"] for j in export["campaign"]["journeys"]) == [camp["id"]] * 2
    # a single profile's export is as it was, with no other profiles
    single = (await ingest.get(f"/v1/privacy/export/{user}", headers=h)).json()
    assert single["profile"]["id"] == pids[0] and single["other_profiles"] == []

    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": email})
    assert r.status_code == 202, r.text
    assert sorted(r.json()["profile_ids"]) == sorted(pids)
    assert r.json()["removed"]["profiles"] == 2 and r.json()["removed"]["identities"] == 2
    await _propagate(sessionmaker, internal_client)
    req = await _request(apps, h, r.json()["id"])
    assert req["status"] == "completed", req
    assert await held() == {"ingest": [404, 404], "ingest_by_email": [], "segment": [404, 404],
                            "campaign": [404, 404], "delivery": [], "devices": 0}
    assert (await ingest.get(f"/v1/privacy/export/{email}", headers=h)).status_code == 404


async def test_an_erasure_of_someone_ingest_does_not_hold_still_suppresses_and_reaches_every_service(
        apps, workspace, sessionmaker, internal_client) -> None:
    """"Forget me and don't track me" from someone ingest never saw (or erased already) is not a 404: the
    request is recorded (202, nothing removed here, no profile), delivery erases the message and the push device
    it holds under their userId, segment (which holds records by profile only) says it removed nothing, and their
    events are dropped for good."""
    ingest, ws = apps["ingest"], workspace.workspace_id
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    stranger = f"never-tracked-{tag}"
    sent = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": f"{stranger}@example.com", "subject": "Receipt", "text": "x",
        "metadata": {"userId": stranger}})  # sent through the API, never tracked in ingest
    assert sent.status_code == 202, sent.text
    assert (await apps["delivery"].post("/v1/devices", headers=h, json={
        "user": stranger, "platform": "android", "token": f"token-{tag}"})).status_code == 201
    assert (await ingest.get(f"/v1/profiles/{stranger}", headers=h)).status_code == 404

    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": stranger, "suppress": True})
    assert r.status_code == 202, r.text
    assert r.json()["profile_ids"] == [] and set(r.json()["removed"].values()) == {0}
    assert r.json()["status"] == "pending" and r.json()["subject"] == stranger
    await _propagate(sessionmaker, internal_client)
    req = await _request(apps, h, r.json()["id"])
    assert req["status"] == "completed", req
    assert {s: e["status"] for s, e in req["services"].items()} == {s: "done" for s in privacy.OTHER_SERVICES}
    assert set(req["services"]["segment"]["removed"].values()) == {0}  # nothing to erase there: not a failure
    assert req["services"]["delivery"]["removed"]["messages"] == 1
    assert req["services"]["delivery"]["removed"]["devices"] == 1
    messages = (await apps["delivery"].get("/v1/messages", headers=h, params={"user": stranger})).json()["messages"]
    assert messages == []
    assert (await apps["delivery"].get("/v1/devices", headers=h, params={"user": stranger})).json()["devices"] == []
    # suppressed for good, whichever id it comes back as
    for body in ({"userId": stranger, "event": "Signed Up"}, {"anonymousId": stranger, "event": "Viewed"}):
        assert (await ingest.post("/v1/track", auth=wk, json=body)).json() == DROPPED, body
    assert (await ingest.get(f"/v1/profiles/{stranger}", headers=h)).status_code == 404
    assert await _events_naming(sessionmaker, ws, stranger) == 0


async def test_an_erasure_of_an_unknown_id_without_suppress_completes_and_lifts_the_suppression(
        apps, workspace, sessionmaker, internal_client) -> None:
    """Nothing held anywhere, no ``suppress``: still 202 and an audit record, completed once the services have
    answered that they removed nothing; the id is welcome again afterwards."""
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    nobody = f"nobody-{uuid.uuid4().hex[:6]}@example.com"
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": nobody})
    assert r.status_code == 202, r.text
    assert r.json()["profile_ids"] == [] and set(r.json()["removed"].values()) == {0}
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": "x", "traits": {"email": nobody}})
            ).json() == DROPPED  # pending: dropped meanwhile
    await _propagate(sessionmaker, internal_client)
    req = await _request(apps, h, r.json()["id"])
    assert req["status"] == "completed", req
    assert all(set(e["removed"].values()) == {0} for e in req["services"].values()), req
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": "x", "traits": {"email": nobody}})
            ).json() == ACCEPTED


async def test_a_completed_erasure_no_longer_names_the_person(apps, workspace, sessionmaker,
                                                              internal_client) -> None:
    """The audit record keeps the reference as sent while pending; once completed, only a digest salted with the
    request's id, which confirms the request was about someone whose address one already knows."""
    ingest = apps["ingest"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    email = f"gone-{uuid.uuid4().hex[:6]}@x.io"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": email.split("@")[0],
                                                              "traits": {"email": email}})).json() == ACCEPTED
    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": email})
    rid, pids = r.json()["id"], r.json()["profile_ids"]
    assert r.status_code == 202 and r.json()["subject"] == email and len(pids) == 1
    await _propagate(sessionmaker, internal_client)
    got = await ingest.get(f"/v1/privacy/requests/{rid}", headers=h)
    assert got.json()["status"] == "completed", got.text
    assert email not in got.text and email.split("@")[0] not in got.text
    assert got.json()["profile_ids"] == [] and pids[0] not in got.text  # (they were kept, linking to the person)
    digest = got.json()["subject"]
    assert digest == privacy.subject_digest(uuid.UUID(rid), email) and digest.startswith("sha256:")
    assert digest != privacy.subject_digest(uuid.UUID(rid), email.upper())


async def test_upgrading_replaces_the_subject_of_erasures_completed_before(apps, workspace, sessionmaker,
                                                                          settings, internal_client) -> None:
    """Requests completed before ingest_0007 kept their subject: the migration gives them the same digest as a
    request completed now; pending ones keep theirs (until they complete)."""
    from alembic import command

    from shared.migrate import alembic_config

    ingest = apps["ingest"]
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    done = (await ingest.post("/v1/privacy/erasure", headers=h, json={"user": f"old-{tag}@x.io"})).json()["id"]
    await _propagate(sessionmaker, internal_client)
    pending = (await ingest.post("/v1/privacy/erasure", headers=h, json={"user": f"pending-{tag}"})).json()["id"]
    cfg = alembic_config("ingest", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "ingest_0006")
    async with sessionmaker() as s, s.begin():  # as the release before left it
        await s.execute(text("update ingest.privacy_requests set subject = :s where id = :id"),
                        {"s": f"old-{tag}@x.io", "id": done})
    await asyncio.to_thread(command.upgrade, cfg, "head")
    assert (await _request(apps, h, done))["subject"] == privacy.subject_digest(uuid.UUID(done), f"old-{tag}@x.io")
    assert (await _request(apps, h, pending))["subject"] == f"pending-{tag}"


async def test_the_services_take_an_erasure_with_no_profile_ids_but_not_one_naming_nobody(apps, workspace) -> None:
    """What ingest sends for someone it holds no profile of: the ids only. A service answers what it removed (none
    by profile); a request naming no one at all is refused."""
    h = internal_headers(workspace.workspace_id)
    for svc in privacy.OTHER_SERVICES:
        r = await apps[svc].post("/v1/privacy/erasure", headers=h, json={"profile_ids": [], "identities": ["nobody"]})
        assert r.status_code == 200 and set(r.json()["removed"].values()) <= {0}, (svc, r.text)
        r = await apps[svc].post("/v1/privacy/erasure", headers=h, json={"profile_ids": [], "identities": []})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), (svc, r.text)


async def test_an_erasure_reaches_messages_and_opt_ins_held_by_the_persons_own_address(
        apps, workspace, sessionmaker, internal_client) -> None:
    """Delivery holds some records by address alone: a receipt sent to the person's email through the API (no
    userId in its metadata), an SMS opt-in for their phone. The export shows them, the erasure removes them (the
    phone taken from the profile's ``phone`` trait in any notation), and no marketing text goes out on the erased
    opt-in. Someone only delivery knows can still ask what is held about them."""
    ingest, delivery = apps["ingest"], apps["delivery"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    user, email, phone = f"re-{tag}", f"Re.{tag}@Example.com", "+1 (415) 555-0142"
    r = await ingest.post("/v1/identify", auth=wk, json={"userId": user, "traits": {"email": email, "phone": phone}})
    assert r.json()["accepted"] == 1
    receipt = await delivery.post("/v1/messages", headers=h, json={
        "idempotency_key": f"receipt-{tag}", "channel": "email", "to": email, "subject": "Your receipt",
        "text": "Thanks", "message_type": "transactional"})
    assert receipt.status_code == 202, receipt.text
    opt_in = await delivery.post("/v1/sms-opt-ins", headers=h, json={
        "phone": "+14155550142", "user_id": user,
        "evidence": {"text": "Text me offers", "source": "checkout", "ip": "203.0.113.9"}})
    assert opt_in.status_code in (200, 201), opt_in.text
    # someone delivery alone knows: receipts to an address no identify named
    stranger = f"only-delivery-{tag}@example.com"
    alone = await delivery.post("/v1/messages", headers=h, json={
        "idempotency_key": f"alone-{tag}", "channel": "email", "to": stranger, "subject": "Your receipt",
        "text": "Thanks", "message_type": "transactional"})
    assert alone.status_code == 202

    export = (await ingest.get(f"/v1/privacy/export/{user}", headers=h)).json()
    assert [m["id"] for m in export["delivery"]["messages"]] == [receipt.json()["id"]]
    assert [o["address"] for o in export["delivery"]["opt_ins"]] == ["+14155550142"]
    assert [e["evidence"]["ip"] for e in export["delivery"]["consent_log"] if e["action"] == "opted_in"] == [
        "203.0.113.9"]
    theirs = await ingest.get(f"/v1/privacy/export/{stranger}", headers=h)
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["profile"] is None
    assert [m["id"] for m in theirs.json()["delivery"]["messages"]] == [alone.json()["id"]]
    nobody = await ingest.get(f"/v1/privacy/export/nobody-{tag}@example.com", headers=h)
    assert nobody.status_code == 404 and nobody.headers["content-type"] == "application/problem+json"

    for ref in (user, stranger):
        r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": ref})
        assert r.status_code == 202, r.text
    await _propagate(sessionmaker, internal_client)
    for m in (receipt, alone):
        assert (await delivery.get(f"/v1/messages/{m.json()['id']}", headers=h)).status_code == 404
    # the opt-in is gone: a marketing text to the number is not sent on it
    text_after = await delivery.post("/v1/messages", headers=h, json={
        "idempotency_key": f"after-{tag}", "channel": "sms", "to": "+14155550142", "text": "20% off",
        "message_type": "marketing"})
    assert text_after.json()["status"] == "suppressed", text_after.text
    assert "opt-in" in text_after.json()["last_error"]
    after = await ingest.get(f"/v1/privacy/export/{stranger}", headers=h)
    assert after.status_code == 404, after.text


async def test_an_erasure_and_export_reach_receipts_to_the_address_in_any_case_and_pushes_to_the_users_ids(
        apps, workspace, sessionmaker, internal_client) -> None:
    """Delivery keeps an email's local part as given (``Mia.Receipt@…``), so a receipt sent by address alone is the
    person's whatever the case the request (or the profile's ``email`` trait) spells it in; a push is addressed to
    a userId or anonymousId, so the pushes to theirs are theirs too. Another person's push stays."""
    ingest, delivery = apps["ingest"], apps["delivery"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]

    async def send(channel: str, to: str, **body: Any) -> str:
        r = await delivery.post("/v1/messages", headers=h, json={
            "idempotency_key": uuid.uuid4().hex, "channel": channel, "to": to, "subject": "Your receipt, Mia",
            "text": "Thanks", "message_type": "transactional", **body})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    # someone only delivery knows, asking in lower case
    mia = f"mia.receipt-{tag}@example.com"
    mias = await send("email", f"Mia.Receipt-{tag}@example.com")
    # a known profile whose email trait is lower case, a receipt to the address in another case, pushes to its ids
    kim, anon = f"kim-{tag}", f"kim-phone-{tag}"
    assert (await ingest.post("/v1/identify", auth=wk, json={
        "userId": kim, "anonymousId": anon, "traits": {"email": f"kim.x-{tag}@example.com"}})).json() == ACCEPTED
    kims = sorted([await send("email", f"Kim.X-{tag}@Example.com"), await send("push", kim),
                   await send("push", anon)])
    other = await send("push", f"kimberly-{tag}")

    r = await ingest.get(f"/v1/privacy/export/{mia}", headers=h)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["delivery"]["messages"]] == [mias]
    export = (await ingest.get(f"/v1/privacy/export/{kim}", headers=h)).json()
    assert sorted(m["id"] for m in export["delivery"]["messages"]) == kims

    rids = [(await ingest.post("/v1/privacy/erasure", headers=h, json={"user": ref})).json()["id"]
            for ref in (mia, kim)]
    await _propagate(sessionmaker, internal_client)
    done = [await _request(apps, h, rid) for rid in rids]
    assert [d["status"] for d in done] == ["completed"] * 2, done
    assert [d["services"]["delivery"]["removed"]["messages"] for d in done] == [1, 3]
    for mid in [mias, *kims]:
        assert (await delivery.get(f"/v1/messages/{mid}", headers=h)).status_code == 404
    assert (await delivery.get(f"/v1/messages/{other}", headers=h)).status_code == 200
    assert (await ingest.get(f"/v1/privacy/export/{mia}", headers=h)).status_code == 404


async def test_an_erasure_completes_only_after_a_message_being_sent_to_them_is_out(
        apps, workspace, sessionmaker, internal_client, settings) -> None:
    """A message of the person's that a sender holds (claimed, its lease running) is not deleted under it — it
    could still reach them after the request said "completed". Delivery refuses for now, saying why; the erasure
    stays pending and completes once the send is recorded."""
    from services.delivery import outbox

    ingest, delivery = apps["ingest"], apps["delivery"]
    wk, h = (workspace.write_key, ""), {"Authorization": f"Bearer {workspace.secret_key}"}
    user = f"in-flight-{uuid.uuid4().hex[:6]}"
    assert (await ingest.post("/v1/identify", auth=wk, json={"userId": user})).json() == ACCEPTED
    sent = await delivery.post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": f"{user}@example.com", "subject": "Receipt", "text": "x",
        "message_type": "transactional", "metadata": {"userId": user}})
    mid = uuid.UUID(sent.json()["id"])
    async with sessionmaker() as s, s.begin():  # a sender claims it (and others due: given back below)
        claimed = await outbox.claim(s, 1000, settings.delivery_lease_s)
    mine = next(m for m in claimed if m["id"] == mid)
    async with sessionmaker() as s, s.begin():
        await outbox.release(s, [m for m in claimed if m["id"] != mid])

    r = await ingest.post("/v1/privacy/erasure", headers=h, json={"user": user})
    rid = r.json()["id"]
    await _propagate(sessionmaker, internal_client)
    req = await _request(apps, h, rid)
    assert req["status"] == "pending" and req["services"]["delivery"]["status"] == "pending", req
    assert "being sent" in req["services"]["delivery"]["error"], req
    assert (await delivery.get(f"/v1/messages/{mid}", headers=h)).status_code == 200

    async with sessionmaker() as s, s.begin():  # the provider took it: the send is recorded
        await outbox.record_many(s, [outbox.Outcome(mine, datetime.now(UTC), "sent", None, "smtp-id")])
    async with sessionmaker() as s, s.begin():  # (due again now, not after the back-off)
        await s.execute(text("update ingest.privacy_requests set next_attempt_at = now() where id = :id"),
                        {"id": uuid.UUID(rid)})
    await _propagate(sessionmaker, internal_client)
    req = await _request(apps, h, rid)
    assert req["status"] == "completed" and req["services"]["delivery"]["removed"]["messages"] == 1, req
    assert (await delivery.get(f"/v1/messages/{mid}", headers=h)).status_code == 404


async def test_upgrading_makes_a_profile_stored_with_an_empty_user_id_anonymous(apps, workspace, sessionmaker,
                                                                                settings) -> None:
    """The release before took ``"userId": ""`` for a user id: the profile it made held ``""`` and every later such
    message failed on it. ingest_0008 makes that profile the anonymous one it is."""
    from alembic import command

    from shared.migrate import alembic_config

    cfg = alembic_config("ingest", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "ingest_0007")
    pid = uuid.uuid4()
    async with sessionmaker() as s, s.begin():  # as the release before left it
        await s.execute(text("insert into ingest.profiles (id, workspace_id, user_id) values (:id, :ws, '')"),
                        {"id": pid, "ws": workspace.workspace_id})
    await asyncio.to_thread(command.upgrade, cfg, "head")
    got = await apps["ingest"].get(f"/v1/profiles/{pid}", headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert got.status_code == 200 and got.json()["user_id"] is None, got.text
