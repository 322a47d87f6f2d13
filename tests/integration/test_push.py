"""Push through FCM HTTP v1 — a local server answering as Google's token endpoint and FCM do (it checks the
service account's signed JWT) — with device registration and removal of tokens FCM says are gone."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.delivery import push, sending
from shared.testing import http_server


class FakeGoogle:
    def __init__(self, public_pem: bytes, port_box: dict) -> None:
        self.sent: list[dict] = []
        self.tokens_minted = 0
        self.asked: dict[str, int] = {}  # token -> sends asked for it, answered or not
        self.token_endpoint_down = False
        app = FastAPI()

        @app.post("/token")
        async def token(request: Request) -> JSONResponse:
            form = await request.form()
            if self.token_endpoint_down:
                return JSONResponse({"error": "backend_error"}, status_code=503)
            assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            try:
                claims = jwt.decode(str(form["assertion"]), public_pem, algorithms=["RS256"],
                                    audience=f"http://127.0.0.1:{port_box['port']}/token")
            except jwt.PyJWTError:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
            self.tokens_minted += 1
            return JSONResponse({"access_token": f"ya29.{uuid.uuid4().hex}", "expires_in": 3599,
                                 "token_type": "Bearer"})

        @app.post("/v1/projects/{project}/messages:send")
        async def send(project: str, request: Request) -> JSONResponse:
            if not request.headers.get("authorization", "").startswith("Bearer ya29."):
                return JSONResponse({"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status_code=401)
            if project != "acme-app":  # no such project: a 404 that says nothing about the token (no FcmError)
                return JSONResponse({"error": {"code": 404, "message": "Requested entity was not found.",
                                               "status": "NOT_FOUND"}}, status_code=404)
            body = await request.json()
            token = body["message"]["token"]
            self.asked[token] = self.asked.get(token, 0) + 1
            if token.startswith("flaky") and self.asked[token] == 1:  # unavailable once, then takes it
                return JSONResponse({"error": {"code": 503, "status": "UNAVAILABLE"}}, status_code=503)
            if token.startswith("slow"):
                await asyncio.sleep(0.4)
            if token.startswith("expired") and self.asked[token] == 1:  # our access token, refused: a new one
                return JSONResponse({"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status_code=401)
            if token.startswith("gone"):
                return JSONResponse({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                    {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}},
                    status_code=404)
            if token.startswith("badpayload"):
                return JSONResponse({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
                    {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}},
                    status_code=400)
            if token.startswith("invalid"):  # what FCM answers for a malformed or stale-format token
                return JSONResponse({"error": {
                    "code": 400, "message": "The registration token is not a valid FCM registration token",
                    "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1."
                                                               "FcmError", "errorCode": "INVALID_ARGUMENT"}]}},
                    status_code=400)
            if token.startswith("busy"):
                return JSONResponse({"error": {"code": 503, "status": "UNAVAILABLE"}}, status_code=503)
            if token.startswith("quota"):  # the project's message rate: FCM gives no Retry-After
                return JSONResponse({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
                    {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}},
                    status_code=429)
            if token.startswith("later"):  # Retry-After as an HTTP date (RFC 9110 §10.2.3), 40 s ahead
                when = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
                return JSONResponse({"error": {"code": 503, "status": "UNAVAILABLE"}}, status_code=503,
                                    headers={"Retry-After": when})
            assert all(isinstance(v, str) for v in body["message"].get("data", {}).values())
            self.sent.append(body["message"])
            return JSONResponse({"name": f"projects/{project}/messages/{uuid.uuid4().hex[:8]}"})

        self.app = app


@contextmanager
def fcm(settings: Any, project: str = "acme-app", **update: Any) -> Iterator[tuple[FakeGoogle, Any]]:
    """A local Google (token endpoint and FCM) and settings that send through it with a fresh service account."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    port_box: dict = {}
    google = FakeGoogle(public_pem, port_box)
    with http_server(google.app) as port:
        port_box["port"] = port
        account = json.dumps({"type": "service_account", "project_id": project, "private_key": private_pem,
                              "client_email": "push@acme-app.iam.gserviceaccount.com",
                              "token_uri": f"http://127.0.0.1:{port}/token"})
        yield google, settings.model_copy(update={"fcm_service_account": account,
                                                  "fcm_base_url": f"http://127.0.0.1:{port}", **update})


