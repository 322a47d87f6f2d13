"""The webhook channel against a real HTTP receiver on loopback: signed body, idempotency key, retries."""

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import text

from services.delivery import sending, webhook_channel
from shared.testing import http_server


class Receiver:
    def __init__(self, secret: str) -> None:
        self.got: list[dict] = []
        self.calls: dict[str, int] = {}
        app = FastAPI()

        @app.post("/hook/{mode}")
        async def hook(mode: str, request: Request) -> Response:
            self.calls[mode] = self.calls.get(mode, 0) + 1
            body = await request.body()
            valid = webhook_channel.verify(secret, body, request.headers.get("tenure-signature", ""))
            self.got.append({"mode": mode, "valid": valid, "key": request.headers.get("idempotency-key"),
                             "body": json.loads(body)})
            if mode == "flaky" and self.calls[mode] == 1:
                return Response(status_code=503)
            if mode == "limited":  # RFC 6585 / RFC 9110: come back in two minutes, not sooner
                return Response(status_code=429, headers={"Retry-After": "120"})
            if mode.startswith("after"):  # after:<Retry-After>, or after-date:<seconds from now> (an HTTP date)
                kind, _, value = mode.partition(":")
                if kind == "after-date":
                    value = format_datetime(datetime.now(UTC) + timedelta(seconds=int(value)), usegmt=True)
                return Response(status_code=503, headers={"Retry-After": value})
            return Response(status_code=410 if mode == "gone" else 204)

        self.app = app


async def test_signed_webhook_messages(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    secret = (await apps["delivery"].get("/v1/webhook-secret", headers=h)).json()["secret"]
    receiver = Receiver(secret)
    with http_server(receiver.app) as port:
        ids = {}
        for mode in ("ok", "flaky", "gone"):
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"hook-{mode}-{uuid.uuid4().hex[:6]}", "channel": "webhook",
                "to": f"http://127.0.0.1:{port}/hook/{mode}", "data": {"order": 42, "mode": mode},
                "message_type": "transactional"})
            assert r.status_code == 202, r.text
            ids[mode] = r.json()["id"]
        bad = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": "hook-bad", "channel": "webhook", "to": "ftp://x", "data": {}})
        assert bad.status_code == 422
        await sending.send_due(sessionmaker, settings)
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = now() where id = :id"),
                            {"id": ids["flaky"]})
        await sending.send_due(sessionmaker, settings)
        status = {m: (await apps["delivery"].get(f"/v1/messages/{i}", headers=h)).json() for m, i in ids.items()}
        assert {m: s["status"] for m, s in status.items()} == {"ok": "sent", "flaky": "sent", "gone": "failed"}
        assert status["flaky"]["attempts"] == 2
        assert all(g["valid"] for g in receiver.got) and {g["body"]["order"] for g in receiver.got} == {42}
        flaky = [g for g in receiver.got if g["mode"] == "flaky"]
        assert len(flaky) == 2 and flaky[0]["key"] == flaky[1]["key"] == ids["flaky"]  # same key on the retry
        assert not webhook_channel.verify(secret, b'{"order": 43}', "t=1,v1=00")


async def test_a_receiver_s_retry_after_is_honoured(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    receiver = Receiver("unused")
    with http_server(receiver.app) as port:
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"hook-limited-{uuid.uuid4().hex[:6]}", "channel": "webhook",
            "to": f"http://127.0.0.1:{port}/hook/limited", "data": {"order": 42}, "message_type": "transactional"})
        before = time.time()
        await sending.send_due(sessionmaker, settings)
    assert receiver.calls == {"limited": 1}
    async with sessionmaker() as s:
        due = (await s.execute(text("select extract(epoch from next_attempt_at) from delivery.messages "
                                    "where id = :id"), {"id": r.json()["id"]})).scalar_one()
    assert float(due) >= before + 115  # not the first backoff (~2 s)


async def test_retry_after_as_an_http_date_and_odd_values(apps, workspace, sessionmaker, settings) -> None:
    """RFC 9110 §10.2.3: Retry-After is delta-seconds or an HTTP date. A date is the time to come back (it was read as
    no hint: back after ~2 s); a date in the past is no wait beyond the backoff; a huge value is an hour at most."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    receiver = Receiver("unused")
    cases = {"after-date:120": (110, 125), "after-date:-3600": (0, 3), "after:-5": (0, 3),
             "after:99999999999": (3590, 3605), "after:Fri, 31 Dec 2100 23:59:59 GMT": (3590, 3605),
             "after:soon": (0, 3)}
    ids = {}
    with http_server(receiver.app) as port:
        for mode in cases:
            r = await apps["delivery"].post("/v1/messages", headers=h, json={
                "idempotency_key": f"hook-{uuid.uuid4().hex[:6]}", "channel": "webhook",
                "to": f"http://127.0.0.1:{port}/hook/{mode}", "data": {"order": 42}, "message_type": "transactional"})
            ids[mode] = r.json()["id"]
        async with sessionmaker() as s, s.begin():
            await s.execute(text("update delivery.messages set next_attempt_at = timestamptz '2000-01-01' "
                                 "where id = any(CAST(:ids AS uuid[]))"), {"ids": list(ids.values())})
        await sending.send_due(sessionmaker, settings, limit=len(ids))
    assert receiver.calls == dict.fromkeys(cases, 1)
    async with sessionmaker() as s:
        waits = {r.id: float(r.wait_s) for r in await s.execute(text(
            "select id::text, extract(epoch from next_attempt_at - now()) as wait_s from delivery.messages "
            "where id = any(CAST(:ids AS uuid[]))"), {"ids": list(ids.values())})}
    for mode, (low, high) in cases.items():
        assert low <= waits[ids[mode]] <= high, (mode, waits[ids[mode]])
