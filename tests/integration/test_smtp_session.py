"""Delivery's SMTP sessions against real SMTP servers on loopback: pipelining (RFC 2920) and its error
paths on a server of our own that can misbehave on cue, and STARTTLS / implicit TLS with AUTH on aiosmtpd,
under asyncio and uvloop (the session is handed from aiosmtplib to our protocol after set-up)."""

import asyncio
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import text

from services.delivery import outbox, sending
from services.delivery.mailer import Email, SendError
from services.delivery.smtp_session import SmtpConnection, SmtpPool
from shared.embedded import free_port


class _Proto(asyncio.Protocol):
    def __init__(self, server: "_Server"):
        self.server, self.buf, self.rcpts, self.in_data, self.sender = server, bytearray(), [], False, ""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.server.connections += 1
        self.server.open.append(transport)
        transport.write(b"220 test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.server.packets.append(data)
        self.buf += data
        out = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                raw = bytes(self.buf[:end + 2]).replace(b"\r\n..", b"\r\n.")
                del self.buf[:end + 5]
                self.in_data = False
                to = self.rcpts[0]
                self.server.received.append((self.sender, list(self.rcpts), raw[2:]))  # (the "\r\n" put first)
                if to.startswith("drop"):
                    self.transport.close()  # took it, hung up before saying so: the outcome is unknown
                    return
                if to.startswith("hang"):
                    return  # never answers
                reply = (b"554 5.6.0 content rejected\r\n" if to.startswith("badcontent")
                         else b"Ok: queued as 4F2k1\r\n" if to.startswith("garbled") else b"250 2.0.0 queued\r\n")
                if self.server.delay:  # a slow relay: the verdict comes later
                    self.transport.write(b"".join(out))
                    out = []
                    asyncio.get_running_loop().call_later(self.server.delay, self.transport.write, reply)
                else:
                    out.append(reply)
                continue
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                break
            line = bytes(self.buf[:nl]).decode()
            del self.buf[:nl + 2]
            verb = line[:4].upper()
            if verb == "EHLO":
                out.append(b"250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n" if self.server.pipelining
                           else b"250-test\r\n250 8BITMIME\r\n")
            elif verb == "MAIL":
                if self.server.closing or self.server.closing_always:
                    self.server.closing = False
                    self.transport.write(b"".join(out) + b"421 4.3.2 shutting down\r\n")
                    self.transport.close()
                    return
                self.sender, self.rcpts = line[line.index("<") + 1:line.rindex(">")], []
                out.append(b"250 ok\r\n")
            elif verb == "RCPT":
                to = line[line.index("<") + 1:line.rindex(">")]
                if to.startswith("refuse"):
                    out.append(b"550 5.1.1 no such user\r\n")
                elif to.startswith("nul"):  # (PostgreSQL stores no NUL: the reason must be cleaned, not lost)
                    out.append(b"550 5.1.1 no such user \x00 here\r\n")
                elif to.startswith("busy"):
                    out.append(b"450 4.2.1 mailbox busy\r\n")
                else:
                    self.rcpts.append(to)
                    out.append(b"250 ok\r\n")
            elif verb == "DATA":
                if self.rcpts:
                    self.in_data = True
                    self.buf[:0] = b"\r\n"
                    out.append(b"354 go on\r\n")
                else:
                    out.append(b"554 5.5.1 no valid recipients\r\n")
            elif verb == "RSET":
                self.sender, self.rcpts = "", []
                out.append(b"250 reset\r\n")
            elif verb == "QUIT":
                self.transport.write(b"".join(out) + b"221 bye\r\n")
                self.transport.close()
                return
            else:
                out.append(b"502 no\r\n")
        if out:
            self.transport.write(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport in self.server.open:
            self.server.open.remove(self.transport)


class _Server:
    """An SMTP server with PIPELINING that refuses, hangs up or stays silent as the recipient asks."""

    def __init__(self, pipelining: bool = True, delay: float = 0.0):
        self.pipelining = pipelining
        self.delay = delay
        self.received: list[tuple[str, list[str], bytes]] = []
        self.packets: list[bytes] = []
        self.connections = 0
        self.closing = False  # answer the next MAIL with 421 and hang up
        self.closing_always = False  # ... every MAIL
        self.open: list[Any] = []

    async def __aenter__(self) -> "_Server":
        self.port = free_port()
        self._server = await asyncio.get_running_loop().create_server(lambda: _Proto(self), "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self.open):
            t.close()
        self._server.close()
        await self._server.wait_closed()


def _mail(to: str, text: str = "Hello\n", html: str | None = None) -> Email:
    return Email(message_id=str(uuid.uuid4()), sender="Shop <shop@example.com>", to=to, subject="Hi", html=html,
                 text=text)


async def test_pipelined_messages_share_one_session(settings) -> None:
    awkward = ".starts with a dot\nline\n..two dots\n.\nno newline at the end"
    async with _Server() as server:
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port}))
        try:
            for i in range(20):
                await conn.send(_mail(f"user{i}@example.com", text=awkward if i == 7 else "Hello\n"))
        finally:
            await conn.close()
    assert server.connections == 1
    assert [r[1] for r in server.received] == [[f"user{i}@example.com"] for i in range(20)]
    assert all(r[0] == "shop@example.com" for r in server.received)
    # the envelope and DATA went out together: one round trip before the content
    assert any(b"MAIL FROM:<shop@example.com>\r\nRCPT TO:<" in p and p.endswith(b"DATA\r\n") for p in server.packets)
    body = server.received[7][2]
    assert b"\r\n\r\n=2Estarts with a dot\r\n" in body or b"\r\n\r\n.starts with a dot\r\n" in body
    assert body.endswith(b"\r\n") and b"\n" not in body.replace(b"\r\n", b"")


