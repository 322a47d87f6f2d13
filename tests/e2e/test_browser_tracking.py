"""Tracking calls as a real browser makes them: headless Chromium, on a page served from another origin (another
port), sends to a running ingest server the ways browser SDKs do — fetch with keepalive and text/plain (no
preflight), preflighted JSON with Basic auth, gzip, credentialed XHR, navigator.sendBeacon with a string or a
Blob — and every event must be stored. A script that reads the response (fetch, XHR) must be let to: an SDK
that sees a CORS failure retries, and keeps the event queued."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from services.ingest.app import create_app
from shared.testing import http_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ingest_url(settings) -> Iterator[str]:
    with http_server(create_app(settings)) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    """A customer's web page on another origin: the scripts run in it."""
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse("<!doctype html><html><head><title>shop</title></head><body>shop</body></html>")

    with http_server(Starlette(routes=[Route("/", page)])) as port:
        yield f"http://localhost:{port}/"


@pytest.fixture(scope="module")
def browser(page_url: str) -> Iterator[Any]:
    from tests.e2e.browser import headless_chromium

    b = headless_chromium()
    try:
        b.set_script_timeout(20)
        b.get(page_url)
        yield b
    finally:
        b.quit()


def _run(browser: Any, script: str, *args: Any) -> Any:
    """Run ``script`` (the body of an async function of ``args``) in the page; what it resolves to, or
    "error: …" when it throws (a fetch refused by CORS throws TypeError)."""
    wrapped = ("const done = arguments[arguments.length - 1];"
               f"(async (...args) => {{ {script} }})(...Array.from(arguments).slice(0, -1))"
               ".then(done, e => done('error: ' + e));")
    return browser.execute_async_script(wrapped, *args)


_TRACK = "JSON.stringify({userId: uid, event: 'Viewed Product', messageId: uid + '-1'})"
_TRACK_WITH_KEY = "JSON.stringify({writeKey: key, userId: uid, event: 'Viewed Product', messageId: uid + '-1'})"
_BATCH = ("JSON.stringify({writeKey: key, batch: ["
          "{type: 'track', userId: uid, event: 'Viewed Product', messageId: uid + '-1'},"
          "{type: 'identify', userId: uid, traits: {plan: 'pro'}, messageId: uid + '-2'}]})")
_BASIC = "'Basic ' + btoa(key + ':')"

# name → (script, what the script must see, events stored). Scripts get args = [ingest url, write key, userId].
WAYS: dict[str, tuple[str, Any, int]] = {
    # analytics-next: fetch, keepalive, text/plain so that only Authorization is preflighted
    "fetch keepalive text/plain + Basic": (f"""
        const [url, key, uid] = args;
        const r = await fetch(url + '/v1/t', {{method: 'POST', keepalive: true, credentials: 'omit',
            headers: {{'Content-Type': 'text/plain', 'Authorization': {_BASIC}}}, body: {_TRACK}}});
        return r.status;""", 200, 1),
    # no preflight at all: a simple request, the write key in the body
    "fetch keepalive text/plain + writeKey": (f"""
        const [url, key, uid] = args;
        const r = await fetch(url + '/v1/track', {{method: 'POST', keepalive: true,
            headers: {{'Content-Type': 'text/plain'}}, body: {_TRACK_WITH_KEY}}});
        return r.status;""", 200, 1),
    "fetch application/json + Basic (preflighted)": (f"""
        const [url, key, uid] = args;
        const r = await fetch(url + '/v1/track', {{method: 'POST',
            headers: {{'Content-Type': 'application/json', 'Authorization': {_BASIC}}}, body: {_TRACK}}});
        return r.status;""", 200, 1),
    "fetch gzip batch (CompressionStream)": (f"""
        const [url, key, uid] = args;
        const gz = await new Response(new Blob([{_BATCH}]).stream().pipeThrough(new CompressionStream('gzip')))
            .arrayBuffer();
        const r = await fetch(url + '/v1/b', {{method: 'POST', keepalive: true,
            headers: {{'Content-Type': 'text/plain', 'Content-Encoding': 'gzip'}}, body: gz}});
        return r.status;""", 200, 2),
    # a page's own fetch wrapper or SDK that sends cookies along (credentials: 'include')
    "fetch credentials include, text/plain": (f"""
        const [url, key, uid] = args;
        const r = await fetch(url + '/v1/track', {{method: 'POST', credentials: 'include',
            headers: {{'Content-Type': 'text/plain'}}, body: {_TRACK_WITH_KEY}}});
        return r.status;""", 200, 1),
    "XHR withCredentials application/json + Basic": (f"""
        const [url, key, uid] = args;
        return await new Promise(done => {{
            const x = new XMLHttpRequest(); x.open('POST', url + '/v1/track'); x.withCredentials = true;
            x.setRequestHeader('Content-Type', 'application/json'); x.setRequestHeader('Authorization', {_BASIC});
            x.onload = () => done(x.status); x.onerror = () => done('error: XHR failed'); x.send({_TRACK}); }});""",
        200, 1),
    # sendBeacon always sends credentials (mode cors, credentials include); the response is never seen
    "sendBeacon string (text/plain)": (f"""
        const [url, key, uid] = args; return navigator.sendBeacon(url + '/v1/track', {_TRACK_WITH_KEY});""",
        True, 1),
    "sendBeacon Blob text/plain": (f"""
        const [url, key, uid] = args;
        return navigator.sendBeacon(url + '/v1/track', new Blob([{_TRACK_WITH_KEY}], {{type: 'text/plain'}}));""",
        True, 1),
    # not a CORS-safelisted type: Chromium preflights it, with credentials
    "sendBeacon Blob application/json": (f"""
        const [url, key, uid] = args;
        return navigator.sendBeacon(url + '/v1/track',
                                    new Blob([{_TRACK_WITH_KEY}], {{type: 'application/json'}}));""", True, 1),
    "sendBeacon batch": (f"""
        const [url, key, uid] = args; return navigator.sendBeacon(url + '/v1/batch', {_BATCH});""", True, 2),
}


async def _stored(ingest_url: str, secret_key: str, ref: str, count: int, timeout_s: float = 10) -> list[dict]:
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=10) as c:
        for _ in range(int(timeout_s / 0.25)):
            r = await c.get(f"{ingest_url}/v1/profiles/{ref}/events",
                            headers={"Authorization": f"Bearer {secret_key}"})
            events = r.json()["events"] if r.status_code == 200 else []
            if len(events) >= count:
                break
            await asyncio.sleep(0.25)
    return events


@pytest.mark.parametrize("way", list(WAYS))
async def test_browser_tracking_calls_are_stored(way: str, browser, ingest_url: str, workspace) -> None:
    script, seen_want, count = WAYS[way]
    uid = f"web-{uuid.uuid4().hex[:8]}"
    seen = await asyncio.to_thread(_run, browser, script, ingest_url, workspace.write_key, uid)
    events = await _stored(ingest_url, workspace.secret_key, uid, count)
    assert seen == seen_want, f"{way}: the page saw {seen!r}"
    assert len(events) == count, f"{way}: {len(events)} of {count} events stored"
    track = next(e for e in events if e["type"] == "track")
    assert track["event"] == "Viewed Product" and track["message_id"] == f"{uid}-1"
