"""Text PostgreSQL cannot hold — a NUL (sent as ``\\u0000``) or a lone surrogate (sent as ``\\ud800``) — through
the campaign and delivery write APIs, provider webhooks, ingest's tracking API and ``tenure apply``.

Before, such a value reached the database: a NUL got a 422 that named no field (the database's), a lone
surrogate a 500 (asyncpg could not encode it), and a delivery batch holding one either failed whole or
could not even write its answer. Now each write API refuses it with a 422 problem naming the field (a
batch: that message ``invalid``, the others stored), provider webhooks ignore it with an answer they do not
retry, ingest refuses the message it is in, and ``tenure apply`` refuses the file before applying anything.
"""

import base64
import copy
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from services import resources
from services.delivery import sms

PROBLEM = "application/problem+json"
BAD = {"nul": "\x00", "surrogate": "\ud800"}
WHY = {"nul": "NUL character", "surrogate": "lone surrogate"}
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Key:
    """Inject into this object key's name instead of its value."""

    name: str


@dataclass(frozen=True)
class Case:
    id: str
    service: str
    method: str
    path: str  # may name {template}, {campaign}, {api_campaign}
    body: dict[str, Any]
    at: tuple[Any, ...]  # where the bad character goes (appended to a value, prefixed to a Key's name)
    loc: tuple[str, ...]  # where the 422 must say it is
    headers: dict[str, str] = field(default_factory=dict)
    message: bool = True  # the error's message says why (a pattern's own message does not)


def inject(body: Any, at: tuple[Any, ...], bad: str) -> Any:
    body = copy.deepcopy(body)
    node = body
    for step in at[:-1]:
        node = node[step]
    last = at[-1]
    if isinstance(last, Key):
        node[bad + last.name] = node.pop(last.name)
    else:
        node[last] = node[last] + bad
    return body


# ---- valid bodies (the cases put one bad character into one place of them) ----

EMAIL_TEMPLATE = {"name": "welcome", "subject": "Hi", "preheader": "Three things", "html": "<p>Hi</p>", "text": "Hi",
                  "locales": {"fr": {"subject": "Salut", "preheader": "Trois choses", "html": "<p>Salut</p>",
                                     "text": "Salut"}}}
PUSH_TEMPLATE = {"name": "shipped", "channel": "push", "subject": "Shipped", "text": "On its way",
                 "deep_link": "acme://orders/1", "image": "https://cdn.example.com/box.png",
                 "locales": {"fr": {"subject": "Expédié", "text": "En route", "deep_link": "acme://orders/2",
                                    "image": "https://cdn.example.com/boite.png"}}}
SMS_TEMPLATE = {"name": "code", "channel": "sms", "text": "Your code is 1234"}
JOURNEY = {
    "name": "journey",
    "trigger": {"type": "event", "event": "Signed Up", "where": [{"property": "plan", "value": "pro"}]},
    "steps": [
        {"id": "wait", "type": "wait_for_event", "event": "Order Completed", "timeout_seconds": 60,
         "match": {"property": "cart_id", "trigger_property": "cart_id"}, "on_event": "branch", "on_timeout": "branch"},
        {"id": "branch", "type": "branch", "condition": {"type": "trait", "trait": "plan", "value": "pro"},
         "yes": "split", "no": "since"},
        {"id": "since", "type": "branch", "condition": {"type": "performed_since_entry", "event": "Viewed"},
         "yes": "split", "no": "split"},
        {"id": "split", "type": "split", "variants": [{"name": "A", "weight": 1, "next": "update"},
                                                      {"name": "B", "weight": 1, "next": "update"}]},
        {"id": "update", "type": "update_attribute", "traits": {"onboarded": "yes"}, "next": "hook"},
        {"id": "hook", "type": "webhook", "url": "https://example.com/hook", "next": "renewal"},
        {"id": "renewal", "type": "wait_until_attribute", "trait": "renewal_date", "next": "send",
         "on_missing": "send"},
        {"id": "send", "type": "send", "template_id": "{template}"},
    ],
    "goal": {"event": "Order Completed"},
    "exit_on": ["Unsubscribed"],
    "topic": "offers",
}
BROADCAST = {"name": "weekly", "template_id": "{template}",
             "trigger": {"type": "schedule", "segment_id": str(uuid.uuid4()), "cron": "0 9 * * 1",
                         "timezone": "Europe/Paris"}}
TRIGGER = {"user": "u-1", "data": {"reset_url": "https://example.com/reset/abc"}, "idempotency_key": "reset-1"}
LOYALTY = {"config": {"earn": [{"event": "Order Completed", "per_unit": 1, "name": "orders"}],
                      "tiers": [{"name": "Gold", "threshold": 0, "benefits": ["free shipping"]}],
                      "badges": [{"name": "Explorer", "events": ["Project Created"]}]}}
REFERRAL = {"config": {"landing_url": "https://acme.example/join", "signup_events": ["Signed Up"],
                       "qualifying": {"event": "Order Completed",
                                      "where": [{"property": "total", "op": "gt", "value": 10}]}}}
