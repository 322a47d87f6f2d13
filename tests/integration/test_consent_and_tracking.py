"""Consent and engagement through HTTP: what a recipient's mail client and browser do with the links
delivery puts in a message, and what ingest hears about it."""

import asyncio
import csv
import html
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text

from services.delivery import feedback, sending
from shared.settings import Settings
from shared.testing import internal_headers


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def _send(apps, h, sessionmaker, settings, mailbox, to: str, **extra) -> tuple[str, dict]:
    r = await apps["delivery"].post("/v1/messages", headers=h, json={
        "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "News",
        "html": "<html><body><p>Read <a href=\"https://acme.example/post?id=1&amp;x=2\">this</a></p></body></html>",
        "text": "Read https://acme.example/post", "metadata": {"userId": extra.pop("user_id", None)}, **extra})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    if r.json()["status"] == "queued":
        await sending.send_due(sessionmaker, settings)
    got = [m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == mid]
    return mid, got[0] if got else {}


async def test_open_click_and_one_click_unsubscribe_reach_ingest(apps, workspace, sessionmaker, settings, mailbox,
                                                                 internal_client) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""), json={"userId": "reader-1"})
    to = f"reader-{uuid.uuid4().hex[:6]}@example.com"
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, user_id="reader-1")
    pixel = re.search(r'src="([^"]+/o/[^"]+\.gif)"', mail["html"]).group(1)
    link = re.search(r'href="([^"]+/c/[^"]+)"', mail["html"]).group(1).replace("&amp;", "&")
    async with sessionmaker() as s, s.begin():  # the mail was read a minute later (not a server prefetch)
        await s.execute(text("update delivery.messages set sent_at = now() - interval '1 minute' where id = :id"),
                        {"id": mid})
    scanner = await apps["delivery"].get(_path(pixel), headers={"User-Agent": "Mimecast link scanner"})
    opened = await apps["delivery"].get(_path(pixel), headers={"User-Agent": "Mozilla/5.0"})
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
    assert scanner.status_code == 200
    click = await apps["delivery"].get(_path(link), headers={"User-Agent": "Mozilla/5.0"})
    assert click.status_code == 302 and click.headers["location"] == "https://acme.example/post?id=1&x=2"
    # the signature covers the target: the same token with another URL is refused (no open redirect)
    forged = _path(link).split("?")[0] + "?u=https%3A%2F%2Fevil.example%2F"
    assert (await apps["delivery"].get(forged)).status_code == 400
    # RFC 8058: the mail client POSTs the one-click body to the List-Unsubscribe URL
    unsub_url = mail["headers"]["List-Unsubscribe"].strip("<>")
    page = await apps["delivery"].get(_path(unsub_url))
    assert page.status_code == 200 and "<form method=\"post\">" in page.text
    assert (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()["unsubscribed"] is False
    done = await apps["delivery"].post(_path(unsub_url), content=b"List-Unsubscribe=One-Click",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200
    prefs = (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()
    assert prefs["unsubscribed"] is True and prefs["suppression"] == "unsubscribed"
    # later marketing is stopped before any provider call; transactional mail still goes
    again, _ = await _send(apps, h, sessionmaker, settings, mailbox, to)
    assert (await apps["delivery"].get(f"/v1/messages/{again}", headers=h)).json()["status"] == "suppressed"
    receipt, got = await _send(apps, h, sessionmaker, settings, mailbox, to, message_type="transactional")
    assert got and "List-Unsubscribe" not in got["headers"]
    # the open (once, not the scanner's), the click and the unsubscribe reach ingest as events
    while await feedback.forward(sessionmaker, internal_client):
        pass
    events = (await apps["ingest"].get("/v1/profiles/reader-1/events", headers=h)).json()["events"]
    names = sorted(e["event"] for e in events if e["event"] in ("Email Opened", "Email Link Clicked", "Unsubscribed"))
    assert names == ["Email Link Clicked", "Email Opened", "Unsubscribed"]
    opened_event = next(e for e in events if e["event"] == "Email Opened")
    assert opened_event["properties"]["message_id"] == mid
    async with sessionmaker() as s:
        bots = (await s.execute(text("select count(*) from delivery.engagements where message_id = :m and bot"),
                                {"m": mid})).scalar_one()
        log = (await s.execute(text("select action, source from delivery.consent_log where address = :a"),
                               {"a": to})).all()
    assert bots == 1 and [tuple(r) for r in log] == [("unsubscribed", "one_click")]
    # the deliveries log says what the recipient did with it (the scanner's open not counted), in JSON and CSV
    shown = (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()
    listed = (await apps["delivery"].get("/v1/messages", headers=h, params={"to": to})).json()["messages"]
    assert shown["opened_at"] is not None and shown["clicks"] == 1
    assert [(m["id"], m["opened_at"] is not None, m["clicks"]) for m in listed] == [
        (receipt, False, 0), (again, False, 0), (mid, True, 1)]
    rows = list(csv.DictReader(io.StringIO((await apps["delivery"].get("/v1/messages.csv", headers=h,
                                                                        params={"to": to})).text)))
    assert [(r["opened_at"] != "", r["clicks"]) for r in rows] == [(False, "0"), (False, "0"), (True, "1")]


@asynccontextmanager
async def _delivery(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Another delivery replica, with these settings (a rotated signing secret)."""
    from services.delivery.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                                                   base_url="http://delivery") as client:
        yield client


async def test_links_in_mail_sent_before_a_signing_secret_rotation_still_work(apps, workspace, sessionmaker,
                                                                               settings, mailbox, monkeypatch) -> None:
    """CAN-SPAM wants an opt-out to work for 30 days after sending, and Gmail/Yahoo's one-click POST a 2xx: after
    TENURE_SIGNING_SECRET is rotated, with the old one in TENURE_SIGNING_SECRET_PREVIOUS, the links in mail already
    sent still unsubscribe, open the preferences and redirect (they were a 400 "This link is not valid"). New mail
    is signed with the new secret only, and a secret taken off the list stops being accepted."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"rotated-{uuid.uuid4().hex[:6]}@example.com"
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, to)
    monkeypatch.setenv("TENURE_SIGNING_SECRET_PREVIOUS", f"an-older-retired-secret, {settings.signing_secret}")
    previous = Settings().signing_secret_previous  # comma-separated (a JSON list works too)
    assert previous == ["an-older-retired-secret", settings.signing_secret]
    rotated = settings.model_copy(update={"signing_secret": "the-new-signing-secret",
                                          "signing_secret_previous": previous})
    unsub = _path(mail["headers"]["List-Unsubscribe"].strip("<>"))
    prefs = _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1))
    click = _path(re.search(r'href="([^"]+/c/[^"]+)"', mail["html"]).group(1).replace("&amp;", "&"))
    async with _delivery(rotated) as delivery:
        followed = await delivery.get(click, headers={"User-Agent": "Mozilla/5.0"})
        assert followed.status_code == 302 and followed.headers["location"] == "https://acme.example/post?id=1&x=2"
        assert (await delivery.get(prefs)).status_code == 200
        done = await delivery.post(unsub, content=b"List-Unsubscribe=One-Click",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert done.status_code == 200, done.text
    assert (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()["unsubscribed"] is True
    # new mail: signed with the new secret, which the old one alone does not take
    _, fresh = await _send(apps, h, sessionmaker, rotated, mailbox, f"fresh-{uuid.uuid4().hex[:6]}@example.com")
    fresh_unsub = _path(fresh["headers"]["List-Unsubscribe"].strip("<>"))
    assert (await apps["delivery"].get(fresh_unsub)).status_code == 400
    retired = settings.model_copy(update={"signing_secret": "the-new-signing-secret"})
    async with _delivery(retired) as delivery:
        assert (await delivery.get(fresh_unsub)).status_code == 200
        assert (await delivery.get(prefs)).status_code == 400  # the old secret off the list: its links end


async def test_opens_arriving_together_make_one_email_opened(apps, workspace, sessionmaker, settings,
                                                             mailbox) -> None:
    """A mail client and its image proxy (or two devices) fetch the pixel at the same moment: every open is
    stored, and one "Email Opened" goes to ingest (each request's count of opens saw only its own row)."""
    import asyncio

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    counts = []
    for _ in range(4):  # a few messages: the requests interleave differently each time
        to = f"twice-{uuid.uuid4().hex[:6]}@example.com"
        mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, user_id="reader-2")
        pixel = _path(re.search(r'src="([^"]+/o/[^"]+\.gif)"', mail["html"]).group(1))
        async with sessionmaker() as s, s.begin():  # read a minute after it was sent (not a server prefetch)
            await s.execute(text("update delivery.messages set sent_at = now() - interval '1 minute' "
                                 "where id = :id"), {"id": mid})
        got = await asyncio.gather(*(apps["delivery"].get(pixel, headers={"User-Agent": "Mozilla/5.0"})
                                     for _ in range(8)))
        assert all(r.status_code == 200 for r in got)
        async with sessionmaker() as s:
            opens = (await s.execute(text("select count(*) from delivery.engagements where message_id = :m"),
                                     {"m": mid})).scalar_one()
            events = (await s.execute(text(
                "select count(*) from delivery.feedback where payload->>'event' = 'Email Opened' "
                "and payload->'properties'->>'message_id' = :m"), {"m": mid})).scalar_one()
        counts.append((opens, events))
    assert counts == [(8, 1)] * 4


async def test_click_redirects_lead_where_the_link_itself_leads(apps, workspace, sessionmaker, settings,
                                                                mailbox) -> None:
    """A tracked link goes to the URL a browser would have opened from the HTML: the attribute's character
    references decoded (``&#38;`` used to stay in the URL, its ``#`` starting a fragment that swallowed
    the rest of the query), one without its ";" left as written; fragments, Unicode, and mailto:/tel: links
    (not tracked) as they were."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    targets = {'https://shop.example/p?a=1&#38;b=2': "https://shop.example/p?a=1&b=2",
               'https://shop.example/p?a=1&#x26;b=2&amp;c=3#top': "https://shop.example/p?a=1&b=2&c=3#top",
               'https://shop.example/q?x=&quot;y&quot;': "https://shop.example/q?x=%22y%22",
               'https://shop.example/p?a=1&copy=2': "https://shop.example/p?a=1&copy=2",
               'https://shop.example/café?q=ü': "https://shop.example/caf%C3%A9?q=%C3%BC"}
    anchors = "".join(f'<a href="{url}">{i}</a> ' for i, url in enumerate(targets))
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, f"links-{uuid.uuid4().hex[:6]}@example.com",
                          html=f'<p>{anchors}<a href="mailto:help@shop.example">m</a> <a href="tel:+14155550100">t</a></p>',
                          message_type="transactional")
    tracked = [u.replace("&amp;", "&") for u in re.findall(r'href="([^"]+/c/[^"]+)"', mail["html"])]
    assert len(tracked) == len(targets)
    for link, expected in zip(tracked, targets.values(), strict=True):
        click = await apps["delivery"].get(_path(link), headers={"User-Agent": "Mozilla/5.0"})
        assert click.status_code == 302 and click.headers["location"] == expected, (link, click.headers)
    assert 'href="mailto:help@shop.example"' in mail["html"] and 'href="tel:+14155550100"' in mail["html"]
    # a link longer than the redirect takes is left as written (tracked, it answered 422 instead of leading there)
    long_url = "https://shop.example/?q=" + "a" * 4100
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, f"long-{uuid.uuid4().hex[:6]}@example.com",
                          html=f'<p><a href="{long_url}">long</a> <a href="https://shop.example/s">short</a></p>',
                          message_type="transactional")
    assert f'href="{long_url}"' in mail["html"] and len(re.findall(r'href="[^"]+/c/[^"]+"', mail["html"])) == 1


async def test_every_link_a_browser_follows_is_tracked_and_nothing_else_is_touched(apps, workspace, sessionmaker,
                                                                                    settings, mailbox) -> None:
    """A pattern found the links: it rewrote a ``data-href`` (a script reading it got the redirect) and left the
    tag's real ``href`` untracked, and missed unquoted values and values holding the other quote. Now a link is
    what the browser's parser finds: the first ``href`` of each ``<a>``, however quoted, outside comments and
    scripts; the text part lists the same URLs."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    html = ('<p><a class="btn" data-href="https://x.example/js" href="https://shop.example/buy">buy</a> '
            '<A HREF=https://shop.example/unquoted?q=1>unquoted</A> '
            '<a href="https://shop.example/women\'s-shoes">shoes</a> '
            "<a href='https://shop.example/say-\"hi\"'>hi</a> "
            '<a href="https://shop.example/first" href="https://shop.example/second">twice</a></p>'
            '<!-- <a href="https://shop.example/commented">c</a> -->'
            '<script>var s = \'<a href="https://shop.example/scripted">\';</script>')
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, f"forms-{uuid.uuid4().hex[:6]}@example.com",
                          html=html, text=None, message_type="transactional")
    assert 'data-href="https://x.example/js"' in mail["html"]
    assert 'href="https://shop.example/commented"' in mail["html"]
    assert 'href="https://shop.example/scripted"' in mail["html"]
    assert 'href="https://shop.example/second"' in mail["html"]  # (the browser follows the first)
    tracked = [(a or b).replace("&amp;", "&").replace("&quot;", '"')
               for a, b in re.findall(r'href="([^"]+/c/[^"]+)"|href=\'([^\']+/c/[^\']+)\'', mail["html"], re.I)]
    expected = ["https://shop.example/buy", "https://shop.example/unquoted?q=1", "https://shop.example/women's-shoes",
                'https://shop.example/say-%22hi%22', "https://shop.example/first"]
    assert len(tracked) == len(expected), mail["html"]
    for link, target in zip(tracked, expected, strict=True):
        click = await apps["delivery"].get(_path(link), headers={"User-Agent": "Mozilla/5.0"})
        assert click.status_code == 302 and click.headers["location"] == target, (link, click.headers)
    for target in ("https://shop.example/buy", "https://shop.example/unquoted?q=1",
                   "https://shop.example/women's-shoes", "https://shop.example/first"):
        assert f"({target})" in mail["text"], mail["text"]


async def test_the_text_part_and_the_click_redirect_lead_where_a_browser_goes(apps, workspace, sessionmaker,
                                                                              settings, mailbox) -> None:
    """The text part made from an HTML-only message showed ``?id=7®ion=us¤cy=EUR§ion=2¬ify=1¶m=x``: a
    legacy name without ";" (``&reg``, ``&curren``, ``&sect``, ``&not``, ``&para``) followed by a letter, digit or
    "=" is left as written in an attribute, as browsers leave it. And whitespace a browser's URL parser drops (around
    the URL; a tab or newline anywhere) went into the redirect (``/sale%20``, ``?a=1%0A&b=2``) and split the text
    part's line. Both now hold the URL a browser opens from the attribute."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    query = "id=7&region=us&currency=EUR&section=2&notify=1&param=x"
    targets = {f"https://shop.example/p?{query}": f"https://shop.example/p?{query}",
               f"https://shop.example/p?{query.replace('&', '&amp;')}": f"https://shop.example/p?{query}",
               "https://shop.example/sale ": "https://shop.example/sale",
               "\n https://shop.example/tab?a=1\n&amp;b=2\t&amp;c=3": "https://shop.example/tab?a=1&b=2&c=3",
               "https://shop.example/x?a=1&#38b=2&amp=3": "https://shop.example/x?a=1&b=2&amp=3"}
    anchors = "".join(f'<p><a href="{url}">{i}</a></p>' for i, url in enumerate(targets))
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, f"text-{uuid.uuid4().hex[:6]}@example.com",
                          html=f"<html><body>{anchors}</body></html>", text=None, message_type="transactional")
    lines = mail["text"].replace("\r\n", "\n").split("\n\n")
    tracked = [u.replace("&amp;", "&") for u in re.findall(r'href="([^"]+/c/[^"]+)"', mail["html"])]
    assert len(tracked) == len(targets) == len(lines), (mail["text"], tracked)
    for i, (link, expected) in enumerate(zip(tracked, targets.values(), strict=True)):
        click = await apps["delivery"].get(_path(link), headers={"User-Agent": "Mozilla/5.0"})
        assert click.status_code == 302 and click.headers["location"] == expected, (link, click.headers)
        assert lines[i] == f"{i} ({expected})", mail["text"]
    # a link in mail sent before this, signed over the URL with its whitespace, leads where the browser goes too
    from services.delivery.links import Links

    signed = Links.for_message("http://delivery", settings.signing_secret, workspace.workspace_id,
                               uuid.uuid4()).click("https://shop.example/sale \n")
    click = await apps["delivery"].get(_path(signed), headers={"User-Agent": "Mozilla/5.0"})
    assert click.status_code == 302 and click.headers["location"] == "https://shop.example/sale", click.headers


async def test_the_dev_inbox_shows_a_mail_without_opening_it(apps, workspace, sessionmaker, settings,
                                                             mailbox) -> None:
    """`tenure dev`'s inbox page reloads every 5 s and showed each mail's open pixel: every message looked opened, an
    "Email Opened" for ingest. The page shows the mail less the pixel (its images and links stay; the JSON keeps the
    mail as received), and answers HEAD as GET (a 405 before)."""
    from services.devinbox.inbox import Mailbox, create_inbox_app

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, f"inbox-{uuid.uuid4().hex[:6]}@example.com",
                          html='<html><body><img src="https://cdn.example/logo.png" alt="Acme">'
                               '<p><a href="https://acme.example/sale">Sale</a></p></body></html>')
    pixel = re.search(r'src="([^"]+/o/[^"]+\.gif)"', mail["html"]).group(1)
    box = Mailbox()
    box.add(mail)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(create_inbox_app(box)),
                                 base_url="http://inbox") as inbox:
        page = await inbox.get("/")
        head = await inbox.head("/")
        listed = (await inbox.get("/api/messages")).json()["messages"]
        assert (await inbox.head("/api/messages")).status_code == 200
    assert page.status_code == 200 and "<h2>News</h2>" in page.text
    shown = html.unescape(re.search(r'srcdoc="([^"]*)"', page.text).group(1))
    assert "/o/" not in shown and pixel not in page.text
    assert '<img src="https://cdn.example/logo.png" alt="Acme">' in shown and "/c/" in shown and "/u/" in shown
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("text/html")
    assert pixel in listed[0]["html"]


async def test_topics_on_the_preference_page_and_bad_links(apps, workspace, sessionmaker, settings, mailbox) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"topics-{uuid.uuid4().hex[:6]}@example.com"
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="offers")
    prefs_url = re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1)
    page = await apps["delivery"].get(_path(prefs_url), headers={"Accept-Language": "fr-CA,fr;q=0.9"})
    assert page.status_code == 200 and '<html lang="fr">' in page.text and "Offres et réductions" in page.text
    saved = await apps["delivery"].post(_path(prefs_url), data={"topic": ["product_news"]})
    assert saved.status_code == 200 and "Your preferences are saved." in saved.text
    prefs = (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()
    assert {t["id"]: t["subscribed"] for t in prefs["topics"]} == {"product_news": True, "offers": False}
    offer, _ = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="offers")
    news, _ = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="product_news")
    statuses = [(await apps["delivery"].get(f"/v1/messages/{m}", headers=h)).json()["status"] for m in (offer, news)]
    assert statuses == ["suppressed", "sent"]
    assert (await apps["delivery"].get(_path(prefs_url)[:-3] + "AAA")).status_code == 400
    assert (await apps["delivery"].get("/u/not-a-token")).status_code == 400
    # manual suppressions through the API
    r = await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": to.upper(), "reason": "manual"})
    assert r.status_code == 201 and r.json()["address"] == to
    assert (await apps["delivery"].delete(f"/v1/suppressions/email/{to}", headers=h)).status_code == 204
    assert (await apps["delivery"].delete(f"/v1/suppressions/email/{to}", headers=h)).status_code == 404


async def test_the_preference_page_says_when_a_complaint_or_bounce_blocks_the_address(
        apps, workspace, sessionmaker, settings, mailbox) -> None:
    """After a spam complaint the page answered "Your preferences are saved." to an unticked "Unsubscribe from
    all", which stayed ticked, saying nothing of why. The block stays (the page cannot lift a complaint, a
    bounce or a suppression made by hand), and the page now says so on GET and POST, with whom to write to; the
    topics chosen are kept, said to apply only once the block is lifted."""
    from services.delivery.mailer import split_address

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    contact = split_address(settings.email_from)[1]
    why = {"complaint": "our email to it was reported as spam", "hard_bounce": "our email to it bounced",
           "manual": "we stopped it for this address"}
    for reason, because in why.items():
        to = f"blocked-{reason.replace('_', '')}-{uuid.uuid4().hex[:6]}@example.com"
        _, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="offers")
        prefs_url = _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1))
        r = await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": to, "reason": reason})
        assert r.status_code == 201, r.text
        page = (await apps["delivery"].get(prefs_url)).text
        assert because in page and contact in page, page
        assert re.search(r'name="unsubscribe_all" value="1" checked disabled', page)
        saved = await apps["delivery"].post(prefs_url, data={"topic": ["offers"]})  # "unsubscribe from all" unticked
        assert saved.status_code == 200
        assert "Your preferences are saved." not in saved.text, saved.text
        assert "take effect only if this block is lifted" in saved.text and because in saved.text
        assert contact in saved.text
        prefs = (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()
        assert prefs["suppression"] == reason and prefs["unsubscribed"] is True  # the block stands
        assert {t["id"]: t["subscribed"] for t in prefs["topics"]} == {"product_news": False, "offers": True}
    french = await apps["delivery"].post(prefs_url + "?lang=fr", data={"topic": ["offers"]})
    assert "ne s'appliqueront que si ce blocage est levé" in html.unescape(french.text)
    # an unsubscribe of the person's own is theirs to undo: that page still saves
    to = f"own-{uuid.uuid4().hex[:6]}@example.com"
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="offers")
    prefs_url = _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1))
    await apps["delivery"].post(prefs_url, data={"unsubscribe_all": "1"})
    page = (await apps["delivery"].get(prefs_url)).text
    assert 'role="note"' not in page and "disabled" not in page
    saved = await apps["delivery"].post(prefs_url, data={"topic": ["offers"]})
    assert "Your preferences are saved." in saved.text
    assert (await apps["delivery"].get(f"/v1/preferences/{to}", headers=h)).json()["suppression"] is None


async def test_batch_of_messages_reports_each_result(apps, workspace) -> None:
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": f"gone-{tag}@example.com"})

    def msg(key: str, to: str, subject: str = "Hi") -> dict:
        return {"idempotency_key": f"{key}-{tag}", "to": to, "subject": subject, "text": "x"}

    first = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg("a", f"a-{tag}@example.com"), msg("b", f"gone-{tag}@example.com")]})
    again = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg("a", f"a-{tag}@example.com"), msg("a", f"a-{tag}@example.com", subject="Other"),
        msg("c", f"c-{tag}@example.com")]})
    assert [r["result"] for r in first.json()["results"]] == ["queued", "suppressed"]
    assert [r["result"] for r in again.json()["results"]] == ["replayed", "conflict", "queued"]
    assert again.json()["results"][0]["message"]["id"] == first.json()["results"][0]["message"]["id"]
    mixed = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg("d", f"d-{tag}@example.com"), {**msg("e", "not-an-address"), "channel": "sms"}]})
    assert [r["result"] for r in mixed.json()["results"]] == ["queued", "invalid"]  # one bad item sinks nothing
    # its place and the message, as the API's 422 says them (it read "to: : Value error, to is not …")
    assert mixed.json()["results"][1]["error"].startswith("to: to is not a phone number"), mixed.text
    # one key twice in the same batch: the first is stored, the second is its replay or a conflict
    twice = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg("f", f"f-{tag}@example.com"), msg("f", f"f-{tag}@example.com"), msg("f", f"f-{tag}@example.com", "No"),
        {"idempotency_key": "broken"}]})
    assert [r["result"] for r in twice.json()["results"]] == ["queued", "replayed", "conflict", "invalid"]
    assert twice.json()["results"][1]["message"]["id"] == twice.json()["results"][0]["message"]["id"]
    assert twice.json()["results"][2]["error"] and twice.json()["results"][3]["idempotency_key"] == "broken"
    too_many = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg(f"n{i}", f"n{i}-{tag}@example.com") for i in range(501)]})
    assert too_many.status_code == 422


async def test_deliveries_log_filters_and_csv(apps, workspace) -> None:
    import csv
    import io

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    tag = uuid.uuid4().hex[:6]
    campaign = str(uuid.uuid4())
    await apps["delivery"].post("/v1/suppressions", headers=h, json={"address": f"no-{tag}@example.com"})
    for i, to in enumerate([f"a-{tag}@example.com", f"no-{tag}@example.com", f"b-{tag}@example.com"]):
        r = await apps["delivery"].post("/v1/messages", headers=h, json={
            "idempotency_key": f"log-{tag}-{i}", "to": to, "subject": "S", "text": "x",
            "metadata": {"campaign_id": campaign if i < 2 else None, "userId": f"log-user-{i}"}})
        assert r.status_code == 202
    by_campaign = (await apps["delivery"].get("/v1/messages", headers=h, params={"campaign_id": campaign})).json()
    assert sorted(m["to"] for m in by_campaign["messages"]) == [f"a-{tag}@example.com", f"no-{tag}@example.com"]
    by_user = (await apps["delivery"].get("/v1/messages", headers=h, params={"user": "log-user-2"})).json()
    assert [m["to"] for m in by_user["messages"]] == [f"b-{tag}@example.com"]
    exported = await apps["delivery"].get("/v1/messages.csv", headers=h, params={"campaign_id": campaign,
                                                                                  "status": "suppressed"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 1 and rows[0]["to"] == f"no-{tag}@example.com"
    assert rows[0]["last_error"] == "suppressed: manual" and rows[0]["user"] == "log-user-1"


async def test_unsubscribe_links_after_an_erasure_say_nothing_is_held(apps, workspace, sessionmaker, settings,
                                                                       mailbox) -> None:
    """A person who asked for erasure may still click "unsubscribe" in an email sent before it. The link must
    not 404 ("no longer valid" reads as "you cannot unsubscribe") and must not store anything about them again:
    the message, the only thing tying the link to an address, is gone. RFC 8058's POST must answer 2xx."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, profile = workspace.workspace_id, str(uuid.uuid4())
    to = f"erased-{uuid.uuid4().hex[:6]}@example.com"
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, user_id="erased-1")
    async with sessionmaker() as s, s.begin():  # (campaign fills profile_id in; erasure finds messages by it)
        await s.execute(text("update delivery.messages set metadata = metadata || CAST(:m AS jsonb) where id = :id"),
                        {"m": f'{{"profile_id": "{profile}"}}', "id": mid})
        # a provider's report on it, kept until its send is recorded (provider_events): erased with it
        await s.execute(text("insert into delivery.early_events (workspace_id, provider, ref, payload) "
                             "values (:ws, 'sendgrid', :ref, CAST(:p AS jsonb))"),
                        {"ws": ws, "ref": mid, "p": f'{{"event": "delivered", "email": "{to}"}}'})
    unsub = _path(mail["headers"]["List-Unsubscribe"].strip("<>"))
    prefs = _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1))
    r = await apps["delivery"].post("/v1/privacy/erasure", headers=internal_headers(ws), json={
        "profile_ids": [profile], "identities": ["erased-1", to]})
    assert r.status_code == 200 and r.json()["removed"]["messages"] == 1, r.text
    async with sessionmaker() as s:
        assert (await s.execute(text("select count(*) from delivery.early_events where workspace_id = :ws"),
                                {"ws": ws})).scalar_one() == 0

    async def held() -> list:
        async with sessionmaker() as s:
            return [(await s.execute(text(f"select count(*) from delivery.{table} where workspace_id = :ws"),
                                     {"ws": ws})).scalar_one() for table in ("suppressions", "consent_log", "feedback")]

    before = await held()
    for method, path, kw in (("GET", unsub, {}), ("POST", unsub, {"content": b"List-Unsubscribe=One-Click",
                                                                   "headers": {"Content-Type":
                                                                               "application/x-www-form-urlencoded"}}),
                             ("POST", unsub, {"data": {}}), ("GET", prefs, {}),
                             ("POST", prefs, {"data": {"unsubscribe_all": "1"}})):
        resp = await apps["delivery"].request(method, path, **kw)
        assert resp.status_code == 200, (method, path, resp.status_code, resp.text)
        assert "has been erased" in resp.text and "<form" not in resp.text, resp.text
        assert to not in resp.text
    fr = await apps["delivery"].get(unsub, headers={"Accept-Language": "fr"})
    assert fr.status_code == 200 and "effacées" in fr.text
    assert await held() == before  # nothing about them stored again
    # a forged token is still refused, erased message or not
    assert (await apps["delivery"].get(unsub[:-3] + "AAA")).status_code == 400


