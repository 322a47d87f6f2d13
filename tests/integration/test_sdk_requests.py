"""What real analytics SDKs send, replayed byte for byte over HTTP against a running ingest server.

Each file in tests/fixtures/sdk/ holds the requests one SDK made (recorded from the real SDK, or, for SDKs that
cannot run here, built from the SDK's source: the file's ``how`` says which) and the events they must leave.
docs/sdks.md tells how they were recorded.
"""

import base64
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ingest.app import create_app
from shared.testing import http_server

FIXTURES = Path(__file__).parent.parent / "fixtures" / "sdk"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


@pytest.fixture(scope="module")
def ingest_url(settings) -> Iterator[str]:
    with http_server(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 512):
        yield data[i:i + 512]


async def _replay(client: httpx.AsyncClient, req: dict[str, Any], write_key: str) -> httpx.Response:
    basic = base64.b64encode(f"{write_key}:".encode()).decode()
    headers = {k: v.replace("{{BASIC}}", basic).replace("{{WRITE_KEY}}", write_key)
               for k, v in req["headers"].items()}
    path = req["path"].replace("{{WRITE_KEY}}", write_key)
    if req["method"] in ("OPTIONS", "GET"):
        return await client.request(req["method"], path, headers=headers)
    data = req["body"].replace("{{WRITE_KEY}}", write_key).encode()
    if req.get("gzip"):
        data = gzip.compress(data)
    content: bytes | AsyncIterator[bytes] = _chunks(data) if req.get("chunked") else data
    return await client.post(path, headers=headers, content=content)


def _check_cors(req: dict[str, Any], resp: httpx.Response) -> None:
    if req["method"] == "OPTIONS":
        assert resp.status_code == 200, resp.text
        allowed = {h.strip().lower() for h in resp.headers["access-control-allow-headers"].split(",")}
        asked = {h.strip().lower() for h in req["headers"]["access-control-request-headers"].split(",")}
        assert asked <= allowed, f"preflight refused {asked - allowed}"
        assert "POST" in resp.headers["access-control-allow-methods"]
    if "origin" in req["headers"]:
        # the page's own origin, never "*": browsers refuse "*" for credentialed calls (sendBeacon always is one)
        assert resp.headers["access-control-allow-origin"] == req["headers"]["origin"]
        assert "origin" in resp.headers["vary"].lower()
        if req["method"] == "POST":
            assert "retry-after" in resp.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("name", NAMES)
async def test_sdk_requests_are_stored(name: str, ingest_url: str, workspace) -> None:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    secret = {"Authorization": f"Bearer {workspace.secret_key}"}
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30) as client:
        for req in fixture["requests"]:
            resp = await _replay(client, req, workspace.write_key)
            assert resp.status_code < 300, f"{req['method']} {req['path']}: {resp.status_code} {resp.text}"
            _check_cors(req, resp)
            if req["method"] == "GET":  # the SDK settings: events must come back to this server
                segment_io = resp.json()["integrations"]["Segment.io"]
                assert segment_io["apiKey"] == workspace.write_key
                assert segment_io["apiHost"] == f"{ingest_url.removeprefix('http://')}/v1"

        stored: dict[str, dict[str, Any]] = {}
        for ref in {e["ref"] for e in fixture["expect"]["events"]}:
            r = await client.get(f"/v1/profiles/{ref}/events", headers=secret)
            assert r.status_code == 200, r.text
            stored.update({e["message_id"]: e for e in r.json()["events"]})
        for want in fixture["expect"]["events"]:
            got = stored.get(want["messageId"])
            assert got is not None, f"{want['type']} {want['messageId']} was not stored under {want['ref']}"
            assert got["type"] == want["type"]
            assert got["context"]["library"]["name"] == want["library"]
            for key in ("event", "properties", "traits"):
                if key in want:
                    assert got[key] == want[key], (want["messageId"], key)
            at, received = _time(got["timestamp"]), _time(got["received_at"])
            if "timestamp" in want:  # given by the caller beside the SDK's own originalTimestamp: kept as sent
                assert at == _time(want["timestamp"])
            elif want["sent_at"]:  # the client's time, less the client's clock skew
                assert at == received - (_time(want["sent_at"]) - _time(want["client_time"]))
            else:
                assert at == _time(want["client_time"])

        profile_want = fixture["expect"]["profile"]
        r = await client.get(f"/v1/profiles/{profile_want['ref']}", headers=secret)
        assert r.status_code == 200, r.text
        profile = r.json()
        assert profile["traits"].items() >= profile_want.get("traits", {}).items()
        assert not set(profile["traits"]) & set(profile_want.get("absent_traits", []))
        assert set(profile["anonymous_ids"]) >= set(profile_want.get("anonymous_ids", []))
        assert {g["group_id"] for g in profile["groups"]} >= set(profile_want.get("groups", []))


