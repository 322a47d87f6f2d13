"""What a client library relies on across the four APIs, checked through HTTP: a 405 names every method the path
takes, lists page through every item once, idempotency keys replay the first answer and refuse another request,
and credentials refused say why."""

import pytest

PROBLEM = "application/problem+json"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("service", "path", "method", "allowed"), [
    ("campaign", "/v1/campaigns", "DELETE", {"GET", "POST"}),
    ("campaign", "/v1/campaigns/00000000-0000-4000-8000-000000000000", "PATCH", {"GET", "PUT"}),
    ("segment", "/v1/segments/00000000-0000-4000-8000-000000000000", "DELETE", {"GET", "PUT"}),
    ("delivery", "/v1/messages", "PUT", {"GET", "POST"}),
    ("delivery", "/v1/devices", "PUT", {"GET", "POST"}),
    ("ingest", "/v1/track", "GET", {"POST"}),
])
async def test_405_allow_names_every_method_of_the_path(apps, workspace, service, path, method, allowed) -> None:
    """RFC 9110: Allow lists the methods the resource supports, not only those of the first route that matched its
    path (a client told ``Allow: POST`` on ``/v1/campaigns`` would never list campaigns)."""
    r = await apps[service].request(method, path, headers=_bearer(workspace.secret_key))
    assert r.status_code == 405 and r.headers["content-type"].startswith(PROBLEM)
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed
    assert r.json()["status"] == 405
