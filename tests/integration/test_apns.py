"""Push to iOS through APNs token auth: a local HTTP/2 server over TLS (hypercorn, a trustme CA the client is
told to trust, ALPN h2) answering as api.push.apple.com does. It checks every request's ES256 provider token
with the team's public key, the headers APNs requires, and answers 200, 410, 400, 403, 413, 429 and 500."""

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from hypercorn.asyncio import serve
from hypercorn.config import Config
from sqlalchemy import text

from services.delivery import apns, sending
from shared.embedded import free_port

TEAM, KEY_ID, BUNDLE = "TEAM123456", "KEY1234567", "com.acme.app"


@contextlib.contextmanager
def h2_server(app: Any, workdir: Path) -> Iterator[tuple[int, str]]:
    """Serve ``app`` over HTTP/2 + TLS on loopback in a thread; yields (port, CA bundle path)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = workdir / "cert.pem", workdir / "key.pem", workdir / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    config.alpn_protocols = ["h2"]
    config.loglevel = "WARNING"
    box: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            await serve(app, config, shutdown_trigger=box["stop"].wait)
        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("HTTP/2 test server did not start")
        time.sleep(0.05)
    try:
        yield port, str(cafile)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)


class FakeApns:
    """APNs as Apple documents it. A device token's first four hex digits choose the answer."""

    def __init__(self, public_key: Any, team: str = TEAM) -> None:
        self.requests: list[dict[str, Any]] = []
        self.tokens_seen: list[str] = []  # valid provider tokens, in the order they first came
        self.bearers: list[str] = []  # the provider token of every request
        self.expire_next_token = False  # answer 403 ExpiredProviderToken to the first request with a new token
        self.failures_left: dict[str, int] = {}
        app = FastAPI()

        @app.post("/3/device/{token}")
        async def push(token: str, request: Request) -> Response:
            h = request.headers
            body = await request.body()  # read it all before answering (hypercorn's HTTP/2 needs that)
            bearer = h.get("authorization", "").removeprefix("bearer ")
            self.bearers.append(bearer)
            try:
                header = jwt.get_unverified_header(bearer)
                claims = jwt.decode(bearer, public_key, algorithms=["ES256"], options={"require": ["iat", "iss"]})
            except jwt.PyJWTError:
                return JSONResponse({"reason": "InvalidProviderToken"}, status_code=403)
            if header.get("kid") != KEY_ID or claims["iss"] != team:
                return JSONResponse({"reason": "InvalidProviderToken"}, status_code=403)
            if time.time() - claims["iat"] > 3600:
                return JSONResponse({"reason": "ExpiredProviderToken"}, status_code=403)
            if bearer not in self.tokens_seen:
                self.tokens_seen.append(bearer)
                if self.expire_next_token:
                    self.expire_next_token = False
                    return JSONResponse({"reason": "ExpiredProviderToken"}, status_code=403)
            if h.get("apns-topic") != BUNDLE:
                return JSONResponse({"reason": "TopicDisallowed"}, status_code=400)
            if h.get("apns-push-type") != "alert" or h.get("apns-priority") not in ("5", "10"):
                return JSONResponse({"reason": "BadPriority"}, status_code=400)
            if not h.get("apns-expiration", "").isdigit():
                return JSONResponse({"reason": "BadExpirationDate"}, status_code=400)
            try:
                apns_id = str(uuid.UUID(h["apns-id"]))
            except (KeyError, ValueError):
                return JSONResponse({"reason": "BadMessageId"}, status_code=400)
            if len(body) > 4096:
                return JSONResponse({"reason": "PayloadTooLarge"}, status_code=413)
            self.requests.append({"token": token, "http_version": request.scope["http_version"],
                                  "headers": dict(h), "payload": await request.json()})
            kind = token[:4]
            if kind == "0410":
                return JSONResponse({"reason": "Unregistered", "timestamp": int(time.time() * 1000)}, status_code=410)
            if kind == "0400":
                return JSONResponse({"reason": "BadDeviceToken"}, status_code=400)
            if kind == "0413":
                return JSONResponse({"reason": "PayloadTooLarge"}, status_code=413)
            if kind == "0429":
                return JSONResponse({"reason": "TooManyRequests"}, status_code=429)
            if kind == "0500" and self.failures_left.setdefault(token, 1) > 0:
                self.failures_left[token] -= 1
                return JSONResponse({"reason": "InternalServerError"}, status_code=500)
            return Response(status_code=200, headers={"apns-id": apns_id})

        self.app = app


