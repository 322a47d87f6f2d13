"""``tenure demo``: the six lifecycle campaigns of ``examples/lifecycle.yaml`` applied to a workspace, and
simulated users in several languages and time zones whose histories put them at every lifecycle stage,
so a person can watch the campaigns run in the dev inbox."""

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
        "loyal": [track("Signed Up", 90), *[track("Order Completed", d, **order) for d in (60, 30, 2)],
                  track("Tier Changed", 0, tier="Gold", points=1200)],
    }
    story = stories[p.story]
    # identified when last seen (an identify is activity too: "now" would make everyone active)
    ident = {"type": "identify", "userId": p.user_id, "timestamp": max(e["timestamp"] for e in story), "traits": {
        "email": f"{p.user_id}@demo.tenure.dev", "first_name": p.first_name, "locale": p.locale,
        "timezone": p.timezone}}
    return [ident, *story]


async def run(http: httpx.AsyncClient, api: resources.Api, ingest_url: str, write_key: str) -> list[str]:
    """Apply the example campaigns, then send every simulated person's history; returns what happened."""
    lines = []
    changes = await resources.plan(api, resources.load(EXAMPLE.read_text()))
    await resources.apply(api, changes)
    made = sum(c.action != "unchanged" for c in changes)
    lines.append(f"campaigns: {made} created or updated from {EXAMPLE.name}, {len(changes) - made} unchanged")
    now = datetime.now(UTC)
    for p in PEOPLE:
        resp = await http.post(f"{ingest_url}/v1/batch", auth=(write_key, ""), json={"batch": _events(p, now)})
        resp.raise_for_status()
        lines.append(f"{p.first_name:7} {p.locale:6} {p.timezone:17} {p.story}")
    return lines