async def test_push_to_every_device_and_gone_tokens_removed(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    with fcm(settings) as (google, push_settings):
        tag = uuid.uuid4().hex[:6]
        user, lonely, waiting, bad = f"push-{tag}", f"lonely-{tag}", f"busy-{tag}", f"bad-{tag}"
        stale = f"stale-{tag}"
        for who, token, platform in ((bad, f"badpayload-{tag}-0000", "android"),
                                     (stale, f"invalid-{tag}-0000", "android"),
                                     (user, f"tok-android-{tag}-0000", "android"),
                                     (user, f"gone-ios-{tag}-00000", "ios"),
                                     (lonely, f"gone-only-{tag}-0000", "web"), (waiting, f"busy-{tag}-000000", "web")):
            r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": who, "token": token,
                                                                            "platform": platform})
            assert r.status_code == 201, r.text
        ids = {}
        for who in (user, lonely, waiting, bad, stale, f"nobody-{tag}"):
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"push-{who}", "channel": "push", "to": who, "subject": "Your order shipped",
                "text": "Track it in the app", "data": {"deep_link": "acme://orders/42", "order": 42, "gift": True,
                                                        "items": [{"sku": "A-1", "qty": 2}], "note": None},
                "message_type": "transactional"})
            assert r.status_code == 202, r.text
            ids[who] = r.json()["id"]
        await sending.send_due(sessionmaker, push_settings)
        got = {w: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for w, i in ids.items()}
        assert {w: g["status"] for w, g in got.items()} == {
            user: "sent", lonely: "failed", waiting: "queued", bad: "failed", stale: "failed", f"nobody-{tag}": "failed"}
        # a payload FCM refuses fails the message but keeps the (valid) device
        kept = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": bad})).json()["devices"]
        assert len(kept) == 1 and "INVALID_ARGUMENT" in got[bad]["last_error"]
        assert "no device registered" in got[f"nobody-{tag}"]["last_error"]
        # an INVALID_ARGUMENT about the registration token itself: the token is dead (Firebase: delete it)
        assert (await apps["delivery"].get("/v1/devices", headers=h, params={"user": stale})).json()["devices"] == []
        assert "gone" in got[stale]["last_error"]
        [delivered] = [m for m in google.sent if m["token"].startswith("tok-android")]
        assert delivered["notification"] == {"title": "Your order shipped", "body": "Track it in the app"}
        # FCM data is text to text: anything else goes as JSON an app can parse (not Python's repr, "True")
        assert {**delivered["data"], "items": json.loads(delivered["data"]["items"])} == {
            "deep_link": "acme://orders/42", "order": "42", "gift": "true", "items": [{"sku": "A-1", "qty": 2}]}
        left = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": user})).json()["devices"]
        assert [d["token"] for d in left] == [f"tok-android-{tag}-0000"]  # the gone iOS token was removed
        assert google.tokens_minted == 1  # one access token served every send
        async with sessionmaker() as s:
            attempts = (await s.execute(text("select attempts from delivery.messages where id = :id"),
                                        {"id": ids[waiting]})).scalar_one()
        assert attempts == 1


async def test_fcm_keeps_a_notification_only_as_long_as_push_ttl(apps, workspace, sessionmaker, settings) -> None:
    """FCM keeps an undelivered notification for 4 weeks unless told otherwise (android.ttl, apns-expiration,
    webpush TTL): a phone that comes back online days later must not get a push that expired long ago."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    with fcm(settings, push_ttl_s=3600) as (google, push_settings):
        user = f"ttl-{uuid.uuid4().hex[:6]}"
        r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": user, "token": f"tok-{user}-00000",
                                                                        "platform": "android"})
        assert r.status_code == 201, r.text
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"push-{user}", "channel": "push", "to": user, "subject": "Back in stock",
            "text": "Only today", "data": {"collapse_key": "stock"}})
        assert r.status_code == 202, r.text
        created = int(datetime.fromisoformat(r.json()["created_at"]).timestamp())
        await sending.send_due(sessionmaker, push_settings)
    [sent] = [m for m in google.sent if m["token"] == f"tok-{user}-00000"]
    ttl = int(sent["android"]["ttl"].removesuffix("s"))  # a protobuf Duration, in seconds
    assert 3600 - 120 < ttl <= 3600 and sent["android"]["collapse_key"] == "stock"
    assert sent["apns"]["headers"] == {"apns-expiration": str(created + 3600), "apns-collapse-id": "stock"}
    assert 3600 - 120 < int(sent["webpush"]["headers"]["TTL"]) <= 3600


async def test_a_404_that_is_not_unregistered_keeps_the_device(apps, workspace, sessionmaker, settings) -> None:
    """FCM answers a dead token with 404 and the FcmError code UNREGISTERED. A 404 without it is our own
    configuration (a project id that does not exist, a base URL with a wrong path): every send would answer it,
    so taking it for a dead token would remove every device of every user. The message fails; devices stay."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    for case, kw in (("project", {"project": "acme-typo"}), ("path", {})):
        user, token = f"cfg-{case}-{tag}", f"tok-{case}-{tag}-0000"
        with fcm(settings, **kw) as (google, push_settings):
            if case == "path":  # a proxy or base URL that does not lead to FCM: a plain 404 page
                push_settings = push_settings.model_copy(update={"fcm_base_url": push_settings.fcm_base_url + "/x"})
            mid = await _push(apps, h, user, [token])
            await sending.send_due(sessionmaker, push_settings)
            assert google.sent == []
        got = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
        assert got["status"] == "failed", (case, got)
        assert "404" in got["last_error"] and "gone" not in got["last_error"], (case, got["last_error"])
        kept = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": user})).json()["devices"]
        assert [d["token"] for d in kept] == [token], case


