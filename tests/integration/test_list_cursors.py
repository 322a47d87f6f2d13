"""Cursors through HTTP: a next_cursor belongs to its list, its filters and its workspace, cannot be edited into
another position, and a search pages with the same cursors as every other list."""

import base64
import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from services.segment import evaluation
from shared.core import create_workspace

PROBLEM = "application/problem+json"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _decode(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def _refused(r, where: str = "query") -> None:
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert "cursor" in r.json()["detail"]
    assert [e["loc"] for e in r.json()["errors"]] == [[where, "after"]], r.json()


async def _identify(apps, workspace, uid: str, **traits) -> None:
    r = await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""), json={"userId": uid, "traits": traits})
    assert r.status_code == 200, r.text


async def _devices(apps, workspace) -> None:
    for user in ("dev-a", "dev-b"):
        for n in range(3):
            r = await apps["delivery"].post("/v1/devices", headers=_bearer(workspace.secret_key), json={
                "user": user, "platform": "android", "token": f"{user}-token-{n:04d}-abcdefgh"})
            assert r.status_code == 201, r.text


async def _suppressions(apps, workspace) -> None:
    for channel, address in [("email", "a@example.com"), ("email", "b@example.com"), ("email", "c@example.com"),
                             ("sms", "+14155552671"), ("sms", "+14155552672"), ("sms", "+14155552673")]:
        r = await apps["delivery"].post("/v1/suppressions", headers=_bearer(workspace.secret_key),
                                        json={"channel": channel, "address": address})
        assert r.status_code == 201, r.text


async def _messages(apps, workspace) -> None:
    for n in range(3):
        for channel, to in (("email", f"m{n}@example.com"), ("sms", f"+1415555267{n}")):
            r = await apps["delivery"].post("/v1/messages", headers=_bearer(workspace.secret_key), json={
                "idempotency_key": f"{channel}-{n}", "channel": channel, "to": to, "text": "t",
                **({"subject": "s"} if channel == "email" else {}),
                "message_type": "transactional", "metadata": {"userId": f"msg-{channel}"}})
            assert r.status_code == 202, r.text


async def _profiles(apps, workspace) -> None:
    for n in range(3):
        await _identify(apps, workspace, f"pro-{n}", plan="pro")
        await _identify(apps, workspace, f"free-{n}", plan="free")


@pytest.mark.parametrize(("service", "path", "items", "setup", "mine", "other"), [
    ("delivery", "/v1/devices", "devices", _devices, {"user": "dev-a"}, {"user": "dev-b"}),
    ("delivery", "/v1/suppressions", "suppressions", _suppressions, {"channel": "email"}, {"channel": "sms"}),
    ("delivery", "/v1/suppressions", "suppressions", _suppressions, {"channel": "email"}, {}),
    ("delivery", "/v1/messages", "messages", _messages, {"channel": "email"}, {"channel": "sms"}),
    ("delivery", "/v1/messages", "messages", _messages, {"user": "msg-sms"}, {"user": "msg-email"}),
    ("ingest", "/v1/profiles", "profiles", _profiles, {"trait.plan": "pro"}, {"trait.plan": "free"}),
    ("ingest", "/v1/profiles", "profiles", _profiles, {"q": "pro-"}, {"q": "free-"}),
])
async def test_a_cursor_belongs_to_the_filters_of_its_list(apps, workspace, service, path, items, setup, mine,
                                                           other) -> None:
    """A cursor was bound to the route and its path parameters only: the next_cursor of one user's devices, handed
    to the list of another user's, answered 200 with an empty page and no next_cursor (that user has devices), and a
    filtered list's cursor was taken by the list with other filters. The filters are part of the list now: another
    filter's cursor is a 400; the same filters, in any order, page on."""
    await setup(apps, workspace)
    h = _bearer(workspace.secret_key)
    first = await apps[service].get(path, headers=h, params={**mine, "limit": 1})
    assert first.status_code == 200 and first.json()["next_cursor"], first.text
    cursor = first.json()["next_cursor"]
    _refused(await apps[service].get(path, headers=h, params={**other, "limit": 1, "after": cursor}))
    again = await apps[service].get(path, headers=h, params={"after": cursor, "limit": 5, **mine})
    assert again.status_code == 200 and len(again.json()[items]) == 2, again.text
    assert first.json()[items][0] not in again.json()[items]


