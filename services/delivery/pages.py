"""The pages and links recipients reach from a message: one-click unsubscribe (RFC 8058), the preference
page, the open pixel and the click redirect. No login: every URL carries a signed token (signing.py).

The pages are server-rendered HTML that works without JavaScript, in the recipient's language (English,
French or German, from ``?lang=`` or ``Accept-Language``), with labelled form controls.
A GET never changes consent (mail scanners follow links); only a POST does. Every link answers HEAD (what
security scanners and link checkers send) as it answers GET, without a body, and a HEAD records nothing: no open,
no click.

Emails sent before an erasure keep their links after the message is gone: a click still redirects to its
(signed) URL, the pixel still answers its image, and the unsubscribe, preference and confirmation links
answer a page saying the data was erased. None of them writes anything then.
"""

import re
from collections.abc import Callable
from datetime import UTC, datetime
from html import escape
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from services.delivery import consent, links, mailer, signing
from services.delivery.texts import TEXTS, language_of
from shared.db import SessionDep
from shared.errors import AppError, BadRequest, BodyTooLarge, NotFound, problem_schema
from shared.html_text import url_as_parsed
from shared.validation import url_text_unchecked

router = APIRouter(tags=["recipient pages"])

_HEAD_TOO = " HEAD answers the same status and headers, without a body, and records nothing."
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def _link(path: str, *, description: str, **kw: Any) -> Callable[[_Endpoint], _Endpoint]:
    """A recipient link's GET route, answering HEAD too: mail security scanners and link checkers send HEAD to the
    links of a message. HEAD runs the same endpoint (the same status and headers; the server sends no body), which
    must then change nothing (it checks ``request.method``). The HEAD route stays out of the OpenAPI document (an
    operation id names one operation); the GET operation's description says it is there."""
    def register(endpoint: _Endpoint) -> _Endpoint:
        router.add_api_route(path, endpoint, methods=["GET"], description=description + _HEAD_TOO, **kw)
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False,
                             **{k: v for k, v in kw.items() if k != "operation_id"})
        return endpoint

    return register


def _problem_or_page(description: str) -> dict[str, Any]:
    doc = problem_schema(description + "; a browser (Accept: text/html) gets the same as a page in its language")
    doc["content"]["text/html"] = {"schema": {"type": "string"}}
    return doc


# a link whose message is gone (erased) is not an error: a click still redirects, a page says so (``_erased``)
_LINK_ERRORS: dict[int | str, dict[str, Any]] = {400: _problem_or_page("The link is not valid (bad or tampered token)")}
_CONFIRM_ERRORS = {**_LINK_ERRORS, 404: _problem_or_page("No double opt-in was requested for this address")}

PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
         b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
_BOT = re.compile(r"bot|crawl|spider|preview|prefetch|scan|barracuda|proofpoint|mimecast|safelinks", re.I)
PREFETCH_WINDOW_S = 2.0  # an "open" this soon after sending is a server fetching the mail, not a person



def language(request: Request, explicit: str | None) -> str:
    candidates = [explicit or ""] + [part.split(";")[0].strip() for part in
                                     request.headers.get("accept-language", "").split(",")]
    return next((code for c in candidates if (code := language_of(c))), "en")


def _page(lang: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            # an email address is one long word: it may break anywhere rather than widen a phone's page
            '<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;'
            'line-height:1.5;overflow-wrap:anywhere}button{font-size:1rem;padding:.5rem 1rem}'
            'fieldset{border:1px solid #ccc}label{display:block;margin:.4rem 0}</style></head>'
            f'<body><main><h1>{escape(title)}</h1>{body}</main></body></html>')
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store",
                                                           "Referrer-Policy": "no-referrer"})


async def _message_or_none(session: AsyncSession, subject: signing.Subject, *, writing: bool = False
                           ) -> dict[str, Any] | None:
    """The message a verified token names; None when it is gone. Only an erasure deletes messages, and only
    we sign tokens, so a valid token without its message belongs to an erased recipient.

    ``writing``: the caller records something about the message (a click, a consent change). The row is
    then locked to read it, so an erasure committing meanwhile is seen (the message is gone and nothing is
    written), which the statement's snapshot alone would miss; an erasure starting later waits for us."""
    row = (await session.execute(text(
        "select m.id, m.workspace_id, m.to_address, m.from_address, m.channel, m.metadata, m.sent_at, w.settings "
        "from delivery.messages m left join core.workspaces w on w.id = m.workspace_id "
        "where m.workspace_id = :ws and m.id = :id" + (" for key share of m" if writing else "")),
        {"ws": subject.workspace_id, "id": subject.message_id})).mappings().first()
    return dict(row) if row is not None else None