async def test_without_pipelining_commands_go_one_at_a_time(settings) -> None:
    async with _Server(pipelining=False) as server:
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port}))
        try:
            for i in range(3):
                await conn.send(_mail(f"one{i}@example.com"))
        finally:
            await conn.close()
    assert len(server.received) == 3 and server.connections == 1
    assert not any(b"MAIL FROM" in p and b"RCPT TO" in p for p in server.packets)


async def test_refusals_are_not_sent_and_the_session_goes_on(settings) -> None:
    async with _Server() as server:
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port}))
        try:
            with pytest.raises(SendError) as refused:
                await conn.send(_mail("refuse@example.com"))
            assert refused.value.permanent and refused.value.not_sent and "550" in str(refused.value)
            assert refused.value.bounce  # 550 5.1.1 to RCPT: the address takes no mail
            with pytest.raises(SendError) as busy:
                await conn.send(_mail("busy@example.com"))
            assert not busy.value.permanent and busy.value.not_sent and "450" in str(busy.value)
            assert not busy.value.bounce
            with pytest.raises(SendError) as content:
                await conn.send(_mail("badcontent@example.com"))
            assert content.value.permanent and content.value.not_sent and "554" in str(content.value)
            assert not content.value.bounce  # the message was refused, not the address
            await conn.send(_mail("fine@example.com"))
        finally:
            await conn.close()
    assert server.connections == 1  # RSET after each refusal kept the session usable
    assert [r[1][0] for r in server.received] == ["badcontent@example.com", "fine@example.com"]


async def test_a_closing_or_stale_session_is_replaced_before_the_message_is_offered(settings) -> None:
    async with _Server() as server:
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port}))
        try:
            await conn.send(_mail("first@example.com"))
            server.closing = True  # 421 to the next MAIL, then the server hangs up
            await conn.send(_mail("second@example.com"))
            for t in list(server.open):  # the server drops the idle session
                t.close()
            await asyncio.sleep(0.05)
            await conn.send(_mail("third@example.com"))
        finally:
            await conn.close()
    assert [r[1][0] for r in server.received] == ["first@example.com", "second@example.com", "third@example.com"]
    assert server.connections == 3


