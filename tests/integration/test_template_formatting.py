"""Dates and amounts in a message as its recipient reads them, through the HTTP API: ``date`` in the recipient's
time zone (the profile's, else the workspace's, else UTC: as sending at a local time picks it) and ``money`` in
the locale the template's variant is chosen for, the same in real sends, previews and test sends (through
delivery into the SMTP sink); and campaign's own 422s naming places with ``loc``, as FastAPI's do."""

import uuid
from datetime import UTC, datetime

import pytest

from services.delivery import sending
from tests.integration.test_journeys import T0, World

# starts_at has an offset (18:00 UTC), naive has none (taken as UTC), day is a calendar day (no time, no zone)
PROPS = {"starts_at": "2026-12-03T19:00:00+01:00", "naive": "2026-12-03 18:00", "day": "2026-12-03",
         "total": 12.5}
WHEN = ("at {{ event.properties.starts_at | date: '%H:%M %Z' }}, naive {{ event.properties.naive | date: '%H:%M' }}, "
        "on {{ event.properties.day | date: '%d %b' }}, now {{ 'now' | date: '%Z' }}")


@pytest.fixture
def world(apps, workspace, sessionmaker, internal_client) -> World:
    return World(apps, workspace, sessionmaker, internal_client)


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@formatting.example"


def _received(mailbox, to: str) -> list[dict]:
    """What the SMTP sink received for ``to`` (delivery's worker sent it there)."""
    return [m for m in mailbox.messages if to in m["to"]]


def _now_zone(zone: str) -> str:
    from zoneinfo import ZoneInfo
    return datetime.now(UTC).astimezone(ZoneInfo(zone)).strftime("%Z")


async def test_dates_are_shown_in_the_recipients_time_zone(world, mailbox, settings) -> None:
    """``date`` showed every time in UTC (the server's clock): "your appointment is at 18:00" for someone in
    Paris whose appointment was at 19:00. Now: the profile's ``timezone`` trait, else (none, or not an IANA
    zone) the workspace's, as in sends, previews and test sends alike."""
    await world.settings(timezone="America/New_York")
    world.deliver = True  # (on to the SMTP sink)
    tpl = await world.template("when", "Your appointment: {{ event.properties.starts_at | date: '%H:%M' }}",
                               text=WHEN)
    await world.campaign(trigger={"type": "event", "event": "Booked"}, entry={"rule": "every_time"},
                         template_id=tpl)
    people = {"tz-paris": ("Europe/Paris", "19:00 CET", "19:00"), "tz-none": (None, "13:00 EST", "13:00"),
              "tz-mars": ("Mars/Olympus_Mons", "13:00 EST", "13:00")}
    emails = {uid: _email(uid) for uid in people}
    for uid, (tz, _, _) in people.items():
        await world.identify(uid, email=emails[uid], **({"timezone": tz} if tz else {}))
        await world.track(uid, "Booked", T0, **PROPS)
    await world.pump(T0)
    for uid, (tz, at, hhmm) in people.items():
        zone = tz if tz == "Europe/Paris" else "America/New_York"
        [msg] = _received(mailbox, emails[uid])
        assert msg["subject"] == f"Your appointment: {hhmm}", (uid, msg)
        assert msg["text"].startswith(f"at {at}, naive {hhmm}, on 03 Dec, now {_now_zone(zone)}"), (uid, msg)
    preview = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h,
                                                json={"user": "tz-paris", "data": PROPS})
    assert preview.status_code == 200, preview.text
    assert preview.json()["subject"] == "Your appointment: 19:00"
    assert preview.json()["text"].startswith("at 19:00 CET, naive 19:00, on 03 Dec"), preview.text
    nobody = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h, json={"data": PROPS})
    assert nobody.json()["subject"] == "Your appointment: 13:00"  # no profile: the workspace's zone
    to = _email("tz-tester")
    sent = await world.apps["campaign"].post(f"/v1/templates/{tpl}/test", headers=world.h,
                                             json={"to": to, "user": "tz-paris", "data": PROPS})
    assert sent.status_code == 202, sent.text
    await sending.send_due(world.sm, settings)
    [mail] = _received(mailbox, to)
    assert mail["subject"] == "[test] Your appointment: 19:00"
    assert mail["text"].startswith("at 19:00 CET, naive 19:00, on 03 Dec"), mail["text"]


async def test_a_workspace_without_a_zone_shows_utc(world) -> None:
    tpl = await world.template("utc", "At {{ event.properties.starts_at | date: '%H:%M %Z' }}")
    await world.identify("utc-1", email=_email("utc"))
    r = await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h,
                                          json={"user": "utc-1", "data": PROPS})
    assert r.json()["subject"] == "At 18:00 UTC", r.text