async def test_tracked_links_of_an_erased_message_still_work_and_record_nothing(apps, workspace, sessionmaker,
                                                                               settings, mailbox) -> None:
    """Emails sent before an erasure keep their links. A click must still take the reader to the page (the
    URL is in the signed token: no message is needed to trust it), the pixel still answers its image, and a
    double opt-in confirmation says it can no longer be used — none of them a 404 or an error, and none
    storing anything: nothing ties the link to an address any more, and nothing may be recreated."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, profile = workspace.workspace_id, str(uuid.uuid4())
    to = f"gone-{uuid.uuid4().hex[:6]}@example.com"
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, user_id="gone-1")
    live, live_mail = await _send(apps, h, sessionmaker, settings, mailbox, f"kept-{uuid.uuid4().hex[:6]}@example.com",
                                  user_id="kept-1")
    r = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to, "topics": ["offers"],
                                                                    "user_id": "gone-1"})
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    await sending.send_due(sessionmaker, settings)
    confirmation = next(m for m in mailbox.messages
                        if m["headers"].get("X-Tenure-Message-Id") == r.json()["message_id"])
    async with sessionmaker() as s, s.begin():  # campaign fills profile_id in; read a minute after sending
        await s.execute(text("update delivery.messages set sent_at = now() - interval '1 minute', "
                             "metadata = metadata || CAST(:m AS jsonb) where id = any(CAST(:ids AS uuid[]))"),
                        {"m": f'{{"profile_id": "{profile}"}}', "ids": [mid, r.json()["message_id"]]})
        await s.execute(text("update delivery.messages set sent_at = now() - interval '1 minute' where id = :id"),
                        {"id": live})
    click = _path(re.search(r'href="([^"]+/c/[^"]+)"', mail["html"]).group(1).replace("&amp;", "&"))
    pixel = _path(re.search(r'src="([^"]+/o/[^"]+\.gif)"', mail["html"]).group(1))
    confirm = re.search(r"(/confirm/[A-Za-z0-9_-]+)", confirmation["text"]).group(1)
    live_click = _path(re.search(r'href="([^"]+/c/[^"]+)"', live_mail["html"]).group(1).replace("&amp;", "&"))
    erased = await apps["delivery"].post("/v1/privacy/erasure", headers=internal_headers(ws), json={
        "profile_ids": [profile], "identities": ["gone-1", to]})
    assert erased.status_code == 200 and erased.json()["removed"]["messages"] == 2, erased.text

    async def held() -> list:
        async with sessionmaker() as s:
            counts = [(await s.execute(text(f"select count(*) from delivery.{table} where workspace_id = :ws"),
                                       {"ws": ws})).scalar_one()
                      for table in ("engagements", "feedback", "suppressions", "consent_log", "subscriptions")]
            confirmed = (await s.execute(text("select confirmed_at from delivery.opt_ins where workspace_id = :ws "
                                              "and address = :a"), {"ws": ws, "a": to})).scalar_one_or_none()
            return [*counts, confirmed]

    browser = {"User-Agent": "Mozilla/5.0", "Accept": "text/html,*/*;q=0.8"}
    before = await held()
    # the click of a message still held: 302 to its URL, recorded
    kept = await apps["delivery"].get(live_click, headers=browser)
    assert kept.status_code == 302 and kept.headers["location"] == "https://acme.example/post?id=1&x=2"
    after_live = await held()
    assert after_live[0] == before[0] + 1
    # the click of the erased message: the same redirect, to the signed URL, and nothing written
    gone = await apps["delivery"].get(click, headers=browser)
    assert gone.status_code == kept.status_code == 302, gone.text
    assert gone.headers["location"] == "https://acme.example/post?id=1&x=2"
    assert gone.headers["cache-control"] == "no-store"
    # a tampered link is refused as before, erased message or not: never an open redirect
    token, query = click.split("?")
    for forged in (f"{token}?u=https%3A%2F%2Fevil.example%2F", f"{token}?{query}%2Fx", f"{token[:-3]}AAA?{query}",
                   f"{token}?u=javascript%3Aalert(1)", f"{pixel[:-4].replace('/o/', '/c/')}?{query}"):
        for headers in ({}, browser):
            bad = await apps["delivery"].get(forged, headers=headers)
            assert bad.status_code == 400 and "location" not in bad.headers, (forged, bad.status_code)
    # the pixel: the image, nothing recorded
    opened = await apps["delivery"].get(pixel, headers=browser)
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
    assert opened.content.startswith(b"GIF89a")
    # the opt-in confirmation: a page saying it can no longer be used; neither GET nor POST confirms anything
    for method, headers in (("GET", browser), ("POST", browser), ("POST", {})):
        page = await apps["delivery"].request(method, confirm, headers=headers)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
        assert "has been erased" in page.text and "nothing has been subscribed" in page.text
        assert "<form" not in page.text and to not in page.text
    fr = await apps["delivery"].get(confirm, headers={"Accept-Language": "fr"})
    assert fr.status_code == 200 and "effacées" in fr.text
    assert (await apps["delivery"].get(confirm[:-3] + "AAA")).status_code == 400
    assert await held() == after_live  # nothing written for the erased message
    assert after_live[-1] is None  # (the opt-in went with the erasure: nothing was confirmed)


async def test_erasure_leaves_nothing_about_the_person_but_their_opt_outs(apps, workspace, sessionmaker, settings,
                                                                         mailbox, internal_client) -> None:
    """A GDPR erasure through ingest removes everything delivery holds about the person — their messages
    (a campaign's and a double opt-in confirmation sent under their userId), the open and the click on them
    (URL, user agent), the events for ingest still waiting to go, the double opt-in and the topics they
    chose — and keeps only what proves and honours their opt-outs: the suppression, the consent log, the topic
    they opted out of. The export lists the same records; nothing about them reaches ingest afterwards (it
    would recreate the profile), a retried erasure deletes nothing more, and another person is untouched."""
    from services.ingest import privacy as ingest_privacy

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, tag = workspace.workspace_id, uuid.uuid4().hex[:6]
    user, to, other, other_to = f"erase-{tag}", f"erase-{tag}@example.com", f"stay-{tag}", f"stay-{tag}@example.com"
    for u, email in ((user, to), (other, other_to)):
        r = await apps["ingest"].post("/v1/identify", auth=(workspace.write_key, ""),
                                      json={"userId": u, "traits": {"email": email}})
        assert r.status_code == 200, r.text
    pid = (await apps["ingest"].get(f"/v1/profiles/{user}", headers=h)).json()["id"]
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="offers",
                            metadata={"userId": user, "profile_id": pid})  # as campaign sends it
    kept, kept_mail = await _send(apps, h, sessionmaker, settings, mailbox, other_to, user_id=other)
    async with sessionmaker() as s, s.begin():  # read a minute after sending (not a mail server's prefetch)
        await s.execute(text("update delivery.messages set sent_at = now() - interval '1 minute' "
                             "where id = any(CAST(:ids AS uuid[]))"), {"ids": [mid, kept]})
    browser = {"User-Agent": "Mozilla/5.0 (erasure test)"}
    link = _path(re.search(r'href="([^"]+/c/[^"]+)"', mail["html"]).group(1).replace("&amp;", "&"))
    assert (await apps["delivery"].get(_path(re.search(r'src="([^"]+/o/[^"]+\.gif)"', mail["html"]).group(1)),
                                       headers=browser)).status_code == 200
    assert (await apps["delivery"].get(link, headers=browser)).status_code == 302
    other_link = re.search(r'href="([^"]+/c/[^"]+)"', kept_mail["html"]).group(1).replace("&amp;", "&")
    assert (await apps["delivery"].get(_path(other_link), headers=browser)).status_code == 302
    # a double opt-in, confirmed; its confirmation is sent under the userId only (not by a campaign)
    r = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to, "topics": ["product_news"],
                                                                    "user_id": user})
    assert r.status_code == 202, r.text
    confirmation_id = r.json()["message_id"]
    await sending.send_due(sessionmaker, settings)
    confirmation = next(m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == confirmation_id)
    confirm = re.search(r"(/confirm/[A-Za-z0-9_-]+)", confirmation["text"]).group(1)
    assert (await apps["delivery"].post(confirm)).status_code == 200
    # the preference page: every topic off, then product news back on (a choice); offers stay off (an opt-out)
    prefs = _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1))
    assert (await apps["delivery"].post(prefs, data={})).status_code == 200
    assert (await apps["delivery"].post(prefs, data={"topic": ["product_news"]})).status_code == 200
    # and a one-click unsubscribe from all marketing email
    assert (await apps["delivery"].post(_path(mail["headers"]["List-Unsubscribe"].strip("<>")),
                                        content=b"List-Unsubscribe=One-Click",
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
            ).status_code == 200
    assert (await apps["delivery"].post("/v1/devices", headers=h, json={
        "user": user, "platform": "android", "token": f"token-{tag}"})).status_code == 201

    async def feedback_for(u: str) -> tuple[int, int]:  # (events for ingest naming them, of which pending)
        async with sessionmaker() as s:
            row = (await s.execute(text(
                "select count(*), count(*) filter (where forwarded_at is null) from delivery.feedback "
                "where workspace_id = :ws and payload->>'userId' = :u"), {"ws": ws, "u": u})).one()
        return tuple(row)

    # opened, clicked, opted in, three topic changes, unsubscribed: none forwarded yet
    assert await feedback_for(user) == (7, 7)
    # the export (ingest's, which asks delivery) lists what is held about them
    export = (await apps["ingest"].get(f"/v1/privacy/export/{user}", headers=h)).json()["delivery"]
    assert sorted(m["id"] for m in export["messages"]) == sorted([mid, confirmation_id])
    assert len(export["attempts"]) == 2
    assert sorted((e["kind"], e["url"], e["user_agent"]) for e in export["engagements"]) == [
        ("clicked", "https://acme.example/post?id=1&x=2", browser["User-Agent"]),
        ("opened", None, browser["User-Agent"])]
    assert sorted((t["address"], t["topic"], t["subscribed"]) for t in export["subscriptions"]) == [
        (to, "offers", False), (to, "product_news", True)]
    assert [(o["address"], o["topics"], o["confirmed_at"] is not None) for o in export["opt_ins"]] == [
        (to, ["product_news"], True)]
    assert [(x["channel"], x["address"], x["reason"]) for x in export["suppressions"]] == [
        ("email", to, "unsubscribed")]
    assert [(c["action"], c["topic"]) for c in export["consent_log"]] == [
        ("confirmed", None), ("topic_off", "offers"), ("topic_off", "product_news"), ("topic_on", "product_news"),
        ("unsubscribed", None)]
    assert [d["token"] for d in export["devices"]] == [f"token-{tag}"]

    r = await apps["ingest"].post("/v1/privacy/erasure", headers=h, json={"user": user})  # (no suppression)
    assert r.status_code == 202, r.text
    await ingest_privacy.propagate(sessionmaker, internal_client)
    request = (await apps["ingest"].get(f"/v1/privacy/requests/{r.json()['id']}", headers=h)).json()
    assert request["status"] == "completed", request
    delivery = request["services"]["delivery"]
    assert (delivery["status"], delivery["attempts"], delivery["error"]) == ("done", 1, None), delivery
    assert delivery["removed"] == {
        "messages": 2, "attempts": 2, "early_events": 0, "engagements": 2, "feedback": 7, "opt_ins": 1,
        "subscriptions": 1, "devices": 1}

    # what is left: the opt-out records of the address, nothing else
    ids = {"profile_id": [pid], "identity": [user, to]}
    left = (await apps["delivery"].get("/v1/privacy/export", headers=internal_headers(ws), params=ids)).json()
    for kind in ("messages", "attempts", "engagements", "opt_ins", "devices"):
        assert left[kind] == [], kind
    assert [(t["topic"], t["subscribed"]) for t in left["subscriptions"]] == [("offers", False)]
    assert left["suppressions"] == export["suppressions"] and left["consent_log"] == export["consent_log"]
    assert await feedback_for(user) == (0, 0)
    async with sessionmaker() as s:
        engaged = (await s.execute(text("select message_id from delivery.engagements where workspace_id = :ws"),
                                   {"ws": ws})).scalars().all()
    assert [str(m) for m in engaged] == [kept]  # the other person's click stays
    assert await feedback_for(other) == (1, 1)
    # the forwarder sends nothing about them: ingest does not get a profile for them back
    while await feedback.forward(sessionmaker, internal_client):
        pass
    for ref in (user, to):
        assert (await apps["ingest"].get(f"/v1/profiles/{ref}", headers=h)).status_code == 404, ref
    events = (await apps["ingest"].get(f"/v1/profiles/{other}/events", headers=h)).json()["events"]
    assert [e["event"] for e in events if e["type"] == "track"] == ["Email Link Clicked"]
    # a retried erasure (its answer was lost) succeeds and deletes nothing more
    again = await apps["delivery"].post("/v1/privacy/erasure", headers=internal_headers(ws),
                                        json={"profile_ids": [pid], "identities": [user, to]})
    assert again.status_code == 200 and set(again.json()["removed"].values()) == {0}, again.text


async def test_upgrading_forgets_the_opens_and_events_earlier_erasures_left(apps, workspace, sessionmaker,
                                                                           settings) -> None:
    """Erasures before delivery_0006 deleted the messages but left their opens and clicks and the events
    about them for ingest. Only an erasure deletes messages, so the migration deletes exactly the rows that
    name a message gone, and nothing of a message still held (nor events that name no message)."""
    from alembic import command

    from shared.migrate import alembic_config

    ws = workspace.workspace_id
    r = await apps["delivery"].post("/v1/messages", headers={"Authorization": f"Bearer {workspace.secret_key}"},
                                    json={"idempotency_key": uuid.uuid4().hex, "to": "held@example.com",
                                          "subject": "S", "text": "x"})
    held, gone = r.json()["id"], str(uuid.uuid4())
    tag = uuid.uuid4().hex
    async with sessionmaker() as s, s.begin():
        for m in (held, gone):
            await s.execute(text("insert into delivery.engagements (workspace_id, message_id, kind, url, user_agent, "
                                 "bot) values (:ws, :m, 'clicked', 'https://acme.example/', :ua, false)"),
                            {"ws": ws, "m": m, "ua": tag})
        for props in ({"message_id": held}, {"message_id": gone}, {"address": "held@example.com"}):
            await s.execute(text("insert into delivery.feedback (id, workspace_id, payload, forwarded_at) "
                                 "values (:id, :ws, CAST(:p AS jsonb), now())"),  # (the forwarder leaves them)
                            {"id": uuid.uuid4(), "ws": ws, "p": json.dumps({"userId": tag, "properties": props})})
    cfg = alembic_config("delivery", settings.require_database_url())
    await asyncio.to_thread(command.downgrade, cfg, "delivery_0005")
    await asyncio.to_thread(command.upgrade, cfg, "head")
    async with sessionmaker() as s:
        engaged = (await s.execute(text("select message_id from delivery.engagements where user_agent = :t"),
                                   {"t": tag})).scalars().all()
        events = (await s.execute(text("select payload->'properties' from delivery.feedback "
                                       "where payload->>'userId' = :t"), {"t": tag})).scalars().all()
    assert [str(m) for m in engaged] == [held]
    assert sorted(events, key=json.dumps) == [{"address": "held@example.com"}, {"message_id": held}]


async def test_head_on_recipient_links_answers_as_get_and_records_nothing(apps, workspace, sessionmaker, settings,
                                                                          mailbox) -> None:
    """Mail security scanners and link checkers send HEAD to every link of a message. Each recipient link answers
    it as it answers GET — the same status and headers (Location, Content-Type, Content-Length, Cache-Control), no
    body — but a HEAD is nobody reading the mail: no open, no click, no event for ingest, nothing confirmed or
    unsubscribed. A bad token is the same 400 as for GET."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    ws, to = workspace.workspace_id, f"head-{uuid.uuid4().hex[:6]}@example.com"
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, user_id="head-1")
    r = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to, "topics": ["offers"],
                                                                    "user_id": "head-1"})
    assert r.status_code == 202, r.text
    await sending.send_due(sessionmaker, settings)
    confirmation = next(m for m in mailbox.messages
                        if m["headers"].get("X-Tenure-Message-Id") == r.json()["message_id"])
    async with sessionmaker() as s, s.begin():  # read a minute after sending (an open then is not a prefetch)
        await s.execute(text("update delivery.messages set sent_at = now() - interval '1 minute' "
                             "where workspace_id = :ws"), {"ws": ws})
    click = _path(re.search(r'href="([^"]+/c/[^"]+)"', mail["html"]).group(1).replace("&amp;", "&"))
    links = {
        "pixel": _path(re.search(r'src="([^"]+/o/[^"]+\.gif)"', mail["html"]).group(1)),
        "click": click,
        "unsubscribe": _path(mail["headers"]["List-Unsubscribe"].strip("<>")),
        "preferences": _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1)),
        "confirm": re.search(r"(/confirm/[A-Za-z0-9_-]+)", confirmation["text"]).group(1),
        "forged click": click.split("?")[0] + "?u=https%3A%2F%2Fevil.example%2F",
        "bad unsubscribe": "/u/not-a-token",
    }

    async def held() -> list:
        async with sessionmaker() as s:
            counts = [(await s.execute(text(f"select count(*) from delivery.{table} where workspace_id = :ws"),
                                       {"ws": ws})).scalar_one()
                      for table in ("engagements", "feedback", "suppressions", "consent_log")]
            confirmed = (await s.execute(text("select confirmed_at from delivery.opt_ins where workspace_id = :ws "
                                              "and address = :a"), {"ws": ws, "a": to})).scalar_one()
            return [*counts, confirmed]

    compared = ("content-type", "content-length", "location", "cache-control", "referrer-policy")
    for headers in ({"User-Agent": "Mozilla/5.0", "Accept": "text/html,*/*;q=0.8"}, {"User-Agent": "Mozilla/5.0"}):
        for name, link in links.items():
            before = await held()
            head = await apps["delivery"].head(link, headers=headers)
            assert head.status_code != 405, (name, head.text)
            assert head.content == b"", name
            assert await held() == before, f"HEAD on the {name} link recorded something"
            get = await apps["delivery"].get(link, headers=headers)
            assert (head.status_code, name) == (get.status_code, name)
            assert {k: head.headers.get(k) for k in compared} == {k: get.headers.get(k) for k in compared}, name
    assert (await apps["delivery"].head(links["click"])).headers["location"] == "https://acme.example/post?id=1&x=2"
    assert (await apps["delivery"].head(links["forged click"])).status_code == 400
    # the GETs (from a browser) did record the open and the click: the same links, only the method differs
    async with sessionmaker() as s:
        kinds = (await s.execute(text("select kind from delivery.engagements where message_id = :m and not bot "
                                      "order by kind"), {"m": mid})).scalars().all()
    assert kinds == ["clicked", "clicked", "opened", "opened"]


