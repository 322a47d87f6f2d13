"""Request body limits, through real HTTP (uvicorn on loopback): a body over its route's limit is a 413
problem+json saying the limit — at once when Content-Length says so, or as soon as a chunked body passes it — and
nothing is read past the limit or written; a body at the limit is read as any other. Routes anyone may call
(provider webhooks, recipient pages) have small limits of their own; ingest's tracking routes keep Segment's. A
signed provider webhook for a workspace that does not exist is a 404 and writes nothing."""

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from services.delivery import signing, sms
from services.delivery.app import create_app as delivery_app
from services.ingest.app import create_app as ingest_app
from shared.testing import http_server

PROBLEM = "application/problem+json"
LIMIT = 4096  # the general limit of the `delivery` server below (TENURE_MAX_BODY_BYTES)
PAGE_LIMIT, SENDGRID_LIMIT = 64 * 1024, 1024 * 1024  # the public routes' own (services/delivery/app.py)
PUBLIC_URL = "https://hooks.example.test"
TWILIO_TOKEN = "tok"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def signed_hooks(settings):
    """Settings under which delivery verifies Twilio's and SendGrid's signatures."""
    public = base64.b64encode(SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    return settings.model_copy(update={"twilio_auth_token": TWILIO_TOKEN, "delivery_public_url": PUBLIC_URL,
                                       "sendgrid_webhook_public_key": public})


@pytest.fixture(scope="module")
def delivery(signed_hooks) -> Iterator[str]:
    """Delivery with a small general limit."""
    with http_server(delivery_app(signed_hooks.model_copy(update={"max_body_bytes": LIMIT}))) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def public(signed_hooks) -> Iterator[str]:
    """Delivery with the default general limit (16 MiB): the public routes' own limits apply."""
    with http_server(delivery_app(signed_hooks)) as port:
        yield f"http://127.0.0.1:{port}"


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    """A generator body: httpx sends it chunked, with no Content-Length."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def _achunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for chunk in _chunks(data, size):
        yield chunk


def _message(size: int) -> bytes:
    """A valid email for POST /v1/messages whose JSON is exactly ``size`` bytes."""
    body = {"idempotency_key": uuid.uuid4().hex, "to": "ada@example.com", "subject": "Hi", "text": ""}
    body["text"] = "x" * (size - len(json.dumps(body)))
    raw = json.dumps(body).encode()
    assert len(raw) == size
    return raw


def _is_413(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM), r.text
    problem = r.json()
    assert problem["type"].endswith("payload-too-large") and str(limit) in problem["detail"], problem
    assert problem["limit_bytes"] == limit, problem


def _twilio_form(size: int = 0, **fields: str) -> dict[str, str]:
    """An inbound SMS's form (``size``: padded so that it encodes to exactly that many bytes)."""
    form = {"From": "+14155550123", "To": "+14155550199", "MessageSid": "SM" + uuid.uuid4().hex, "Body": "hello",
            **fields}
    if size:
        form["Pad"] = ""
        form["Pad"] = "x" * (size - len(urlencode(form)))
        assert len(urlencode(form)) == size
    return form


def _twilio_post(base: str, path: str, form: dict[str, str], *, chunked: bool = False) -> httpx.Response:
    raw = urlencode(form).encode()
    return httpx.post(base + path, content=_chunks(raw) if chunked else raw, headers=_twilio_headers(path, form))


def _twilio_headers(path: str, form: dict[str, str], signature: str | None = None) -> dict[str, str]:
    return {**FORM, "X-Twilio-Signature": signature or sms.signature(TWILIO_TOKEN, PUBLIC_URL + path, form)}


def _sendgrid_signed(events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    raw, ts = json.dumps(events).encode(), str(int(time.time()))
    sig = SENDGRID_KEY.sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))
    return raw, {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                 "X-Twilio-Email-Event-Webhook-Timestamp": ts, "Content-Type": "application/json"}


def test_a_body_over_the_limit_is_refused_whether_its_length_is_declared_or_not(delivery, workspace) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}", "Content-Type": "application/json"}
    url = f"{delivery}/v1/messages"
    _is_413(httpx.post(url, headers=h, content=_message(LIMIT + 1)), LIMIT)
    _is_413(httpx.post(url, headers=h, content=_chunks(_message(LIMIT + 1))), LIMIT)  # chunked, one byte over
    _is_413(httpx.post(url, headers=h, content=_chunks(b"x" * LIMIT * 50)), LIMIT)  # chunked, far over
    _is_413(httpx.post(url, content=b"x" * (LIMIT + 1)), LIMIT)  # refused before credentials are looked at
    # at the limit: read and judged as any body, declared or chunked
    for content in (_message(LIMIT), _chunks(_message(LIMIT))):
        r = httpx.post(url, headers=h, content=content)
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    r = httpx.post(url, headers=h, content=b"x" * LIMIT)
    assert r.status_code == 400 and "not valid JSON" in r.text, r.text
    # a route's own limit is never above the general one
    _is_413(_twilio_post(delivery, f"/webhooks/twilio/{workspace.workspace_id}/inbound", _twilio_form(LIMIT + 1)),
            LIMIT)