MESSAGES = {
    "email": {"idempotency_key": "m-email", "to": "ada@example.com", "from": "Acme <news@acme.example>",
              "subject": "Hi", "html": "<p>Hi</p>", "text": "Hi", "topic": "offers",
              "metadata": {"userId": "u-1", "order": {"id": "o-1"}}},
    "sms": {"idempotency_key": "m-sms", "channel": "sms", "to": "+14155550100", "text": "Your code is 1234"},
    "push": {"idempotency_key": "m-push", "channel": "push", "to": "user-1", "subject": "Shipped",
             "text": "On its way", "data": {"deep_link": "acme://orders/1"}},
    "webhook": {"idempotency_key": "m-hook", "channel": "webhook", "to": "https://example.com/hook",
                "data": {"order": {"id": "o-1"}}},
}
WEB_PUSH = {"user": "u-1", "platform": "web", "subscription": {
    "endpoint": "https://fcm.googleapis.com/fcm/send/abc", "keys": {"p256dh": "B" * 87, "auth": "A" * 22}}}
OPT_IN = {"email": "ada@example.com", "topics": ["offers"], "user_id": "u-1", "anonymous_id": "a-1"}


def _template_cases() -> list[Case]:
    where = {
        "email": (EMAIL_TEMPLATE, ["name", "subject", "preheader", "html", "text", ("locales", Key("fr")),
                                   ("locales", "fr", "subject"), ("locales", "fr", "preheader"),
                                   ("locales", "fr", "html"), ("locales", "fr", "text")]),
        "push": (PUSH_TEMPLATE, ["subject", "text", "deep_link", "image", ("locales", "fr", "deep_link"),
                                 ("locales", "fr", "image")]),
        "sms": (SMS_TEMPLATE, ["name", "text"]),
    }
    cases = []
    for channel, (body, places) in where.items():
        for place in places:
            at = place if isinstance(place, tuple) else (place,)
            loc = ("body", *(str(p) for p in at if not isinstance(p, Key)))
            dotted = ".".join(p.name + "-key" if isinstance(p, Key) else str(p) for p in at)
            cases.append(Case(f"create-{channel}-template-{dotted}", "campaign", "POST", "/v1/templates", body, at,
                              loc))
            cases.append(Case(f"replace-{channel}-template-{dotted}", "campaign", "PUT", "/v1/templates/{template}",
                              body, at, loc))
    return cases


def _journey_cases() -> list[Case]:
    places = [
        (("name",), ("name",)),
        (("trigger", "event"), ("trigger", "event")),
        (("trigger", "where", 0, "property"), ("trigger", "where", "0", "property")),
        (("trigger", "where", 0, "value"), ("trigger", "where", "0", "value")),
        (("steps", 0, "event"), ("steps", "0", "event")),
        (("steps", 0, "match", "property"), ("steps", "0", "match", "property")),
        (("steps", 0, "match", "trigger_property"), ("steps", "0", "match", "trigger_property")),
        (("steps", 1, "condition", "trait"), ("steps", "1", "condition", "trait")),
        (("steps", 1, "condition", "value"), ("steps", "1", "condition", "value")),
        (("steps", 2, "condition", "event"), ("steps", "2", "condition", "event")),
        (("steps", 3, "variants", 0, "name"), ("steps", "3", "variants", "0", "name")),
        (("steps", 4, "traits", "onboarded"), ("steps", "4", "traits")),
        (("steps", 4, "traits", Key("onboarded")), ("steps", "4", "traits")),
        (("steps", 5, "url"), ("steps", "5", "url")),
        (("steps", 6, "trait"), ("steps", "6", "trait")),
        (("goal", "event"), ("goal", "event")),
        (("exit_on", 0), ("exit_on",)),
        (("topic",), ("topic",)),
    ]
    cases = []
    for at, loc in places:
        dotted = ".".join(p.name + "-key" if isinstance(p, Key) else str(p) for p in at)
        cases.append(Case(f"create-campaign-{dotted}", "campaign", "POST", "/v1/campaigns", JOURNEY, at, ("body", *loc)))
        cases.append(Case(f"edit-campaign-{dotted}", "campaign", "PUT", "/v1/campaigns/{campaign}", JOURNEY, at,
                          ("body", *loc)))
    for at, loc in ((("trigger", "cron"), ("trigger", "cron")),
                    (("trigger", "timezone"), ("trigger", "timezone")),
                    (("template_id",), ("template_id",))):
        cases.append(Case(f"create-broadcast-{'.'.join(at)}", "campaign", "POST", "/v1/campaigns", BROADCAST, at,
                          ("body", *loc)))
    return cases


