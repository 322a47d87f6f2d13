"""``tenure demo``: the six lifecycle campaigns (nine campaigns: referral is four) of ``examples/lifecycle.yaml``
(with its referral and loyalty programs) applied to a workspace, and simulated users in several languages and
time zones whose histories put them at every lifecycle stage, so a person can watch the campaigns run in the dev
inbox. Orders earn
loyalty points (Klaus reaches Gold), and a friend of Yuki's signs up with Yuki's referral code and orders:
Yuki gets points, the friend a coupon from the uploaded pool, each an email saying so. The dev workspace's own
welcome campaign is paused: Onboarding welcomes the same sign-ups."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from services import resources

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lifecycle.yaml"


@dataclass(frozen=True)
class Person:
    user_id: str
    first_name: str
    locale: str
    timezone: str
    story: str  # new | activated | engaged | at_risk | churned | promoter | loyal


PEOPLE = (
    Person("demo-ada", "Ada", "en-GB", "Europe/London", "new"),
    Person("demo-amelie", "Amélie", "fr-FR", "Europe/Paris", "activated"),
    Person("demo-jean", "Jean", "fr-CA", "America/Montreal", "engaged"),
    Person("demo-lena", "Lena", "de-DE", "Europe/Berlin", "at_risk"),
    Person("demo-grace", "Grace", "en-US", "America/New_York", "churned"),
    Person("demo-yuki", "Yuki", "en-US", "Asia/Tokyo", "promoter"),
    Person("demo-klaus", "Klaus", "de-AT", "Europe/Vienna", "loyal"),
)


def _events(p: Person, now: datetime) -> list[dict[str, Any]]:
    """A history that puts the person where their story says (timestamps are when things happened)."""
    def track(event: str, days_ago: float, **props: Any) -> dict[str, Any]:
        return {"type": "track", "userId": p.user_id, "event": event, "properties": props,
                "timestamp": (now - timedelta(days=days_ago)).isoformat()}

    order = {"revenue": 49.0}
    stories = {
        "new": [track("Signed Up", 0)],
        "activated": [track("Signed Up", 0), track("Project Created", 0)],
        "engaged": [track("Signed Up", 20), track("Order Completed", 10, **order), track("App Opened", 0)],
        "at_risk": [track("Signed Up", 80), track("Order Completed", 45, **order), track("App Opened", 40)],
        "churned": [track("Signed Up", 200), track("Order Completed", 150, **order), track("App Opened", 120)],
        "promoter": [track("Signed Up", 30), track("Order Completed", 5, **order),
                     track("NPS Survey Submitted", 0, score=10)],
        "loyal": [track("Signed Up", 90), *[track("Order Completed", d, **order) for d in (60, 30, 2)]],
    }
    story = stories[p.story]
    # identified when last seen
    ident = {"type": "identify", "userId": p.user_id, "timestamp": max(e["timestamp"] for e in story), "traits": {
        "email": f"{p.user_id}@demo.tenure.dev", "first_name": p.first_name, "locale": p.locale,
        "timezone": p.timezone}}
    return _numbered(p, [ident, *story])


def _numbered(p: Person, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each message with a messageId of its own, the same on every run: a second ``tenure demo`` stores nothing
    again (no second welcome, no second order making Grace a repeat buyer)."""
    return [{**m, "messageId": f"{p.user_id}-{i}"} for i, m in enumerate(messages)]


FRIEND = Person("demo-noah", "Noah", "en-US", "America/Chicago", "referred")
COUPONS = [f"WELCOME-{n:04d}" for n in range(1, 51)]


