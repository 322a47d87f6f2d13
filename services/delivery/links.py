"""The links delivery puts into an email (pure): one-click unsubscribe, preference page, open pixel,
click redirects, and the RFC 8058 headers that point mail clients at the unsubscribe link.

Templates may place ``%%unsubscribe_url%%`` and ``%%preferences_url%%`` themselves; a marketing email
that does not gets a short footer with both. Every ``http(s)`` link of the HTML is routed through the
signed click redirect, and a 1×1 pixel is appended to see opens.
"""

import re
import uuid
from dataclasses import dataclass
from functools import cached_property
from html import escape
from urllib.parse import quote

from services.delivery import signing
from services.delivery.texts import TEXTS, language_of
from shared.html_text import href_url, hrefs

UNSUBSCRIBE = "%%unsubscribe_url%%"
PREFERENCES = "%%preferences_url%%"
CONFIRM = "%%confirm_url%%"  # double opt-in confirmation emails
POSTAL_ADDRESS = "%%postal_address%%"  # the workspace's ``postal_address`` (CAN-SPAM: in every marketing email)
MAX_CLICK_URL = 4000  # longest destination the click redirect takes (pages.click); a longer link is left as written
_ANCHOR = re.compile(r"<a\b", re.IGNORECASE)  # (no link, no parse)
_WEB = re.compile(r"https?://", re.IGNORECASE)
_PIXEL_TAG = '<img src="{}" width="1" height="1" alt="" style="display:none">'
_PIXEL = re.compile(re.escape(_PIXEL_TAG).replace(r"\{\}", r'[^"<>]*/o/[A-Za-z0-9_-]+\.gif'))


@dataclass(frozen=True)
class Links:
    base: str
    secret: str
    subject: signing.Subject
    lang: str | None = None  # the recipient's language (``texts.TEXTS``): the footer's, and the pages' (``?lang=``)
    postal_address: str | None = None  # the sender's, in a marketing email's footer

    @classmethod
    def for_message(cls, base: str, secret: str, workspace_id: uuid.UUID, message_id: uuid.UUID,
                    locale: str | None = None, postal_address: str | None = None) -> "Links":
        return cls(base.rstrip("/"), secret, signing.Subject(workspace_id, message_id), language_of(locale),
                   postal_address)

    @cached_property
    def _lang_query(self) -> str:
        return f"?lang={self.lang}" if self.lang else ""

    @cached_property
    def unsubscribe(self) -> str:
        return f"{self.base}/u/{signing.sign(self.secret, 'unsubscribe', self.subject)}{self._lang_query}"

    @cached_property
    def preferences(self) -> str:
        return f"{self.base}/p/{signing.sign(self.secret, 'preferences', self.subject)}{self._lang_query}"

    @cached_property
    def confirm(self) -> str:
        return f"{self.base}/confirm/{signing.sign(self.secret, 'confirm', self.subject)}"

    @cached_property
    def pixel(self) -> str:
        return f"{self.base}/o/{signing.sign(self.secret, 'open', self.subject)}.gif"

    def click(self, url: str) -> str:
        return f"{self.base}/c/{signing.sign(self.secret, 'click', self.subject, url)}?u={quote(url, safe='')}"


def headers(links: Links, marketing: bool) -> dict[str, str]:
    """RFC 8058: mail clients may POST ``List-Unsubscribe=One-Click`` to the https URL, once."""
    if not marketing:
        return {}
    return {"List-Unsubscribe": f"<{links.unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def _placeholders(body: str, links: Links, quote_: bool) -> str:
    for placeholder, name in ((UNSUBSCRIBE, "unsubscribe"), (PREFERENCES, "preferences"), (CONFIRM, "confirm")):
        if placeholder in body:  # (each link is an HMAC: made only when used)
            url = getattr(links, name)
            body = body.replace(placeholder, escape(url) if quote_ else url)
    if POSTAL_ADDRESS in body:
        address = links.postal_address or ""
        body = body.replace(POSTAL_ADDRESS, _address_html(address) if quote_ else address)
    return body


def _address_html(address: str) -> str:
    return escape(address).replace("\n", "<br>")


def _needs_address(body: str, links: Links, marketing: bool) -> bool:
    """A marketing email carries the sender's postal address (CAN-SPAM) once one is set: where the template
    put ``%%postal_address%%``, else at the end."""
    return marketing and bool(links.postal_address) and POSTAL_ADDRESS not in body


def decorate_html(html: str, links: Links, *, marketing: bool) -> str:
    out = _placeholders(html, links, quote_=True)

    pieces, done = [], 0
    for href in hrefs(out) if _ANCHOR.search(out) else ():
        url = href_url(href.raw)  # the URL a browser would follow (the text part shows the same: html_text)
        if not _WEB.match(url) or url.startswith(links.base) and url in (
                links.unsubscribe, links.preferences, links.confirm) or len(url) > MAX_CLICK_URL:
            continue
        routed = escape(links.click(url))
        pieces += [out[done:href.start], routed if href.quoted else f'"{routed}"']
        done = href.end
    out = "".join(pieces) + out[done:]
    extra = ""
    if marketing and PREFERENCES not in html and UNSUBSCRIBE not in html:
        t = TEXTS[links.lang or "en"]
        extra += (f'<p style="font-size:12px;color:#666"><a href="{escape(links.unsubscribe)}">{t["unsub_btn"]}</a> · '
                  f'<a href="{escape(links.preferences)}">{t["title"]}</a></p>')
    if _needs_address(html, links, marketing):
        assert links.postal_address is not None
        extra += f'<p style="font-size:12px;color:#666">{_address_html(links.postal_address)}</p>'
    extra += _PIXEL_TAG.format(escape(links.pixel))
    closing = re.search(r"</body\s*>", out, re.IGNORECASE)
    return out[:closing.start()] + extra + out[closing.start():] if closing else out + extra


def without_pixel(html: str) -> str:
    """An email's HTML as sent, less the open pixel :func:`decorate_html` added: for a preview that is nobody reading
    the mail (``tenure dev``'s inbox page, which reloads every 5 s, made every message it showed look opened)."""
    return _PIXEL.sub("", html)


def decorate_text(text: str, links: Links, *, marketing: bool) -> str:
    out = _placeholders(text, links, quote_=False)
    if marketing and PREFERENCES not in text and UNSUBSCRIBE not in text:
        t = TEXTS[links.lang or "en"]
        out += f"\n\n--\n{t['unsub_btn']}: {links.unsubscribe}\n{t['title']}: {links.preferences}\n"
    if _needs_address(text, links, marketing):
        out += f"\n{links.postal_address}\n"
    return out