async def test_the_footer_and_the_pages_it_opens_speak_the_recipients_language(apps, workspace, sessionmaker,
                                                                               settings, mailbox) -> None:
    """A French campaign email ended in "Unsubscribe · Email preferences", and its links opened English pages for
    an English-language browser: the message's ``locale`` now sets both. Without one, English and the browser's."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"lea-{uuid.uuid4().hex[:6]}@example.com"
    mid, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, locale="fr-CA")
    assert (await apps["delivery"].get(f"/v1/messages/{mid}", headers=h)).json()["locale"] == "fr-CA"
    assert ">Se désinscrire</a> · " in mail["html"] and ">Préférences e-mail</a>" in mail["html"]
    assert "Se désinscrire: http" in mail["text"] and "Unsubscribe" not in mail["text"]
    unsub_url = mail["headers"]["List-Unsubscribe"].strip("<>")
    assert unsub_url.endswith("?lang=fr")
    english = {"Accept-Language": "en-US,en;q=0.9", "Accept": "text/html"}
    page = await apps["delivery"].get(_path(unsub_url), headers=english)
    assert page.status_code == 200 and 'lang="fr"' in page.text and "Désinscrire" in page.text
    manage = re.search(r'href="\.\./p/([^"]+)"', page.text).group(1)
    assert manage.endswith("?lang=fr")  # the page's own link to the preferences keeps the language
    prefs = await apps["delivery"].get(f"/p/{manage}", headers=english)
    assert prefs.status_code == 200 and 'lang="fr"' in prefs.text
    done = await apps["delivery"].post(_path(unsub_url), content=b"List-Unsubscribe=One-Click",
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200 and 'lang="fr"' in done.text

    other = f"ann-{uuid.uuid4().hex[:6]}@example.com"
    _, plain = await _send(apps, h, sessionmaker, settings, mailbox, other)
    assert ">Unsubscribe</a> · " in plain["html"] and "?lang=" not in plain["headers"]["List-Unsubscribe"]
    german = await apps["delivery"].get(_path(plain["headers"]["List-Unsubscribe"].strip("<>")),
                                        headers={"Accept-Language": "de-DE"})
    assert 'lang="de"' in german.text


async def test_marketing_email_carries_the_senders_postal_address(apps, workspace, sessionmaker, settings,
                                                                   mailbox) -> None:
    """CAN-SPAM: every commercial email gives a valid physical postal address. Once the workspace sets
    ``postal_address`` it ends every marketing email (or stands where the template put ``%%postal_address%%``);
    transactional mail is left as written."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    _, before = await _send(apps, h, sessionmaker, settings, mailbox, f"pa0-{uuid.uuid4().hex[:6]}@example.com")
    assert "Main St" not in before["html"] + before["text"]
    address = "Acme & Co, 1 Main St\nSpringfield, IL 62701, USA"
    async with sessionmaker() as s, s.begin():
        await s.execute(text("update core.workspaces set settings = settings || jsonb_build_object('postal_address', "
                             "CAST(:a AS text)) where id = :ws"), {"a": address, "ws": workspace.workspace_id})
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, f"pa1-{uuid.uuid4().hex[:6]}@example.com")
    assert "Acme &amp; Co, 1 Main St<br>Springfield, IL 62701, USA" in mail["html"]
    assert mail["text"].replace("\r\n", "\n").rstrip().endswith(address)
    _, placed = await _send(apps, h, sessionmaker, settings, mailbox, f"pa2-{uuid.uuid4().hex[:6]}@example.com",
                            html="<html><body><p>Hi</p><footer>%%postal_address%%</footer></body></html>",
                            text="Hi\n\n%%postal_address%%")
    assert "<footer>Acme &amp; Co, 1 Main St<br>Springfield" in placed["html"]
    assert placed["html"].count("Main St") == 1 and placed["text"].count("Main St") == 1
    _, receipt = await _send(apps, h, sessionmaker, settings, mailbox, f"pa3-{uuid.uuid4().hex[:6]}@example.com",
                             message_type="transactional")
    assert "Main St" not in receipt["html"] + receipt["text"]