async def test_fcm_quota_and_a_dated_retry_after_set_the_next_attempt(apps, workspace, sessionmaker, settings) -> None:
    """QUOTA_EXCEEDED (429 RESOURCE_EXHAUSTED) without a Retry-After waits at least a minute, as FCM's error
    reference asks; a Retry-After given as an HTTP date is read as the time it names (it was taken for no hint, and
    the message came back after its ~2 s backoff)."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    with fcm(settings) as (_, push_settings):
        ids = {}
        for case in ("quota", "later", "busy"):
            user = f"{case}-{tag}"
            r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": user, "token": f"{case}-{tag}-00000",
                                                                            "platform": "android"})
            assert r.status_code == 201, r.text
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"wait-{user}", "channel": "push", "to": user, "subject": "Hello", "text": "Hi",
                "message_type": "transactional"})
            ids[case] = r.json()["id"]
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                                 "where id = any(CAST(:ids AS uuid[]))"), {"ids": list(ids.values())})
        await sending.send_due(sessionmaker, push_settings, limit=len(ids))
    async with sessionmaker() as s:
        rows = {r.id: r for r in await s.execute(text(
            "select id::text, status, extract(epoch from next_attempt_at - now()) as wait_s from delivery.messages "
            "where id = any(CAST(:ids AS uuid[]))"), {"ids": list(ids.values())})}
    waits = {case: float(rows[i].wait_s) for case, i in ids.items()}
    assert all(rows[i].status == "queued" for i in ids.values())
    assert 55 <= waits["quota"] <= 61, waits
    assert 33 <= waits["later"] <= 41, waits
    assert waits["busy"] <= 3, waits  # a 503 without a Retry-After: the first backoff


async def test_data_keys_fcm_reserves_are_refused_when_queued(apps, workspace) -> None:
    """FCM refuses a message whose data has a reserved key (400 INVALID_ARGUMENT, for every device): `from`,
    `message_type`, and any key starting with `google` or `gcm`. Such a push was queued (202) and failed at send
    time; it is now a 422 naming the key, and `invalid` in a batch. Keys that merely contain those words pass."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]

    def push(data: dict) -> dict:
        return {"idempotency_key": f"reserved-{uuid.uuid4().hex}", "channel": "push", "to": f"user-{tag}",
                "subject": "Hello", "text": "Hi", "data": data}

    for key in ("from", "message_type", "google.c.a.e", "googleId", "gcm.notification.x", "gcm"):
        r = await apps["delivery"].post("/v1/messages", headers=h, json=push({"order": 1, key: "x"}))
        assert r.status_code == 422, (key, r.text)
        [error] = r.json()["errors"]
        assert error["loc"][-2:] == ["data", key] and f"data key {key!r} is reserved by FCM" in error["msg"], error
    r = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        push({"gcm.n.e": "1"}), push({"fromage": "brie", "my_google_id": "g", "type": "promo"})]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["result"] for x in results] == ["invalid", "queued"] and "'gcm.n.e' is reserved" in results[0]["error"]
    # (a webhook's data is its own JSON body: any key goes)
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"hook-{tag}", "channel": "webhook", "to": "https://hooks.example.test/x",
        "data": {"from": "acme", "message_type": "order"}})
    assert r.status_code == 202, r.text


async def _push(apps, h, user: str, tokens: list[str]) -> str:
    for token in tokens:
        r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": user, "token": token,
                                                                        "platform": "android"})
        assert r.status_code == 201, r.text
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"push-{user}", "channel": "push", "to": user, "subject": "Hello", "text": "Hi",
        "message_type": "transactional"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def _due_now(sessionmaker, message_id: str) -> None:
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = now() - interval '1 second' "
                             "where id = :id"), {"id": message_id})


