"""A NUL (``%00``) or bytes that are not UTF-8 (``%FF``; ``%ED%A0%80``, a lone surrogate) in a path or query
parameter of any route of the four services.

Before, a NUL reached PostgreSQL, which refused it with a 422 that named no parameter (``?to=`` on the message
log, ``/v1/preferences/{address}``, ingest's ``/v1/profiles/{ref}`` and list filters), and the router read the
other bytes as U+FFFD, so a lookup answered 200 or 404 for text nobody sent. Now every such parameter is a 422
problem naming it (``errors[].loc`` = ``["query", "to"]``), before any route or dependency reads it; only the
open pixel, which always answers its image, is left alone.
"""

import uuid
from typing import Any

import httpx
import pytest

from shared.testing import http_server, internal_headers

PROBLEM = "application/problem+json"
SERVICES = ("ingest", "segment", "campaign", "delivery")
BAD = {"nul": "%00", "nul-inside": "a%00b", "lone-surrogate": "x%ED%A0%80", "not-utf8": "%FF"}
# path and query parameters the OpenAPI documents declare now
PARAMETERS = {"ingest": 14, "segment": 25, "campaign": 51, "delivery": 45}
# answers the same whatever its URL holds (docs/delivery.md: "always the image")
ALWAYS_THE_IMAGE = ("delivery", "GET", "/o/{token}.gif")


def _example(schema: dict[str, Any]) -> str:
    """A value the parameter takes (the others of a request stay valid, so only the bad one is refused)."""
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    if "enum" in schema:
        return str(schema["enum"][0])
    return {"uuid": str(uuid.uuid4()), "date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01"}.get(
        schema.get("format", ""), {"integer": "1", "boolean": "true", "array": "x"}.get(schema.get("type", ""), "x"))


def _credentials(op: dict[str, Any], workspace) -> dict[str, Any]:
    """What the operation's document asks for (an Idempotency-Key too: some writes need one)."""
    schemes = {name for requirement in op.get("security") or [] for name in requirement}
    if "internalToken" in schemes:
        return {"headers": {**internal_headers(workspace.workspace_id), "Idempotency-Key": "url-text"}}
    if "writeKey" in schemes:
        return {"auth": (workspace.write_key, ""), "headers": {"Idempotency-Key": "url-text"}}
    return {"headers": {"Authorization": f"Bearer {workspace.secret_key}", "Idempotency-Key": "url-text"}}


