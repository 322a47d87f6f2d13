"""The pages a recipient reaches from an email (preference page, unsubscribe), in headless Chromium against a
real delivery server: the links are taken from a sent email, as the recipient would follow them."""

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from services.delivery import sending
from services.delivery.app import create_app as delivery_app
from shared.embedded import free_port
from shared.testing import http_server

pytestmark = pytest.mark.e2e

HOSTILE_LABEL = "<script>document.title='owned'</script> \"Deals\" & 'more'"


@pytest.fixture(scope="module")
def public(settings) -> Iterator[tuple[str, Any]]:
    """Delivery on loopback, its public URL (the one in the links) pointing at itself."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s = settings.model_copy(update={"delivery_public_url": url})
    with http_server(delivery_app(s), port=port):
        yield url, s


async def _links(public: tuple[str, Any], workspace, sessionmaker, mailbox, to: str) -> tuple[str, str]:
    """(preference page, unsubscribe) URLs of a marketing email sent to ``to``."""
    url, s = public
    async with sessionmaker() as session, session.begin():
        await session.execute(text("update core.workspaces set settings = settings || CAST(:v AS jsonb) "
                                   "where id = :ws"), {"ws": workspace.workspace_id, "v": json.dumps({"topics": [
                                       {"id": "offers", "label": {"en": HOSTILE_LABEL}},
                                       {"id": "news", "label": {"en": "News"}}]})})
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{url}/v1/messages", headers={"Authorization": f"Bearer {workspace.secret_key}"}, json={
            "idempotency_key": uuid.uuid4().hex, "to": to, "subject": "Monthly news", "topic": "offers",
            "html": "<p>News</p>", "text": "News"})
        assert r.status_code == 202, r.text
    await sending.send_due(sessionmaker, s)
    mail = next(m for m in mailbox.messages if m["to"] == [to])
    return re.search(r'href="([^"]+/p/[^"]+)"', mail["html"]).group(1), mail["headers"]["List-Unsubscribe"][1:-1]


def _submit(browser: Any) -> str:
    """Click the form's button, wait for the page the POST answers (every one says how it went in a
    ``role=status`` line, which the page asking has not), and return its text."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element("css selector", "button[type=submit]").click()
    # (while the page is being replaced chromedriver may answer with an error about the old document: wait on)
    WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
        and b.find_elements("css selector", "main [role=status]"))
    return browser.find_element("tag name", "main").text


async def test_recipient_pages_fit_a_phone_screen(public, workspace, sessionmaker, mailbox) -> None:
    """An email address is one long word: without a break inside it the page scrolls sideways on a phone."""
    from tests.e2e.browser import headless_chromium

    to = f"christopher.alexanderson{uuid.uuid4().hex[:6]}@mail.companyname.example.com"
    prefs, unsub = await _links(public, workspace, sessionmaker, mailbox, to)

    def widths() -> dict[str, list[int]]:
        browser = headless_chromium(phone_width=360)
        measure = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        try:
            seen = {}
            browser.get(prefs)
            seen["preferences"] = browser.execute_script(measure)
            _submit(browser)
            seen["preferences saved"] = browser.execute_script(measure)
            browser.get(unsub)
            seen["unsubscribe"] = browser.execute_script(measure)
            _submit(browser)
            seen["unsubscribed"] = browser.execute_script(measure)
            return seen
        finally:
            browser.quit()

    seen = await asyncio.to_thread(widths)
    assert {page for page, (scroll, client) in seen.items() if scroll > client} == set(), seen


