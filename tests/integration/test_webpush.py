"""Web Push: the test plays the browser (a P-256 key pair and an auth secret, as pushManager.subscribe() makes)
and a local push service that checks the VAPID JWT against the key in the request and the key browsers get
from ``GET /v1/push/vapid-public-key``, then decrypts the aes128gcm body with the subscription's private key
— with its own RFC 8291/8188 code, not the library delivery uses. Also: one user's devices across FCM, APNs
and Web Push each get the message."""

import asyncio
import base64
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from services.delivery.app import create_app
from shared.testing import http_server
from tests.integration.test_apns import send_now

SUBJECT = "mailto:push-ops@acme.test"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _point(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


class Browser:
    """One push subscription: what the user agent keeps (RFC 8291 §2)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def keys(self) -> dict[str, str]:
        return {"p256dh": b64u(_point(self.key)), "auth": b64u(self.auth)}

    def decrypt(self, body: bytes) -> bytes:
        """RFC 8188 header (salt, rs, keyid = the sender's ephemeral key), RFC 8291 §3.4 key derivation."""
        salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
        sender, ciphertext = body[21:21 + idlen], body[21 + idlen:]
        assert idlen == 65 and len(ciphertext) <= rs
        ecdh = self.key.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender))
        ikm = HKDF(hashes.SHA256(), 32, salt=self.auth, info=b"WebPush: info\x00" + _point(self.key) + sender
                   ).derive(ecdh)
        cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
        nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
        padded = AESGCM(cek).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
        assert padded[-1:] == b"\x02"  # the last record's delimiter
        return padded[:-1]


class FakePushService:
    """RFC 8030 push service; a subscription id's prefix chooses the answer."""

    def __init__(self) -> None:
        self.browsers: dict[str, Browser] = {}
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.vapid_keys: set[str] = set()
        self.failures_left: dict[str, int] = {}
        self.port = 0
        app = FastAPI()

        @app.post("/push/{sub}")
        async def push(sub: str, request: Request) -> Response:
            body, h = await request.body(), request.headers
            auth = h.get("authorization", "")
            try:
                scheme, params = auth.split(" ", 1)
                fields = dict(p.strip().split("=", 1) for p in params.split(","))
                public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(fields["k"]))
                claims = jwt.decode(fields["t"], public, algorithms=["ES256"], audience=f"http://127.0.0.1:{self.port}",
                                    options={"require": ["exp", "aud", "sub"]})
            except (ValueError, KeyError, jwt.PyJWTError):
                return JSONResponse({"message": "bad VAPID authorization"}, status_code=401)
            if scheme != "vapid" or claims["exp"] > time.time() + 86400 or claims["sub"] != SUBJECT:
                return JSONResponse({"message": "bad VAPID claims"}, status_code=403)
            self.vapid_keys.add(fields["k"])
            if h.get("content-encoding") != "aes128gcm" or not h.get("ttl", "").isdigit():
                return JSONResponse({"message": "TTL and Content-Encoding: aes128gcm required"}, status_code=400)
            if h.get("urgency") not in ("very-low", "low", "normal", "high"):
                return JSONResponse({"message": "bad Urgency"}, status_code=400)
            if len(body) > 4096:
                return JSONResponse({"message": "payload too large"}, status_code=413)
            kind = sub.split("-")[0]
            if kind in ("gone404", "gone410"):
                return Response(status_code=int(kind[-3:]))
            if kind == "limited":
                return Response(status_code=429, headers={"Retry-After": "120"})
            if kind == "refused":
                return JSONResponse({"message": "payload too large"}, status_code=413)
            if kind == "busy" and self.failures_left.setdefault(sub, 1) > 0:
                self.failures_left[sub] -= 1
                return Response(status_code=503)
            plaintext = self.browsers[sub].decrypt(body)  # the proof: only the subscriber can read it
            self.received.setdefault(sub, []).append({"headers": dict(h), "payload": json.loads(plaintext)})
            return Response(status_code=201, headers={"Location": f"http://127.0.0.1:{self.port}/msg/{uuid.uuid4()}"})

        self.app = app

    def subscribe(self, kind: str) -> tuple[str, dict[str, str]]:
        sub = f"{kind}-{uuid.uuid4().hex[:10]}"
        self.browsers[sub] = Browser()
        return f"http://127.0.0.1:{self.port}/push/{sub}", self.browsers[sub].keys()