def _message_cases() -> list[Case]:
    places = {
        "email": [("idempotency_key",), ("to",), ("from",), ("subject",), ("html",), ("text",), ("topic",),
                  ("metadata", "userId"), ("metadata", "order", "id"), ("metadata", Key("userId"))],
        "sms": [("to",), ("text",)],
        "push": [("to",), ("subject",), ("text",), ("data", "deep_link")],
        "webhook": [("to",), ("data", "order", "id"), ("data", Key("order"))],
    }
    cases = []
    for channel, ats in places.items():
        for at in ats:
            dotted = ".".join(p.name + "-key" if isinstance(p, Key) else str(p) for p in at)
            cases.append(Case(f"send-{channel}-{dotted}", "delivery", "POST", "/v1/messages", MESSAGES[channel], at,
                              ("body", str(at[0]))))
    return cases


MESSAGE_CASES = _message_cases()
CASES = [
    *_template_cases(),
    Case("snippet-content", "campaign", "PUT", "/v1/snippets/footer", {"content": "<p>Acme</p>"}, ("content",),
         ("body", "content")),
    Case("preview-data", "campaign", "POST", "/v1/templates/{template}/preview", {"data": {"k": "v"}},
         ("data", "k"), ("body", "data")),
    Case("preview-data-key", "campaign", "POST", "/v1/templates/{template}/preview", {"data": {"k": "v"}},
         ("data", Key("k")), ("body", "data")),
    Case("preview-locale", "campaign", "POST", "/v1/templates/{template}/preview", {"locale": "fr"}, ("locale",),
         ("body", "locale")),
    Case("test-send-to", "campaign", "POST", "/v1/templates/{template}/test", {"to": "me@example.com"}, ("to",),
         ("body", "to")),
    Case("test-send-data", "campaign", "POST", "/v1/templates/{template}/test",
         {"to": "me@example.com", "data": {"k": "v"}}, ("data", "k"), ("body", "data")),
    *_journey_cases(),
    Case("trigger-data", "campaign", "POST", "/v1/campaigns/{api_campaign}/trigger", TRIGGER, ("data", "reset_url"),
         ("body", "data")),
    Case("trigger-data-key", "campaign", "POST", "/v1/campaigns/{api_campaign}/trigger", TRIGGER,
         ("data", Key("reset_url")), ("body", "data")),
    Case("trigger-idempotency-key", "campaign", "POST", "/v1/campaigns/{api_campaign}/trigger", TRIGGER,
         ("idempotency_key",), ("body", "idempotency_key")),
    Case("trigger-user", "campaign", "POST", "/v1/campaigns/{api_campaign}/trigger", TRIGGER, ("user",),
         ("body", "user"), message=False),  # a Ref's pattern refuses a NUL first
    Case("coupon-codes", "campaign", "PUT", "/v1/coupon-pools/welcome", {"codes": ["WELCOME-1"]}, ("codes", 0),
         ("body", "codes")),
    *[Case(f"loyalty-{'.'.join(str(p) for p in at[1:])}", "campaign", "PUT", "/v1/programs/loyalty", LOYALTY, at,
           ("body", *(str(p) for p in loc)))
      for at, loc in ((("config", "earn", 0, "event"), ("config", "earn", 0, "event")),
                      (("config", "earn", 0, "name"), ("config", "earn", 0, "name")),
                      (("config", "tiers", 0, "name"), ("config", "tiers", 0, "name")),
                      (("config", "tiers", 0, "benefits", 0), ("config", "tiers", 0, "benefits")),
                      (("config", "badges", 0, "events", 0), ("config", "badges", 0, "events")))],
    *[Case(f"referral-{'.'.join(str(p) for p in at[1:])}", "campaign", "PUT", "/v1/programs/referral", REFERRAL, at,
           ("body", *(str(p) for p in loc)))
      for at, loc in ((("config", "landing_url"), ("config", "landing_url")),
                      (("config", "signup_events", 0), ("config", "signup_events")),
                      (("config", "qualifying", "event"), ("config", "qualifying", "event")),
                      (("config", "qualifying", "where", 0, "property"),
                       ("config", "qualifying", "where", 0, "property")))],
    Case("referral-invite-idempotency-key", "campaign", "POST", "/v1/referral/invites",
         {"user": "u-1", "channel": "email", "idempotency_key": "invite-1"}, ("idempotency_key",),
         ("body", "idempotency_key")),
    Case("loyalty-adjust-reason", "campaign", "POST", "/v1/loyalty/members/u-1/adjust",
         {"points": 5, "reason": "goodwill"}, ("reason",), ("body", "reason"), headers={"Idempotency-Key": "adj-1"}),
    Case("loyalty-redeem-reason", "campaign", "POST", "/v1/loyalty/members/u-1/redeem",
         {"points": 5, "reason": "voucher"}, ("reason",), ("body", "reason"), headers={"Idempotency-Key": "red-1"}),
    *MESSAGE_CASES,
    *[Case(f"suppress-{channel}-address", "delivery", "POST", "/v1/suppressions",
           {"channel": channel, "address": address}, ("address",), ("body", "address"))
      for channel, address in (("email", "ada@example.com"), ("sms", "+14155550100"), ("push", "device-token-1"))],
    Case("device-user", "delivery", "POST", "/v1/devices", {"user": "u-1", "platform": "android", "token": "t" * 20},
         ("user",), ("body", "user")),
    Case("device-token", "delivery", "POST", "/v1/devices", {"user": "u-1", "platform": "android", "token": "t" * 20},
         ("token",), ("body", "token")),
    Case("device-web-push-endpoint", "delivery", "POST", "/v1/devices", WEB_PUSH, ("subscription", "endpoint"),
         ("body", "subscription", "endpoint")),
    Case("device-web-push-auth", "delivery", "POST", "/v1/devices", WEB_PUSH, ("subscription", "keys", "auth"),
         ("body", "subscription", "keys", "auth")),
    *[Case(f"opt-in-{at[0]}", "delivery", "POST", "/v1/opt-ins", OPT_IN, at, ("body", at[0]))
      for at in (("email",), ("topics", 0), ("user_id",), ("anonymous_id",))],
]
HEADER_CASES = [  # a NUL only: a header cannot carry a lone surrogate
    Case("trigger", "campaign", "POST", "/v1/campaigns/{api_campaign}/trigger", {"user": "u-1"}, (),
         ("header", "Idempotency-Key"), headers={"Idempotency-Key": "reset-1\x00"}),
    Case("loyalty-adjust", "campaign", "POST", "/v1/loyalty/members/u-1/adjust", {"points": 5, "reason": "r"}, (),
         ("header", "Idempotency-Key"), headers={"Idempotency-Key": "adj-1\x00"}),
    Case("loyalty-redeem", "campaign", "POST", "/v1/loyalty/members/u-1/redeem", {"points": 5}, (),
         ("header", "Idempotency-Key"), headers={"Idempotency-Key": "red-1\x00"}),
    Case("send", "delivery", "POST", "/v1/messages", MESSAGES["email"], (), ("header", "Idempotency-Key"),
         headers={"Idempotency-Key": "m-email\x00"}),
    Case("remove-suppression", "delivery", "DELETE", "/v1/suppressions/push/device-token-1%00", {}, (),
         ("path", "address")),
    Case("remove-device", "delivery", "DELETE", "/v1/devices/device-token-1%00", {}, (), ("path", "token")),
]