def _key() -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def _token(kind: str) -> str:
    return kind + uuid.uuid4().hex + uuid.uuid4().hex[:28]  # 64 hex digits, like a real device token


@pytest.fixture
async def apns_env(settings, tmp_path) -> Any:
    pem, public = _key()
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_text(pem)
    fake = FakeApns(public)
    with h2_server(fake.app, tmp_path) as (port, cafile):
        s = settings.model_copy(update={"apns_key": str(key_file), "apns_key_id": KEY_ID, "apns_team_id": TEAM,
                                        "apns_bundle_id": BUNDLE, "apns_base_url": f"https://127.0.0.1:{port}",
                                        "apns_ca_file": cafile, "apns_timeout_s": 5.0})
        try:
            yield fake, s, pem
        finally:
            await apns.close_clients()


async def _register(apps, h, user: str, token: str, platform: str = "ios") -> None:
    r = await apps["delivery"].post("/v1/devices", headers=h, json={"user": user, "token": token,
                                                                    "platform": platform})
    assert r.status_code == 201, r.text


async def _send(apps, h, user: str, key: str, **extra: Any) -> str:
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": key, "channel": "push", "to": user, "subject": "Your order shipped",
        "text": "Track it in the app", "message_type": "transactional", **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def send_now(sessionmaker, settings, *message_ids: str) -> None:
    """One send round of these messages alone: the outbox claims in next_attempt_at order, and other tests may have
    left due messages behind (one sent with this test's key and fake APNs changes what the provider tokens saw)."""
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                             "where id = any(CAST(:ids AS uuid[]))"), {"ids": list(message_ids)})
    await sending.send_due(sessionmaker, settings, limit=len(message_ids))