@asynccontextmanager
async def delivery_client(settings: Any):
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://delivery") as client:
        yield client


async def _register(apps, h, user: str, endpoint: str, keys: dict[str, str]) -> httpx.Response:
    return await apps["delivery"].post("/v1/devices", headers=h, json={
        "user": user, "platform": "web", "subscription": {"endpoint": endpoint, "keys": keys, "expirationTime": None}})


async def test_web_push_encrypted_vapid_signed_and_gone_subscriptions_removed(apps, workspace, sessionmaker,
                                                                                settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    vapid = ec.generate_private_key(ec.SECP256R1())
    raw_private = b64u(vapid.private_numbers().private_value.to_bytes(32, "big"))  # as web-push tools print it
    s = settings.model_copy(update={"vapid_private_key": raw_private, "vapid_subject": SUBJECT})
    service = FakePushService()
    with http_server(service.app) as port:
        service.port = port
        # browsers learn the key to subscribe with; no credentials needed
        async with delivery_client(s) as public:
            r = await public.get("/v1/push/vapid-public-key")
        assert r.status_code == 200 and r.json()["public_key"] == b64u(_point(vapid))
        assert (await apps["delivery"].get("/v1/push/vapid-public-key")).status_code == 404  # not configured

        tag = uuid.uuid4().hex[:6]
        user, lonely, busy, limited, refused = (f"{k}-{tag}" for k in ("web", "lonely", "busy", "limited", "refused"))
        subs: dict[str, list[str]] = {}
        for who, kinds in ((user, ("ok", "gone404")), (lonely, ("gone410",)), (busy, ("busy",)),
                           (limited, ("limited",)), (refused, ("refused",))):
            for kind in kinds:
                endpoint, keys = service.subscribe(kind)
                r = await _register(apps, h, who, endpoint, keys)
                assert r.status_code == 201 and r.json()["web_push"] is True, r.text
                subs.setdefault(who, []).append(endpoint)
        ids = {}
        for who in (user, lonely, busy, limited, refused):
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"wp-{who}", "channel": "push", "to": who, "subject": "Back in stock",
                "text": "The blue one is back", "message_type": "marketing",
                "data": {"deep_link": "https://shop.acme.test/p/7", "image": "https://cdn.acme.test/7.jpg",
                         "collapse_key": "stock-7", "sku": 7}})
            assert r.status_code == 202, r.text
            ids[who] = r.json()["id"]
        before = time.time()
        await send_now(sessionmaker, s, *ids.values())
        got = {w: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for w, i in ids.items()}
        assert {w: g["status"] for w, g in got.items()} == {
            user: "sent", lonely: "failed", busy: "queued", limited: "queued", refused: "failed"}
        assert "413" in got[refused]["last_error"] and "429" in got[limited]["last_error"]

        [ok_sub] = [e.rsplit("/", 1)[1] for e in subs[user] if "/ok-" in e]
        [delivered] = service.received[ok_sub]
        assert delivered["payload"] == {
            "title": "Back in stock", "body": "The blue one is back", "deep_link": "https://shop.acme.test/p/7",
            "image": "https://cdn.acme.test/7.jpg", "message_id": ids[user],
            "data": {"deep_link": "https://shop.acme.test/p/7", "image": "https://cdn.acme.test/7.jpg",
                     "collapse_key": "stock-7", "sku": 7}}
        hd = delivered["headers"]
        assert hd["urgency"] == "normal" and s.push_ttl_s - 120 < int(hd["ttl"]) <= s.push_ttl_s
        assert len(hd["topic"]) <= 32 and hd["topic"].replace("-", "").replace("_", "").isalnum()
        assert service.vapid_keys == {b64u(_point(vapid))}
        assert got[user]["provider_message_id"].startswith(f"http://127.0.0.1:{port}/msg/")

        # 404 and 410 removed those subscriptions; a refused payload keeps its subscription
        left = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": user})).json()["devices"]
        assert [d["token"] for d in left] == [e for e in subs[user] if "/ok-" in e]
        assert (await apps["delivery"].get("/v1/devices", headers=h, params={"user": lonely})).json()["devices"] == []
        assert len((await apps["delivery"].get("/v1/devices", headers=h,
                                               params={"user": refused})).json()["devices"]) == 1

        # 429: the next attempt waits Retry-After (120 s), longer than the first backoff (~2 s)
        async with sessionmaker() as session:
            due = (await session.execute(text("select extract(epoch from next_attempt_at) from delivery.messages "
                                              "where id = :id"), {"id": ids[limited]})).scalar_one()
        assert float(due) >= before + 115

        # 503 was transient: retried, and the browser gets it once
        await send_now(sessionmaker, s, ids[busy])
        retried = (await apps["delivery"].get(f"/v1/messages/{ids[busy]}", headers=h)).json()
        assert retried["status"] == "sent" and retried["attempts"] == 2
        [busy_sub] = [e.rsplit("/", 1)[1] for e in subs[busy]]
        assert len(service.received[busy_sub]) == 1

        # a device can be forgotten by its endpoint
        endpoint = subs[user][0]
        r = await apps["delivery"].delete(f"/v1/devices/{endpoint}", headers=h)
        assert r.status_code == 204


