"""Web Push checked against the reference implementation: a local push service stand-in verifies every request's
VAPID header with py-vapid's own verifier and decrypts its body with http_ece (what pywebpush encrypts with), and
pywebpush itself sends to the same stand-in, so our request and the reference sender's can be compared."""

import asyncio
import json
import uuid
from typing import Any

import http_ece
import jwt
import py_vapid
import pywebpush
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shared.testing import http_server
from tests.integration.test_apns import send_now
from tests.integration.test_webpush import SUBJECT, Browser, _point, _register, b64u


class ReferencePushService:
    """An RFC 8030 push service whose checks are the reference libraries': py-vapid's ``Vapid02.verify`` on the
    Authorization header, ``http_ece.decrypt`` (aes128gcm) with the subscriber's keys on the body."""

    def __init__(self) -> None:
        self.browsers: dict[str, Browser] = {}
        self.received: list[dict[str, Any]] = []
        self.app = FastAPI()

        @self.app.post("/push/{sub}")
        async def push(sub: str, request: Request) -> Response:
            auth, body = request.headers.get("authorization", ""), await request.body()
            try:
                verified = py_vapid.Vapid02.verify(auth)
            except Exception as exc:  # noqa: BLE001 - py-vapid asserts on a header it cannot parse
                return JSONResponse({"message": f"VAPID header refused: {exc!r}"}, status_code=401)
            if not verified:
                return JSONResponse({"message": "VAPID signature does not verify"}, status_code=401)
            browser = self.browsers[sub]
            plain = http_ece.decrypt(body, private_key=browser.key, auth_secret=browser.auth, version="aes128gcm")
            self.received.append({"headers": dict(request.headers), "payload": json.loads(plain)})
            return Response(status_code=201)

    def subscribe(self, port: int) -> tuple[str, Browser]:
        sub = uuid.uuid4().hex[:10]
        self.browsers[sub] = Browser()
        return f"http://127.0.0.1:{port}/push/{sub}", self.browsers[sub]


def _vapid(authorization: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(JWT header, JWT claims, k) of a ``vapid t=…,k=…`` header, unverified (the stand-in verified it)."""
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid", authorization
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    token = fields["t"]
    return jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False}), fields["k"]


async def test_our_web_push_passes_the_reference_checks_as_pywebpush_does(apps, workspace, sessionmaker,
                                                                          settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    vapid = ec.generate_private_key(ec.SECP256R1())
    raw_private = b64u(vapid.private_numbers().private_value.to_bytes(32, "big"))
    s = settings.model_copy(update={"vapid_private_key": raw_private, "vapid_subject": SUBJECT})
    service = ReferencePushService()
    with http_server(service.app) as port:
        # ours: registered through the API, sent by the delivery worker
        endpoint, browser = service.subscribe(port)
        user = f"ref-{uuid.uuid4().hex[:6]}"
        assert (await _register(apps, h, user, endpoint, browser.keys())).status_code == 201
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"ref-{user}", "channel": "push", "to": user, "subject": "Zoë, it's back ✓",
            "text": "The blue one", "message_type": "marketing", "data": {"collapse_key": "stock-7"}})
        await send_now(sessionmaker, s, r.json()["id"])
        got = (await apps["delivery"].get(f"/v1/messages/{r.json()['id']}", headers=h)).json()
        assert got["status"] == "sent", got  # the stand-in answered 201: py-vapid verified, http_ece decrypted
        [ours] = service.received
        assert ours["payload"]["title"] == "Zoë, it's back ✓" and ours["payload"]["message_id"] == got["id"]

        # the reference sender, same key, same subscription
        ref_endpoint, ref_browser = service.subscribe(port)
        resp = await asyncio.to_thread(
            pywebpush.webpush, {"endpoint": ref_endpoint, "keys": ref_browser.keys()}, data='{"title": "ref"}',
            vapid_private_key=raw_private, vapid_claims={"sub": SUBJECT}, ttl=60)
        assert resp.status_code == 201, resp.text
        theirs = service.received[1]

    # the same header shape: scheme, JWT header, claim names, audience (the push service's origin), key
    (our_head, our_claims, our_k), (ref_head, ref_claims, ref_k) = (
        _vapid(ours["headers"]["authorization"]), _vapid(theirs["headers"]["authorization"]))
    assert our_head["alg"] == ref_head["alg"] == "ES256"
    assert set(our_claims) == set(ref_claims) == {"aud", "exp", "sub"}
    assert our_claims["aud"] == ref_claims["aud"] == f"http://127.0.0.1:{port}"
    assert our_claims["sub"] == ref_claims["sub"] == SUBJECT
    assert our_k == ref_k == b64u(_point(vapid))  # the uncompressed point browsers subscribed with
    for name in ("content-encoding", "ttl", "authorization"):  # what the reference sender sends, we send too
        assert name in ours["headers"] and name in theirs["headers"], name
    assert ours["headers"]["content-encoding"] == theirs["headers"]["content-encoding"] == "aes128gcm"