async def test_a_server_closing_at_every_mail_is_reported_in_its_own_words(settings) -> None:
    """With pipelining, a 421 to MAIL (then the server hangs up) was reported as the lost connection after it
    ("_Lost: connection closed by the server"): the server's reason is what an operator needs."""
    async with _Server() as server:
        server.closing_always = True
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port}))
        try:
            with pytest.raises(SendError) as refused:
                await conn.send(_mail("closed@example.com"))
        finally:
            await conn.close()
    assert "421 4.3.2 shutting down" in str(refused.value) and not refused.value.permanent, str(refused.value)
    assert refused.value.not_sent and server.received == []


async def test_an_unknown_outcome_is_reported_once_never_retried_inline(settings) -> None:
    async with _Server() as server:
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port, "smtp_timeout_s": 0.5,
                                                          "delivery_lease_s": 1.0}))
        try:
            with pytest.raises(SendError) as dropped:
                await conn.send(_mail("drop@example.com"))
            with pytest.raises(SendError) as silent:
                await conn.send(_mail("hang@example.com"))
            with pytest.raises(SendError) as garbled:  # an answer that is no SMTP reply
                await conn.send(_mail("garbled@example.com"))
            await conn.send(_mail("after@example.com"))
        finally:
            await conn.close()
    for err in (dropped.value, silent.value, garbled.value):  # the server may hold these: retried later, same way
        assert not err.permanent and not err.not_sent
    assert [r[1][0] for r in server.received] == ["drop@example.com", "hang@example.com", "garbled@example.com",
                                                  "after@example.com"]


async def test_a_slow_verdict_on_the_message_is_waited_for_not_sent_twice(settings) -> None:
    """A server that takes longer than the SMTP timeout to answer the final "." (filters, a slow disk: RFC 5321
    gives it ten minutes) got the message again on the retry: the verdict is waited for as long as the lease
    allows; the commands before it keep the SMTP timeout."""
    async with _Server(delay=0.8) as server:
        conn = SmtpConnection(settings.model_copy(update={"smtp_port": server.port, "smtp_timeout_s": 0.3,
                                                          "delivery_lease_s": 2.0}))
        try:
            assert await conn.send(_mail("slow@example.com"))
        finally:
            await conn.close()
    assert [r[1][0] for r in server.received] == ["slow@example.com"]


async def test_sessions_outlive_a_batch_until_idle_too_long(settings) -> None:
    async with _Server() as server:
        pool = SmtpPool(settings.model_copy(update={"smtp_port": server.port}))
        pool.IDLE_S = 0.3
        for n in range(2):  # two batches, one after the other: the same session
            conn = await pool.take()
            await conn.send(_mail(f"pool{n}@example.com"))
            pool.give(conn)
        assert server.connections == 1
        await asyncio.sleep(0.4)  # idle too long: dropped, a fresh one
        conn = await pool.take()
        await conn.send(_mail("pool-late@example.com"))
        pool.give(conn)
        await pool.close()
    assert server.connections == 2 and len(server.received) == 3