async def test_subscriptions_are_checked_at_registration(apps, workspace, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    keys = Browser().keys()
    bad = [
        {"user": "u1", "platform": "web", "subscription": {"endpoint": "https://push.example/x",
                                                           "keys": {**keys, "p256dh": b64u(os.urandom(65))}}},
        {"user": "u1", "platform": "web", "subscription": {"endpoint": "https://push.example/x",
                                                           "keys": {**keys, "auth": b64u(os.urandom(12))}}},
        {"user": "u1", "platform": "ios", "subscription": {"endpoint": "https://push.example/x", "keys": keys}},
        {"user": "u1", "platform": "web", "token": "tok-1234567890",
         "subscription": {"endpoint": "https://push.example/x", "keys": keys}},
        {"user": "u1", "platform": "web", "subscription": {"endpoint": "ftp://push.example/x", "keys": keys}},
        # not URLs at all: a port out of range or not a number, a broken IPv6 literal, a control character
        *({"user": "u1", "platform": "web", "subscription": {"endpoint": e, "keys": keys}}
          for e in ("https://push.example:99999/x", "https://push.example:abc/x", "https://[::1/x",
                    "https://push.example/a\x01b")),
    ]
    for body in bad:
        r = await apps["delivery"].post("/v1/devices", headers=h, json=body)
        assert r.status_code == 422, (body, r.text)
    # without webhook_allow_private: only https endpoints on public addresses (SSRF guard)
    async with delivery_client(settings.model_copy(update={"webhook_allow_private": False})) as strict:
        for endpoint in ("http://127.0.0.1:9/push/x", "https://127.0.0.1/push/x", "https://10.1.2.3/push/x",
                         "https://[::1]/push/x"):
            r = await strict.post("/v1/devices", headers=h, json={
                "user": "u1", "platform": "web", "subscription": {"endpoint": endpoint, "keys": keys}})
            assert r.status_code == 422, (endpoint, r.text)
    # an FCM token for a web app is still registered as before
    r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": "u1", "platform": "web",
                                                                    "token": "fcm-web-token-123456"})
    assert r.status_code == 201 and r.json()["web_push"] is False