def _requests(spec: dict[str, Any], bad: str) -> list[tuple[str, str, str, str, str, dict[str, Any]]]:
    """(method, route, where, name, url, operation): one request per path or query parameter of every operation,
    with ``bad`` as that parameter's value."""
    out = []
    for route, item in spec["paths"].items():
        for method, op in item.items():
            params = [p for p in op.get("parameters", []) if p["in"] in ("query", "path")]
            for param in params:
                path, query = route, []
                for other in params:
                    value = bad if other is param else _example(other.get("schema", {}))
                    if other["in"] == "path":
                        path = path.replace("{" + other["name"] + "}", value)
                    elif other is param or other.get("required"):
                        query.append(f"{other['name']}={value}")
                out.append((method.upper(), route, param["in"], param["name"], path + "?" + "&".join(query), op))
    return out


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("service", SERVICES)
async def test_every_parameter_of_every_route_refuses_what_is_not_text(apps, workspace, service, kind) -> None:
    spec = (await apps[service].get("/openapi.json")).json()
    sent, failures = 0, []
    for method, route, where, name, url, op in _requests(spec, BAD[kind]):
        body = {"json": {}} if "requestBody" in op else {}
        r = await apps[service].request(method, url, **_credentials(op, workspace), **body)
        sent += 1
        ctype = r.headers.get("content-type", "")
        if (service, method, route) == ALWAYS_THE_IMAGE:
            if r.status_code != 200 or ctype != "image/gif":
                failures.append(f"{method} {url}: {r.status_code} {ctype}, not the image")
            continue
        if r.status_code != 422 or not ctype.startswith(PROBLEM):
            failures.append(f"{method} {url}: {r.status_code} {ctype} {r.text[:200]}")
        elif [where, name] not in [e["loc"] for e in r.json().get("errors", [])] or repr(name) not in r.json()["detail"]:
            failures.append(f"{method} {url}: the {where} parameter {name!r} is not named: {r.text[:300]}")
    assert sent >= PARAMETERS[service], sent  # a walk that finds fewer has lost routes

    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("service", "url", "loc", "says"), [
    ("delivery", "/v1/messages?to=ada%00@example.com", ["query", "to"], "contains a NUL character (%00)"),
    ("delivery", "/v1/messages?to=%ED%A0%80", ["query", "to"], "is not valid UTF-8"),
    ("delivery", "/v1/preferences/ada%00@example.com", ["path", "address"], "contains a NUL character"),
    ("delivery", "/v1/preferences/%ED%A0%80@example.com", ["path", "address"], "is not valid UTF-8"),
    ("ingest", "/v1/profiles/u%00", ["path", "ref"], "contains a NUL character"),
    # an id with an encoded "/" (routed on the raw path's segments) is checked the same way
    ("ingest", "/v1/profiles/org%2F%FF/events", ["path", "ref"], "is not valid UTF-8"),
    ("delivery", "/v1/preferences/team%2Fa%00@example.com", ["path", "address"], "contains a NUL character"),
    ("ingest", "/v1/profiles?email=%FF", ["query", "email"], "is not valid UTF-8"),
    # undeclared parameters a route reads itself (trait.NAME filters), and a name that is not text
    ("ingest", "/v1/profiles?trait.plan=pro%00", ["query", "trait.plan"], "contains a NUL character"),
    ("ingest", "/v1/profiles?trait.pl%00an=pro", ["query", "trait.pl%00an"], "has a name that contains a NUL"),
    ("segment", "/v1/segments?after=%00", ["query", "after"], "contains a NUL character"),
    ("campaign", "/v1/referrals?status=%ED%A0%80", ["query", "status"], "is not valid UTF-8"),
    ("campaign", "/v1/campaigns/00000000-0000-4000-8000-000000000104/journeys?step=wait%00", ["query", "step"], "contains a NUL"),
])
async def test_the_problem_names_the_parameter_and_says_why(apps, workspace, service, url, loc, says) -> None:
    r = await apps[service].get(url, headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    problem = r.json()
    assert problem["errors"] == [{"loc": loc, "msg": problem["errors"][0]["msg"], "type": "value_error"}]
    assert says in problem["errors"][0]["msg"] and f"The {loc[0]} parameter {loc[1]!r} {says}" in problem["detail"]


async def test_good_text_still_passes(apps, workspace) -> None:
    """Percent-encoded UTF-8 (an emoji, an accent, a space) is text: only NUL and bytes that are no character are
    refused."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    assert (await apps["delivery"].get("/v1/messages?to=%F0%9F%92%A9%20%C3%A9", headers=h)).status_code == 200
    assert (await apps["delivery"].get("/v1/preferences/%C3%A9@example.com", headers=h)).status_code == 200
    missing = await apps["ingest"].get("/v1/profiles/%C3%A9t%C3%A9", headers=h)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(PROBLEM)


async def test_recipient_links_answer_a_browser_with_a_page_and_the_pixel_with_its_image(apps) -> None:
    page = await apps["delivery"].get("/u/a%00b", headers={"Accept": "text/html"})
    assert page.status_code == 422 and page.headers["content-type"].startswith("text/html"), page.text
    api = await apps["delivery"].get("/u/a%00b")
    assert api.status_code == 422 and api.json()["errors"][0]["loc"] == ["path", "token"]
    pixel = await apps["delivery"].get("/o/a%00b.gif?x=%FF")
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"


async def test_through_a_real_server(settings, workspace) -> None:
    """uvicorn hands the app a ``raw_path`` without the query (httpx's in-process transport puts the query in it)
    and decodes bytes that are not UTF-8 as U+FFFD: the check reads the raw bytes in both cases."""
    from services.delivery.app import create_app

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    with http_server(create_app(settings)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=30) as c:
            for url, loc in (("/v1/preferences/%ED%A0%80", ["path", "address"]),
                             ("/v1/preferences/a%00b?x=1", ["path", "address"]),
                             ("/v1/messages?to=%FF", ["query", "to"]), ("/v1/messages?user=u%00", ["query", "user"])):
                r = await c.get(url)
                assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), (url, r.text)
                assert r.json()["errors"][0]["loc"] == loc, (url, r.text)
            assert (await c.get("/v1/preferences/ada%40example.com")).status_code == 200


async def test_it_is_checked_before_credentials(apps) -> None:
    """As a repeated one-value parameter is (docs/decisions.md): nothing reads the value, the key included."""
    r = await apps["delivery"].get("/v1/messages?to=%00")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "to"], r.text
    assert (await apps["delivery"].get("/v1/messages?to=ada")).status_code == 401