async def test_the_outbox_sends_through_a_pipelining_server(apps, workspace, sessionmaker, settings) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    addresses = [f"ok{i}-{tag}@example.com" for i in range(12)] + [f"refuse-{tag}@example.com"]
    r = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        {"idempotency_key": a, "to": a, "subject": "S", "text": "x", "message_type": "transactional",
         "metadata": {"userId": f"user-{a}", "campaign_id": "c-1"}} for a in addresses]})
    assert r.status_code == 200, r.text
    ids = {m["to"]: m["id"] for m in (item["message"] for item in r.json()["results"])}
    async with _Server() as server:
        while await sending.send_due(sessionmaker, settings.model_copy(update={"smtp_port": server.port}),
                                     concurrency=3):
            pass
    mine = [r[1][0] for r in server.received if tag in r[1][0]]
    assert sorted(mine) == sorted(addresses[:-1])  # each once
    async with sessionmaker() as s:
        rows = {row.id: row for row in await s.execute(text(
            "select m.id::text, m.status, m.last_error, count(a.id) as attempts from delivery.messages m "
            "join delivery.attempts a on a.message_id = m.id where m.id = any(CAST(:ids AS uuid[])) "
            "group by m.id"), {"ids": list(ids.values())})}
    assert all(rows[ids[a]].status == "sent" and rows[ids[a]].attempts == 1 for a in addresses[:-1])
    refused = rows[ids[addresses[-1]]]
    # 550 5.1.1 in the session is a hard bounce, as a provider's bounce report is: the message is bounced, the
    # address suppressed (receipts too), and "Email Bounced" goes to ingest for the person and the campaign
    assert refused.status == "bounced" and "550" in refused.last_error and refused.attempts == 1
    got = (await apps["delivery"].get(f"/v1/messages/{ids[addresses[-1]]}", headers=h)).json()
    assert got["status"] == "bounced"
    listed = (await apps["delivery"].get("/v1/suppressions", headers=h, params={"channel": "email"})).json()
    assert {"address": addresses[-1], "reason": "hard_bounce"}.items() <= next(
        x for x in listed["suppressions"] if x["address"] == addresses[-1]).items()
    again = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": f"again-{tag}", "to": addresses[-1], "subject": "S", "text": "x",
        "message_type": "transactional"})
    assert again.json()["status"] == "suppressed", again.text
    async with sessionmaker() as s:
        events = [p for (p,) in await s.execute(text(
            "select payload from delivery.feedback where workspace_id = :ws and payload->>'userId' = :u"),
            {"ws": workspace.workspace_id, "u": f"user-{addresses[-1]}"})]
    bounced = [e for e in events if e["event"] == "Email Bounced"]
    assert len(bounced) == 1 and bounced[0]["properties"]["message_id"] == ids[addresses[-1]]
    assert bounced[0]["properties"]["campaign_id"] == "c-1"


async def _queue(apps, workspace, sessionmaker, addresses: list[str], lease_s: float) -> list[dict]:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        {"idempotency_key": a, "to": a, "subject": "S", "text": "x", "message_type": "transactional"}
        for a in addresses]})
    assert r.status_code == 200, r.text
    async with sessionmaker() as s, s.begin():
        claimed = await outbox.claim(s, 10_000, lease_s)
    return [m for m in claimed if m["to_address"] in addresses]


async def _statuses(sessionmaker, messages: list[dict]) -> dict[str, str]:
    async with sessionmaker() as s:
        return {r.to_address: r.status for r in await s.execute(text(
            "select to_address, status from delivery.messages where id = any(CAST(:ids AS uuid[]))"),
            {"ids": [m["id"] for m in messages]})}


async def test_a_message_that_waited_past_its_lease_is_sent_by_one_worker_only(apps, workspace, sessionmaker,
                                                                              settings) -> None:
    """A slow relay: messages checked together wait their turn; another worker claims those whose lease
    ran out meanwhile. Each is checked again before it goes out, so none is sent twice."""
    tag = uuid.uuid4().hex[:6]
    addresses = [f"slow{i}-{tag}@example.com" for i in range(12)]
    async with _Server(delay=0.25) as server:
        cfg = settings.model_copy(update={"smtp_port": server.port, "delivery_lease_s": 2.0})
        first = await _queue(apps, workspace, sessionmaker, addresses, 2.0)
        assert len(first) == 12
        a = asyncio.create_task(sending.send_batch(sessionmaker, cfg, first, concurrency=1))
        await asyncio.sleep(2.3)  # the leases of those still waiting ran out: worker B takes them
        async with sessionmaker() as s, s.begin():
            second = [m for m in await outbox.claim(s, 10_000, 60.0) if m["to_address"] in addresses]
        assert second
        b = await sending.send_batch(sessionmaker, cfg.model_copy(update={"delivery_lease_s": 60.0}), second,
                                     concurrency=2)
        got_a = await a
    sent = [r[1][0] for r in server.received if tag in r[1][0]]
    assert sorted(sent) == sorted(addresses)  # every one, once
    assert {m["id"] for m in second} == {i for i, st in got_a.items() if st == "lease_lost"}
    assert set(b.values()) == {"sent"}
    assert set((await _statuses(sessionmaker, first)).values()) == {"sent"}