def _erased(code: str, text_key: str = "erased") -> HTMLResponse:
    """What an unsubscribe, preference or confirmation link of an erased recipient answers (also to RFC 8058's
    POST: a 2xx, as the one-click protocol expects). Nothing is written: the message, the only thing tying the
    link to an address, is gone, and storing the click would keep data about someone who asked for none."""
    return _page(code, TEXTS[code]["title"], f'<p role="status">{TEXTS[code][text_key]}</p>')


def install_page_errors(app: FastAPI) -> None:
    """A person who opens a broken or stale link in a browser gets a page in their language with the same
    status, not a problem document; API clients (anything not asking for HTML) still get problem+json."""
    problem = app.exception_handlers[AppError]

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AppError)
        if request.scope.get("route") in router.routes and "text/html" in request.headers.get("accept", ""):
            code = language(request, request.query_params.get("lang"))
            t = TEXTS[code]
            return _page(code, t["title"], f'<p role="alert">{t["gone" if exc.status == 404 else "invalid"]}</p>',
                         status=exc.status)
        return await problem(request, exc)

    app.add_exception_handler(AppError, handler)


def _verify(request: Request, purpose: str, token: str, extra: str = "") -> signing.Subject:
    try:
        return signing.verify(request.app.state.settings.signing_secrets, purpose, token, extra)
    except signing.BadToken:
        raise BadRequest("This link is not valid") from None


@_link("/u/{token}", response_class=HTMLResponse, operation_id="unsubscribe_page", responses=_LINK_ERRORS,
       summary="Unsubscribe landing page (asks; a GET changes nothing)",
       description="The page asking to unsubscribe; its button POSTs to the same URL.")
async def unsubscribe_page(token: str, request: Request, session: SessionDep,
                           lang: Annotated[str | None, Query()] = None) -> HTMLResponse:
    t = TEXTS[language(request, lang)]
    async with session.begin():
        message = await _message_or_none(session, _verify(request, "unsubscribe", token))
    if message is None:
        return _erased(language(request, lang))
    address = escape(message["to_address"])
    return _page(language(request, lang), t["title"],
                 f'<form method="post"><p>{t["unsub_q"].format(address=address)}</p>'
                 f'<button type="submit">{t["unsub_btn"]}</button></form>'
                 f'<p><a href="../p/{_preferences_token(request, message)}?lang={language(request, lang)}">'
                 f'{t["manage"]}</a></p>')


def _preferences_token(request: Request, message: dict[str, Any]) -> str:
    return signing.sign(request.app.state.settings.signing_secret, "preferences",
                        signing.Subject(message["workspace_id"], message["id"]))


@router.post("/u/{token}", response_class=HTMLResponse, operation_id="unsubscribe_one_click",
             responses=_LINK_ERRORS,
             summary="One-click unsubscribe (RFC 8058 POST `List-Unsubscribe=One-Click`, or the page's button)")
async def unsubscribe(token: str, request: Request, session: SessionDep,
                      lang: Annotated[str | None, Query()] = None) -> HTMLResponse:
    t = TEXTS[language(request, lang)]
    subject = _verify(request, "unsubscribe", token)
    # RFC 8058: the mailbox provider POSTs List-Unsubscribe=One-Click, url-encoded or (Gmail may) as
    # multipart/form-data; the page's button posts an empty form. Both unsubscribe, and so does a POST
    # whose body cannot be read (a multipart without its boundary): the signed URL is what counts.
    try:
        one_click = (await request.form()).get("List-Unsubscribe") == "One-Click"
    except BodyTooLarge:
        raise  # over the route's limit: a 413, nothing written
    except (HTTPException, MultiPartException):  # (Starlette raises the first inside an app)
        one_click = True  # only a machine posts a broken form; the page's own button never does
    source = "one_click" if one_click else "unsubscribe_page"
    async with session.begin():
        message = await _message_or_none(session, subject, writing=True)
        if message is None:
            return _erased(language(request, lang))
        await consent.suppress(session, subject.workspace_id, message["channel"], message["to_address"],
                               "unsubscribed", source, consent.identity_of(message), via=consent.via_message(message))
    return _page(language(request, lang), t["title"],
                 f'<p role="status">{t["unsub_done"].format(address=escape(message["to_address"]))}</p>')


def _blocked(prefs: dict[str, Any]) -> str | None:
    """The address's suppression the recipient cannot lift from the page (a hard bounce, a complaint, one added
    by hand), or None: only their own unsubscribe is theirs to undo."""
    reason = prefs["suppression"]
    return reason if reason is not None and reason != "unsubscribed" else None


def _blocked_note(t: dict[str, str], prefs: dict[str, Any], message: dict[str, Any]) -> str:
    """Why the address gets no marketing email whatever it chooses here, and whom to write to about it (the
    address the email came from)."""
    reason = _blocked(prefs)
    key = f"blocked_{reason}" if f"blocked_{reason}" in t else "blocked_manual"
    contact = mailer.split_address(message["from_address"])[1] or message["from_address"]
    return (f'<p role="note">{t[key].format(address=escape(prefs["address"]))} '
            f'{t["blocked_contact"].format(contact=escape(contact))}</p>')