# ---- helpers ----

_TABLES: dict[str, list[str]] = {}


async def _fingerprint(sessionmaker, ws) -> dict[str, str]:
    """What the workspace holds in campaign's and delivery's tables (row by row), to show nothing changed."""
    async with sessionmaker() as s:
        if not _TABLES:
            rows = await s.execute(text(
                "select c.table_schema || '.' || c.table_name from information_schema.columns c "
                "join information_schema.tables t using (table_schema, table_name) "
                "where c.table_schema in ('campaign', 'delivery') and c.column_name = 'workspace_id' "
                "and t.table_type = 'BASE TABLE' order by 1"))
            _TABLES["all"] = list(rows.scalars())
        out = {}
        for table in _TABLES["all"]:
            out[table] = (await s.execute(text(
                f"select md5(coalesce(string_agg(x::text, ',' order by x::text), '')) from {table} x "  # noqa: S608
                "where workspace_id = :ws"), {"ws": ws})).scalar_one()
        return out


class Setup:
    def __init__(self, apps, workspace):
        self.apps = apps
        self.h = {"Authorization": f"Bearer {workspace.secret_key}"}
        self.ids: dict[str, str] = {}

    async def post(self, service: str, path: str, body: dict) -> dict:
        r = await self.apps[service].post(path, headers=self.h, json=body)
        assert r.status_code in (200, 201), r.text
        return r.json()

    async def need(self, path: str, body: Any = None) -> dict[str, str]:
        """Create what the path or the body names: {template}, {campaign}, {api_campaign}."""
        path += json.dumps(body)
        if "{template}" in path or "{campaign}" in path or "{api_campaign}" in path:
            self.ids["template"] = (await self.post("campaign", "/v1/templates", {
                "name": "existing", "subject": "Hi", "text": "Hi"}))["id"]
        if "{campaign}" in path:
            self.ids["campaign"] = (await self.post("campaign", "/v1/campaigns", {
                "name": "existing", "trigger": {"type": "event", "event": "E"},
                "template_id": self.ids["template"]}))["id"]
        if "{api_campaign}" in path:
            self.ids["api_campaign"] = (await self.post("campaign", "/v1/campaigns", {
                "name": "api", "trigger": {"type": "api"}, "template_id": self.ids["template"]}))["id"]
        return self.ids


def _fill(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, ids) for v in node]
    return node.format(**ids) if isinstance(node, str) and node.startswith("{") and node.endswith("}") else node


