"""Property-based fuzzing of every operation of the four services' OpenAPI documents (schemathesis).

Each service runs for real (uvicorn on loopback, lifespan, PostgreSQL, Redis, the other services reached over
HTTP). Every operation gets valid and invalid (negative) inputs, sent with the credentials its document
declares, and every answer must be: no 5xx, a documented status code, the documented content type, a body
and headers that match the documented schema, and a 4xx for input the schema forbids.

Seeded and bounded (``TENURE_FUZZ_EXAMPLES`` per operation and mode, 3 by default); raise it for a deeper
run: ``TENURE_FUZZ_EXAMPLES=100 pytest tests/integration/test_api_fuzz.py``.
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import importlib
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.core import CreatedWorkspace, create_workspace
from shared.db import create_engine, create_sessionmaker
from shared.embedded import free_port
from shared.settings import Settings
from shared.testing import INTERNAL_TOKEN, http_server

SERVICES = ("ingest", "segment", "campaign", "delivery")
# how many operations each document has now: a route that vanishes from a document fails here
OPERATIONS = {"ingest": 22, "segment": 26, "campaign": 44, "delivery": 33}
EXAMPLES = int(os.environ.get("TENURE_FUZZ_EXAMPLES", "3"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, ignored_auth, missing_required_header]
# Not run: positive_data_acceptance (rules JSON Schema cannot state are 422s by design: userId or anonymousId,
# start before end, a definition's content) and unsupported_method (PUT /v1/segments/preview is
# PUT /v1/segments/{segment_id} with a bad id, a 422; 405s themselves are checked below).


def _spec(service: str) -> dict:
    app = importlib.import_module(f"services.{service}.app").create_app(Settings(env="test"))
    return app.openapi()


def _schema(service: str) -> schemathesis.BaseSchema:
    config = schemathesis.Config()
    # Unknown query parameters are ignored on purpose (cache-busters, `trait.NAME` filters on /v1/profiles):
    # OpenAPI cannot say "no others", so schemathesis' extra-parameter mutation is not a defect here.
    config.projects.default.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True, max_examples=EXAMPLES,
        allow_x00=True, allow_extra_parameters=False, database="none")
    return schemathesis.openapi.from_dict(_spec(service), config=config)


SCHEMAS = {name: _schema(name) for name in SERVICES}


@dataclass
class Live:
    urls: dict[str, str]
    workspace: CreatedWorkspace
    session: requests.Session
    ids: dict[str, str] = field(default_factory=dict)  # path parameter -> an existing resource

    def credentials(self, security: list[dict] | None) -> dict[str, str]:
        """Headers for the credentials an operation's document asks for (none for public routes)."""
        schemes = {name for requirement in security or [] for name in requirement}
        if "writeKey" in schemes:
            basic = base64.b64encode(f"{self.workspace.write_key}:".encode()).decode()
            return {"Authorization": f"Basic {basic}"}
        if "internalToken" in schemes:
            return {"Authorization": f"Bearer {INTERNAL_TOKEN}", "X-Tenure-Workspace": str(self.workspace.workspace_id)}
        if "secretKey" in schemes:
            return {"Authorization": f"Bearer {self.workspace.secret_key}"}
        return {}