def _preference_form(t: dict[str, str], lang: str, prefs: dict[str, Any], message: dict[str, Any],
                     notice: str = "") -> str:
    def label(tp: dict[str, Any]) -> str:
        return escape(tp["label"].get(lang) or tp["label"].get("en") or tp["id"])

    boxes = "".join(f'<label><input type="checkbox" name="topic" value="{escape(tp["id"])}"'
                    f'{" checked" if tp["subscribed"] else ""}> {label(tp)}</label>' for tp in prefs["topics"])
    # blocked: the page cannot change it, so "unsubscribe from all" is shown as it is (on) and cannot be unticked
    blocked = _blocked(prefs) is not None
    all_off = (" checked" if prefs["unsubscribed"] else "") + (" disabled" if blocked else "")
    status = f'<p role="status">{escape(notice)}</p>' if notice else ""
    note = _blocked_note(t, prefs, message) if blocked else ""
    return (f'{status}{note}<form method="post"><p>{escape(prefs["address"])}</p><fieldset>'
            f'<legend>{t["topics"]}</legend>{boxes}</fieldset><label><input type="checkbox" name="unsubscribe_all" '
            f'value="1"{all_off}> {t["all_off"]}</label><button type="submit">{t["save"]}</button></form>')


@_link("/p/{token}", response_class=HTMLResponse, operation_id="preference_page", responses=_LINK_ERRORS,
       summary="The preference page: topics and unsubscribe-from-all",
       description="The form of the address's topics and unsubscribe-from-all; it POSTs to the same URL.")
async def preference_page(token: str, request: Request, session: SessionDep,
                          lang: Annotated[str | None, Query()] = None) -> HTMLResponse:
    code = language(request, lang)
    async with session.begin():
        message = await _message_or_none(session, _verify(request, "preferences", token))
        if message is None:
            return _erased(code)
        prefs = await consent.preferences(session, message["workspace_id"], message["to_address"],
                                          message["settings"])
    return _page(code, TEXTS[code]["title"], _preference_form(TEXTS[code], code, prefs, message))


@router.post("/p/{token}", response_class=HTMLResponse, operation_id="save_preferences", responses=_LINK_ERRORS,
             summary="Save the preference page's form")
async def save_preferences(token: str, request: Request, session: SessionDep,
                           topic: Annotated[list[str] | None, Form()] = None,
                           unsubscribe_all: Annotated[str | None, Form(
                               description="non-empty (the checkbox sends 1): unsubscribe from all marketing "
                                           "email; absent or empty: lift an earlier unsubscribe (reason "
                                           "unsubscribed)")] = None,
                           lang: Annotated[str | None, Query()] = None) -> HTMLResponse:
    code = language(request, lang)
    subject = _verify(request, "preferences", token)
    chosen = set(topic or [])
    async with session.begin():
        message = await _message_or_none(session, subject, writing=True)
        if message is None:
            return _erased(code)
        ws, address, who = message["workspace_id"], message["to_address"], consent.identity_of(message)
        via = consent.via_message(message)
        known = [tp["id"] for tp in consent.topics_of(message["settings"])]
        # the topics are the person's to choose even while a block stands: kept, they apply if it is lifted
        await consent.set_topics(session, ws, address, {tp: tp in chosen for tp in known}, "preference_page", who,
                                 via=via)
        # a bounce, complaint or suppression made by hand is not the page's to lift (nor to change)
        blocked = _blocked(await consent.preferences(session, ws, address, message["settings"]))
        if not blocked and unsubscribe_all:
            await consent.suppress(session, ws, "email", address, "unsubscribed", "preference_page", who, via=via)
        elif not blocked:
            await consent.unsuppress(session, ws, "email", address, "preference_page", who, only_unsubscribed=True,
                                     via=via)
        prefs = await consent.preferences(session, ws, address, message["settings"])
    t = TEXTS[code]
    # never "saved" when what was asked did not take: the page says what stands, and why
    notice = t["blocked_saved" if blocked else "saved"]
    return _page(code, t["title"], _preference_form(t, code, prefs, message, notice))


