"""How long transient failures are retried, against providers that keep failing on loopback: a webhook receiver
answering 503, an SMTP server greylisting the recipient (451 at RCPT TO), FCM answering 503 UNAVAILABLE.

A transient failure is retried on a time budget (TENURE_DELIVERY_RETRY_FOR_S, email TENURE_EMAIL_RETRY_FOR_S),
with exponential backoff growing to 15-30 minutes between attempts, not on a count of attempts: eight attempts
took about three minutes, shorter than a greylisting server's own delay (300 s and more) and than any outage."""

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from sqlalchemy import text

from services.delivery import outbox, sending
from shared.testing import http_server, smtp_server
from tests.integration.test_push import fcm


class _Greylisting:
    """An SMTP server refusing ``grey-N-…`` recipients with a 451 the first N times they are offered (``grey-0-…``:
    for ever), as a greylisting server asks the sender to come back later."""

    def __init__(self) -> None:
        self.offered: dict[str, int] = {}
        self.accepted: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: ANN401
                          rcpt_options: list[str]) -> str:
        self.offered[address] = self.offered.get(address, 0) + 1
        if address.startswith("grey-"):
            refusals = int(address.split("-")[1])
            if refusals == 0 or self.offered[address] <= refusals:
                return "451 4.7.1 Greylisted, please try again in 300 seconds"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: ANN401
        self.accepted += envelope.rcpt_tos
        return "250 OK"


@pytest.fixture
def greylisting() -> Iterator[tuple[_Greylisting, int]]:
    handler = _Greylisting()
    with smtp_server(handler) as port:
        yield handler, port


def _down_receiver() -> FastAPI:
    app = FastAPI()

    @app.post("/hook")
    async def hook() -> Response:
        return Response(status_code=503)

    return app


async def _queue(apps: Any, h: dict[str, str], **message: Any) -> str:
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "message_type": "transactional", **message})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def _round(sessionmaker: Any, settings: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """These messages' next attempt now (as if their backoff had passed), alone; then each one's row, with
    ``wait_s``: how long until its next attempt."""
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                             "where id = any(CAST(:ids AS uuid[])) and status = 'queued'"), {"ids": ids})
    await sending.send_due(sessionmaker, settings, limit=len(ids))
    async with sessionmaker() as s:
        rows = (await s.execute(text(
            "select id::text, status, attempts, last_error, "
            "extract(epoch from next_attempt_at - now()) as wait_s from delivery.messages "
            "where id = any(CAST(:ids AS uuid[]))"), {"ids": ids})).mappings().all()
    return {r["id"]: dict(r) for r in rows}


async def test_transient_failures_are_retried_for_hours_not_minutes(apps, workspace, sessionmaker, settings,
                                                                    greylisting) -> None:
    box, smtp_port = greylisting
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    with http_server(_down_receiver()) as hook_port, fcm(settings, smtp_port=smtp_port) as (_, cfg):
        r = await apps["delivery"].post("/v1/devices", headers=h, json={
            "user": f"phone-{tag}", "token": f"busy-{tag}-0000000", "platform": "android"})  # FCM: 503 UNAVAILABLE
        assert r.status_code == 201, r.text
        hook = await _queue(apps, h, channel="webhook", to=f"http://127.0.0.1:{hook_port}/hook", data={"n": 1})
        mail = await _queue(apps, h, to=f"grey-11-{tag}@example.com", subject="Your receipt", text="Thanks")
        push = await _queue(apps, h, channel="push", to=f"phone-{tag}", subject="Shipped", text="On its way")
        waits = []
        for n in range(1, 13):
            rows = await _round(sessionmaker, cfg, [hook, mail, push])
            # still being retried after more attempts than the 8 that used to fail it (in ~3 minutes)
            assert rows[hook]["status"] == rows[push]["status"] == "queued", rows
            assert rows[mail]["status"] == ("sent" if n == 12 else "queued"), rows[mail]
            assert rows[hook]["attempts"] == n
            waits.append(rows[hook]["wait_s"])
    # the greylisted mail went out on the attempt after its eleventh refusal: the same message, not given up
    assert box.offered[f"grey-11-{tag}@example.com"] == 12 and box.accepted == [f"grey-11-{tag}@example.com"]
    # exponential backoff with jitter, growing to 15-30 minutes between attempts (and no more)
    assert waits[0] <= 2.5 and waits[5] <= 65
    assert all(900 - 5 <= w <= 1800 + 5 for w in waits[10:]), waits
    assert all(b >= a / 2 - 1 for a, b in zip(waits, waits[1:], strict=False)), waits