async def _snippet_cursor(apps, workspace) -> str:
    h = _bearer(workspace.secret_key)
    for name in ("snip0", "snip1", "snip2"):
        assert (await apps["campaign"].put(f"/v1/snippets/{name}", headers=h, json={"content": name})).status_code in (
            200, 201)
    page = (await apps["campaign"].get("/v1/snippets", headers=h, params={"limit": 1})).json()
    assert page["snippets"][0]["name"] == "snip0" and page["next_cursor"]
    return page["next_cursor"]


@pytest.mark.parametrize("position", ["snip1", "snipp", "a\x00b", "\x00", "zzz", ""])
async def test_an_edited_cursor_is_refused(apps, workspace, position) -> None:
    """The cursor's tag was an unkeyed hash of the list, so anyone could put another position behind it: ``snipp``
    answered 200 with an empty page and no next_cursor (as if the list had ended), a NUL a 422 with no ``errors``
    (PostgreSQL refused the text). The tag is a MAC of the list and the position under the deployment's signing
    secret now: an edited cursor is the same 400 as any other that this list did not give."""
    cursor = _decode(await _snippet_cursor(apps, workspace))
    tag = cursor.partition(".")[0]
    h = _bearer(workspace.secret_key)
    listing = f"{workspace.workspace_id}\n/v1/snippets"  # the old, unkeyed tag: forgeable by anyone
    for forged in (f"{tag}.{position}", f"{hashlib.sha256(listing.encode()).hexdigest()[:12]}.{position}"):
        _refused(await apps["campaign"].get("/v1/snippets", headers=h, params={"after": _encode(forged)}))
    ok = await apps["campaign"].get("/v1/snippets", headers=h, params={"after": _encode(cursor)})
    assert [s["name"] for s in ok.json()["snippets"]] == ["snip1", "snip2"]


async def test_a_cursor_depends_on_the_signing_secret(settings, workspace) -> None:
    """Every replica of a service must take the cursors the others give: the key is a setting (the signing
    secret), not a per-process random one, and another deployment's cursors are refused."""
    import httpx

    from services.campaign.app import create_app

    async def cursor_of(app) -> tuple[str, httpx.Response]:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://campaign") as c:
            h = _bearer(workspace.secret_key)
            for name in ("rep0", "rep1"):
                await c.put(f"/v1/snippets/{name}", headers=h, json={"content": name})
            first = (await c.get("/v1/snippets", headers=h, params={"limit": 1})).json()["next_cursor"]
            return first, await c.get("/v1/snippets", headers=h, params={"after": first})

    replica = settings.model_copy()
    one, _ = await cursor_of(create_app(settings))
    two, _ = await cursor_of(create_app(replica))
    assert one == two
    other = settings.model_copy(update={"signing_secret": "another-deployment"})
    app = create_app(other)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://campaign") as c:
        _refused(await c.get("/v1/snippets", headers=_bearer(workspace.secret_key), params={"after": one}))