async def test_apns_sends_over_http2_and_removes_dead_tokens(apps, workspace, sessionmaker, apns_env) -> None:
    fake, s, _ = apns_env
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    ok, unregistered, bad = _token("aaaa"), _token("0410"), _token("0400")
    user, big, busy, limited = f"ios-{tag}", f"big-{tag}", f"busy-{tag}", f"limited-{tag}"
    for token in (ok, unregistered, bad):
        await _register(apps, h, user, token)
    big_token, busy_token, limited_token = _token("0413"), _token("0500"), _token("0429")
    await _register(apps, h, big, big_token)
    await _register(apps, h, busy, busy_token)
    await _register(apps, h, limited, limited_token)
    ids = {user: await _send(apps, h, user, f"apns-{tag}", data={
        "deep_link": "acme://orders/42", "image": "https://cdn.acme.test/o42.jpg", "order": 42})}
    for who in (big, busy, limited):
        ids[who] = await _send(apps, h, who, f"apns-{who}", message_type="marketing")

    started = time.time()
    await send_now(sessionmaker, s, *ids.values())
    got = {w: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for w, i in ids.items()}
    assert {w: g["status"] for w, g in got.items()} == {user: "sent", big: "failed", busy: "queued",
                                                        limited: "queued"}
    assert "APNs 413 (PayloadTooLarge)" in got[big]["last_error"]
    assert "APNs 500" in got[busy]["last_error"] and "APNs 429 (TooManyRequests)" in got[limited]["last_error"]

    assert {r["http_version"] for r in fake.requests} == {"2"}
    [delivered] = [r for r in fake.requests if r["token"] == ok]
    assert delivered["payload"] == {"aps": {"alert": {"title": "Your order shipped", "body": "Track it in the app"},
                                            "sound": "default", "mutable-content": 1},
                                    "deep_link": "acme://orders/42", "image": "https://cdn.acme.test/o42.jpg",
                                    "order": 42}
    hd = delivered["headers"]
    assert hd["apns-topic"] == BUNDLE and hd["apns-push-type"] == "alert" and hd["apns-priority"] == "10"
    assert started + s.push_ttl_s - 120 < int(hd["apns-expiration"]) <= time.time() + s.push_ttl_s
    assert hd["apns-id"] == str(uuid.uuid5(uuid.UUID(ids[user]), ok))
    assert got[user]["provider_message_id"] == hd["apns-id"]
    # 410 Unregistered removed that device; 400 BadDeviceToken (which a wrong environment or bundle id also
    # earns) kept its device; the others stay
    left = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": user})).json()["devices"]
    assert sorted(d["token"] for d in left) == sorted([ok, bad])
    for who, token in ((big, big_token), (limited, limited_token)):
        kept = (await apps["delivery"].get("/v1/devices", headers=h, params={"user": who})).json()["devices"]
        assert [d["token"] for d in kept] == [token]
    [marketing] = [r for r in fake.requests if r["token"] == big_token]
    assert marketing["headers"]["apns-priority"] == "5" and "mutable-content" not in marketing["payload"]["aps"]
    assert len(fake.tokens_seen) == 1  # one provider token served every request

    # the transient failure is retried — with the same apns-id, so Apple and our logs see one notification
    await send_now(sessionmaker, s, ids[busy])
    retried = (await apps["delivery"].get(f"/v1/messages/{ids[busy]}", headers=h)).json()
    assert retried["status"] == "sent" and retried["attempts"] == 2
    busy_ids = [r["headers"]["apns-id"] for r in fake.requests if r["token"] == busy_token]
    assert len(busy_ids) == 2 and len(set(busy_ids)) == 1


async def test_apns_provider_token_reminted_once_when_rejected(apps, workspace, sessionmaker, apns_env) -> None:
    fake, s, _ = apns_env
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    fake.expire_next_token = True
    await _register(apps, h, f"exp-{tag}", _token("bbbb"))
    mid = await _send(apps, h, f"exp-{tag}", f"exp-{tag}")
    await send_now(sessionmaker, s, mid)
    m = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
    assert m["status"] == "sent", m["last_error"]
    assert len(fake.tokens_seen) == 2  # the rejected token was replaced once, and the new one worked
    claims = jwt.decode(fake.tokens_seen[1], options={"verify_signature": False})
    assert claims["iss"] == TEAM and abs(claims["iat"] - time.time()) < 60


async def test_apns_wrong_team_fails_without_hammering_token_updates(apps, workspace, sessionmaker, settings,
                                                                     tmp_path) -> None:
    pem, public = _key()
    fake = FakeApns(public, team="OTHERTEAM1")
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    with h2_server(fake.app, tmp_path) as (port, cafile):
        s = settings.model_copy(update={"apns_key": pem, "apns_key_id": KEY_ID, "apns_team_id": TEAM,
                                        "apns_bundle_id": BUNDLE, "apns_base_url": f"https://127.0.0.1:{port}",
                                        "apns_ca_file": cafile})
        try:
            await _register(apps, h, f"team-{tag}", _token("cccc"))
            first = await _send(apps, h, f"team-{tag}", f"team-{tag}-1")
            await send_now(sessionmaker, s, first)
            second = await _send(apps, h, f"team-{tag}", f"team-{tag}-2")
            await send_now(sessionmaker, s, second)
        finally:
            await apns.close_clients()
    for mid in (first, second):
        m = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
        assert m["status"] == "failed" and "InvalidProviderToken" in m["last_error"], m
    # first message: its token refused, re-minted once, refused again; second message: the re-minted token is
    # kept (Apple refuses updates more often than every 20 minutes) — two tokens in all, three requests
    assert len(fake.bearers) == 3 and len(set(fake.bearers)) == 2
    assert fake.tokens_seen == []