# ---- the write APIs ----

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_write_apis_refuse_text_postgresql_cannot_hold_naming_the_field(apps, workspace, sessionmaker,
                                                                             case) -> None:
    setup = Setup(apps, workspace)
    ids = await setup.need(case.path, case.body)
    body, path = _fill(case.body, ids), case.path.format(**ids)
    before = await _fingerprint(sessionmaker, workspace.workspace_id)
    for kind, bad in BAD.items():
        r = await apps[case.service].request(case.method, path, content=json.dumps(inject(body, case.at, bad)),
                                             headers={**setup.h, "content-type": "application/json", **case.headers})
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (kind, r.text)
        errors = r.json()["errors"]
        assert [tuple(e["loc"]) for e in errors] == [case.loc], (kind, r.text)
        if case.message:
            assert WHY[kind] in errors[0]["msg"], (kind, r.text)
    assert await _fingerprint(sessionmaker, workspace.workspace_id) == before  # nothing stored, nothing changed


@pytest.mark.parametrize("case", HEADER_CASES, ids=lambda c: c.id)
async def test_headers_and_paths_with_a_nul_are_a_422_naming_them(apps, workspace, sessionmaker, case) -> None:
    setup = Setup(apps, workspace)
    ids = await setup.need(case.path, case.body)
    await setup.post("delivery", "/v1/suppressions", {"channel": "push", "address": "device-token-1"})
    before = await _fingerprint(sessionmaker, workspace.workspace_id)
    r = await apps[case.service].request(case.method, case.path.format(**ids), headers={**setup.h, **case.headers},
                                         **({"json": _fill(case.body, ids)} if case.method != "DELETE" else {}))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert [tuple(e["loc"]) for e in r.json()["errors"]] == [case.loc], r.text
    assert await _fingerprint(sessionmaker, workspace.workspace_id) == before


@pytest.mark.parametrize(("service", "path", "body", "at", "where"), [
    ("ingest", "/v1/privacy/erasure", {"user": "u-1"}, ("user",), "loc"),
    ("segment", "/v1/segments/preview", {"definition": {"type": "performed", "event": "Signed Up"}},
     ("definition", "event"), "at"),
    ("segment", "/v1/profiles/search", {"definition": {"type": "trait", "trait": "plan", "value": "pro"}},
     ("definition", "trait"), "at"),
], ids=["erasure-user", "preview-event", "search-trait"])
async def test_ingest_erasures_and_segment_definitions_name_the_field(apps, workspace, service, path, body, at,
                                                                       where) -> None:
    """An erasure's ``user`` with a NUL was the database's 422 naming nothing; a definition's text with a length
    or a pattern said "unable to parse raw data as a unicode string" for a lone surrogate."""
    h = {"Authorization": f"Bearer {workspace.secret_key}", "content-type": "application/json"}
    for kind, bad in BAD.items():
        r = await apps[service].post(path, headers=h, content=json.dumps(inject(body, at, bad)))
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, (kind, r.text)
        error = r.json()["errors"][0]
        if where == "loc":
            assert error["loc"] == ["body", *at], (kind, r.text)
        else:  # definition.performed.event: the node's type names the branch
            assert error["at"].startswith("definition.") and error["at"].endswith("." + at[-1]), (kind, r.text)
        assert WHY[kind] in error["msg"], (kind, r.text)


@pytest.mark.parametrize("case", MESSAGE_CASES, ids=lambda c: c.id)
async def test_a_batch_marks_such_a_message_invalid_and_stores_the_others(apps, workspace, sessionmaker,
                                                                        case) -> None:
    """A lone surrogate in a message's key made the whole batch a 500 (its answer echoed the key, which JSON
    cannot encode); one in a body, or a NUL, failed the batch's transaction: no message was stored."""
    h = {"Authorization": f"Bearer {workspace.secret_key}", "content-type": "application/json"}
    for kind, bad in BAD.items():
        good = {**MESSAGES["email"], "idempotency_key": f"good-{kind}"}
        r = await apps["delivery"].post("/v1/messages/batch", headers=h, content=json.dumps(
            {"messages": [inject(case.body, case.at, bad), good]}))
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        assert first["result"] == "invalid" and first["message"] is None, r.text
        assert first["error"].startswith(f"{case.loc[1]}: ") and WHY[kind] in first["error"], r.text
        expected_key = None if case.at == ("idempotency_key",) else case.body["idempotency_key"]
        assert first["idempotency_key"] == expected_key
        assert second["result"] == "queued" and second["idempotency_key"] == f"good-{kind}"
    async with sessionmaker() as s:
        keys = (await s.execute(text("select idempotency_key from delivery.messages where workspace_id = :ws "
                                     "order by 1"), {"ws": workspace.workspace_id})).scalars().all()
    assert keys == ["good-nul", "good-surrogate"]