async def test_a_cursor_handed_out_before_a_rotation_of_the_signing_secret_still_pages(settings, workspace) -> None:
    """A new TENURE_SIGNING_SECRET with the old one in TENURE_SIGNING_SECRET_PREVIOUS: a client paging through a
    list during the rollout goes on (its cursor was a 400), and the next cursor is under the new secret only."""
    import httpx

    from services.campaign.app import create_app

    h = _bearer(workspace.secret_key)

    async def page(app_settings, after: str | None = None) -> httpx.Response:
        app = create_app(app_settings)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://campaign") as c:
            if after is None:
                for name in ("rot0", "rot1", "rot2"):
                    await c.put(f"/v1/snippets/{name}", headers=h, json={"content": name})
            return await c.get("/v1/snippets", headers=h, params={"limit": 1, **({"after": after} if after else {})})

    rotated = settings.model_copy(update={"signing_secret": "the-new-signing-secret",
                                          "signing_secret_previous": [settings.signing_secret]})
    first = (await page(settings)).json()["next_cursor"]
    second = await page(rotated, first)
    assert second.status_code == 200, second.text
    assert [s["name"] for s in second.json()["snippets"]] == ["rot1"]
    after_rotation = second.json()["next_cursor"]
    assert (await page(rotated, after_rotation)).json()["snippets"][0]["name"] == "rot2"
    _refused(await page(settings, after_rotation))  # signed with the new secret, not the old one
    retired = settings.model_copy(update={"signing_secret": "the-new-signing-secret"})
    _refused(await page(retired, first))  # the old secret taken off the list: its cursors end


GOLD = {"type": "trait", "trait": "tier", "value": "gold"}


async def _fold_profiles(sessionmaker, ws: uuid.UUID, tiers: list[str]) -> list[str]:
    pids = [uuid.uuid4() for _ in tiers]
    now = datetime.now(UTC).isoformat()
    events = [{"workspace_id": str(ws), "profile_id": str(pid), "type": "identify", "event": None,
               "message_id": uuid.uuid4().hex, "properties": {}, "traits": {"tier": tier}, "timestamp": now}
              for pid, tier in zip(pids, tiers, strict=True)]
    async with sessionmaker() as s, s.begin():
        affected = await evaluation.apply_events(s, events)
        for w, changed in affected.items():
            await evaluation.reevaluate(s, w, changed)
    return sorted(str(p) for p, tier in zip(pids, tiers, strict=True) if tier == "gold")


@pytest.mark.parametrize("in_sql", [True, False], ids=["evaluated in SQL", "evaluated in Python"])
async def test_a_profile_search_pages_with_the_cursors_of_every_list(apps, workspace, sessionmaker, in_sql) -> None:
    """POST /v1/profiles/search handed out the last profile's id as its cursor and took any id back: workspace B's
    cursor sent with A's key answered a page of A's matches, and a garbage ``after`` was a 422 with no ``errors``
    where every other list says 400. Its cursors are opaque and bound to the workspace and the definition now."""
    async with sessionmaker() as session, session.begin():
        other = await create_workspace(session, f"test-{uuid.uuid4().hex[:8]}")
    gold = GOLD if in_sql else {"type": "or", "children": [GOLD, {"type": "stage", "stage": "churned"}]}
    mine = await _fold_profiles(sessionmaker, workspace.workspace_id, ["gold", "gold", "gold", "tin"])
    await _fold_profiles(sessionmaker, other.workspace_id, ["gold", "gold"])
    seg, h = apps["segment"], _bearer(workspace.secret_key)

    async def search(key: str, **body) -> dict:
        r = await seg.post("/v1/profiles/search", headers=_bearer(key), json={"definition": gold, **body})
        assert r.status_code == 200, r.text
        return r.json()

    found, after = [], None
    for _ in range(5):
        page = await search(workspace.secret_key, limit=1, **({"after": after} if after else {}))
        found += [p["profile_id"] for p in page["profiles"]]
        after = page["next_cursor"]
        if after is None:
            break
        with pytest.raises(ValueError):
            uuid.UUID(after)  # opaque, not a profile id
    assert found == mine

    theirs = (await search(other.secret_key, limit=1))["next_cursor"]
    first = (await search(workspace.secret_key, limit=1))["next_cursor"]
    for body in ({"after": theirs}, {"after": "garbage"}, {"after": mine[0]},
                 {"after": first, "definition": {"type": "trait", "trait": "tier", "value": "tin"}}):
        _refused(await seg.post("/v1/profiles/search", headers=h, json={"definition": gold, **body}), "body")
