"""Lists people read as a history come newest first, through HTTP: the deliveries log (JSON and CSV) and a
campaign's sends. Ids are random (UUIDv4), so the id order they were listed in mixed messages of any minute. Paging
keeps its promise: items written while a client pages sort before its first page and never shift the next ones."""

import csv
import io
import uuid
from datetime import UTC, datetime

from services.campaign import journeys


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _send(apps, workspace, key: str) -> str:
    r = await apps["delivery"].post("/v1/messages", headers=_bearer(workspace.secret_key), json={
        "idempotency_key": key, "to": f"{key}@example.com", "subject": "s", "text": "t",
        "message_type": "transactional", "metadata": {"campaign_id": "c-history"}})
    assert r.status_code == 202, r.text
    return r.json()["id"]


async def _pages(client, path: str, key: str, items: str, params: dict, between=None) -> list[dict]:
    got, after = [], None
    for _ in range(50):
        r = await client.get(path, headers=_bearer(key), params={**params, **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        got += r.json()[items]
        after = r.json()["next_cursor"]
        if not after:
            return got
        if between:
            await between()
    raise AssertionError("no last page")


async def test_the_deliveries_log_lists_the_newest_first(apps, workspace) -> None:
    """GET /v1/messages and /v1/messages.csv were in id order, a UUIDv4's: the first page held messages of any minute.
    Newest first now (created_at, then id for messages of one transaction, as a batch's), in both."""
    h = _bearer(workspace.secret_key)
    sent = [await _send(apps, workspace, f"one-{n}") for n in range(4)]
    batch = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        {"idempotency_key": f"batch-{n}", "to": f"batch-{n}@example.com", "subject": "s", "text": "t",
         "message_type": "transactional"} for n in range(4)]})
    assert batch.status_code in (200, 202, 207), batch.text
    together = sorted((r["message"]["id"] for r in batch.json()["results"]), reverse=True)  # one created_at: by id
    sent += [await _send(apps, workspace, f"two-{n}") for n in range(3)]
    expected = sent[4:][::-1] + together + sent[:4][::-1]

    whole = (await apps["delivery"].get("/v1/messages", headers=h)).json()["messages"]
    assert [m["id"] for m in whole] == expected
    stamps = [m["created_at"] for m in whole]
    assert stamps == sorted(stamps, reverse=True)
    paged = await _pages(apps["delivery"], "/v1/messages", workspace.secret_key, "messages", {"limit": 2})
    assert [m["id"] for m in paged] == expected

    exported = await apps["delivery"].get("/v1/messages.csv", headers=h)
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["id"] for row in rows] == expected

    filtered = await _pages(apps["delivery"], "/v1/messages", workspace.secret_key, "messages",
                            {"limit": 3, "status": "queued"})
    assert [m["id"] for m in filtered] == expected


async def test_messages_sent_while_a_client_pages_never_shift_its_pages(apps, workspace) -> None:
    """The property id order kept (nothing skipped or repeated while items are written between pages) holds newest
    first: a new message sorts before the first page, so the pages after it are the ones the client would have had."""
    before = [await _send(apps, workspace, f"old-{n}") for n in range(7)][::-1]
    written = []

    async def more() -> None:
        written.append(await _send(apps, workspace, f"new-{uuid.uuid4().hex[:8]}"))

    paged = await _pages(apps["delivery"], "/v1/messages", workspace.secret_key, "messages", {"limit": 2}, more)
    assert [m["id"] for m in paged] == before and len(written) == 3
    now = (await apps["delivery"].get("/v1/messages", headers=_bearer(workspace.secret_key))).json()["messages"]
    assert [m["id"] for m in now] == written[::-1] + before


async def test_a_campaigns_sends_list_the_newest_first(apps, workspace, sessionmaker, internal_client) -> None:
    """GET /v1/campaigns/{id}/sends was in id order too: newest first now, paged without skipping or repeating."""
    h = _bearer(workspace.secret_key)
    c = apps["campaign"]
    tpl = await c.post("/v1/templates", headers=h, json={"name": "t", "subject": "s", "text": "x"})
    camp = (await c.post("/v1/campaigns", headers=h, json={
        "name": "history", "trigger": {"type": "api"}, "steps": [{"id": "s", "type": "send",
                                                                   "template_id": tpl.json()["id"]}]})).json()
    order = []
    for n in range(5):
        uid = f"sends-{n}"
        r = await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""),
                                      json={"userId": uid, "traits": {"email": f"{uid}@example.com"}})
        assert r.status_code == 200
        r = await c.post(f"/v1/campaigns/{camp['id']}/trigger", headers=h, json={"user": uid})
        assert r.status_code == 202 and r.json()["entered"], r.text
        order.append(r.json()["journey_id"])
        while (await journeys.advance_due(sessionmaker, internal_client, internal_client._http,
                                          now=datetime.now(UTC)))[0]:
            pass
    sends = (await c.get(f"/v1/campaigns/{camp['id']}/sends", headers=h)).json()["sends"]
    assert [s["journey_id"] for s in sends] == order[::-1]
    paged = await _pages(c, f"/v1/campaigns/{camp['id']}/sends", workspace.secret_key, "sends", {"limit": 2})
    assert paged == sends


async def test_a_page_of_the_deliveries_log_reads_just_the_page(workspace, sessionmaker) -> None:
    """The log pages after the last message's (created_at, id). Messages written in one transaction share their
    created_at (a batch's 500, an import's every one): on (workspace_id, created_at) alone, the page after one of
    them read every message of that time first. ix_messages_log (delivery_0011) reads the page alone."""
    import orjson
    from sqlalchemy import text

    from services.delivery import outbox

    async with sessionmaker() as s, s.begin():
        ids = (await s.execute(text(
            "insert into delivery.messages (id, workspace_id, idempotency_key, request_hash, channel, to_address, "
            "from_address, subject, message_type, status, metadata, next_attempt_at) "
            "select gen_random_uuid(), :ws, 'plan-' || n, 'h', 'email', 'a@example.com', 'f@example.com', 's', "
            "'marketing', 'sent', '{}', now() from generate_series(1, 5000) n returning id, created_at"),
            {"ws": workspace.workspace_id})).all()
    async with sessionmaker() as s, s.begin():
        await s.execute(text("analyze delivery.messages"))
    after = sorted(ids, key=lambda r: r.id, reverse=True)[4_500]  # 4,500 newer of the same created_at, 499 older
    params = {"ws": workspace.workspace_id, "after_at": after.created_at, "after_id": after.id, "lim": 101,
              **dict.fromkeys(("status", "to", "channel", "user", "campaign_id", "since", "until"))}
    async with sessionmaker() as s, s.begin():
        raw = (await s.execute(text(f"explain (analyze, format json) {outbox.LOG_PAGE}"), params)).scalar_one()
    nodes, indexes, touched = [(orjson.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]], set(), 0
    while nodes:
        node = nodes.pop()
        indexes |= {node["Index Name"]} if "Index Name" in node else set()
        if node.get("Relation Name") == "messages" or node.get("Index Name") == "ix_messages_log":
            touched += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        nodes.extend(node.get("Plans", []))
    # The cursor is an index condition: nothing newer than it is read (the 4,500 were, and filtered out). The planner
    # reads the page alone in index order, or the 499 after the cursor by bitmap and sorts them, as it estimates
    # cheaper; (each message of the page its engagements: probes of ix_engagements_message).
    assert indexes == {"ix_messages_log", "ix_engagements_message"} and touched <= 499 * 2, (indexes, touched)
