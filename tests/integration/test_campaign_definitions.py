"""What a campaign definition, a template or a `tenure apply` file may hold, checked on save so that nothing
saved fails every journey or every send later; through the HTTP API and `tenure apply`'s plan, on real
PostgreSQL."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.integration.test_journeys import World, _email


@pytest.fixture
def world(apps, workspace, sessionmaker, internal_client) -> World:
    return World(apps, workspace, sessionmaker, internal_client)


def _api(world: World, settings, headers: dict | None = None):
    from services import resources

    return resources.Api(world.internal._http, {s: settings.url_of(s) for s in ("segment", "campaign")},
                         headers or world.h)


def _split(winner_at: str, a: str) -> list[dict]:
    return [{"id": "ab", "type": "split", "winner_at": winner_at, "variants": [
        {"name": "A", "weight": 1, "next": "a"}, {"name": "B", "weight": 1, "next": "b"}]},
        {"id": "a", "type": "send", "template_id": a}, {"id": "b", "type": "send", "template_id": a}]


async def test_a_moment_without_a_utc_offset_is_refused_and_one_stored_before_is_read_as_utc(world, settings) -> None:
    """A split's `winner_at` without an offset (`2027-01-01T00:00:00`, or a date alone) was saved, and then every
    entrant failed at the split (comparing it with the clock: naive and aware datetimes), retried every 5 minutes
    forever. It is a 422 naming `steps.0.winner_at` (a one-off `at` likewise, `trigger.at`), `tenure apply` refuses
    it before writing anything, and one stored before is read as UTC: the journeys run."""
    from services import resources

    tpl = await world.template("naive", "Naive")
    for value in ("2020-01-01T00:00:00", "2027-01-01T00:00:00", "2027-01-01"):
        r = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
            "name": f"c-{uuid.uuid4().hex[:8]}", "trigger": {"type": "api"}, "steps": _split(value, tpl)})
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["errors"]] == [["body", "steps", "0", "winner_at"]], r.text
        assert "UTC offset" in r.json()["errors"][0]["msg"]
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"all-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "email", "op": "exists"}}))
    for value in ("2027-01-01T00:00:00", "2027-01-01"):
        r = await world.apps["campaign"].post("/v1/campaigns", headers=world.h, json={
            "name": f"c-{uuid.uuid4().hex[:8]}", "template_id": tpl,
            "trigger": {"type": "schedule", "segment_id": seg.json()["id"], "at": value}})
        assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [["body", "trigger", "at"]], r.text
    # with an offset it is saved; then stored without one, as before the check
    camp = await world.campaign(trigger={"type": "api"}, steps=_split("2027-01-01T00:00:00+00:00", tpl))
    r = await world.apps["campaign"].put(f"/v1/campaigns/{camp['id']}", headers=world.h, json={
        "trigger": {"type": "api"}, "steps": _split("2027-01-01T00:00:00", tpl)})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "steps", "0", "winner_at"], r.text
    async with world.sm() as s, s.begin():
        for table, key in (("campaigns", "id"), ("campaign_versions", "campaign_id")):
            await s.execute(text(f"update campaign.{table} set definition = jsonb_set(definition, "  # noqa: S608
                                 f"'{{steps,0,winner_at}}', '\"2020-01-01T00:00:00\"') where {key} = :c"),
                            {"c": camp["id"]})
    pid = await world.identify("naive-1", email=_email("naive"))
    r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                          json={"user": "naive-1"})
    assert r.status_code == 202 and r.json()["entered"], r.text
    await world.pump(datetime.now(UTC) + timedelta(seconds=1))
    (journey,) = await world.path(pid)
    assert journey["status"] == "completed" and journey["variant"] == "A", journey
    assert "A (the winner, decided at 2020-01-01T00:00:00+00:00)" in [e["detail"] for e in journey["log"]]
    assert not any(e["kind"] == "error" for e in journey["log"])

    api = _api(world, settings)
    tname = (await world.apps["campaign"].get(f"/v1/templates/{tpl}", headers=world.h)).json()["name"]
    doc = f"""
