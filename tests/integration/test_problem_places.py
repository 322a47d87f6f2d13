"""A 422 (or 400) about one parameter, header or field names it in ``errors[].loc``, as a schema error does, so a
client reads every problem the same way: checked through HTTP on the problems that had no ``errors`` at all."""

import uuid

import pytest

PROBLEM = "application/problem+json"
SERVICES = ("ingest", "segment", "campaign", "delivery")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _places(r, status: int = 422) -> list[list[str]]:
    assert r.status_code == status and r.headers["content-type"].startswith(PROBLEM), r.text
    errors = r.json().get("errors")
    assert errors and all(e["msg"] and e["type"] for e in errors), r.json()
    return [e["loc"] for e in errors]


async def test_a_repeated_one_value_parameter_is_named_on_every_list(apps, workspace) -> None:
    """``?limit=1&limit=2`` was a 422 saying "takes one value" in its detail only."""
    h = _bearer(workspace.secret_key)
    tried = 0
    for service in SERVICES:
        spec = (await apps[service].get("/openapi.json")).json()
        for path, item in spec["paths"].items():
            op = item.get("get")
            if not op or not any(p["name"] == "limit" and p["in"] == "query" for p in op.get("parameters", [])):
                continue
            url = path
            for p in op["parameters"]:
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", str(uuid.uuid4()))
            r = await apps[service].get(url + "?limit=1&limit=2", headers=h)
            assert _places(r) == [["query", "limit"]], (service, path)
            tried += 1
    assert tried >= 15


async def test_idempotency_keys_that_differ_or_are_missing_are_named(apps, workspace) -> None:
    h = _bearer(workspace.secret_key)
    message = {"to": "ada@example.com", "subject": "s", "text": "t"}
    r = await apps["delivery"].post("/v1/messages", headers={**h, "Idempotency-Key": "a"},
                                    json={**message, "idempotency_key": "b"})
    assert _places(r) == [["header", "Idempotency-Key"], ["body", "idempotency_key"]]
    r = await apps["delivery"].post("/v1/messages", headers=h, json=message)
    assert _places(r) == [["body", "idempotency_key"]]

    camp = await apps["campaign"].post("/v1/campaigns", headers=h, json={
        "name": "c", "trigger": {"type": "api"}, "steps": [{"id": "w", "type": "delay", "seconds": 60}]})
    assert camp.status_code == 201, camp.text
    r = await apps["campaign"].post(f"/v1/campaigns/{camp.json()['id']}/trigger",
                                    headers={**h, "Idempotency-Key": "a"}, json={"user": "u", "idempotency_key": "b"})
    assert _places(r) == [["header", "Idempotency-Key"], ["body", "idempotency_key"]]


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/metrics", {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}),
    ("/v1/metrics", {"start": "2026-02-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}),
    ("/v1/metrics/stages", {"start": "2026-02-01", "end": "2026-01-01"}),
    ("/v1/metrics/stages", {"start": "2025-01-01", "end": "2026-06-01"}),
])
async def test_a_period_that_ends_before_it_starts_names_its_end(apps, workspace, path, params) -> None:
    r = await apps["segment"].get(path, headers=_bearer(workspace.secret_key), params=params)
    assert _places(r) == [["query", "end"]]


@pytest.mark.parametrize("content", [b"", b"email\n", b"\n \n", b"\xff\xfe\x00bad", b"id\n\x01ctl\n"])
async def test_a_list_upload_it_cannot_take_names_the_body(apps, workspace, content) -> None:
    """The CSV upload's "no ids" and "not UTF-8" problems had no ``errors``."""
    h = _bearer(workspace.secret_key)
    made = await apps["segment"].post("/v1/lists", headers=h, json={"name": "csv"})
    r = await apps["segment"].post(f"/v1/lists/{made.json()['id']}/members/csv", content=content,
                                   headers={**h, "Content-Type": "text/csv"})
    assert _places(r) == [["body"]]


async def test_a_web_push_endpoint_refused_names_the_field(settings, workspace) -> None:
    """A subscription whose endpoint is not https (or not public) was refused with a ``field`` and no ``errors``."""
    import base64
    import os

    import httpx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from services.delivery.app import create_app

    def b64u(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    keys = {"p256dh": b64u(point), "auth": b64u(os.urandom(16))}
    app = create_app(settings.model_copy(update={"webhook_allow_private": False}))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://delivery") as c:
        for endpoint in ("http://push.example.com/send/1", "https://127.0.0.1/send/1"):
            r = await c.post("/v1/devices", headers=_bearer(workspace.secret_key), json={
                "user": "u", "platform": "web", "subscription": {"endpoint": endpoint, "keys": keys}})
            assert _places(r) == [["body", "subscription", "endpoint"]]
