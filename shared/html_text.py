"""A plain-text rendering of an HTML email: what the text/plain part says when the sender gave only HTML.

Mail clients that show plain text (and spam filters, which score an HTML-only message worse) read it. Shared by
campaign (a template without its own text) and delivery (an API message without one).
"""

import re
from dataclasses import dataclass
from html import parser as html_parser
from html import unescape
from html.entities import html5
from html.parser import HTMLParser

# a character reference as the HTML tokenizer starts one: "&#" and digits, "&#x" and hex digits, or "&" and a name
# (the ";" optional: a legacy name such as "&copy" is one without it)
_REF = re.compile(r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|([A-Za-z][A-Za-z0-9]*;?))")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))


def _attribute_ref(m: re.Match[str]) -> str:
    name = m.group(1)
    if name is None:
        return unescape(m.group(0))  # numeric: always decoded, ";" or not
    matched = next((name[:end] for end in range(len(name), 0, -1) if name[:end] in html5), None)
    if matched is None:
        return m.group(0)
    after = name[len(matched):len(matched) + 1] or m.string[m.end():m.end() + 1]
    if not matched.endswith(";") and (after == "=" or after.isascii() and after.isalnum()):
        return m.group(0)  # "&region=", "&notify=": a query, as the browser reads it
    return html5[matched] + name[len(matched):]


def attribute_value(raw: str) -> str:
    """An attribute's value as a browser reads it (HTML's "character reference in attribute value" rule): references
    are decoded, but a legacy name without its ";" (``&reg``, ``&curren``, ``&sect``, ``&not``, ``&para``, ``&copy``)
    followed by a letter, digit or "=" stays as written. Python's ``html.unescape``, which HTMLParser (before 3.14)
    applies to attributes, decodes those too (the rule for text), turning ``?id=7&region=us`` into ``?id=7®ion=us``."""
    return _REF.sub(_attribute_ref, raw)


def href_url(raw: str) -> str:
    """The URL a browser follows from an ``href`` as written: the attribute's value, less what the URL parser drops
    (WHATWG URL: leading and trailing C0 controls and spaces, and ASCII tabs and newlines anywhere), so
    ``href="https://shop.example/sale "`` leads to ``/sale``, not ``/sale%20``."""
    return url_as_parsed(attribute_value(raw))


def url_as_parsed(url: str) -> str:
    """A URL less what a browser's URL parser drops from it: leading and trailing C0 controls and spaces, and ASCII
    tabs and newlines anywhere."""
    return re.sub(r"[\t\n\r]", "", url.strip(_C0_OR_SPACE))


def _attribute(start_tag: str, name: str) -> re.Match[str] | None:
    """The first ``name`` attribute of a start tag (a browser ignores the later ones), found as HTMLParser finds
    attributes (its own patterns): its value as written is group 3, quotes included; None when absent."""
    found = html_parser.tagfind_tolerant.match(start_tag, 1)
    k = found.end() if found else len(start_tag)
    while k < len(start_tag) and (m := html_parser.attrfind_tolerant.match(start_tag, k)):
        if m.group(1).lower() == name:
            return m
        k = m.end()
    return None


def _value_span(m: re.Match[str]) -> tuple[int, int, bool] | None:
    """Where an attribute's value lies in its start tag, inside its quotes if it has them; None without a value."""
    if not m.group(2):
        return None
    start, end = m.span(3)
    value = m.group(3)
    quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
    return (start + 1, end - 1, True) if quoted else (start, end, False)


def _raw_attribute(start_tag: str, name: str) -> str | None:
    """The first ``name`` attribute of a start tag, as written (references not decoded); None when absent or
    without a value."""
    m = _attribute(start_tag, name)
    span = _value_span(m) if m is not None else None
    return start_tag[span[0]:span[1]] if span is not None else None


@dataclass(frozen=True)
class Href:
    """A link's ``href`` value as written in a document: ``html[start:end]``, inside its quotes when ``quoted``."""

    start: int
    end: int
    quoted: bool
    raw: str


# where a link scan stops: a comment (stepped over), or a start tag (read whole: an attribute value may hold "<a")
_SCAN = re.compile(r"<!--|<[a-zA-Z]")
# the elements whose content is text, not tags (HTML's raw text and escapable raw text elements), to their end tag
_RAW_TEXT_END = {name: re.compile(rf"</{name}[\s/>]", re.IGNORECASE)
                 for name in ("script", "style", "textarea", "title")}


def hrefs(html: str) -> list[Href]:
    """Where each ``<a>``'s ``href`` lies in ``html``, in order, as a browser finds it: the tag's first ``href``
    attribute (not a ``data-href``), quoted either way or not at all, outside comments, other tags' attribute
    values, scripts, styles, titles and text areas; each tag read with HTMLParser's own patterns. (A regular
    expression took the ``data-href`` of ``<a data-href=… href=…>`` and missed unquoted values and a value holding
    the other quote: those links went out untracked. HTMLParser itself, run over the whole email, cost 2.6 times
    the old scan.)"""
    found: list[Href] = []
    pos = 0
    while (m := _SCAN.search(html, pos)) is not None:
        if m.group(0) == "<!--":
            if html.startswith("[if", m.end()):  # Outlook's conditional comment: its content is shown there
                pos = m.end()
                continue
            if html.startswith((">", "->"), m.end()):  # "<!-->", "<!--->": an empty comment, closed at once
                pos = html.index(">", m.end()) + 1
                continue
            close = html.find("-->", m.end())
            if close < 0:
                break
            pos = close + 3
            continue
        tag = html_parser.locatestarttagend_tolerant.match(html, m.start())
        end = tag.end() if tag else m.end()
        kind = ""
        if html[m.start() + 1] in "aAsStT":  # (the names that matter: a, script, style, textarea, title)
            name = html_parser.tagfind_tolerant.match(html, m.start() + 1)
            kind = name.group(1).lower() if name else ""
        if kind in _RAW_TEXT_END:
            close_tag = _RAW_TEXT_END[kind].search(html, end)
            if close_tag is None:
                break
            pos = close_tag.end()
            continue
        if kind == "a":
            start_tag = html[m.start():end]
            attribute = _attribute(start_tag, "href")
            span = _value_span(attribute) if attribute is not None else None
            if span is not None:
                found.append(Href(m.start() + span[0], m.start() + span[1], span[2], start_tag[span[0]:span[1]]))
        pos = max(end, m.end())
    return found


class _TextParser(HTMLParser):
    _BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag == "a":  # (``attrs`` have their references decoded by the rule for text: ``&region`` as ``®ion``)
            raw = _raw_attribute(self.get_starttag_text() or "", "href")
            self._href.append(href_url(raw) if raw is not None else None)
        elif tag in self._BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and not href.startswith(("#", "mailto:")):
                self.parts.append(f" ({href})")
        elif tag in self._BLOCKS and tag != "li":
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text part: block elements become line breaks, links keep their address."""
    parser = _TextParser()
    parser.feed(html)
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