def test_routes_anyone_may_call_have_small_limits(public, workspace) -> None:
    """Under the default limit (16 MiB), a recipient page's form or a Twilio callback of 100 KB is still too large;
    a signed Twilio callback or SendGrid batch at its limit is read and acted on."""
    ws = workspace.workspace_id
    for path in ("/u/anything", "/p/anything", "/confirm/anything", f"/webhooks/twilio/{ws}/inbound",
                 f"/webhooks/twilio/{ws}/status"):  # (chunked, these would refuse the link or signature unread)
        _is_413(httpx.post(public + path, content=b"a=" + b"x" * 100_000, headers=FORM), PAGE_LIMIT)
    inbound = f"/webhooks/twilio/{ws}/inbound"
    _is_413(_twilio_post(public, inbound, _twilio_form(PAGE_LIMIT + 1), chunked=True), PAGE_LIMIT)
    for chunked in (False, True):
        r = _twilio_post(public, inbound, _twilio_form(PAGE_LIMIT), chunked=chunked)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml"), r.text

    events = f"{public}/webhooks/sendgrid/{ws}/events"
    _is_413(httpx.post(events, content=_chunks(b"x" * (SENDGRID_LIMIT + 1), 64 * 1024),
                       headers={"Content-Type": "application/json"}), SENDGRID_LIMIT)
    event = {"event": "open", "email": "ada@example.com", "pad": ""}  # names no message of ours: ignored
    event["pad"] = "x" * (SENDGRID_LIMIT - len(json.dumps([event])))
    raw, headers = _sendgrid_signed([event])
    assert len(raw) == SENDGRID_LIMIT  # as large as SendGrid's 768 KB batches, and more
    assert httpx.post(events, content=_chunks(raw, 64 * 1024), headers=headers).status_code == 204
    event["pad"] += "x"
    raw, headers = _sendgrid_signed([event])
    _is_413(httpx.post(events, content=raw, headers=headers), SENDGRID_LIMIT)


async def test_a_one_click_unsubscribe_over_its_limit_is_refused_and_writes_nothing(public, workspace, settings,
                                                                                     sessionmaker) -> None:
    """The one-click route unsubscribes even when it cannot read the form: a body over its limit must still be a
    413, not read as a broken form."""
    address = f"oneclick-{uuid.uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{public}/v1/messages", headers={"Authorization": f"Bearer {workspace.secret_key}"},
                            json={"idempotency_key": uuid.uuid4().hex, "to": address, "subject": "Hi", "text": "Hi"})
        assert r.status_code == 202, r.text
        subject = signing.Subject(workspace.workspace_id, uuid.UUID(r.json()["id"]))
        url = f"{public}/u/{signing.sign(settings.signing_secret, 'unsubscribe', subject)}"
        over = b"List-Unsubscribe=One-Click&pad=" + b"x" * PAGE_LIMIT
        _is_413(await http.post(url, content=_achunks(over), headers=FORM), PAGE_LIMIT)
        _is_413(await http.post(url, content=over, headers=FORM), PAGE_LIMIT)
        assert await _suppressed(sessionmaker, workspace.workspace_id, address) == 0
        r = await http.post(url, content=b"List-Unsubscribe=One-Click", headers=FORM)  # the same link, in bounds
        assert r.status_code == 200, r.text
    assert await _suppressed(sessionmaker, workspace.workspace_id, address) == 1


async def _suppressed(sessionmaker, ws: uuid.UUID, address: str) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text("select count(*) from delivery.suppressions where workspace_id = :ws "
                                     "and address = :a"), {"ws": ws, "a": address})).scalar_one()