async def test_one_message_reaches_every_device_through_its_provider(apps, workspace, sessionmaker, settings,
                                                                     tmp_path) -> None:
    """android → FCM, iOS with an APNs device token → APNs, an iOS FCM token → FCM, a browser → Web Push."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from services.delivery import apns
    from tests.integration.test_apns import BUNDLE, KEY_ID, TEAM, FakeApns, _key, _token, h2_server
    from tests.integration.test_push import FakeGoogle

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    port_box: dict = {}
    google = FakeGoogle(rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo), port_box)
    apns_pem, apns_public = _key()
    apple = FakeApns(apns_public)
    service = FakePushService()
    vapid = ec.generate_private_key(ec.SECP256R1())
    vapid_pem = vapid.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    with http_server(google.app) as gport, http_server(service.app) as wport, \
            h2_server(apple.app, tmp_path) as (aport, cafile):
        port_box["port"], service.port = gport, wport
        account = json.dumps({"type": "service_account", "project_id": "acme-app", "private_key": rsa_pem,
                              "client_email": "push@acme-app.iam.gserviceaccount.com",
                              "token_uri": f"http://127.0.0.1:{gport}/token"})
        s = settings.model_copy(update={
            "fcm_service_account": account, "fcm_base_url": f"http://127.0.0.1:{gport}",
            "apns_key": apns_pem, "apns_key_id": KEY_ID, "apns_team_id": TEAM, "apns_bundle_id": BUNDLE,
            "apns_base_url": f"https://127.0.0.1:{aport}", "apns_ca_file": cafile,
            "vapid_private_key": vapid_pem, "vapid_subject": SUBJECT})
        tag = uuid.uuid4().hex[:6]
        user = f"everywhere-{tag}"
        android, ios_fcm, ios_apns, ios_gone = (f"tok-android-{tag}-0000", f"tok-ios:APA91b-{tag}", _token("dddd"),
                                                _token("0410"))
        for platform, token in (("android", android), ("ios", ios_fcm), ("ios", ios_apns), ("ios", ios_gone)):
            r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": user, "platform": platform,
                                                                            "token": token})
            assert r.status_code == 201, r.text
        endpoint, keys = service.subscribe("ok")
        assert (await _register(apps, h, user, endpoint, keys)).status_code == 201
        try:
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"all-{tag}", "channel": "push", "to": user, "subject": "Hello",
                "text": "Everywhere", "message_type": "transactional", "data": {"image": "https://cdn.acme.test/i.png",
                                                                      "collapse_key": "hello-1"}})
            mid = r.json()["id"]
            await send_now(sessionmaker, s, mid)
        finally:
            await apns.close_clients()
        m = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
        assert m["status"] == "sent", m["last_error"]
        assert len(m["provider_message_id"].split(",")) == 4
        assert sorted(x["token"] for x in google.sent if tag in x["token"]) == sorted([android, ios_fcm])
        [fcm_ios] = [x for x in google.sent if x["token"] == ios_fcm]
        assert fcm_ios["apns"]["headers"].pop("apns-expiration") and fcm_ios["android"].pop("ttl")  # (test_push)
        assert fcm_ios["apns"] == {"payload": {"aps": {"mutable-content": 1}},
                                   "fcm_options": {"image": "https://cdn.acme.test/i.png"},
                                   "headers": {"apns-collapse-id": "hello-1"}}
        assert fcm_ios["android"] == {"collapse_key": "hello-1"} and "collapse_key" not in fcm_ios["data"]
        # (send_now may also have claimed messages earlier tests left due: look at this user's devices only)
        mine = [x for x in apple.requests if x["token"] in (ios_apns, ios_gone)]
        assert {x["headers"].get("apns-collapse-id") for x in mine} == {"hello-1"}
        assert fcm_ios["notification"]["image"] == "https://cdn.acme.test/i.png"
        assert sorted(x["token"] for x in mine) == sorted([ios_apns, ios_gone])
        [web] = service.received[endpoint.rsplit("/", 1)[1]]
        assert web["payload"]["title"] == "Hello" and web["headers"]["urgency"] == "high"
        left = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": user})).json()["devices"]
        assert sorted(d["token"] for d in left) == sorted([android, ios_fcm, ios_apns, endpoint])


async def test_a_push_past_its_ttl_is_not_sent(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    vapid = ec.generate_private_key(ec.SECP256R1())
    s = settings.model_copy(update={"vapid_private_key": b64u(vapid.private_numbers().private_value.to_bytes(32, "big")),
                                    "vapid_subject": SUBJECT, "push_ttl_s": 1})
    service = FakePushService()
    with http_server(service.app) as port:
        service.port = port
        user = f"late-{uuid.uuid4().hex[:6]}"
        endpoint, keys = service.subscribe("ok")
        assert (await _register(apps, h, user, endpoint, keys)).status_code == 201
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"late-{user}", "channel": "push", "to": user, "subject": "Flash sale",
            "text": "Ends in an hour", "message_type": "marketing"})
        await asyncio.sleep(2.1)  # the worker was down, or the provider kept failing, longer than the TTL
        await send_now(sessionmaker, s, r.json()["id"])
        m = (await apps["delivery"].get(f"/v1/messages/{r.json()['id']}", headers=h)).json()
        assert m["status"] == "failed" and m["last_error"].startswith("expired"), m
        assert service.received.get(endpoint.rsplit("/", 1)[1], []) == []