async def test_the_same_bodies_without_the_bad_character_are_accepted(apps, workspace) -> None:
    """The matrix's bodies are valid as they stand: what it refuses is the character, nothing else."""
    setup = Setup(apps, workspace)
    ids = await setup.need("{template}{campaign}{api_campaign}")
    h = setup.h
    for body in (EMAIL_TEMPLATE, PUSH_TEMPLATE, SMS_TEMPLATE):
        assert (await apps["campaign"].post("/v1/templates", headers=h, json=body)).status_code == 201
    for body in (JOURNEY,):
        r = await apps["campaign"].post("/v1/campaigns", headers=h, json=_fill(body, ids))
        assert r.status_code == 201, r.text
    for path, body in (("/v1/programs/loyalty", LOYALTY), ("/v1/programs/referral", REFERRAL)):
        assert (await apps["campaign"].put(path, headers=h, json=body)).status_code == 200
    for body in MESSAGES.values():
        r = await apps["delivery"].post("/v1/messages", headers=h, json=body)
        assert r.status_code == 202, r.text
    r = await apps["delivery"].post("/v1/opt-ins", headers=h, json=OPT_IN)
    assert r.status_code == 202, r.text


# ---- provider webhooks ----

SID, TOKEN = "AC" + "0" * 32, "test-auth-token"


@pytest.fixture
def provider_settings(apps, settings):
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    cfg = settings.model_copy(update={"twilio_account_sid": SID, "twilio_auth_token": TOKEN,
                                      "twilio_from": "+14155550199", "delivery_public_url": "https://hooks.example.test",
                                      "sendgrid_webhook_public_key": public})
    app = apps["delivery"]._transport.app  # type: ignore[attr-defined]
    app.state.settings = cfg
    try:
        yield cfg, key
    finally:
        app.state.settings = settings


async def _sent_message(apps, sessionmaker, workspace, body: dict, provider_id: str | None = None) -> str:
    r = await apps["delivery"].post("/v1/messages", headers={"Authorization": f"Bearer {workspace.secret_key}"},
                                    json=body)
    assert r.status_code == 202, r.text
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update delivery.messages set status = 'sent', provider_message_id = :p where id = :id"),
                        {"p": provider_id, "id": r.json()["id"]})
    return r.json()["id"]


async def _status(apps, workspace, message_id: str) -> str:
    r = await apps["delivery"].get(f"/v1/messages/{message_id}",
                                   headers={"Authorization": f"Bearer {workspace.secret_key}"})
    return r.json()["status"]


async def test_twilio_webhooks_ignore_values_postgresql_cannot_hold(apps, workspace, sessionmaker,
                                                                  provider_settings) -> None:
    """A NUL (form or JSON) was the database's 422 and a lone surrogate (JSON) a 500. No Twilio report holds
    one, so it names nothing we sent: ignored (204, or TwiML without a reply), nothing stored or changed."""
    cfg, _ = provider_settings
    ws = workspace.workspace_id
    sid = f"SM{uuid.uuid4().hex}"
    mid = await _sent_message(apps, sessionmaker, workspace, {
        "idempotency_key": "sms-1", "channel": "sms", "to": "+14155550100", "text": "Code"}, sid)
    before = await _fingerprint(sessionmaker, ws)

    async def call(route: str, params: dict[str, str], as_json: bool):
        path = f"/webhooks/twilio/{ws}/{route}"
        if not as_json:
            return await apps["delivery"].post(path, data=params, headers={
                "X-Twilio-Signature": sms.signature(TOKEN, cfg.public_url + path, params)})
        raw = json.dumps(params).encode()
        url = f"{path}?bodySHA256={hashlib.sha256(raw).hexdigest()}"
        return await apps["delivery"].post(url, content=raw, headers={
            "X-Twilio-Signature": sms.signature(TOKEN, cfg.public_url + url, ()), "content-type": "application/json"})

    status = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30003", "AccountSid": SID}
    inbound = {"MessageSid": f"SM{uuid.uuid4().hex}", "From": "+14155550100", "To": "+14155550199", "Body": "STOP",
               "AccountSid": SID}
    for kind, bad in BAD.items():
        for as_json in ((True,) if kind == "surrogate" else (False, True)):  # a form cannot carry a surrogate
            for name in ("MessageSid", "ErrorCode"):
                r = await call("status", {**status, name: status[name] + bad}, as_json)
                assert r.status_code == 204, (kind, name, r.text)
            for name in ("From", "MessageSid"):
                r = await call("inbound", {**inbound, name: inbound[name] + bad}, as_json)
                assert r.status_code == 200 and "<Message>" not in r.text, (kind, name, r.text)
    assert await _fingerprint(sessionmaker, ws) == before
    assert await _status(apps, workspace, mid) == "sent"
    r = await call("status", {**status, "MessageStatus": "delivered"}, False)  # a proper report still applies
    assert r.status_code == 204 and await _status(apps, workspace, mid) == "delivered"