def _referred(friend: Person, code: str, now: datetime) -> list[dict[str, Any]]:
    """A friend signing up through the referrer's email link, then placing a first (qualifying) order."""
    at = (now - timedelta(minutes=5)).isoformat()
    return _numbered(friend, [
        {"type": "identify", "userId": friend.user_id, "timestamp": at, "traits": {
            "email": f"{friend.user_id}@demo.tenure.dev", "first_name": friend.first_name, "locale": friend.locale,
            "timezone": friend.timezone}},
        {"type": "track", "userId": friend.user_id, "event": "Signed Up", "timestamp": at,
         "context": {"page": {"url": "https://acme.example/join", "search": f"?ref={code}&channel=email"}}},
        {"type": "track", "userId": friend.user_id, "event": "Order Completed", "timestamp": now.isoformat(),
         "properties": {"order_id": f"{friend.user_id}-1", "revenue": 35.0}},
    ])


async def _pause_builtin_welcome(api: resources.Api) -> list[str]:
    """Pause `tenure dev`'s own welcome campaign: the example's Onboarding welcomes the same ``Signed Up``, and each
    sign-up got two welcome emails. Paused, not archived: resuming it brings it back."""
    from services.devserver import DEMO_WELCOME

    lines = []
    for camp in await api.all("campaign", "/v1/campaigns", "campaigns"):
        trigger = camp["trigger"]
        if camp["name"] == DEMO_WELCOME and camp["status"] == "active" and trigger.get("type") == "event" \
                and trigger.get("event") == "Signed Up":
            await api.call("POST", "campaign", f"/v1/campaigns/{camp['id']}/pause")
            lines.append(f"campaign {DEMO_WELCOME!r} (tenure dev's welcome) paused: Onboarding sends the welcome "
                         f"now, one per sign-up (POST /v1/campaigns/{camp['id']}/resume on campaign brings it back)")
    return lines


def holdouts() -> list[tuple[str, int]]:
    """The example's campaigns that hold a share of their entrants out (name, percent): those get no message."""
    campaigns = resources.load(EXAMPLE.read_text()).get("campaigns") or []
    return [(c["name"], c["entry"]["holdout_percent"]) for c in campaigns
            if (c.get("entry") or {}).get("holdout_percent")]


async def run(http: httpx.AsyncClient, api: resources.Api, ingest_url: str, write_key: str) -> list[str]:
    """Apply the example campaigns, then send every simulated person's history; returns what happened."""
    lines = []
    changes = await resources.plan(api, resources.load(EXAMPLE.read_text()))
    await resources.apply(api, changes)
    made = [c for c in changes if c.action != "unchanged"]
    counts = [(kind, sum(c.kind == kind for c in made)) for kind in ("programs", "templates", "segments", "campaigns")]
    what = ", ".join(f"{n} {kind if n != 1 else kind[:-1]}" for kind, n in counts if n) or "nothing"
    lines.append(f"{EXAMPLE.name}: {what} created or updated, {len(changes) - len(made)} unchanged")
    lines += await _pause_builtin_welcome(api)
    pool = await api.call("PUT", "campaign", "/v1/coupon-pools/welcome", json={"codes": COUPONS})
    lines.append(f"coupon pool welcome: {pool['available']} codes available")
    now = datetime.now(UTC)
    again = " (sent before: nothing new)"
    for p in PEOPLE:
        resp = await http.post(f"{ingest_url}/v1/batch", auth=(write_key, ""), json={"batch": _events(p, now)})
        resp.raise_for_status()
        lines.append(f"{p.first_name:7} {p.locale:6} {p.timezone:17} {p.story}"
                     f"{again if resp.json().get('accepted') == 0 else ''}")
    referrer = next(p for p in PEOPLE if p.story == "promoter")
    code = await api.call("POST", "campaign", "/v1/referral/codes", json={"user": referrer.user_id})
    resp = await http.post(f"{ingest_url}/v1/batch", auth=(write_key, ""),
                           json={"batch": _referred(FRIEND, code["code"], now)})
    resp.raise_for_status()
    lines.append(f"{FRIEND.first_name:7} {FRIEND.locale:6} {FRIEND.timezone:17} signed up with {referrer.first_name}'s "
                 f"referral link ({code['code']}) and ordered: both get their reward"
                 f"{again if resp.json().get('accepted') == 0 else ''}")
    return lines