async def test_a_cancelled_batch_still_records_what_the_server_took(apps, workspace, sessionmaker, settings) -> None:
    tag = uuid.uuid4().hex[:6]
    addresses = [f"cut{i}-{tag}@example.com" for i in range(40)]
    async with _Server(delay=0.05) as server:
        cfg = settings.model_copy(update={"smtp_port": server.port})
        mine = await _queue(apps, workspace, sessionmaker, addresses, 60.0)
        task = asyncio.create_task(sending.send_batch(sessionmaker, cfg, mine, concurrency=4))
        await asyncio.sleep(0.3)
        task.cancel()  # (arq's job timeout, or SIGTERM)
        with pytest.raises(asyncio.CancelledError):
            await task
    taken = {r[1][0] for r in server.received if tag in r[1][0]}
    statuses = await _statuses(sessionmaker, mine)
    assert taken and len(taken) < len(addresses)
    unknown = [a for a in taken if statuses[a] != "sent"]
    assert len(unknown) <= 4  # only those whose reply the cancelled senders never read stay `sending`
    assert all(statuses[a] == "sending" for a in unknown)


async def test_a_reply_postgres_cannot_store_fails_only_its_message(apps, workspace, sessionmaker, settings) -> None:
    tag = uuid.uuid4().hex[:6]
    addresses = [f"ok{i}-{tag}@example.com" for i in range(6)] + [f"nul-{tag}@example.com"]
    async with _Server() as server:
        mine = await _queue(apps, workspace, sessionmaker, addresses, 60.0)
        statuses = await sending.send_batch(sessionmaker, settings.model_copy(update={"smtp_port": server.port}),
                                            mine, concurrency=3)
    assert sorted(statuses.values()) == ["bounced"] + ["sent"] * 6
    async with sessionmaker() as s:
        error = (await s.execute(text("select last_error from delivery.messages where to_address = :a"),
                                 {"a": addresses[-1]})).scalar_one()
    assert "550" in error and "\x00" not in error


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_ctx, ca_file


class _Keep:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"tenure", b"s3cret")
    return AuthResult(success=ok)


async def _send_three(settings, prefix: str) -> None:
    conn = SmtpConnection(settings)
    try:
        for i in range(3):
            await conn.send(_mail(f"{prefix}{i}@example.com"))
    finally:
        await conn.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # (implicit TLS: it is TLS)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_and_auth_then_many_messages(settings, tls, mode: str, loop: str) -> None:
    server_ctx, ca_file = tls
    handler, port = _Keep(), free_port()
    kwargs: dict[str, Any] = {"authenticator": _auth, "auth_required": True}
    if mode == "starttls":
        kwargs |= {"tls_context": server_ctx, "require_starttls": True}
    else:
        kwargs |= {"ssl_context": server_ctx, "auth_require_tls": False}  # (aiosmtpd sees STARTTLS only)
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    cfg = settings.model_copy(update={"smtp_port": port, "smtp_ca_file": str(ca_file), "smtp_username": "tenure",
                                      "smtp_password": "s3cret", "smtp_starttls": mode == "starttls",
                                      "smtp_tls": mode == "implicit"})
    try:
        if loop == "uvloop":  # as the workers run
            await asyncio.to_thread(uvloop.run, _send_three(cfg, f"{mode}-uv"))
        else:
            await _send_three(cfg, mode)
    finally:
        controller.stop()
    assert [r[1][0].split("@")[0][-1] for r in handler.received] == ["0", "1", "2"]
