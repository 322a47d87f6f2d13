"""Request body limits, through real HTTP (uvicorn on loopback): a body over its route's limit is a 413
problem+json — at once when Content-Length says so, or as soon as a chunked body passes it — and nothing is
read past the limit or written. Routes anyone may call (provider webhooks, recipient pages) have small limits
of their own; ingest's tracking routes keep Segment's."""

import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text

from services.delivery import sms
from services.delivery.app import create_app as delivery_app
from services.ingest.app import create_app as ingest_app
from shared.testing import http_server

PROBLEM = "application/problem+json"
LIMIT = 4096


@pytest.fixture(scope="module")
def delivery(settings) -> Iterator[str]:
    small = settings.model_copy(update={"max_body_bytes": LIMIT, "twilio_auth_token": "tok",
                                        "delivery_public_url": "https://hooks.example.test"})
    with http_server(delivery_app(small)) as port:
        yield f"http://127.0.0.1:{port}"


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def _is_413(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert r.json()["type"].endswith("payload-too-large") and str(limit) in r.json()["detail"]


def test_a_body_over_the_limit_is_refused_whether_its_length_is_declared_or_not(delivery, workspace) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}", "Content-Type": "application/json"}
    _is_413(httpx.post(f"{delivery}/v1/messages", headers=h, content=b"x" * (LIMIT + 1)), LIMIT)
    _is_413(httpx.post(f"{delivery}/v1/messages", headers=h, content=_chunks(LIMIT * 3)), LIMIT)  # chunked
    _is_413(httpx.post(f"{delivery}/v1/messages", content=b"x" * (LIMIT + 1)), LIMIT)  # before credentials
    # at the limit: read and judged as any body (here: not JSON)
    r = httpx.post(f"{delivery}/v1/messages", headers=h, content=b"x" * LIMIT)
    assert r.status_code == 400 and "not valid JSON" in r.text, r.text
    body = {"idempotency_key": uuid.uuid4().hex, "to": "ada@example.com", "subject": "Hi", "text": "Hello"}
    assert httpx.post(f"{delivery}/v1/messages", headers=h, json=body).status_code == 202


def test_routes_anyone_may_call_have_small_limits(settings, workspace) -> None:
    """Under the default limit, a recipient page's form or a Twilio callback of 100 KB is still too large."""
    with http_server(delivery_app(settings)) as port:
        base = f"http://127.0.0.1:{port}"
        for path in ("/u/anything", "/p/anything", f"/webhooks/twilio/{workspace.workspace_id}/inbound"):
            r = httpx.post(base + path, content=b"a=" + b"x" * 100_000,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
            _is_413(r, 64 * 1024)
        r = httpx.post(f"{base}/webhooks/sendgrid/{workspace.workspace_id}/events", content=_chunks(1_100_000),
                       headers={"Content-Type": "application/json"})
        _is_413(r, 1024 * 1024)


async def test_a_signed_webhook_for_a_workspace_that_does_not_exist_writes_nothing(delivery, sessionmaker) -> None:
    nowhere = uuid.uuid4()
    path = f"/webhooks/twilio/{nowhere}/inbound"
    form = {"From": "+14155550123", "To": "+14155550199", "Body": "STOP", "MessageSid": "SM" + uuid.uuid4().hex}
    async with httpx.AsyncClient() as http:
        r = await http.post(delivery + path, data=form, headers={
            "X-Twilio-Signature": sms.signature("tok", "https://hooks.example.test" + path, form)})
        assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM), r.text
        r = await http.post(delivery + path, data=form, headers={"X-Twilio-Signature": "forged"})
        assert r.status_code == 403  # unsigned: the signature is checked first, and tells nothing of workspaces
    assert await _suppressions(sessionmaker, nowhere) == 0


async def _suppressions(sessionmaker, ws) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text("select count(*) from delivery.suppressions where workspace_id = :ws"),
                                {"ws": ws})).scalar_one()


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
