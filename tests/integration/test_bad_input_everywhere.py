"""Every write endpoint answers bad JSON, missing fields and wrong keys with a 4xx problem and writes nothing."""

import pytest
from sqlalchemy import text

PROBLEM = "application/problem+json"

ENDPOINTS = [
    ("segment", "/v1/segments", "segment.segments"),
    ("campaign", "/v1/templates", "campaign.templates"),
    ("campaign", "/v1/campaigns", "campaign.campaigns"),
    ("campaign", "/v1/referral/codes", "campaign.referral_codes"),
    ("delivery", "/v1/messages", "delivery.messages"),
]


async def _rows(sessionmaker, table: str, ws) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text(f"select count(*) from {table} where workspace_id = :ws"), {"ws": ws})).scalar_one()


@pytest.mark.parametrize(("service", "path", "table"), ENDPOINTS)
@pytest.mark.parametrize(
    ("case", "status"),
    [("bad-json", 400), ("not-an-object", 422), ("missing-fields", 422), ("no-key", 401), ("wrong-key", 401),
     ("write-key", 403)],
)
async def test_bad_input(apps, workspace, sessionmaker, service, path, table, case, status) -> None:
    headers = {"Authorization": f"Bearer {workspace.secret_key}", "content-type": "application/json"}
    body: bytes = b"{}"
    if case == "bad-json":
        body = b'{"name": '
    elif case == "not-an-object":
        body = b"[]"
    elif case == "no-key":
        headers.pop("Authorization")
    elif case == "wrong-key":
        headers["Authorization"] = "Bearer sk_nope"
    elif case == "write-key":
        headers["Authorization"] = f"Bearer {workspace.write_key}"
    r = await apps[service].post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    problem = r.json()
    assert problem["status"] == status and problem["title"] and problem["detail"] and problem["type"]
    assert await _rows(sessionmaker, table, workspace.workspace_id) == 0


LISTS = [("segment", "/v1/segments"), ("campaign", "/v1/campaigns"), ("delivery", "/v1/messages"),
         ("ingest", "/v1/profiles"), ("campaign", "/v1/referrals")]


@pytest.mark.parametrize(("service", "path"), LISTS)
@pytest.mark.parametrize("cursor", ["null", "not-a-cursor", "©", "1-2"])
async def test_bad_cursors_are_400_not_500(apps, workspace, service, path, cursor) -> None:
    r = await apps[service].get(path, params={"after": cursor},
                                headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize(("service", "path", "body"), [
    ("segment", "/v1/segments", {"name": "a\u0000b", "definition": {"type": "trait", "trait": "x"}}),
    ("campaign", "/v1/templates", {"name": "t", "subject": "s\u0000", "text": "x"}),
])
async def test_nul_characters_are_rejected_not_500(apps, workspace, service, path, body) -> None:
    r = await apps[service].post(path, json=body, headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)


async def test_integers_beyond_64_bits_are_stored_not_crashed_on(apps, workspace) -> None:
    big = 2**70
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tracked = await apps["ingest"].post("/v1/track", auth=(workspace.write_key, ""),
                                        json={"userId": "big", "event": "Huge", "properties": {"n": big}})
    assert tracked.status_code == 200 and tracked.json()["accepted"] == 1
    events = (await apps["ingest"].get("/v1/profiles/big/events", headers=h)).json()["events"]
    assert float(events[0]["properties"]["n"]) == float(big)  # kept as a number (JSON clients read doubles)
    sent = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": "big-1", "to": "a@example.com", "subject": "s", "text": "t", "metadata": {"n": big}})
    assert sent.status_code == 202


async def test_database_down_is_503_with_retry_after(settings, workspace) -> None:
    import httpx

    from services.segment.app import create_app

    app = create_app(settings.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:1/none"}))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://segment") as c:
        r = await c.get("/v1/segments", headers={"Authorization": f"Bearer {workspace.secret_key}"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.headers["content-type"].startswith(PROBLEM)
        assert (await c.get("/readyz")).status_code == 503


def _resolve(schema: dict, spec: dict) -> dict:
    """``schema`` with its ``$ref``s replaced by the components they name (recursively)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return _resolve(spec["components"]["schemas"][name], spec)
        return {k: _resolve(v, spec) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_resolve(v, spec) for v in schema]
    return schema


@pytest.mark.parametrize("service", ["ingest", "segment", "campaign", "delivery"])
async def test_readiness_answers_as_its_openapi_document_says(settings, service) -> None:
    """Ready or not, /readyz's body has the content type and shape its OpenAPI operation declares (a probe, a
    dashboard or a generated client reads `checks`)."""
    import importlib

    import httpx
    import jsonschema

    create_app = importlib.import_module(f"services.{service}.app").create_app
    for database_url, status in ((settings.database_url, 200), ("postgresql://postgres@127.0.0.1:1/none", 503)):
        app = create_app(settings.model_copy(update={"database_url": database_url}))
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url=f"http://{service}") as c:
            r = await c.get("/readyz")
        assert r.status_code == status, r.text
        spec = app.openapi()
        declared = spec["paths"]["/readyz"]["get"]["responses"][str(status)]["content"]
        content_type = r.headers["content-type"].split(";")[0]
        assert content_type in declared, f"{status} answered as {content_type}, declared {list(declared)}"
        schema = _resolve(declared[content_type]["schema"], spec)
        assert schema.get("properties"), f"{status}: no shape declared"
        jsonschema.validate(r.json(), schema)
