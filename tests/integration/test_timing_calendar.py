"""Calendar edge cases of the timing steps (local-time waits, quiet hours, date traits, frequency caps, send-time
optimisation), through the HTTP API with the controllable clock of test_journeys: DST gaps and overlaps, zones
with odd offsets, the date line, and zones a profile gets wrong."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_journeys import World


@pytest.fixture
def world(apps, workspace, sessionmaker, internal_client) -> World:
    return World(apps, workspace, sessionmaker, internal_client)


def _email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@timing.example"


async def _pid(world: World, uid: str) -> str:
    return (await world.apps["ingest"].get(f"/v1/profiles/{uid}", headers=world.h)).json()["id"]


async def _journey(world: World, uid: str, camp: dict) -> dict:
    [j] = [j for j in await world.path(await _pid(world, uid)) if j["campaign_id"] == camp["id"]]
    return j


async def _enter(world: World, uid: str, camp: dict, now: datetime) -> dict:
    """Pump at ``now`` until the user's trigger has entered them (the event feed shows an event once every
    transaction older than it has ended, which on a shared server can take a moment), then their journey."""
    pid = await _pid(world, uid)
    for _ in range(100):
        await world.pump(now)
        if mine := [j for j in await world.path(pid) if j["campaign_id"] == camp["id"]]:
            return mine[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{uid} never entered")


def _wake(j: dict) -> datetime | None:
    return datetime.fromisoformat(j["wake_at"]) if j["wake_at"] else None


def _at(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


async def _one_step(world: World, uid: str, step: dict, tpl: str, **campaign) -> dict:
    return await world.campaign(trigger={"type": "event", "event": f"Go {uid}"}, **campaign, steps=[
        {"id": "w", **step, "next": "s"}, {"id": "s", "type": "send", "template_id": tpl}])


async def test_wait_until_in_dst_gaps_and_overlaps_odd_offsets_date_line_zones_and_bad_zones(world) -> None:
    """"09:00 local" and friends land on the user's clock: a time the clocks skip is moved forward by the gap
    (02:30 on the spring-forward night is 03:30 summer time), a time they repeat is its first occurrence still to
    come, 45- and 15-minute offsets and +14/-11 zones count, and a profile zone that is no zone (unknown, empty, a
    number, a folder of the zone database) falls back to the workspace's rather than failing the journey."""
    tpl = await world.template("t", "Hi")
    await world.settings(timezone="Europe/Paris")
    cases = {  # uid: (zone, time, entered, wake)
        "paris-gap": ("Europe/Paris", "02:30", _at(2026, 3, 28, 12), _at(2026, 3, 29, 1, 30)),
        "ny-gap": ("America/New_York", "02:30", _at(2026, 3, 7, 12), _at(2026, 3, 8, 7, 30)),
        "paris-overlap": ("Europe/Paris", "01:30", _at(2026, 10, 24, 12), _at(2026, 10, 24, 23, 30)),
        "paris-9-after-gap": ("Europe/Paris", "09:00", _at(2026, 3, 28, 12), _at(2026, 3, 29, 7)),
        "kathmandu": ("Asia/Kathmandu", "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 26, 3, 15)),
        "lord-howe-gap": ("Australia/Lord_Howe", "02:15", _at(2026, 10, 3, 12), _at(2026, 10, 3, 15, 45)),
        "chatham": ("Pacific/Chatham", "09:00", _at(2026, 4, 4, 12), _at(2026, 4, 4, 20, 15)),
        "kiritimati": ("Pacific/Kiritimati", "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 25, 19)),
        "pago-pago": ("Pacific/Pago_Pago", "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 25, 20)),
        "unknown-zone": ("Mars/Olympus", "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 26, 8)),
        "empty-zone": ("", "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 26, 8)),
        "number-zone": (42, "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 26, 8)),
        "folder-zone": ("Europe", "09:00", _at(2026, 11, 25, 12), _at(2026, 11, 26, 8)),
    }
    got = {}
    for uid, (tz, at, entered, _) in cases.items():  # (each on its own clock: one pump runs every due timer)
        camp = await _one_step(world, uid, {"type": "wait_until", "time": at}, tpl)
        await world.identify(uid, email=_email(uid), timezone=tz)
        await world.track(uid, f"Go {uid}", entered)
        got[uid] = _wake(await _enter(world, uid, camp, entered))
    assert got == {uid: c[3] for uid, c in cases.items()}


async def test_allowed_weekdays_are_the_users_local_days(world) -> None:
    """Monday 23:00 UTC is Tuesday 13:00 in Kiritimati and Monday 12:00 in Pago Pago: the weekday is theirs."""
    tpl = await world.template("t", "Hi")
    mon23 = _at(2026, 11, 23, 23)
    cases = {"kir-tue": ("Pacific/Kiritimati", [1], _at(2026, 11, 30, 19)),  # today's 09:00 has passed there
             "kir-wed": ("Pacific/Kiritimati", [2], _at(2026, 11, 24, 19)),
             "ppg-mon": ("Pacific/Pago_Pago", [0], _at(2026, 11, 30, 20)),
             "ppg-tue": ("Pacific/Pago_Pago", [1], _at(2026, 11, 24, 20))}
    got = {}
    for uid, (tz, days, _) in cases.items():
        camp = await _one_step(world, uid, {"type": "wait_until", "time": "09:00", "weekdays": days}, tpl)
        await world.identify(uid, email=_email(uid), timezone=tz)
        await world.track(uid, f"Go {uid}", mon23)
        got[uid] = _wake(await _enter(world, uid, camp, mon23))
    assert got == {uid: c[2] for uid, c in cases.items()}


async def test_a_local_time_the_clocks_repeat_sends_once(world) -> None:
    tpl = await world.template("t", "Hi")
    camp = await _one_step(world, "fold", {"type": "wait_until", "time": "01:30"}, tpl)
    email = _email("fold")
    await world.identify("fold", email=email, timezone="Europe/Paris")
    await world.track("fold", "Go fold", _at(2026, 10, 24, 12))
    await _enter(world, "fold", camp, _at(2026, 10, 24, 12))
    for now in (_at(2026, 10, 24, 23, 30), _at(2026, 10, 25, 0, 30), _at(2026, 10, 26, 0, 30)):  # 01:30 ×2, next day
        await world.pump(now)
    assert len(await world.mail(email)) == 1
    assert (await _journey(world, "fold", camp))["status"] == "completed"


async def test_quiet_hours_per_channel_at_their_boundaries_and_across_dst(world) -> None:
    """[start, end): exactly at the end a send goes, exactly at the start it waits; a window over midnight ends
    the next morning, also on the nights the clocks change; each channel has its own; skip skips with why."""
    await world.settings(timezone="Europe/Paris", quiet_hours={
        "email": {"start": "21:00", "end": "08:00", "action": "defer"},
        "sms": {"start": "12:00", "end": "14:00", "action": "skip"}},
        sms_opt_in_required=False)  # (consent is delivery's check, not this test's)
    mail = await world.template("m", "Mail")
    r = await world.apps["campaign"].post("/v1/templates", headers=world.h, json={
        "name": f"sms-{uuid.uuid4().hex[:6]}", "channel": "sms", "text": "SMS body"})
    sms = r.json()["id"]
    cm = await world.campaign(trigger={"type": "event", "event": "M"}, entry={"rule": "every_time"},
                              steps=[{"id": "s", "type": "send", "template_id": mail}])
    cs = await world.campaign(trigger={"type": "event", "event": "S"}, entry={"rule": "every_time"},
                              steps=[{"id": "s", "type": "send", "template_id": sms}])
    cases = {"at-0800": ("M", _at(2026, 11, 25, 7), "sent"),
             "at-2100": ("M", _at(2026, 11, 25, 20), _at(2026, 11, 26, 7)),
             "at-0759:59": ("M", _at(2026, 11, 25, 6, 59, 59), _at(2026, 11, 25, 7)),
             "at-2059:59": ("M", _at(2026, 11, 25, 19, 59, 59), "sent"),
             "kathmandu-2105": ("M", _at(2026, 11, 25, 15, 20), _at(2026, 11, 26, 2, 15)),
             "spring-night": ("M", _at(2026, 3, 28, 22), _at(2026, 3, 29, 6)),
             "autumn-night": ("M", _at(2026, 10, 24, 22), _at(2026, 10, 25, 7)),
             "sms-1200": ("S", _at(2026, 11, 25, 11), "skipped: quiet hours for sms (12:00-14:00 Europe/Paris)"),
             "sms-1400": ("S", _at(2026, 11, 25, 13), "sent"),
             "sms-night": ("S", _at(2026, 11, 25, 22), "sent")}
    got = {}
    for uid, (ev, at, _) in cases.items():
        await world.identify(uid, email=_email(uid.replace(":", "")), phone="+33612345678",  # (":": no address)
                             **({"timezone": "Asia/Kathmandu"} if uid.startswith("kathmandu") else {}))
        await world.track(uid, ev, at)
        j = await _enter(world, uid, cm if ev == "M" else cs, at)
        [last] = [e for e in j["log"] if e["kind"] in ("sent", "skipped", "deferred")][-1:]
        got[uid] = _wake(j) if j["status"] == "active" else (
            "sent" if last["kind"] == "sent" else f"{last['kind']}: {last['detail']}")
        if j["status"] == "active":
            assert last["kind"] == "deferred" and last["detail"].startswith("quiet hours for email"), last
    assert got == {uid: c[2] for uid, c in cases.items()}


async def test_quiet_hours_ending_at_a_time_the_clocks_skip_end_as_a_wait_until_that_time_wakes(world) -> None:
    """Quiet until 02:30 on the night Paris jumps from 02:00 to 03:00 ends at 03:30 summer time: the skipped time
    moved forward by the gap, the one rule `wait_until 02:30` follows too (quiet hours ended at 03:00 while the
    wait woke at 03:30); a send at 03:10, after the jump, is held until then as well. (Lord Howe's clocks jump
    from 02:00 to 02:30: that 02:30 is no skipped time.)"""
    tpl = await world.template("t", "Hi")
    camp = await world.campaign(trigger={"type": "event", "event": "Go"}, entry={"rule": "every_time"},
                                steps=[{"id": "s", "type": "send", "template_id": tpl}])
    await world.settings(quiet_hours={"email": {"start": "00:00", "end": "02:30", "action": "defer"}})
    cases = {"paris": ("Europe/Paris", _at(2026, 3, 29, 0, 30), _at(2026, 3, 29, 1, 30)),  # 01:30 CET → 03:30 CEST
             "paris-0310": ("Europe/Paris", _at(2026, 3, 29, 1, 10), _at(2026, 3, 29, 1, 30)),  # 03:10 CEST
             "new-york": ("America/New_York", _at(2026, 3, 8, 6), _at(2026, 3, 8, 7, 30)),  # 01:00 EST → 03:30 EDT
             "lord-howe": ("Australia/Lord_Howe", _at(2026, 10, 3, 14), _at(2026, 10, 3, 15, 30))}  # 02:30 +11
    got = {}
    for uid, (tz, at, _) in cases.items():
        await world.identify(uid, email=_email(uid), timezone=tz)
        await world.track(uid, "Go", at)
        got[uid] = _wake(await _enter(world, uid, camp, at))
    assert got == {uid: c[2] for uid, c in cases.items()}
    wait = await _one_step(world, "w", {"type": "wait_until", "time": "02:30"}, tpl)
    await world.identify("w", email=_email("w"), timezone="Europe/Paris")
    await world.track("w", "Go w", _at(2026, 3, 29, 0, 30))
    assert _wake(await _enter(world, "w", wait, _at(2026, 3, 29, 0, 30))) == got["paris"]


async def test_wait_until_on_the_night_the_clocks_go_back_takes_the_second_pass_still_to_come(world) -> None:
    """A user reaching "wait until 01:30" at 01:10 after New York's clocks went back (02:00 EDT → 01:00 EST)
    wakes twenty minutes later, when the clock reads 01:30 again; they woke the next day (24 h 20 min later), or
    with `weekdays: [6]` a week later. Before the clocks go back, 01:30 is its first pass."""
    tpl = await world.template("t", "Hi")
    cases = {"second-pass": (list(range(7)), _at(2026, 11, 1, 6, 10), _at(2026, 11, 1, 6, 30)),
             "second-pass-sundays": ([6], _at(2026, 11, 1, 6, 10), _at(2026, 11, 1, 6, 30)),
             "first-pass": ([6], _at(2026, 11, 1, 5, 10), _at(2026, 11, 1, 5, 30))}  # 01:10 EDT → 01:30 EDT
    got = {}
    for uid, (weekdays, entered, _) in cases.items():
        camp = await _one_step(world, uid, {"type": "wait_until", "time": "01:30", "weekdays": weekdays}, tpl)
        await world.identify(uid, email=_email(uid), timezone="America/New_York")
        await world.track(uid, f"Go {uid}", entered)
        got[uid] = _wake(await _enter(world, uid, camp, entered))
    assert got == {uid: c[2] for uid, c in cases.items()}


async def test_a_days_offset_from_a_date_trait_counts_calendar_days_across_dst(world) -> None:
    """"A day before the renewal" is the same local time the day before, also when the clocks change in
    between: renewing on Monday 30 March (Paris springs forward on Sunday 29) is reminded on Sunday 00:00, not
    on Saturday 23:00 (the offset used to be 86,400 elapsed seconds: 23:00 two calendar days before, or 01:00)."""
    tpl = await world.template("t", "Renews")
    camp = await _one_step(world, "x", {"type": "wait_until_attribute", "trait": "renews", "offset_seconds": -86400},
                           tpl)
    now = _at(2026, 3, 20, 12)
    cases = {  # uid: (trait, zone, wake)
        "spring-date": ("2026-03-30", "Europe/Paris", _at(2026, 3, 28, 23)),  # Sun 29 00:00 CET
        "spring-time": ("2026-03-30T10:00:00", "Europe/Paris", _at(2026, 3, 29, 8)),  # Sun 29 10:00 CEST
        "autumn-date": ("2026-10-26", "Europe/Paris", _at(2026, 10, 24, 22)),  # Sun 25 00:00 CEST
        "ny-spring": ("2027-03-15", "America/New_York", _at(2027, 3, 14, 5)),  # Sun 14 00:00 EST
        "lord-howe": ("2026-10-05", "Australia/Lord_Howe", _at(2026, 10, 3, 13, 30)),  # Sun 4 00:00 +10:30
        "no-dst": ("2026-04-10", "Asia/Kathmandu", _at(2026, 4, 8, 18, 15)),
        "with-offset": ("2026-03-30T09:00:00+05:00", "Europe/Paris", _at(2026, 3, 29, 4)),  # Mon 06:00 CEST: Sun 06:00
    }
    got = {}
    for uid, (val, tz, _) in cases.items():
        await world.identify(uid, email=_email(uid), timezone=tz, renews=val)
        await world.track(uid, "Go x", now)
        got[uid] = _wake(await _enter(world, uid, camp, now))
    assert got == {uid: c[2] for uid, c in cases.items()}


async def test_a_date_trait_in_unix_time_is_a_moment_and_one_that_is_no_date_is_missing(world) -> None:
    """A renewal a billing system wrote as Unix time (seconds or milliseconds, a number or its digits, as the
    tracking API reads timestamps) is that moment (it used to be taken for a missing date: the user went down
    on_missing); one in the past, missing, or that is no date goes down on_missing with the reason."""
    tpl, other = await world.template("t", "Renews"), await world.template("o", "No date")
    camp = await world.campaign(trigger={"type": "event", "event": "Go"}, steps=[
        {"id": "w", "type": "wait_until_attribute", "trait": "renews", "offset_seconds": -86400, "next": "s",
         "on_missing": "m"},
        {"id": "s", "type": "send", "template_id": tpl}, {"id": "m", "type": "send", "template_id": other}])
    now = _at(2026, 3, 20, 12)
    cases = {"unix-s": (1775800800, _at(2026, 4, 9, 6)),  # 2026-04-10T06:00:00Z
             "unix-ms": (1775800800000, _at(2026, 4, 9, 6)),
             "unix-text": ("1775800800", _at(2026, 4, 9, 6)),
             "unix-ms-text": ("1775800800000", _at(2026, 4, 9, 6)),
             "past": ("2026-03-01", "on_missing"),
             "past-unix": (1700000000, "on_missing"),
             "missing": (None, "on_missing"),
             "garbage": ("next tuesday", "on_missing"),
             "boolean": (True, "on_missing"),
             "out-of-range": (10**20, "on_missing")}
    got = {}
    for uid, (val, _) in cases.items():
        await world.identify(uid, email=_email(uid), timezone="Europe/Paris",
                             **({"renews": val} if val is not None else {}))
        await world.track(uid, "Go", now)
        j = await _enter(world, uid, camp, now)
        if j["status"] == "active":
            got[uid] = _wake(j)
        else:
            assert [(e["kind"], e["detail"]) for e in j["log"]][1] == ("branch", "renews missing or past"), j["log"]
            got[uid] = "on_missing"
    assert got == {uid: c[1] for uid, c in cases.items()}


async def test_a_frequency_cap_window_ends_when_the_oldest_send_leaves_it_and_spares_transactional(world) -> None:
    # (sends are stamped by the database's clock: the run's clock is kept near it)
    await world.settings(frequency_caps=[{"channel": "email", "max": 1, "period_days": 1, "action": "defer"}])
    tpl = await world.template("t", "Hi")
    await world.campaign(trigger={"type": "event", "event": "A"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    b = await world.campaign(trigger={"type": "event", "event": "B"}, steps=[{"id": "s", "type": "send", "template_id": tpl}])
    await world.campaign(trigger={"type": "event", "event": "B"}, message_type="transactional",
                         steps=[{"id": "s", "type": "send", "template_id": tpl}])
    email = _email("cap")
    await world.identify("cap", email=email)
    now = datetime.now(UTC)
    await world.track("cap", "A", now)
    await world.pump(now)
    await world.track("cap", "B", now + timedelta(minutes=1))
    jb = await _enter(world, "cap", b, now + timedelta(minutes=1))
    assert len(await world.mail(email)) == 2  # the first marketing one and the transactional one (exempt)
    wake = _wake(jb)
    assert wake is not None and timedelta(hours=23) < wake - now < timedelta(hours=25), jb
    assert jb["log"][-1]["kind"] == "deferred" and jb["log"][-1]["detail"].startswith("frequency cap: 1 email per 1 days")
    await world.pump(wake - timedelta(seconds=1))
    assert len(await world.mail(email)) == 2
    await world.pump(wake)
    assert len(await world.mail(email)) == 3
    await world.pump(wake + timedelta(days=2))
    assert len(await world.mail(email)) == 3


async def test_sends_deferred_together_are_capped_again_when_they_wake(world) -> None:
    """Two campaigns' sends held by quiet hours wake at the same minute under a cap of one a day: one goes, the
    other is deferred again (counted once, not lost, not doubled) and goes a day later."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)  # (the database's clock stamps sends: keep near it)
    end = now + timedelta(minutes=2)
    await world.settings(timezone="UTC",
                         quiet_hours={"email": {"start": f"{(now - timedelta(hours=2)):%H:%M}",
                                                "end": f"{end:%H:%M}", "action": "defer"}},
                         frequency_caps=[{"channel": "email", "max": 1, "period_days": 1, "action": "defer"}])
    tpl = await world.template("t", "Hi")
    camps = [await world.campaign(trigger={"type": "event", "event": ev},
                                  steps=[{"id": "s", "type": "send", "template_id": tpl}]) for ev in ("A", "B")]
    email = _email("pair")
    await world.identify("pair", email=email)
    await world.track("pair", "A", now)
    await world.track("pair", "B", now)
    await _enter(world, "pair", camps[0], now)
    await _enter(world, "pair", camps[1], now)
    assert await world.mail(email) == []
    await world.pump(end)
    assert len(await world.mail(email)) == 1
    await world.pump(end + timedelta(hours=12))
    assert len(await world.mail(email)) == 1
    await world.pump(end + timedelta(days=1, minutes=1))
    assert len(await world.mail(email)) == 2
    await world.pump(end + timedelta(days=3))
    assert len(await world.mail(email)) == 2


async def test_a_frequency_cap_stored_with_text_or_float_numbers_still_caps(world) -> None:
    """Older releases stored settings as given: ``"max": "1"`` or ``1.0`` was read as a cap and then passed over
    (not an int), so every campaign sent. They cap as their numbers say."""
    await world.settings(frequency_caps=[{"channel": "email", "max": "1", "period_days": "7"},
                                         {"channel": "sms", "max": 1.0}])
    tpl = await world.template("t", "Hi")
    camps = [await world.campaign(trigger={"type": "event", "event": "Go"},
                                  steps=[{"id": "s", "type": "send", "template_id": tpl}]) for _ in range(2)]
    email = _email("txtcap")
    pid = await world.identify("txtcap", email=email)
    now = datetime.now(UTC)
    await world.track("txtcap", "Go", now)
    for c in camps:
        await _enter(world, "txtcap", c, now)
    assert len(await world.mail(email)) == 1
    details = [e["detail"] for j in await world.path(pid) for e in j["log"] if e["kind"] == "skipped"]
    assert details == ["frequency cap: 1 email per 7 days"]


async def test_send_time_optimisation_sends_at_once_without_enough_history(world) -> None:
    tpl = await world.template("t", "Hi")
    camp = await world.campaign(trigger={"type": "event", "event": "Go"}, entry={"rule": "every_time"},
                                steps=[{"id": "s", "type": "send", "template_id": tpl, "optimize_send_time": True}])
    t0 = _at(2026, 11, 25, 15)
    mails = {uid: _email(uid) for uid in ("h0", "h2", "h3")}
    for uid, email in mails.items():
        await world.identify(uid, email=email)
    for n, uid in ((2, "h2"), (3, "h3")):
        for d in range(1, n + 1):
            await world.track(uid, "Email Opened", t0.replace(hour=6) - timedelta(days=d))
    for uid in mails:
        await world.track(uid, "Go", t0)
        await _enter(world, uid, camp, t0)
    assert len(await world.mail(mails["h0"])) == 1 and len(await world.mail(mails["h2"])) == 1
    assert await world.mail(mails["h3"]) == []
    assert _wake(await _journey(world, "h3", camp)) == _at(2026, 11, 26, 6)
    await world.pump(_at(2026, 11, 26, 6))
    assert len(await world.mail(mails["h3"])) == 1