async def test_a_message_failing_longer_than_its_retry_time_fails(apps, workspace, sessionmaker, settings,
                                                                  greylisting) -> None:
    """The give-up: a transient failure later than TENURE_DELIVERY_RETRY_FOR_S (email: TENURE_EMAIL_RETRY_FOR_S)
    after the message's first one fails it, saying so. (Set to seconds here: the defaults are a day and 4 days.)"""
    _, smtp_port = greylisting
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    cfg = settings.model_copy(update={"smtp_port": smtp_port, "delivery_retry_for_s": 1.0,
                                      "email_retry_for_s": 2.5})
    with http_server(_down_receiver()) as hook_port:
        hook = await _queue(apps, h, channel="webhook", to=f"http://127.0.0.1:{hook_port}/hook", data={"n": 2})
        mail = await _queue(apps, h, to=f"grey-0-{tag}@example.com", subject="Your receipt", text="Thanks")
        rows = await _round(sessionmaker, cfg, [hook, mail])
        assert rows[hook]["status"] == rows[mail]["status"] == "queued"
        await asyncio.sleep(1.2)
        rows = await _round(sessionmaker, cfg, [hook, mail])
        assert (rows[hook]["status"], rows[mail]["status"]) == ("failed", "queued"), rows
        assert re.fullmatch(r"webhook answered 503 \(gave up: failing for \d s since its first failure, 2 attempts\)",
                            rows[hook]["last_error"]), rows[hook]["last_error"]
        await asyncio.sleep(1.5)
        rows = await _round(sessionmaker, cfg, [hook, mail])
    assert rows[mail]["status"] == "failed" and rows[mail]["attempts"] == 3, rows[mail]
    assert "451 4.7.1 Greylisted" in rows[mail]["last_error"] and "(gave up: failing for" in rows[mail]["last_error"]


async def test_a_message_whose_holders_die_is_still_given_up_after_eight(apps, workspace, sessionmaker,
                                                                         settings) -> None:
    """Attempts now go past 8 while a message is retried; the cap on workers dying mid-send with it (a message that
    kills its worker) counts those deaths alone: a message retried 9 times whose holder dies is taken again, and it
    fails once 8 holders have died."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    with http_server(_down_receiver()) as hook_port:
        hook = await _queue(apps, h, channel="webhook", to=f"http://127.0.0.1:{hook_port}/hook", data={"n": 3})
        for _ in range(9):
            rows = await _round(sessionmaker, settings, [hook])
    assert (rows[hook]["status"], rows[hook]["attempts"]) == ("queued", 9)
    for died in range(8):
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                                 "where id = :id"), {"id": hook})
            claimed = await outbox.claim(s, 1, 0.05)  # ... and its holder dies with it
        assert [str(m["id"]) for m in claimed] == [hook], f"not taken again after {died} deaths"
        await asyncio.sleep(0.1)
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                             "where id = :id"), {"id": hook})
        assert not [m for m in await outbox.claim(s, 1, 0.05) if str(m["id"]) == hook]
    async with sessionmaker() as s:
        row = (await s.execute(text("select status, attempts, last_error from delivery.messages where id = :id"),
                               {"id": hook})).one()
    assert (row.status, row.attempts) == ("failed", 17) and row.last_error.endswith("(gave up: lease expired 8 times)")


def test_backoff_grows_to_half_an_hour_and_stays_there() -> None:
    assert all(0.5 <= outbox.backoff_s(1) <= 2 for _ in range(50))
    # (and no overflow for the attempt numbers days of retries reach)
    assert all(900 <= outbox.backoff_s(n) <= 1800 for n in (11, 50, 5000) for _ in range(50))