async def test_a_device_with_a_passing_error_gets_the_push_on_the_retry_and_the_others_not_twice(
        apps, workspace, sessionmaker, settings) -> None:
    """One device took the push, another answered 503: the message was `sent` and the second never had it. Now
    each device that takes it has a receipt; the message is retried for the others alone, and is sent once
    every device has it. A device is marked used only when it took a push."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    ok, flaky = f"tok-{tag}-000000", f"flaky-{tag}-0000"
    with fcm(settings) as (google, push_settings):
        mid = await _push(apps, h, f"two-{tag}", [ok, flaky])
        await sending.send_due(sessionmaker, push_settings)
        first = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
        assert first["status"] == "queued" and "FCM 503" in first["last_error"], first
        used = {d["token"]: d["last_used_at"] for d in (await apps["delivery"].get(
            "/v1/devices", headers=h, params={"user": f"two-{tag}"})).json()["devices"]}
        assert used[ok] is not None and used[flaky] is None, used
        await _due_now(sessionmaker, mid)
        await sending.send_due(sessionmaker, push_settings)
    done = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
    assert done["status"] == "sent" and len(done["provider_message_id"].split(",")) == 2, done
    assert {t: google.asked.get(t) for t in (ok, flaky)} == {ok: 1, flaky: 2}  # (other tests' messages go too)
    assert sorted(m["token"] for m in google.sent if m["token"] in (ok, flaky)) == sorted([ok, flaky])


async def test_a_user_with_many_slow_devices_gets_one_push_on_each(apps, workspace, sessionmaker, settings) -> None:
    """80 devices answering in 9 s each outlasted the 60 s lease: another claim sent to all of them again, three
    times. A device is started only while the lease can still cover its longest send (here, with provider timeouts
    longer than the lease, for the first second), the rest wait for the next attempt, which skips those reached."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    tokens = [f"slow-{tag}-{n:04d}" for n in range(40)]  # (ten at a time, 0.4 s each: four rounds past a second)
    with fcm(settings, provider_timeout_s=20.0) as (google, push_settings):
        mid = await _push(apps, h, f"many-{tag}", tokens)
        async with httpx.AsyncClient() as client:  # (an access token at hand: minting one is not the budget's)
            await push.TOKENS.get(client, push.ServiceAccount.load(push_settings.fcm_service_account), 5)
        await sending.send_due(sessionmaker, push_settings)
        first = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
        assert first["status"] == "queued" and "take longer than a lease" in first["last_error"], first
        assert 0 < sum(t in google.asked for t in tokens) < len(tokens)  # those started in time
        for _ in range(5):
            await _due_now(sessionmaker, mid)
            await sending.send_due(sessionmaker, push_settings)
            status = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()["status"]
            if status == "sent":
                break
    assert status == "sent"
    assert {t: google.asked.get(t) for t in tokens} == dict.fromkeys(tokens, 1)  # each device once, over attempts


async def test_a_token_endpoint_outage_mid_send_is_retried(apps, workspace, sessionmaker, settings) -> None:
    """FCM refused our access token (401), and minting a new one met the token endpoint's 503: the message failed
    for good. An outage there is transient, like FCM's own 5xx."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    with fcm(settings) as (google, push_settings):
        mid = await _push(apps, h, f"minted-{tag}", [f"expired-{tag}-0000"])
        async with httpx.AsyncClient() as client:  # an access token in the cache, as after earlier sends
            await push.TOKENS.get(client, push.ServiceAccount.load(push_settings.fcm_service_account), 5)
        google.token_endpoint_down = True
        await sending.send_due(sessionmaker, push_settings)
        got = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
        assert got["status"] == "queued" and "token endpoint answered 503" in got["last_error"], got
        google.token_endpoint_down = False
        await _due_now(sessionmaker, mid)
        await sending.send_due(sessionmaker, push_settings)
    assert (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()["status"] == "sent"


async def test_an_apns_token_in_either_case_is_one_device_and_a_short_user_id_gets_pushes(apps, workspace,
                                                                                         sessionmaker) -> None:
    """iOS libraries write the hex device token in upper or lower case: both were stored, and the phone got each
    push twice (a row stored in capitals by an earlier release goes when the app registers again). And a push's
    ``to`` needed 3 characters: user "42" could register a device but never get a push."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    hex_token = uuid.uuid4().hex * 2
    async with sessionmaker() as s, s.begin():
        await s.execute(text("insert into delivery.devices (workspace_id, token, user_ref, platform) "
                             "values (:ws, :t, '42', 'ios')"), {"ws": workspace.workspace_id, "t": hex_token.upper()})
    for token in (hex_token.upper(), hex_token):
        r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": "42", "token": token,
                                                                        "platform": "ios"})
        assert r.status_code == 201 and r.json()["token"] == hex_token, r.text
    listed = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": "42"})).json()["devices"]
    assert [d["token"] for d in listed] == [hex_token]
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"short-{hex_token[:8]}", "channel": "push", "to": "42", "subject": "Hi", "text": "B"})
    assert r.status_code == 202, r.text
    assert (await apps["delivery"].delete(f"/v1/devices/{hex_token.upper()}", headers=h)).status_code == 204
    assert (await apps["delivery"].get("/v1/devices", headers=h, params={"user": "42"})).json()["devices"] == []