async def test_amounts_are_written_as_the_recipients_locale_writes_them(world, mailbox, settings) -> None:
    """``money: 'EUR'`` in the locale the variant is chosen for: the profile's (``fr-CA``: Canadian French,
    whose variant is ``fr``), or the preview's ``locale``; English without one."""
    tpl = await world.template("total", "Total {{ event.properties.total | money: 'EUR' }}",
                               text="{{ event.properties.total | money: event.properties.currency }}",
                               locales={"fr": {"subject": "Montant {{ event.properties.total | money: 'EUR' }}"}})
    camp = await world.campaign(trigger={"type": "event", "event": "Paid"}, entry={"rule": "every_time"},
                                template_id=tpl)
    world.deliver = True  # (on to the SMTP sink)
    people = {"m-en": (None, "Total €1,234.50", "$1,234.50"),  # (CLDR's spaces: no-break, narrow in fr-FR)
              "m-fr": ("fr-FR", "Montant 1\u202f234,50\u00a0€", "1\u202f234,50\u00a0$US"),
              "m-ca": ("fr_CA", "Montant 1\u00a0234,50\u00a0€", "1\u00a0234,50\u00a0$\u00a0US"),
              "m-de": ("de-AT", "Total €\u00a01.234,50", "$\u00a01.234,50")}
    emails = {uid: _email(uid) for uid in people}
    for uid, (locale, _, _) in people.items():
        await world.identify(uid, email=emails[uid], **({"locale": locale} if locale else {}))
        await world.track(uid, "Paid", T0, total="1234.5", currency="usd")
    await world.pump(T0)
    for uid, (_, subject, text) in people.items():
        [msg] = _received(mailbox, emails[uid])
        assert (msg["subject"], msg["text"].splitlines()[0]) == (subject, text), (uid, msg)

    async def preview(**body):
        return await world.apps["campaign"].post(f"/v1/templates/{tpl}/preview", headers=world.h, json=body)

    forced = await preview(user="m-en", locale="fr", data={"total": 12.5, "currency": "EUR"})
    assert (forced.json()["subject"], forced.json()["text"]) == ("Montant 12,50\u00a0€", "12,50\u00a0€"), forced.text
    assert (await preview(data={"total": 12.5, "currency": "JPY"})).json()["text"] == "¥13"  # (no decimals: yen)
    assert (await preview(data={"currency": "EUR"})).json()["subject"] == "Total"  # no amount: nothing
    to = _email("m-tester")
    sent = await world.apps["campaign"].post(f"/v1/templates/{tpl}/test", headers=world.h, json={
        "to": to, "user": "m-ca", "data": {"total": 3, "currency": "CAD"}})
    assert sent.status_code == 202, sent.text
    await sending.send_due(world.sm, settings)
    [mail] = _received(mailbox, to)
    assert (mail["subject"], mail["text"].strip()) == ("[test] Montant 3,00\u00a0€", "3,00\u00a0$"), mail

    # what is no amount, or no currency, fails that message with the reason, as any render error does
    for uid, props, why in (("m-en", {"total": "twelve", "currency": "EUR"}, "'twelve' is not a number"),
                            ("m-fr", {"total": 5, "currency": "EURO"}, "'EURO' is not a currency code")):
        await world.track(uid, "Paid", T0, **props)
        await world.pump(T0)
        sends = (await world.apps["campaign"].get(f"/v1/campaigns/{camp['id']}/sends", headers=world.h)).json()
        assert any(s["status"] == "failed" and why in (s["reason"] or "") for s in sends["sends"]), (why, sends)
        bad = await preview(user=uid, data=props)
        assert bad.status_code == 422 and why in bad.json()["detail"], bad.text
    assert [m["subject"] for m in _received(mailbox, emails["m-en"])] == ["Total €1,234.50"]


async def test_a_currency_a_template_spells_wrong_is_refused_on_save(world) -> None:
    """A code written in the template is checked on save (line and column), like an unknown filter: otherwise
    every send of it would fail; one read from a variable is judged per message."""
    async def save(**body):
        return await world.apps["campaign"].post("/v1/templates", headers=world.h,
                                                 json={"name": f"cur-{uuid.uuid4().hex[:6]}", "subject": "Hi",
                                                       **body})

    for body, field, line, column, why in (
            ({"text": "Total:\n  {{ event.properties.total | money: 'EUT' }}"}, "text", 2, 31,
             "'EUT' is not a currency code"),
            ({"text": "x", "locales": {"de": {"html": "<p>{{ 5 | money }}</p>"}}}, "locales.de.html", 1, 11,
             "a currency code is needed")):
        r = await save(**body)
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        assert (error["loc"], error["line"], error["column"]) == (["body", *field.split(".")], line, column), r.text
        assert why in error["msg"] and why in r.json()["detail"]
    ok = await save(text="{{ event.properties.total | money: 'usd' }} {{ 1 | money: event.properties.currency }}")
    assert ok.status_code == 201, ok.text
    snippet = await world.apps["campaign"].put("/v1/snippets/price", headers=world.h,
                                               json={"content": "{{ price | money: 'XYZ' }}"})
    assert snippet.status_code == 422 and snippet.json()["errors"][0]["loc"] == ["body", "content"], snippet.text


async def test_campaigns_own_422s_name_places_as_fastapis_do(world) -> None:
    """Campaign's checks said where with ``at`` (``steps.1``) while the schema's 422s say ``loc`` (``["body",
    "steps", "1"]``): a client needed two readers. Each entry now has ``loc``, ``msg`` and ``type`` (and ``at``)."""
    tpl = await world.template("places", "Hi")
    r = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"c-{uuid.uuid4().hex[:6]}", "trigger": {"type": "api"},
        "steps": [{"id": "a", "type": "delay", "seconds": 60}, {"id": "b", "type": "send", "template_id": tpl}]})
    schema = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"c-{uuid.uuid4().hex[:6]}", "trigger": {"type": "api"}, "steps": [{"id": "a", "type": "delay"}]})
    for problem in (r, schema):
        assert problem.status_code == 422, problem.text
        assert all({"loc", "msg", "type"} <= e.keys() and e["loc"][0] == "body" for e in problem.json()["errors"])
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "steps", "1"]]
    # the shorthand's template_id is the place, not the step it stands for (steps.0.send.template_id)
    bad = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
        "name": f"c-{uuid.uuid4().hex[:6]}", "trigger": {"type": "api"}, "template_id": "not-a-uuid"})
    assert bad.status_code == 422, bad.text
    assert [(e["loc"], e["at"]) for e in bad.json()["errors"]] == [(["body", "template_id"], "template_id")]