async def test_sendgrid_skips_events_postgresql_cannot_hold_and_applies_the_rest(apps, workspace, sessionmaker,
                                                                               provider_settings) -> None:
    """One such event made the whole batch a 422 (a NUL) or a 500 (a lone surrogate), so SendGrid retried the
    batch, its good events too, for a day; now that event is skipped and the batch answered 204."""
    _, key = provider_settings
    ws = workspace.workspace_id
    ids = [await _sent_message(apps, sessionmaker, workspace, {
        "idempotency_key": f"sg-{i}", "to": f"sg-{i}@example.com", "subject": "Hi", "text": "Hi"}) for i in range(3)]
    events = [
        {"event": "bounce", "type": "bounce", "email": "sg-0@example.com", "tenure_message_id": ids[0],
         "reason": "550 unknown user\x00"},
        {"event": "spamreport", "email": "sg-1@example.com\ud800", "tenure_message_id": ids[1]},
        {"event": "delivered", "email": "sg-2@example.com", "tenure_message_id": ids[2]},
    ]
    raw, ts = json.dumps(events).encode(), str(int(time.time()))
    signature = base64.b64encode(key.sign(ts.encode() + raw, ec.ECDSA(hashes.SHA256()))).decode()
    r = await apps["delivery"].post(f"/webhooks/sendgrid/{ws}/events", content=raw, headers={
        "X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        "Content-Type": "application/json"})
    assert r.status_code == 204, r.text
    assert [await _status(apps, workspace, i) for i in ids] == ["sent", "sent", "delivered"]
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from delivery.suppressions where workspace_id = :ws"),
                                {"ws": ws})).scalar_one() == 0


# ---- ingest's tracking API ----

async def _events(sessionmaker, ws) -> list[dict]:
    async with sessionmaker() as s:
        rows = await s.execute(text("select event, properties, context from ingest.events where workspace_id = :ws "
                                    "order by seq"), {"ws": ws})
        return [dict(r._mapping) for r in rows]


async def test_tracking_refuses_a_message_with_a_nul_and_stores_lone_surrogates_as_replacement_characters(
        apps, workspace, sessionmaker) -> None:
    """Anywhere in a message — properties, traits, context, names, nested keys — a NUL is that message's
    documented ``nul`` rejection and a lone surrogate is stored as U+FFFD; the batch's other messages are
    stored. A NUL in the batch-level context (merged into every message) failed the whole batch in the
    database, a 422 with no ``rejected``; now each message it reaches is refused as ``nul``."""
    auth = (workspace.write_key, "")
    ct = {"content-type": "application/json"}
    ws = workspace.workspace_id
    nul = [  # each a message with a NUL somewhere
        {"type": "track", "userId": "t", "event": "E", "properties": {"a": {"b\x00": 1}}},
        {"type": "track", "userId": "t", "event": "E", "properties": {"list": [{"x": "y\x00"}]}},
        {"type": "identify", "userId": "t", "traits": {"plan": "pro\x00"}},
        {"type": "identify", "userId": "t", "traits": {"nested": {"k\x00": "v"}}},
        {"type": "track", "userId": "t", "event": "E", "context": {"locale": "fr\x00"}},
        {"type": "track", "userId": "t", "event": "E\x00"},
        {"type": "page", "userId": "t", "name": "Home\x00"},
        {"type": "group", "userId": "t", "groupId": "g\x00"},
        {"type": "alias", "userId": "t", "previousId": "p\x00"},
    ]
    surrogate = [
        {"type": "track", "userId": "t", "event": "Lone \ud800", "properties": {"k\udc00": {"\ud83d": "v\ud83d"}},
         "context": {"page": {"title": "x\ud800"}}},
    ]
    ok = {"type": "track", "userId": "t", "event": "Fine", "properties": {"emoji": "\U0001F600"}}
    r = await apps["ingest"].post("/v1/batch", auth=auth, headers=ct,
                                  content=json.dumps({"batch": [*nul, ok, *surrogate]}))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2
    assert [(x["index"], x["errors"][0]["type"]) for x in r.json()["rejected"]] == [(i, "nul") for i in range(len(nul))]
    stored = await _events(sessionmaker, ws)
    assert [e["event"] for e in stored] == ["Fine", "Lone \ufffd"]
    assert stored[1]["properties"] == {"k\ufffd": {"\ufffd": "v\ufffd"}}
    assert stored[1]["context"]["page"] == {"title": "x\ufffd"}

    r = await apps["ingest"].post("/v1/batch", auth=auth, headers=ct, content=json.dumps({
        "batch": [{"type": "track", "userId": "t", "event": "A"}, {"type": "track", "userId": "t", "event": "B"}],
        "context": {"library": {"name": "lib\x00"}}}))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert [(x["index"], x["errors"][0]["type"]) for x in r.json()["rejected"]] == [(0, "nul"), (1, "nul")]
    r = await apps["ingest"].post("/v1/batch", auth=auth, headers=ct, content=json.dumps({  # its own wins
        "batch": [{"type": "track", "userId": "t", "event": "C", "context": {"library": {"name": "own"}}},
                  {"type": "track", "userId": "t", "event": "D"}],
        "context": {"library": {"name": "lib\x00"}}}))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert [(x["index"], x["errors"][0]["type"]) for x in r.json()["rejected"]] == [(1, "nul")]
    assert [e["event"] for e in await _events(sessionmaker, ws)] == ["Fine", "Lone \ufffd", "C"]