async def test_recipient_pages_work_without_javascript(public, workspace, sessionmaker, mailbox) -> None:
    """Scripts off: the forms post and answer their confirmation; a topic label is shown as text, never run."""
    from tests.e2e.browser import headless_chromium

    to = f"nojs-{uuid.uuid4().hex[:6]}@example.com"
    prefs, unsub = await _links(public, workspace, sessionmaker, mailbox, to)

    def use() -> dict[str, Any]:
        browser = headless_chromium(javascript=False)
        try:
            seen: dict[str, Any] = {}
            browser.get(prefs)
            seen["labels"] = [e.text for e in browser.find_elements("css selector", "fieldset label")]
            seen["scripts"] = len(browser.find_elements("tag name", "script"))
            browser.find_element("css selector", "input[name=topic][value=offers]").click()
            seen["saved"] = _submit(browser)
            seen["title"] = browser.title
            browser.get(unsub)
            seen["unsubscribed"] = _submit(browser)
            browser.get(prefs[:-4] + "AAAA")  # a tampered link
            seen["tampered"] = browser.find_element("tag name", "main").text
            return seen
        finally:
            browser.quit()

    seen = await asyncio.to_thread(use)
    assert seen["labels"] == [HOSTILE_LABEL, "News"] and seen["scripts"] == 0
    assert "Your preferences are saved." in seen["saved"] and seen["title"] == "Email preferences"
    assert seen["unsubscribed"].endswith(f"{to} is unsubscribed from marketing email.")
    assert seen["tampered"].endswith("This link is not valid.")
    async with httpx.AsyncClient(timeout=10) as c:
        page = await c.get(prefs[:-4] + "AAAA", headers={"Accept": "text/html"})
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
        choices = (await c.get(f"{public[0]}/v1/preferences/{to}",
                               headers={"Authorization": f"Bearer {workspace.secret_key}"})).json()
    assert {t["id"]: t["subscribed"] for t in choices["topics"]} == {"offers": False, "news": True}
    assert choices["unsubscribed"] is True


async def test_double_opt_in_page_speaks_the_language_of_its_email(public, workspace, sessionmaker, mailbox) -> None:
    """The confirmation email is written in the opt-in's ``locale``; the page its link opens must go on in that
    language, whatever the browser asks for (a French reader's phone set to English)."""
    from tests.e2e.browser import headless_chromium

    url, s = public
    to = f"optin-{uuid.uuid4().hex[:6]}@example.com"
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{url}/v1/opt-ins", headers={"Authorization": f"Bearer {workspace.secret_key}"},
                         json={"email": to, "topics": ["product_news"], "locale": "fr"})
        assert r.status_code == 202, r.text
    await sending.send_due(sessionmaker, s)
    mail = next(m for m in mailbox.messages if m["to"] == [to])
    assert mail["subject"] == "Confirmez votre inscription"
    link = re.search(r"https?://\S+/confirm/\S+", mail["text"]).group(0)

    def use() -> tuple[str, str, str]:
        browser = headless_chromium(language="en-US")
        try:
            browser.get(link)
            lang, question = browser.find_element("tag name", "html").get_attribute("lang"), browser.title
            return lang, question + "|" + browser.find_element("tag name", "main").text, _submit(browser)
        finally:
            browser.quit()

    lang, asked, done = await asyncio.to_thread(use)
    assert lang == "fr", asked
    assert f"Confirmer que {to} souhaite recevoir nos e-mails ?" in asked
    assert done.endswith(f"Merci : {to} est inscrit.")


async def test_the_preference_page_says_a_complaint_blocks_the_address(public, workspace, sessionmaker,
                                                                       mailbox) -> None:
    """After a spam complaint the page said "Your preferences are saved." while "Unsubscribe from all" stayed
    ticked. In a browser now: the page says why no email goes to the address and whom to write to, the box
    cannot be unticked, and saving says the topics apply only once the block is lifted."""
    from tests.e2e.browser import headless_chromium

    url, s = public
    to = f"spam-{uuid.uuid4().hex[:6]}@example.com"
    prefs, _ = await _links(public, workspace, sessionmaker, mailbox, to)
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(f"{url}/v1/suppressions", headers={"Authorization": f"Bearer {workspace.secret_key}"},
                         json={"address": to, "reason": "complaint"})
        assert r.status_code == 201, r.text

    def use() -> dict[str, Any]:
        browser = headless_chromium(javascript=False)
        try:
            seen: dict[str, Any] = {}
            browser.get(prefs)
            seen["note"] = browser.find_element("css selector", "main [role=note]").text
            box = browser.find_element("css selector", "input[name=unsubscribe_all]")
            box.click()  # (a disabled box does not change)
            seen["all_off"] = (box.is_selected(), box.is_enabled())
            browser.find_element("css selector", "input[name=topic][value=news]").click()  # news off
            seen["saved"] = _submit(browser)
            return seen
        finally:
            browser.quit()

    seen = await asyncio.to_thread(use)
    assert seen["note"].startswith(f"We send no email to {to}: our email to it was reported as spam."), seen
    assert s.email_from.split("<")[-1].rstrip(">") in seen["note"]
    assert seen["all_off"] == (True, False)
    assert "Your preferences are saved." not in seen["saved"]
    assert "Your topic choices are kept, but they take effect only if this block is lifted." in seen["saved"]
    assert "reported as spam" in seen["saved"]
    async with httpx.AsyncClient(timeout=10) as c:
        choices = (await c.get(f"{url}/v1/preferences/{to}",
                               headers={"Authorization": f"Bearer {workspace.secret_key}"})).json()
    assert choices["suppression"] == "complaint"
    assert {t["id"]: t["subscribed"] for t in choices["topics"]} == {"offers": True, "news": False}