async def test_a_message_on_a_topic_the_workspace_does_not_have_is_refused(apps, workspace, sessionmaker, settings,
                                                                          mailbox) -> None:
    """`"topic": "nonexistent"` was queued and sent to an address that had opted out of offers, and no one could
    opt out of it (the preference page lists the workspace's topics only). It is now a 422 naming `topic` (in a
    batch, that message's `invalid`), stored nowhere, as is a double opt-in to such a topic; messages without a
    topic (transactional mail) are unchanged. A workspace that sets its own topics has those, not the default."""
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    to = f"topics-{uuid.uuid4().hex[:6]}@example.com"
    _, mail = await _send(apps, h, sessionmaker, settings, mailbox, to, topic="offers")
    prefs = _path(re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1))
    assert (await apps["delivery"].post(prefs, data={"topic": ["product_news"]})).status_code == 200  # offers off

    def msg(**kw) -> dict:
        return {"idempotency_key": uuid.uuid4().hex, "to": to, "subject": "Deal", "text": "x", **kw}

    single = await apps["delivery"].post("/v1/messages", headers=h, json=msg(topic="nonexistent"))
    assert single.status_code == 422 and single.headers["content-type"].startswith("application/problem+json")
    assert single.json()["errors"][0]["loc"] == ["body", "topic"], single.text
    assert "'nonexistent' is not one of the workspace's topics (product_news, offers)" in single.json()["detail"]
    batch = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg(topic="offerz"), msg(topic="offers"), msg(message_type="transactional"), msg(topic="product_news")]})
    results = batch.json()["results"]
    assert [r["result"] for r in results] == ["invalid", "suppressed", "queued", "queued"], results
    assert results[0]["error"].startswith("topic: 'offerz' is not one of the workspace's topics")
    opt_in = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to, "topics": ["offers", "offerz"]})
    assert opt_in.status_code == 422 and opt_in.json()["errors"][0]["loc"] == ["body", "topics", "1"], opt_in.text
    async with sessionmaker() as s:
        topics = (await s.execute(text("select topic from delivery.messages where workspace_id = :ws and "
                                       "to_address = :to"), {"ws": workspace.workspace_id, "to": to})).scalars().all()
        asked = (await s.execute(text("select count(*) from delivery.opt_ins where workspace_id = :ws"),
                                 {"ws": workspace.workspace_id})).scalar_one()
    assert sorted(t or "-" for t in topics) == ["-", "offers", "offers", "product_news"] and asked == 0

    async with sessionmaker() as s, s.begin():
        await s.execute(text("update core.workspaces set settings = settings || CAST(:v AS jsonb) where id = :ws"),
                        {"ws": workspace.workspace_id, "v": json.dumps({"topics": [
                            {"id": "news", "label": {"en": "News"}}]})})
    own = await apps["delivery"].post("/v1/messages/batch", headers=h, json={"messages": [
        msg(topic="news"), msg(topic="offers")]})
    assert [r["result"] for r in own.json()["results"]] == ["queued", "invalid"], own.text
    assert "(news)" in own.json()["results"][1]["error"]