async def test_a_signed_webhook_for_a_workspace_that_does_not_exist_writes_nothing(delivery, workspace,
                                                                                   sessionmaker) -> None:
    nowhere = uuid.uuid4()
    number = f"+1415555{uuid.uuid4().int % 10_000:04d}"
    stop = _twilio_form(From=number, Body="STOP")
    status = {"MessageSid": "SM" + uuid.uuid4().hex, "MessageStatus": "delivered"}
    async with httpx.AsyncClient(base_url=delivery) as http:
        for path, form in ((f"/webhooks/twilio/{nowhere}/inbound", stop),
                           (f"/webhooks/twilio/{nowhere}/status", status)):
            r = await http.post(path, data=form, headers=_twilio_headers(path, form))
            assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), r.text
            assert str(nowhere) in r.json()["detail"]
            # not signed: the signature is checked first, and tells nothing of which workspaces exist
            forged = await http.post(path, data=form, headers=_twilio_headers(path, form, "forged"))
            assert forged.status_code == 403
        raw, headers = _sendgrid_signed([{"event": "spamreport", "email": "ada@example.com",
                                          "tenure_message_id": str(uuid.uuid4())}])
        r = await http.post(f"/webhooks/sendgrid/{nowhere}/events", content=raw, headers=headers)
        assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), r.text
        assert await _rows(sessionmaker, nowhere) == {"suppressions": 0, "early_events": 0, "webhook_receipts": 0}

        # the same calls for a workspace that exists are acted on: the 404 is the workspace's, not the signature's
        ws = workspace.workspace_id
        for path, form, code in ((f"/webhooks/twilio/{ws}/inbound", stop, 200),
                                 (f"/webhooks/twilio/{ws}/status", status, 204)):  # (a status: kept for later)
            r = await http.post(path, data=form, headers=_twilio_headers(path, form))
            assert r.status_code == code, r.text
    assert await _rows(sessionmaker, ws) == {"suppressions": 1, "early_events": 1, "webhook_receipts": 1}
    assert await _suppressed(sessionmaker, ws, number) == 1


async def _rows(sessionmaker, ws: uuid.UUID) -> dict[str, int]:
    async with sessionmaker() as s:
        return {table: (await s.execute(text(f"select count(*) from delivery.{table} where workspace_id = :ws"),
                                        {"ws": ws})).scalar_one()
                for table in ("suppressions", "early_events", "webhook_receipts")}


def test_tracking_keeps_segments_limits(settings, workspace) -> None:
    """Ingest's own limits (32 KB per message, 500 KB per batch, after gzip) answer as before."""
    with http_server(ingest_app(settings)) as port:
        base = f"http://127.0.0.1:{port}"
        big = {"userId": "u", "event": "E", "properties": {"x": "y" * 40_000}}
        r = httpx.post(f"{base}/v1/track", json=big, auth=(workspace.write_key, ""))
        assert r.status_code == 413 and "32 KB" in r.json()["detail"], r.text
        batch = {"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 20_000}}] * 30}
        r = httpx.post(f"{base}/v1/batch", json=batch, auth=(workspace.write_key, ""))
        assert r.status_code == 413 and "500 KB" in r.json()["detail"], r.text
        assert r.json()["limit_bytes"] == 500 * 1024


async def test_an_operator_raises_the_batch_limit_for_rudderstack_sdks(settings, workspace, sessionmaker) -> None:
    """TENURE_INGEST_MAX_BATCH_BYTES: a batch over Segment's 500 KB (RudderStack's SDKs send up to 4 MB) is stored
    once it is raised, and the 413 of a batch over it names the new limit; 32 KB per message stays."""
    raised = settings.model_copy(update={"ingest_max_batch_bytes": 1_000_000})

    def batch(n: int, tag: str) -> dict[str, Any]:
        return {"batch": [{"type": "track", "userId": "u", "event": "E", "messageId": f"{tag}-{i}",
                           "properties": {"x": "é" * 10_000}} for i in range(n)]}  # 20 KB each

    async def stored(tag: str) -> int:
        async with sessionmaker() as s:
            return (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws and "
                                         "message_id like :p"), {"ws": workspace.workspace_id, "p": f"{tag}-%"})
                    ).scalar_one()

    async with httpx.AsyncClient(auth=(workspace.write_key, ""), timeout=30) as http:
        with http_server(ingest_app(settings)) as port:
            r = await http.post(f"http://127.0.0.1:{port}/v1/batch", json=batch(40, "default"))
            assert r.status_code == 413 and r.json()["limit_bytes"] == 512_000, r.text
        with http_server(ingest_app(raised)) as port:
            base = f"http://127.0.0.1:{port}"
            r = await http.post(f"{base}/v1/batch", json=batch(40, "raised"))  # about 800 KB
            assert r.status_code == 200 and r.json()["accepted"] == 40, r.text
            r = await http.post(f"{base}/v1/batch", json=batch(60, "over"))  # about 1.2 MB
            assert r.status_code == 413 and r.json()["limit_bytes"] == 1_000_000, r.text
            assert "1000000 bytes per batch" in r.json()["detail"], r.text
            big = {"userId": "u", "event": "E", "properties": {"x": "y" * 40_000}}
            r = await http.post(f"{base}/v1/track", json=big)
            assert r.status_code == 413 and r.json()["limit_bytes"] == 32 * 1024, r.text
    assert (await stored("default"), await stored("raised"), await stored("over")) == (0, 40, 0)
