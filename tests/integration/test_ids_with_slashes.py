"""Ids that contain ``/`` in a URL path: a client percent-encodes one in a path segment (``org%2F123``), as every
HTTP client does; the servers decode the path before routing, so each service routes such paths on the raw path,
where an encoded slash is still told from a real one."""

import uuid
from urllib.parse import quote

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from shared.routing import SegmentRoute
from shared.testing import http_server


def _identified(events: list[dict]) -> set[str]:
    """Whose identify calls a profile's events are (each identify below names its userId as the trait ``name``)."""
    return {e["traits"]["name"] for e in events if e["type"] == "identify"}


def _seg(value: str) -> str:
    """A path segment as an HTTP client writes it (``/`` percent-encoded)."""
    return quote(value, safe="")


async def test_profile_paths_take_ids_with_slashes(apps, workspace) -> None:
    """ingest: the profile, its events and its export by a userId with a ``/``; one ending in ``/events`` is the
    profile of that id, not the events of the id before the slash; a real slash is not part of an id."""
    ingest, h, auth = apps["ingest"], {"Authorization": f"Bearer {workspace.secret_key}"}, (workspace.write_key, "")
    tag = uuid.uuid4().hex[:6]
    org, events_id, plain = f"org-{tag}/123", f"org-{tag}/events", f"org-{tag}"
    for uid in (org, events_id, plain):
        r = await ingest.post("/v1/identify", auth=auth, json={"userId": uid, "traits": {"name": uid}})
        assert r.status_code == 200, r.text
    r = await ingest.post("/v1/track", auth=auth, json={"userId": org, "event": "Signed Up"})
    assert r.status_code == 200, r.text

    profile = await ingest.get(f"/v1/profiles/{_seg(org)}", headers=h)
    assert profile.status_code == 200, profile.text
    assert profile.json()["user_id"] == org
    events = await ingest.get(f"/v1/profiles/{_seg(org)}/events", headers=h)
    assert events.status_code == 200, events.text
    assert [e["event"] for e in events.json()["events"] if e["type"] == "track"] == ["Signed Up"]
    assert _identified(events.json()["events"]) == {org}
    # "org-x/events" is a userId: its profile, not the events of "org-x"
    ambiguous = await ingest.get(f"/v1/profiles/{_seg(events_id)}", headers=h)
    assert ambiguous.status_code == 200, ambiguous.text
    assert ambiguous.json()["user_id"] == events_id
    own = await ingest.get(f"/v1/profiles/{_seg(events_id)}/events", headers=h)
    assert own.status_code == 200 and _identified(own.json()["events"]) == {events_id}
    # a real slash separates segments, as before: the events of "org-x", and no route for "org-x/123"
    of_plain = await ingest.get(f"/v1/profiles/{plain}/events", headers=h)
    assert of_plain.status_code == 200 and _identified(of_plain.json()["events"]) == {plain}
    assert (await ingest.get(f"/v1/profiles/{org}", headers=h)).status_code == 404
    # an encoded "%" stays a "%", next to an encoded slash
    odd = f"50%2F50/{tag}"
    assert (await ingest.post("/v1/identify", auth=auth, json={"userId": odd})).status_code == 200
    got = await ingest.get(f"/v1/profiles/{_seg(odd)}", headers=h)
    assert got.status_code == 200 and got.json()["user_id"] == odd, got.text
    export = await ingest.get(f"/v1/privacy/export/{_seg(org)}", headers=h)
    assert export.status_code == 200, export.text
    assert export.json()["profile"]["id"] == profile.json()["id"]


async def test_loyalty_members_by_ids_with_slashes(apps, workspace) -> None:
    """campaign: a loyalty member named by a userId with a ``/``."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    uid = f"org-{uuid.uuid4().hex[:6]}/7"
    r = await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""), json={"userId": uid})
    assert r.status_code == 200, r.text
    pid = (await apps["ingest"].get(f"/v1/profiles/{_seg(uid)}", headers=h)).json()["id"]
    for what in ("balance", "history"):
        got = await apps["campaign"].get(f"/v1/loyalty/members/{_seg(uid)}/{what}", headers=h)
        assert got.status_code == 200, (what, got.text)
    balance = await apps["campaign"].get(f"/v1/loyalty/members/{_seg(uid)}/balance", headers=h)
    assert balance.json()["profile_id"] == pid


async def test_addresses_with_slashes_in_delivery_paths(apps, workspace, sessionmaker) -> None:
    """delivery: an email address whose local part has a ``/`` (RFC 5322 allows it) in the preference and
    suppression paths."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"team/{uuid.uuid4().hex[:6]}@example.com"
    r = await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": to, "reason": "manual"})
    assert r.status_code == 201 and r.json()["address"] == to, r.text
    prefs = await apps["delivery"].get(f"/v1/preferences/{_seg(to)}", headers=h)
    assert prefs.status_code == 200, prefs.text
    assert prefs.json()["address"] == to and prefs.json()["unsubscribed"] is True
    lifted = await apps["delivery"].delete(f"/v1/suppressions/email/{_seg(to)}", headers=h)
    assert lifted.status_code == 204, lifted.text
    async with sessionmaker() as s:
        held = (await s.execute(text("select count(*) from delivery.suppressions where workspace_id = :ws "
                                     "and address = :a"), {"ws": workspace.workspace_id, "a": to})).scalar_one()
    assert held == 0


@pytest.mark.parametrize("root_path", ["", "/tenure"])
def test_a_real_server_routes_encoded_slashes_inside_their_segment(root_path) -> None:
    """What uvicorn puts in ``path`` and ``raw_path`` (behind a proxy that strips a prefix too, ``root_path``):
    routes of :class:`SegmentRoute` see the client's segments, other routes the decoded path as before."""
    app = FastAPI()
    ids = APIRouter(route_class=SegmentRoute)

    @ids.get("/things/{ref}")
    async def thing(ref: str) -> dict:
        return {"thing": ref}

    @ids.get("/things/{ref}/parts")
    async def parts(ref: str) -> dict:
        return {"parts of": ref}

    @app.get("/plain/{ref}")
    async def plain(ref: str) -> dict:
        return {"plain": ref}

    app.include_router(ids)
    with http_server(app, root_path=root_path) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.get(f"/things/{_seg('org/123')}").json() == {"thing": "org/123"}
        assert client.get(f"/things/{_seg('org/parts')}").json() == {"thing": "org/parts"}
        assert client.get(f"/things/{_seg('org/1')}/parts").json() == {"parts of": "org/1"}
        assert client.get("/things/org/parts").json() == {"parts of": "org"}
        assert client.get(f"/things/{_seg('50%/x%2Fy')}").json() == {"thing": "50%/x%2Fy"}
        assert client.get("/things/org/123").status_code == 404
        assert client.get("/things/caf%C3%A9").json() == {"thing": "café"}
        assert client.get(f"/plain/{_seg('a/b')}").status_code == 404  # (a route of the usual kind: as before)