campaigns:
  - name: naive-{uuid.uuid4().hex[:6]}
    trigger: {{type: api}}
    steps:
      - {{id: s, type: split, winner_at: "2027-01-01T00:00:00", variants: [{{name: A, weight: 1, next: a}},
          {{name: B, weight: 1, next: a}}]}}
      - {{id: a, type: send, template: {tname}}}
"""
    with pytest.raises(resources.ResourceError, match=r"naive-.*steps\.0\.winner_at: needs a UTC offset"):
        await resources.plan(api, resources.load(doc))


async def test_only_an_api_campaign_is_entered_through_trigger(world) -> None:
    """`POST /v1/campaigns/{id}/trigger` entered users into any campaign: a segment's campaign sent its mail to a
    user outside the segment and used up their `once` entry, a broadcast sent its slot's mail to one user. Only a
    campaign whose trigger is `api` takes it; another is a 409 naming its trigger, and enters no one."""
    tpl = await world.template("direct", "Direct")
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"pros-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "plan", "op": "equals",
                                                              "value": "pro"}})).json()
    others = {
        "segment_entered": await world.campaign(trigger={"type": "segment_entered", "segment_id": seg["id"]},
                                                template_id=tpl),
        "schedule": await world.campaign(trigger={"type": "schedule", "segment_id": seg["id"], "cron": "0 9 * * 1"},
                                         template_id=tpl),
        "event": await world.campaign(trigger={"type": "event", "event": "Signed Up"}, template_id=tpl),
    }
    email = _email("direct")
    pid = await world.identify("direct-1", email=email, plan="free")
    for kind, camp in others.items():
        for headers in (world.h, {**world.h, "Idempotency-Key": f"k-{kind}"}):
            r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=headers,
                                                  json={"user": "direct-1"})
            assert r.status_code == 409, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert f"trigger is '{kind}'" in r.json()["detail"] and r.json()["trigger"] == kind, r.text
    api = await world.campaign(trigger={"type": "api"}, template_id=tpl)
    r = await world.apps["campaign"].post(f"/v1/campaigns/{api['id']}/trigger", headers=world.h,
                                          json={"user": "direct-1"})
    assert r.status_code == 202 and r.json()["entered"], r.text
    await world.pump(datetime.now(UTC) + timedelta(seconds=1))
    assert [j["campaign_id"] for j in await world.path(pid)] == [api["id"]]
    assert len(await world.mail(email)) == 1


@pytest.mark.parametrize(("kind", "item", "key"), [
    ("campaigns", "{name: c, trigger: {type: api}, goals: {event: x}, steps: [{id: s, type: exit}]}", "goals"),
    ("campaigns", "{name: c, trigger: {type: api}, stauts: paused, steps: [{id: s, type: exit}]}", "stauts"),
    ("templates", "{name: t, subject: hi, text: hello, bodyy: oops}", "bodyy"),
    ("snippets", "{name: s, content: hi, contnet: hi}", "contnet"),
    ("segments", "{name: g, definition: {type: trait, trait: plan, op: exists}, descripton: x}", "descripton"),
    ("programs", "{name: referral, enabeld: false}", "enabeld"),
])
def test_apply_refuses_a_key_an_item_of_its_kind_does_not_have(kind, item, key) -> None:
    """`tenure apply` dropped the keys it did not know at an item's top level: `goals:` (for `goal:`) created a
    campaign without its goal, `stauts: paused` one that went live, a template's `bodyy:` vanished. The API
    refuses them (422); the file is refused as it is read, before anything is written, naming the item and key."""
    from services import resources

    with pytest.raises(resources.ResourceError, match=rf"^{kind[:-1]} '\w+': unknown key '{key}' .*nothing was "
                                                      "applied"):
        resources.load(f"{kind}:\n  - {item}\n")
    import yaml

    fixed = yaml.safe_load(item)
    del fixed[key]
    assert resources.load(yaml.safe_dump({kind: [fixed]}))[kind] == [fixed]  # the rest of the item is fine


async def test_a_template_over_what_delivery_takes_is_refused_on_save(world) -> None:
    """An HTML part of 1,000,001 characters was saved, and every send of it then failed at delivery (`html: String
    should have at most 1000000 characters`); an SMS of 1,601 likewise. A template is held to delivery's limits
    (shared.validation's constants, which delivery's message schema uses) on save, naming the field."""
    big = "x" * 1_000_001
    cases = [
        ({"subject": "Big", "html": big}, ["body", "html"]),
        ({"subject": "Big", "text": big}, ["body", "text"]),
        ({"subject": "Big", "text": "ok", "locales": {"fr": {"html": big}}}, ["body", "locales", "fr", "html"]),
        ({"channel": "sms", "text": "y" * 1601}, ["body", "text"]),
        ({"channel": "sms", "text": "ok", "locales": {"de": {"text": "y" * 1601}}}, ["body", "locales", "de", "text"]),
        ({"channel": "push", "subject": "P", "text": big}, ["body", "text"]),
        ({"subject": "s" * 999, "text": "ok"}, ["body", "subject"]),
    ]
    for body, loc in cases:
        r = await world.apps["campaign"].post("/v1/templates", headers=world.h,
                                              json={"name": f"big-{uuid.uuid4().hex[:6]}", **body})
        assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [loc], (loc, r.text[:300])
    ok = await world.template("edge", "Edge", html="x" * 1_000_000)
    sms = await world.template("sms-edge", "", channel="sms", text="y" * 1600)
    assert ok and sms


async def test_snippets_rendering_each_other_in_a_loop_are_refused_on_save(world) -> None:
    """`PUT /v1/snippets/loop1 {"content": "{% render 'loop1' %}"}` was saved, and so was a template rendering
    it; its every preview and send then failed ("maximum context depth reached, possible recursive render"). A
    snippet closing a loop of renders is a 422 naming the loop, and so is a template entering one (a loop
    stored before the check)."""
    tag = uuid.uuid4().hex[:6]
    r = await world.apps["campaign"].put(f"/v1/snippets/loop1-{tag}", headers=world.h,
                                         json={"content": f"{{% render 'loop1-{tag}' %}}"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "content"]
    assert f"'loop1-{tag}' → 'loop1-{tag}'" in r.json()["errors"][0]["msg"], r.text
    for name, content in ((f"b-{tag}", "plain"), (f"a-{tag}", f"A {{% render 'b-{tag}' %}}")):
        r = await world.apps["campaign"].put(f"/v1/snippets/{name}", headers=world.h, json={"content": content})
        assert r.status_code == 200, r.text
    r = await world.apps["campaign"].put(f"/v1/snippets/b-{tag}", headers=world.h,
                                         json={"content": f"{{% if x %}}{{% include 'a-{tag}' %}}{{% endif %}}"})
    assert r.status_code == 422 and f"'a-{tag}' → 'b-{tag}' → 'a-{tag}'" in r.json()["detail"], r.text
    # a bounded render of another snippet is fine; a template rendering a loop stored before the check is not
    ok = await world.template("uses-a", "A", html=f"<p>{{% render 'a-{tag}' %}}</p>")
    assert ok
    async with world.sm() as s, s.begin():
        await s.execute(text("update campaign.snippets set content = :c where workspace_id = :ws and name = :n"),
                        {"c": f"{{% render 'a-{tag}' %}}", "ws": world.ws, "n": f"b-{tag}"})
    r = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"loops-{tag}", "subject": "Hi", "html": f"<p>\n  {{% render 'a-{tag}' %}}</p>"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["errors"]
    assert error["loc"] == ["body", "html"] and (error["line"], error["column"]) == (2, 6), error  # (at `render`)
    assert f"'a-{tag}' → 'b-{tag}' → 'a-{tag}'" in error["msg"]


async def test_a_push_image_that_is_no_https_url_is_refused(world) -> None:
    """docs: a push template's `image` is an https URL; `http://…` was saved. Liquid that may still make one
    (`{{ event.properties.image }}`, `https://cdn/{{ sku }}.jpg`) is taken."""
    base = {"channel": "push", "subject": "New", "text": "Look"}
    for body, loc in (({"image": "http://cdn.example.com/a.png"}, ["body", "image"]),
                      ({"image": "ftp://cdn.example.com/a.png"}, ["body", "image"]),
                      ({"locales": {"fr": {"image": "http://cdn.example.com/{{ x }}.png"}}},
                       ["body", "locales", "fr", "image"])):
        r = await world.apps["campaign"].post("/v1/templates", headers=world.h,
                                              json={"name": f"img-{uuid.uuid4().hex[:6]}", **base, **body})
        assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [loc], r.text
        assert "https" in r.json()["errors"][0]["msg"]
    for image in ("https://cdn.example.com/a.png", "{{ event.properties.image }}", "HTTPS://cdn/{{ event.properties.sku }}.jpg"):
        assert await world.template("img", "New", channel="push", text="Look", image=image)


async def test_a_webhook_to_a_private_address_is_refused_on_save_and_not_called_at_run_time(world, settings) -> None:
    """A webhook step to `http://127.0.0.1/x` was saved; delivery refused it only when the journey ran, while the
    journey's log said "webhook queued". Saved, it is a 422 naming the step's URL, by delivery's rule (not under
    `webhook_allow_private`, which tests set); one saved before is not handed to delivery, and the journey's log
    says `failed` and why."""
    import httpx

    from services.campaign.app import create_app
    from shared.http import InternalClient
    from shared.testing import run_due_journeys

    guarded = settings.model_copy(update={"webhook_allow_private": False})
    steps = [{"id": "hook", "type": "webhook", "url": "http://127.0.0.1/x", "next": "done"},
             {"id": "done", "type": "exit"}]
    app = create_app(guarded)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                                                   base_url="http://campaign") as strict:
        for url in ("http://127.0.0.1/x", "http://10.0.0.5/hook", "http://[::1]/x", "http://169.254.169.254/x"):
            r = await strict.post("/v1/campaigns", headers=world.h, json={
                "name": f"hook-{uuid.uuid4().hex[:6]}", "trigger": {"type": "api"},
                "steps": [{**steps[0], "url": url}, steps[1]]})
            assert r.status_code == 422, r.text
            assert [e["loc"] for e in r.json()["errors"]] == [["body", "steps", "0", "url"]], r.text
            assert "non-public address" in r.json()["errors"][0]["msg"]
    camp = await world.campaign(trigger={"type": "api"}, steps=steps)  # (webhook_allow_private: saved)
    pid = await world.identify("hook-1", email=_email("hook"))
    r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/trigger", headers=world.h,
                                          json={"user": "hook-1"})
    assert r.status_code == 202 and r.json()["entered"], r.text
    await run_due_journeys(world.sm, InternalClient(guarded, world.internal._http), datetime.now(UTC))
    (journey,) = await world.path(pid)
    hook = [e for e in journey["log"] if e["step"] == "hook"]
    assert [e["kind"] for e in hook] == ["failed"], journey["log"]
    assert "webhook not called" in hook[0]["detail"] and "non-public address" in hook[0]["detail"]
    assert journey["status"] == "exited"
    sent = await world.apps["delivery"].get("/v1/messages", headers=world.h, params={"to": "http://127.0.0.1/x"})
    assert sent.json()["messages"] == []


async def test_migrating_an_archived_campaign_is_a_409(world) -> None:
    """`POST /v1/campaigns/{archived}/migrate` answered 200, where pause, resume and an edit of an archived
    campaign answer 409 (archiving is final, and its users left)."""
    tpl = await world.template("arch-mig", "Archived")
    camp = await world.campaign(trigger={"type": "api"}, template_id=tpl)
    r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)
    assert r.status_code == 200 and r.json()["moved"] == 0, r.text
    assert (await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/archive", headers=world.h)).is_success
    r = await world.apps["campaign"].post(f"/v1/campaigns/{camp['id']}/migrate", headers=world.h)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
    assert "archived" in r.json()["detail"]


async def test_the_journeys_of_an_id_that_is_no_profile_are_a_404(world) -> None:
    """`GET /v1/profiles/{unknown uuid}/journeys` answered 200 with an empty list; the README says an unknown id is
    a 404. A profile ingest knows, with no journey yet, is an empty list; a merged-away id answers as its
    survivor."""
    r = await world.apps["campaign"].get(f"/v1/profiles/{uuid.uuid4()}/journeys", headers=world.h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
    pid = await world.identify(f"quiet-{uuid.uuid4().hex[:6]}", email=_email("quiet"))
    assert await world.path(pid) == []


async def test_an_export_leaves_out_a_broadcast_that_has_fired_and_applies_to_another_workspace(world, settings
                                                                                            ) -> None:
    """`tenure get campaigns -o yaml` of a workspace whose one-off broadcast had fired could not be applied to
    another one ("its one-off time … has passed … nothing was applied"), though docs/campaigns.md says another
    workspace takes an export. Such a broadcast is left out, named in a comment; the rest applies there, and the
    file applied back to its own workspace changes nothing."""
    from services import resources
    from shared.core import create_workspace

    tpl = await world.template("news", "News")
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"all-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "email", "op": "exists"}}))
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    fired = await world.campaign(name=f"fired-{uuid.uuid4().hex[:6]}", template_id=tpl,
                                 trigger={"type": "schedule", "segment_id": seg.json()["id"], "at": soon})
    kept = await world.campaign(name=f"kept-{uuid.uuid4().hex[:6]}", template_id=tpl,
                                trigger={"type": "schedule", "segment_id": seg.json()["id"], "at": soon})
    past = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    async with world.sm() as s, s.begin():  # (its time came: it fired)
        for table, key in (("campaigns", "id"), ("campaign_versions", "campaign_id")):
            await s.execute(text(f"update campaign.{table} set definition = jsonb_set(definition, "  # noqa: S608
                                 f"'{{trigger,at}}', CAST(:at AS jsonb)) where {key} = :c"),
                            {"c": fired["id"], "at": f'"{past}"'})
    source = _api(world, settings)
    exported = await resources.export(source)
    assert exported.startswith("# Left out: one-off broadcasts whose time has passed"), exported[:300]
    assert repr(fired["name"]) in exported.splitlines()[1]
    names = [c["name"] for c in resources.load(exported)["campaigns"]]
    assert kept["name"] in names and fired["name"] not in names
    async with world.sm() as s, s.begin():
        other = await create_workspace(s, f"prod-{uuid.uuid4().hex[:6]}")
    target = _api(world, settings, {"Authorization": f"Bearer {other.secret_key}"})
    await resources.apply(target, await resources.plan(target, resources.load(exported)))
    there = await target.all("campaign", "/v1/campaigns", "campaigns")
    assert [c["name"] for c in there] == [kept["name"]]
    assert {c.action for c in await resources.plan(source, resources.load(exported))} == {"unchanged"}


async def test_a_problems_loc_is_the_place_in_the_request(world) -> None:
    """README (Errors): `loc` is the place in the request. Some named a parent (an unknown time zone at
    `trigger.schedule`, a weekday of 7 at the step), spliced a step's or trigger's type in (`steps.0.delay.seconds`:
    no such path in the request), or were missing (no steps and no template_id: a 422 without `errors`)."""
    tpl = await world.template("locs", "Locs")
    seg = (await world.apps["segment"].post("/v1/segments", headers=world.h, json={
        "name": f"all-{uuid.uuid4().hex[:6]}", "definition": {"type": "trait", "trait": "email", "op": "exists"}}))
    audience = {"type": "schedule", "segment_id": seg.json()["id"]}
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    cases = [
        ({"trigger": {**audience, "cron": "@daily", "timezone": "Mars/Base"}, "template_id": tpl},
         ["trigger", "timezone"]),
        ({"trigger": {**audience, "cron": "@daily", "at": soon}, "template_id": tpl}, ["trigger", "cron"]),
        ({"trigger": audience, "template_id": tpl}, ["trigger", "at"]),
        ({"trigger": {**audience, "cron": "not a cron"}, "template_id": tpl}, ["trigger", "cron"]),
        ({"trigger": {"type": "api"}, "steps": [{"id": "w", "type": "wait_until", "time": "10:00", "weekdays": [7]}]},
         ["steps", "0", "weekdays"]),
        ({"trigger": {"type": "api"}, "entry": {"rule": "once_per_period"}, "template_id": tpl},
         ["entry", "period_seconds"]),
        ({"trigger": {"type": "api"}}, ["steps"]),
        ({"trigger": {"type": "api"}, "steps": [{"id": "d", "type": "delay", "seconds": -5}]},
         ["steps", "0", "seconds"]),
        ({"trigger": {"type": "event", "event": ""}, "template_id": tpl}, ["trigger", "event"]),
        ({"trigger": {"type": "api"}, "steps": [{"id": "b", "type": "branch", "condition": {
            "type": "trait", "op": "equals", "value": 1}}]}, ["steps", "0", "condition", "trait"]),
        ({"trigger": {"type": "api"}, "steps": [{"id": "s", "type": "split", "variants": [
            {"name": "A", "weight": 1}, {"name": "A", "weight": 1}]}]}, ["steps", "0", "variants"]),
    ]
    for body, loc in cases:
        for method, url in (("POST", "/v1/campaigns"), ("PUT", None)):
            if url is None:
                camp = await world.campaign(trigger={"type": "api"}, template_id=tpl)
                url = f"/v1/campaigns/{camp['id']}"
            r = await world.apps["campaign"].request(method, url, headers=world.h, json={
                "name": f"c-{uuid.uuid4().hex[:8]}", **body})
            assert r.status_code == 422, (loc, r.text)
            assert [e["loc"] for e in r.json()["errors"]] == [["body", *loc]], (method, loc, r.text)


@pytest.mark.parametrize(("doc", "says"), [
    ("campaigns:\n  - name: c\n    trigger: {type: api}\n    steps: [{id: a, type: exit}]\n    steps: [{id: b, type: exit}]\n",
     "found the key 'steps' twice"),
    ("templates:\n  - name: t\n    subject: one\n    text: hi\n    subject: two\n", "found the key 'subject' twice"),
    ("campaign:\n  - name: c\n", "expected a mapping with programs, snippets, templates, segments, campaigns, "
                                 "not 'campaign'"),
])
def test_apply_refuses_a_key_given_twice_or_misspelt_at_the_top(doc, says) -> None:
    """A key given twice in a mapping silently kept the last (a campaign's second ``steps:`` replaced its first,
    three steps gone without a word); a misspelt top-level kind was not named."""
    from services import resources

    with pytest.raises(resources.ResourceError, match=says):
        resources.load(doc)
    # (a merge key then a key of one's own is an override, as meant, not a repeat)
    merged = resources.load("templates:\n  - &t {name: a, subject: s, text: x}\n  - <<: *t\n    name: b\n")
    assert [t["name"] for t in merged["templates"]] == ["a", "b"]


def test_apply_reads_a_time_of_day_as_text_whatever_the_hour() -> None:
    """YAML 1.1 reads ``10:30`` as the base-60 integer 630 (``09:30``, not base 60, stays text): a ``wait_until``
    at 10:30 was refused as "Input should be a valid string" while 09:30 applied."""
    from services import resources

    doc = resources.load("campaigns:\n  - name: c\n    trigger: {type: api}\n    steps:\n"
                         "      - {id: a, type: wait_until, time: 10:30, next: b}\n"
                         "      - {id: b, type: wait_until, time: 09:30, next: c}\n      - {id: c, type: exit}\n")
    assert [s.get("time") for s in doc["campaigns"][0]["steps"]] == ["10:30", "09:30", None]
    assert resources._campaign_definition(doc["campaigns"][0])["steps"][0]["time"] == "10:30"
    assert resources.load("templates:\n  - {name: t, subject: 1_000}\n")["templates"][0]["subject"] == 1000


@pytest.mark.parametrize(("steps", "says"), [
    ("[{id: s, type: delay, seconds: 60, next: nowhere}]", "steps.0.next: step 's' points to unknown step 'nowhere'"),
    ("[{id: a, type: exit}, {id: a, type: exit}]", "steps.1.id: step id 'a' is used twice (also steps.0)"),
])
def test_apply_names_the_place_of_an_error_in_a_journeys_graph(steps, says) -> None:
    """The API's 422 named ``steps.0.next``; ``tenure apply`` printed an empty place (``campaign 'c': : step …``)."""
    from services import resources

    doc = resources.load(f"campaigns:\n  - name: c\n    trigger: {{type: api}}\n    steps: {steps}\n")
    with pytest.raises(resources.ResourceError) as refused:
        resources._campaign_definition(doc["campaigns"][0])
    assert str(refused.value) == f"campaign 'c': {says}"