async def test_a_double_opt_in_takes_any_locale_and_speaks_the_closest_language(apps, workspace, sessionmaker,
                                                                               settings, mailbox) -> None:
    """`POST /v1/opt-ins` took `en`, `fr` or `de` alone: `fr-CA`, `es` or `en_US` was a 422 (`Input should be
    'en', 'fr' or 'de'`), though a message takes any BCP 47 locale. It reads them as a message's `locale` now,
    and the confirmation and its page are in the closest language there are texts for (English otherwise); a
    locale that is none is still a 422 naming `locale`."""
    from services.delivery.texts import TEXTS

    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    expected = {"fr-CA": "fr", "es": "en", "en_US": "en", "de-AT": "de", "fr_FR.UTF-8": "fr"}
    sent = {}
    for locale in expected:
        to = f"optin-{uuid.uuid4().hex[:6]}@example.com"
        r = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": to, "locale": locale})
        assert r.status_code == 202 and r.json()["status"] == "pending", (locale, r.text)
        sent[locale] = r.json()["message_id"]
    await sending.send_due(sessionmaker, settings)
    for locale, lang in expected.items():
        mail = next(m for m in mailbox.messages if m["headers"].get("X-Tenure-Message-Id") == sent[locale])
        assert mail["subject"] == TEXTS[lang]["confirm_subject"], locale
        confirm = re.search(r"(/confirm/[A-Za-z0-9_-]+\?lang=\w+)", mail["text"]).group(1)
        assert confirm.endswith(f"?lang={lang}"), (locale, confirm)
        page = await apps["delivery"].get(confirm, headers={"Accept-Language": "ja"})
        assert page.status_code == 200 and f'lang="{lang}"' in page.text, locale
    bad = await apps["delivery"].post("/v1/opt-ins", headers=h, json={"email": "x@example.com", "locale": "fr CA"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "locale"], bad.text