async def _engaged(session: AsyncSession, message: dict[str, Any], kind: str, request: Request,
                   url: str | None = None) -> None:
    ua = request.headers.get("user-agent", "")
    sent_at = message.get("sent_at")
    prefetch = kind == "opened" and sent_at is not None and (
        datetime.now(UTC) - sent_at).total_seconds() < PREFETCH_WINDOW_S
    bot = bool(_BOT.search(ua)) or prefetch
    if kind == "opened" and not bot:  # opens at the same moment (a client and its image proxy) count in turn: each
        # would otherwise see only its own uncommitted row below and report the first open
        await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:m, 0))"),
                              {"m": f"open:{message['id']}"})
    await session.execute(text(
        "insert into delivery.engagements (workspace_id, message_id, kind, url, user_agent, bot) "
        "values (:ws, :m, :k, :u, :ua, :bot)"),
        {"ws": message["workspace_id"], "m": message["id"], "k": kind, "u": url, "ua": ua[:500], "bot": bot})
    if bot:
        return
    first = (await session.execute(text(
        "select count(*) from delivery.engagements where message_id = :m and kind = :k and not bot"),
        {"m": message["id"], "k": kind})).scalar_one() == 1
    if kind == "opened" and not first:
        return  # one "Email Opened" per message; every click counts
    props = {"message_id": str(message["id"]), **consent.journey_of(message)}
    if url:
        props["url"] = url
    await consent.queue_event(session, message["workspace_id"], consent.identity_of(message),
                              "Email Opened" if kind == "opened" else "Email Link Clicked", props)


@_link("/o/{token}.gif", operation_id="open_pixel", summary="Open tracking pixel", response_class=Response,
       description="A 1×1 GIF, whatever the token; a GET with a valid token records an open of its message.")
@url_text_unchecked  # a pixel always answers with the image
async def open_pixel(token: str, request: Request, session: SessionDep) -> Response:
    if request.method == "HEAD":  # a scanner or link checker, not someone reading the mail
        return _pixel()
    try:
        subject = signing.verify(request.app.state.settings.signing_secrets, "open", token)
    except signing.BadToken:
        pass  # a pixel always answers with the image
    else:
        async with session.begin():
            message = await _message_or_none(session, subject, writing=True)
            if message is not None:  # gone (erased): the image, and nothing recorded
                await _engaged(session, message, "opened", request)
    return _pixel()


def _pixel() -> Response:
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store, max-age=0"})


@_link("/c/{token}", operation_id="click_redirect", responses=_LINK_ERRORS,
       summary="Click tracking redirect (signed: no open redirect)",
       description="The token signs the URL, so a verified click goes there even when its message is gone: an "
                   "email sent before an erasure keeps working links (as at other email providers), and records "
                   "nothing. A GET whose message is held records a click.",
       response_class=RedirectResponse, status_code=302)
async def click(token: str, request: Request, session: SessionDep,
                u: Annotated[str, Query(max_length=links.MAX_CLICK_URL)]) -> RedirectResponse:
    subject = _verify(request, "click", token, u)
    u = url_as_parsed(u)  # (links signed before the tracked URL was cleaned so: a space at the end led to /sale%20)
    if urlsplit(u).scheme not in ("http", "https"):
        raise BadRequest("This link is not valid")
    if request.method == "HEAD":  # a scanner or link checker, not someone following the link
        return _redirect(u)
    async with session.begin():
        message = await _message_or_none(session, subject, writing=True)
        if message is not None:
            await _engaged(session, message, "clicked", request, u)
    return _redirect(u)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


@_link("/confirm/{token}", response_class=HTMLResponse, operation_id="confirm_opt_in_page", responses=_LINK_ERRORS,
       summary="Double opt-in: the confirmation page (asks; a GET changes nothing)",
       description="The page asking to confirm the subscription; its button POSTs to the same URL.")
async def confirm_page(token: str, request: Request, session: SessionDep,
                       lang: Annotated[str | None, Query()] = None) -> HTMLResponse:
    code = language(request, lang)
    async with session.begin():
        message = await _message_or_none(session, _verify(request, "confirm", token))
    if message is None:
        return _erased(code, "confirm_erased")
    t = TEXTS[code]
    question = t["confirm_q"].format(address=escape(message["to_address"]))
    return _page(code, t["title"],
                 f'<form method="post"><p>{question}</p><button type="submit">{t["confirm_btn"]}</button></form>')


@router.post("/confirm/{token}", response_class=HTMLResponse, operation_id="confirm_opt_in", responses=_CONFIRM_ERRORS,
             summary="Double opt-in: confirm (the page's button)")
async def confirm(token: str, request: Request, session: SessionDep,
                  lang: Annotated[str | None, Query()] = None) -> HTMLResponse:
    code = language(request, lang)
    subject = _verify(request, "confirm", token)
    async with session.begin():
        message = await _message_or_none(session, subject, writing=True)
        if message is None:  # the address is not known any more: nothing can be (or is) confirmed
            return _erased(code, "confirm_erased")
        if not await consent.confirm_opt_in(session, message["workspace_id"], message["to_address"],
                                            consent.identity_of(message)):
            raise NotFound("Nothing to confirm for this address")
    return _page(code, TEXTS[code]["title"],
                 f'<p role="status">{TEXTS[code]["confirm_done"].format(address=escape(message["to_address"]))}</p>')