async def test_the_dev_inbox_opens_a_mails_links_in_a_tab_where_their_forms_work(public, workspace, sessionmaker,
                                                                                mailbox) -> None:
    """Trying the preference page from `tenure dev`'s inbox: a mail's link opens in a tab of its own, outside the
    mail's sandboxed frame (no scripts there), and the page's form posts. In the frame, the form was blocked
    ("the form's frame is sandboxed") and the inbox's refresh took the page away."""
    from services.devinbox.inbox import create_inbox_app
    from tests.e2e.browser import headless_chromium

    to = f"inbox-{uuid.uuid4().hex[:6]}@example.com"
    await _links(public, workspace, sessionmaker, mailbox, to)

    def use(inbox: str) -> dict[str, Any]:
        from selenium.webdriver.support.ui import WebDriverWait

        browser = headless_chromium()
        try:
            browser.get(inbox)
            frame = browser.find_element("css selector", "iframe")
            seen = {"sandbox": frame.get_attribute("sandbox")}
            browser.switch_to.frame(frame)
            browser.find_element("partial link text", "preferences").click()
            WebDriverWait(browser, 15).until(lambda b: len(b.window_handles) == 2)
            browser.switch_to.window(browser.window_handles[1])
            WebDriverWait(browser, 15).until(lambda b: b.find_elements("css selector", "button[type=submit]"))
            browser.find_element("css selector", "input[name=topic][value=news]").click()
            seen["saved"] = _submit(browser)
            return seen
        finally:
            browser.quit()

    with http_server(create_inbox_app(mailbox)) as port:
        seen = await asyncio.to_thread(use, f"http://127.0.0.1:{port}/")
    assert "allow-scripts" not in seen["sandbox"] and "allow-popups-to-escape-sandbox" in seen["sandbox"]
    assert "Your preferences are saved." in seen["saved"]


async def test_the_api_docs_render_without_internet(public) -> None:
    """`/docs` is Swagger UI with its script and styles served by the service: FastAPI's default page loads them
    from a CDN, and was blank on a machine without internet (this one, an air-gapped cluster)."""
    from tests.e2e.browser import headless_chromium

    url, _ = public

    def operations() -> dict[str, Any]:
        from selenium.webdriver.support.ui import WebDriverWait

        browser = headless_chromium()
        try:
            browser.get(f"{url}/docs")
            WebDriverWait(browser, 30).until(lambda b: b.find_elements("css selector", ".opblock"))
            scripts = [e.get_attribute("src") for e in browser.find_elements("tag name", "script")
                       if e.get_attribute("src")]
            return {"ops": len(browser.find_elements("css selector", ".opblock")), "scripts": scripts,
                    "title": browser.find_element("css selector", ".info .title").text}
        finally:
            browser.quit()

    seen = await asyncio.to_thread(operations)
    assert seen["ops"] >= 20 and seen["title"].startswith("Tenure delivery"), seen
    assert all(s.startswith(url) for s in seen["scripts"]), seen["scripts"]
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.get(f"{url}/docs/assets/swagger-ui.css")).status_code == 200
        assert (await c.get(f"{url}/redoc")).status_code == 404  # (no page that would need a CDN)