async def _new_workspace(settings: Settings) -> CreatedWorkspace:
    engine = create_engine(settings, pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            return await create_workspace(session, "fuzz")
    finally:
        await engine.dispose()


def _seed(live: Live) -> None:
    """One of each resource, so schema-valid requests reach success answers too (their bodies are checked
    against the documented schemas), not only 404s for random ids."""
    def call(service: str, method: str, path: str, body: dict | None = None, **kw: object) -> dict:
        headers = live.credentials([{"writeKey": []}] if service == "ingest" and path.startswith("/v1/identify")
                                   else [{"secretKey": []}])
        r = live.session.request(method, live.urls[service] + path, json=body, headers=headers, timeout=30, **kw)
        assert r.status_code < 300, (path, r.status_code, r.text)
        return r.json() if r.content else {}

    call("ingest", "POST", "/v1/identify", {"userId": "fuzz-user", "traits": {"email": "fuzz@example.com"}})
    profile = call("ingest", "GET", "/v1/profiles/fuzz-user")["id"]
    segment = call("segment", "POST", "/v1/segments", {"name": "fuzz", "definition": {
        "type": "trait", "trait": "email", "op": "exists"}})["id"]
    lst = call("segment", "POST", "/v1/lists", {"name": "fuzz"})["id"]
    template = call("campaign", "POST", "/v1/templates", {"name": "fuzz", "subject": "Hi", "text": "Hello"})["id"]
    campaign = call("campaign", "POST", "/v1/campaigns", {"name": "fuzz", "trigger": {"type": "api"},
                                                           "steps": [{"id": "s", "type": "delay", "seconds": 60}]})
    call("campaign", "PUT", "/v1/coupon-pools/fuzz", {"codes": ["FUZZ-1", "FUZZ-2"]})
    call("campaign", "PUT", "/v1/snippets/fuzz", {"content": "Hi"})
    call("campaign", "PUT", "/v1/programs/loyalty", {"config": {}})
    message = call("delivery", "POST", "/v1/messages", {"idempotency_key": "fuzz-1", "to": "fuzz@example.com",
                                                        "subject": "Hi", "text": "Hello"})["id"]
    live.ids.update(profile_id=profile, ref="fuzz-user", member="fuzz-user", segment_id=segment, list_id=lst,
                    template_id=template, campaign_id=campaign["id"], pool="fuzz", name="fuzz", message_id=message,
                    workspace_id=str(live.workspace.workspace_id))


@pytest.fixture(scope="module")
def live(settings: Settings) -> Iterator[Live]:
    """The four services on loopback ports, configured to reach each other there."""
    ports = {name: free_port() for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    served = settings.model_copy(update={f"{name}_url": url for name, url in urls.items()})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # asyncio.run here would unset pytest-asyncio's loop
        workspace = pool.submit(asyncio.run, _new_workspace(served)).result()
    with contextlib.ExitStack() as stack, requests.Session() as session:
        for name in SERVICES:
            app = importlib.import_module(f"services.{name}.app").create_app(served)
            stack.enter_context(http_server(app, port=ports[name]))
        served_live = Live(urls, workspace, session)
        _seed(served_live)
        yield served_live


def test_every_operation_is_fuzzed() -> None:
    """The parametrized test below covers each operation once: guard against a document going empty."""
    for name, schema in SCHEMAS.items():
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == OPERATIONS[name], name
        for operation in operations:
            assert operation.definition.raw.get("operationId") and operation.definition.raw.get("summary"), \
                operation.label


def _fuzz(service: str):
    @SCHEMAS[service].parametrize()
    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    def test(case: schemathesis.Case, live: Live) -> None:
        security = case.operation.definition.raw.get("security")
        if case.meta is not None and case.meta.generation.mode.is_positive:
            # valid input aims at the seeded resources half of the time (chosen from the drawn value, so
            # repeatable), and keeps its drawn ids the other half (the 404 answers are checked too)
            for name, value in (case.path_parameters or {}).items():
                if name in live.ids and zlib.crc32(str(value).encode()) % 2 == 0:
                    case.path_parameters[name] = live.ids[name]
        case.call_and_validate(base_url=live.urls[service], session=live.session,
                               headers=live.credentials(security), checks=CHECKS, timeout=30)

    return test


test_ingest = _fuzz("ingest")
test_segment = _fuzz("segment")
test_campaign = _fuzz("campaign")
test_delivery = _fuzz("delivery")


# ---- what the fuzzer found, pinned as plain examples ---------------------------------------------------------

PROBLEM = "application/problem+json"


def _h(workspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {workspace.secret_key}"}


async def test_a_preview_without_a_sample_is_not_a_crash(apps, workspace) -> None:
    r = await apps["segment"].post("/v1/segments/preview", headers=_h(workspace), json={
        "definition": {"type": "trait", "trait": "plan", "op": "equals", "value": "pro"}, "sample": 0})
    assert r.status_code == 200, r.text
    assert r.json()["sample"] == []


async def test_route_internals_are_not_query_parameters(apps, workspace) -> None:
    """`?_s=` and `?_k=` used to set a campaign's status and a program's kind."""
    h = _h(workspace)
    camp = await apps["campaign"].post("/v1/campaigns", headers=h, json={
        "name": "fuzz-pause", "trigger": {"type": "api"}, "steps": [{"id": "w", "type": "delay", "seconds": 60}]})
    assert camp.status_code == 201, camp.text
    paused = await apps["campaign"].post(f"/v1/campaigns/{camp.json()['id']}/pause", params={"_s": "archived"},
                                         headers=h)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    program = await apps["campaign"].put("/v1/programs/referral", params={"_k": "other"}, headers=h, json={})
    assert program.status_code == 200 and program.json()["kind"] == "referral"


@pytest.mark.parametrize(("service", "method", "path", "body"), [
    ("campaign", "POST", "/v1/loyalty/members/m-1/adjust", {"points": False, "reason": "bool is not a number"}),
    ("campaign", "PUT", "/v1/programs/loyalty", {"enabled": 1}),
    ("ingest", "POST", "/v1/privacy/erasure", {"user": "u-1", "suppress": 0}),
    ("segment", "POST", "/v1/segments/preview", {"definition": {"type": "trait", "trait": "x"}, "sample": True}),
    ("delivery", "GET", "/v1/messages?until=0.5", None),
    ("campaign", "GET", "/v1/loyalty/leaderboard?at=1700000000", None),
    ("delivery", "GET", "/v1/suppressions?limit=1&limit=2", None),
    ("campaign", "GET", "/v1/loyalty/members/%15%0A/balance", None),
    ("campaign", "PUT", "/v1/coupon-pools/spring", {"codes": ["", "  "]}),
    ("delivery", "GET", "/v1/messages.csv?since=0001-01-01T00%3A04%3A00%2B03%3A00", None),  # year 0 in UTC
])
async def test_inputs_of_the_wrong_json_type_are_422(apps, workspace, service, method, path, body) -> None:
    headers = {**_h(workspace), "Idempotency-Key": "fuzz-1"}
    r = await apps[service].request(method, path, headers=headers, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM) and r.json()["detail"]


async def test_a_track_call_takes_its_type_from_the_path_and_documented_timestamps_only(apps, workspace) -> None:
    auth = (workspace.write_key, "")
    ok = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": 42, "event": "E", "type": "identify"})
    assert ok.status_code == 200 and ok.json()["accepted"] == 1
    # ISO 8601 or a Unix time (documented: SDKs send both); a boolean is neither
    epoch = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "u", "event": "E", "sentAt": 0})
    assert epoch.status_code == 200 and epoch.json()["accepted"] == 1
    boolean = await apps["ingest"].post("/v1/track", auth=auth, json={"userId": "u", "event": "E", "sentAt": True})
    assert boolean.status_code == 422 and boolean.headers["content-type"].startswith(PROBLEM)


# ---- odd inputs no schema describes, sent to every operation ------------------------------------------------

_DEEP = "[" * 100_000 + "]" * 100_000
ODD_BODIES: dict[str, tuple[str, bytes]] = {
    "empty": ("application/json", b""),
    "text": ("text/plain", b"hello"),
    "form": ("application/x-www-form-urlencoded", b"a=1&b=2"),
    "not-utf8": ("application/json", b'{"name": "\xff\xfe"}'),
    "deep": ("application/json", _DEEP.encode()),
    "deep-object": ("application/json", ('{"a":' * 5000 + "1" + "}" * 5000).encode()),
    "huge-number": ("application/json", b'{"limit": 1e400, "points": 123456789012345678901234567890, "n": -1e400}'),
    "nul": ("application/json", b'{"name": "a\\u0000b", "user": "\\u0000", "to": "\\u0000@x.io"}'),
    "lone-surrogate": ("application/json", b'{"name": "\\ud800", "user": "\\udfff"}'),
    "array": ("application/json", b"[1, 2, 3]"),
}
ODD_CREDENTIALS = [{"Authorization": "Basic !!!"}, {"Authorization": "Basic " + base64.b64encode(b"\xff:").decode()},
                   {"Authorization": "Bearer " + "k" * 5000}, {"Authorization": "Bearer sk_\u00e9"},
                   {"Authorization": f"Bearer {INTERNAL_TOKEN}", "X-Tenure-Workspace": "not-a-uuid"},
                   {"Authorization": "Digest a=b"}]
ODD_SEGMENTS = ["not-a-uuid", "%00", "a%00b", "x" * 5000, "%F0%9F%92%A9", "..%2F..%2Fetc", "null", "-1",
                "99999999999999999999999", "2026-13-45"]


def _operations(service: str) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, op) for path, item in SCHEMAS[service].raw_schema["paths"].items()
            for method, op in item.items()]