# ---- tenure apply ----

@pytest.mark.parametrize(("doc", "says"), [
    ('templates:\n  - name: "welcome\\0"\n    subject: Hi\n    text: Hi\n',
     "template 'welcome\\x00': [\"name\"] contains a NUL character"),
    ('templates:\n  - name: welcome\n    subject: "Hi \\ud800"\n    text: Hi\n',
     "template 'welcome': [\"subject\"] contains a lone surrogate"),
    ('templates:\n  - name: welcome\n    subject: Hi\n    locales: {"fr\\x00": {subject: Salut}}\n',
     "template 'welcome': the key [\"locales\"][\"fr\\u0000\"] contains a NUL character"),
    ('campaigns:\n  - name: c\n    trigger: {type: event, event: "Signed Up\\0"}\n    steps: [{id: s, type: exit}]\n',
     "campaign 'c': [\"trigger\"][\"event\"] contains a NUL character"),
    ('campaigns:\n  - name: c\n    trigger: {type: api}\n    steps: [{id: u, type: update_attribute, traits: '
     '{plan: "pro\\uD800"}}]\n', "campaign 'c': [\"steps\"][0][\"traits\"][\"plan\"] contains a lone surrogate"),
    ('segments:\n  - name: s\n    definition: {type: trait, trait: plan, value: "pro\\0"}\n',
     "segment 's': [\"definition\"][\"value\"] contains a NUL character"),
    ('programs:\n  - name: loyalty\n    config: {tiers: [{name: "Gold\\ud800", threshold: 0}]}\n',
     "program 'loyalty': [\"config\"][\"tiers\"][0][\"name\"] contains a lone surrogate"),
    # YAML's .inf / .nan are no JSON numbers: the filter was saved without its value, and re-applied every time
    ('campaigns:\n  - name: c\n    trigger: {type: event, event: E, where: [{property: price, op: lt, value: .inf}]}'
     '\n    steps: [{id: s, type: exit}]\n', "campaign 'c': [\"trigger\"][\"where\"][0][\"value\"] is inf"),
    ('segments:\n  - name: s\n    definition: {type: trait, trait: score, op: gt, value: .nan}\n',
     "segment 's': [\"definition\"][\"value\"] is nan"),
], ids=["template-name", "template-subject", "locale-key", "campaign-trigger", "campaign-traits", "segment-value",
        "program-tier", "campaign-inf", "segment-nan"])
def test_apply_refuses_the_file_before_applying_anything(doc, says) -> None:
    """YAML escapes make both characters (``"\\0"``, ``"\\x00"``, ``"\\ud800"``). The services refused such an
    item only when `apply` reached it, after the items before it were applied (a template with a lone surrogate
    was a 500); now the file is refused as it is read, naming the item and the place."""
    with pytest.raises(resources.ResourceError) as refused:
        resources.load(doc)
    assert says in str(refused.value)


def test_tenure_apply_says_which_item_and_field_and_exits_1(tmp_path) -> None:
    path = tmp_path / "tenure.yaml"
    path.write_text('templates:\n  - name: fine\n    subject: Hi\n    text: Hi\n'
                    'campaigns:\n  - name: reset\n    trigger: {type: api}\n    exit_on: ["Done\\ud800"]\n'
                    '    steps: [{id: s, type: send, template: fine}]\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TENURE_SEGMENT_URL": "http://127.0.0.1:9",
           "TENURE_CAMPAIGN_URL": "http://127.0.0.1:9"}  # never reached: the file is refused first
    r = subprocess.run([sys.executable, "-c", "from services.cli import app; app()", "apply", "-f", str(path),
                        "--key", "sk_unused"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    out = " ".join(r.stderr.split())
    assert "error: campaign 'reset': [\"exit_on\"][0] contains a lone surrogate" in out, out
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"1e400"])
async def test_numbers_json_cannot_hold_are_a_422_naming_the_field(apps, workspace, number) -> None:
    """Python's JSON parser reads NaN, Infinity and 1e400 (as a float no JSON can carry): a trigger's data stored
    them as null, so the email went out with a blank where the order number belonged."""
    setup = Setup(apps, workspace)
    ids = await setup.need("{api_campaign}")
    headers = {**setup.h, "content-type": "application/json"}
    r = await apps["campaign"].post(f"/v1/campaigns/{ids['api_campaign']}/trigger", headers=headers,
                                    content=b'{"user": "u-nan", "data": {"order": {"total": ' + number + b'}}}')
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert "data" in r.text and "not a number JSON holds" in r.text
    r = await apps["delivery"].post("/v1/messages", headers=headers, content=(
        b'{"idempotency_key": "nan-1", "to": "nan@example.com", "subject": "S", "text": "T", "metadata": '
        b'{"score": ' + number + b'}}'))
    assert r.status_code == 422 and "metadata" in r.text, r.text