async def test_only_tracking_routes_take_credentialed_cross_origin_calls(ingest_url: str, workspace) -> None:
    """A page's SDK may send credentials with its tracking calls (sendBeacon always does); the management routes
    allow no such call, so a cookie-authenticated proxy in front of them cannot be read from another site."""
    page = {"Origin": "https://shop.example"}
    preflight = {**page, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with httpx.AsyncClient(base_url=ingest_url) as client:
        for path in ("/v1/track", "/v1/t", "/v1/batch"):
            r = await client.options(path, headers=preflight)
            assert r.status_code == 200 and r.headers["access-control-allow-credentials"] == "true", path
            assert r.headers["access-control-allow-origin"] == page["Origin"]
        secret = {"Authorization": f"Bearer {workspace.secret_key}"}
        for method, path in (("OPTIONS", "/v1/privacy/erasure"), ("GET", "/v1/profiles"),
                             ("GET", f"/v1/privacy/export/{uuid.uuid4()}")):
            r = await client.request(method, path, headers={**(preflight if method == "OPTIONS" else page), **secret})
            assert "access-control-allow-credentials" not in r.headers, (path, r.headers)
            assert r.headers.get("access-control-allow-origin") in (None, "*"), (path, r.headers)


async def test_sdk_settings_are_only_for_write_keys(ingest_url: str, workspace) -> None:
    async with httpx.AsyncClient(base_url=ingest_url) as client:
        for key in ("wk_unknown", workspace.secret_key):
            r = await client.get(f"/v1/projects/{key}/settings")
            assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["detail"] == "No workspace has this write key"
        r = await client.get(f"/v1/projects/{workspace.write_key}/settings")
        assert r.headers["cache-control"] == "no-store"  # derived from Host: no shared cache may keep it
        assert r.json()["integrations"]["Segment.io"]["protocol"] == "http"  # loopback, plain HTTP: a dev server
        assert r.json()["metrics"]["sampleRate"] == 0


async def test_sdk_settings_name_the_public_url_when_one_is_set(settings, workspace) -> None:
    public = settings.model_copy(update={"ingest_public_url": "https://t.example.com/tenure/"})
    with http_server(create_app(public)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get(f"/v1/projects/{workspace.write_key}/settings")
    assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=300"
    segment_io = r.json()["integrations"]["Segment.io"]
    assert segment_io["apiHost"] == "t.example.com/tenure/v1"
    assert "protocol" not in segment_io  # https, the SDKs' default (Swift and Kotlin know no other)


async def test_a_rudderstack_beacon_and_a_cdn_url_ending_in_a_slash_reach_ingest(ingest_url: str, workspace) -> None:
    """RudderStack's JavaScript SDK with ``useBeacon: true`` posts its batch by navigator.sendBeacon to
    ``/beacon/v1/batch?writeKey=…`` (text/plain, credentials, no header of its own): a 404, the events lost. And
    analytics-next joins a ``cdnURL`` ending in "/" with ``/v1/projects/…``: ``//v1/…`` was a 404 and the SDK never
    loaded."""
    secret = {"Authorization": f"Bearer {workspace.secret_key}"}
    mid = uuid.uuid4().hex
    beacon = {"batch": [{"type": "track", "event": "Beaconed", "anonymousId": f"rb-{mid}", "messageId": mid,
                         "originalTimestamp": "2026-11-29T10:00:00.000Z", "sentAt": "2026-11-29T10:00:01.000Z",
                         "context": {"library": {"name": "RudderLabs JavaScript SDK", "version": "3.34.1"}}}],
              "sentAt": "2026-11-29T10:00:01.000Z"}
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30) as client:
        r = await client.post(f"/beacon/v1/batch?writeKey={workspace.write_key}", content=json.dumps(beacon),
                              headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://shop.example"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        assert r.headers["access-control-allow-origin"] == "http://shop.example"
        events = (await client.get(f"/v1/profiles/rb-{mid}/events", headers=secret)).json()["events"]
        assert [e["event"] for e in events] == ["Beaconed"]
        wrong = await client.post("/beacon/v1/batch?writeKey=wk_nope", content=json.dumps(beacon))
        assert wrong.status_code == 401
        settings = await client.get(f"{ingest_url}//v1/projects/{workspace.write_key}/settings")  # (a full URL:
        # "//v1/…" alone is a URL of host "v1")
        assert settings.status_code == 200 and settings.json()["integrations"]["Segment.io"]["apiKey"] == \
            workspace.write_key
        tracked = await client.post(f"{ingest_url}//v1/t", json={"writeKey": workspace.write_key, "type": "track",
                                                    "event": "Slashed", "anonymousId": f"rb-{mid}"})
        assert tracked.status_code == 200, tracked.text