def _bad(response: requests.Response) -> str | None:
    """What is wrong with an answer to an odd request: a 5xx, or an error that is not a problem document."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:200]}"
    if response.status_code >= 400 and not response.headers.get("content-type", "").startswith(PROBLEM):
        return f"{response.status_code} as {response.headers.get('content-type')}: {response.text[:200]}"
    return None


@pytest.mark.parametrize("service", SERVICES)
def test_odd_bodies_and_path_segments_are_4xx_problems(live: Live, service: str) -> None:
    failures: list[str] = []
    sent = 0
    for method, path, op in _operations(service):
        headers = live.credentials(op.get("security"))
        url = live.urls[service] + path
        if "requestBody" in op:
            filled = re.sub(r"\{[^}]+\}", "x", url)
            for name, (ctype, body) in ODD_BODIES.items():
                r = live.session.request(method, filled, data=body, timeout=30,
                                         headers={**headers, "Content-Type": ctype, "Idempotency-Key": "odd"})
                sent += 1
                if problem := _bad(r):
                    failures.append(f"{method} {path} [{name}] {problem}")
        if "{" in path:
            for segment in ODD_SEGMENTS:
                r = live.session.request(method, re.sub(r"\{[^}]+\}", segment, url), timeout=30,
                                         headers={**headers, "Idempotency-Key": "odd"}, json={})
                sent += 1
                if problem := _bad(r):
                    failures.append(f"{method} {path} [{segment[:20]}] {problem}")
        if op.get("security"):
            for odd in ODD_CREDENTIALS:
                r = live.session.request(method, re.sub(r"\{[^}]+\}", "x", url), timeout=30,
                                         headers={k: v.encode("utf-8") for k, v in odd.items()}, json={})
                sent += 1
                if r.status_code not in (401, 403) or _bad(r):
                    failures.append(f"{method} {path} [{odd}] {r.status_code}: {r.text[:200]}")
    for path, item in SCHEMAS[service].raw_schema["paths"].items():
        if "{" in path or "TRACE" in {m.upper() for m in item}:
            continue
        r = live.session.request("TRACE", live.urls[service] + path, timeout=30)
        sent += 1
        if r.status_code != 405 or "Allow" not in r.headers or _bad(r):
            failures.append(f"TRACE {path} {r.status_code} without Allow (RFC 9110) or not a problem")
    assert sent > 50, sent
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("content_type", "body", "status", "detail"), [
    ("text/plain", b'{"name": "x"}', 415, "Content-Type: application/json (got text/plain)"),
    (None, b'{"name": "x"}', 415, "(got no Content-Type)"),
    ("application/json", b"", 422, "The request body is missing"),
])
async def test_a_body_not_sent_as_json_says_so(apps, workspace, content_type, body, status, detail) -> None:
    headers = {**_h(workspace), **({"Content-Type": content_type} if content_type else {})}
    r = await apps["segment"].post("/v1/lists", content=body, headers=headers)
    assert r.status_code == status and r.headers["content-type"].startswith(PROBLEM)
    assert detail in r.json()["detail"]


async def test_idempotent_replays_answer_a_documented_status(apps, workspace) -> None:
    h = {**_h(workspace), "Idempotency-Key": "replay-1"}
    await apps["campaign"].put("/v1/programs/loyalty", headers=h, json={"config": {}})
    await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""), json={"userId": "replay-user"})
    for service, path, body in (
        ("campaign", "/v1/loyalty/members/replay-user/adjust", {"points": 5, "reason": "twice"}),
        ("delivery", "/v1/messages", {"idempotency_key": "replay-1", "to": "r@example.com", "subject": "s", "text": "t"}),
    ):
        first, again = [await apps[service].post(path, headers=h, json=body) for _ in range(2)]
        assert first.status_code in (201, 202) and again.status_code == 200, (first.text, again.text)
        documented = SCHEMAS[service].raw_schema["paths"][path.replace("replay-user", "{member}")]["post"]["responses"]
        assert "200" in documented and again.json() == first.json()
