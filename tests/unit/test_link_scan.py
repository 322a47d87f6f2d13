"""The link scan of an email's HTML (``shared.html_text.hrefs``), against Python's HTMLParser as the oracle: for
documents without the elements where the two read differently (HTMLParser reads tags inside ``<textarea>`` and
``<title>``, browsers do not), every ``<a>``'s first ``href`` is found where HTMLParser finds it, at the same
offsets, and nothing else."""

import re
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.html_text import _attribute, hrefs


class _Oracle(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=False)
        self._lines = [0] + [m.end() for m in re.finditer("\n", html)]
        self.found: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        start_tag = self.get_starttag_text() or ""
        m = _attribute(start_tag, "href")
        if m is not None and m.group(2):
            line, column = self.getpos()
            self.found.append((self._lines[line - 1] + column, m.group(3)))


def _oracle(html: str) -> list[tuple[int, str]]:
    parser = _Oracle(html)
    parser.feed(html)
    parser.close()
    return parser.found


_values = st.sampled_from(['"https://a.example/x?y=1&amp;z=2"', "'https://b.example/it\"s'", "https://c.example/u",
                           '"https://d.example/it\'s"', '""', "'>'", '"a > b"'])
_pieces = st.one_of(
    st.builds(lambda name, value: f"<a {name}={value}>", st.sampled_from(["href", "HREF", "data-href", "title"]),
              _values),
    st.builds(lambda v1, v2: f'<a class="btn" data-href={v1}\r\n href={v2} target=_blank>', _values, _values),
    st.builds(lambda v: f"<A\thref = {v}/>", _values),
    st.just("<a href>bare</a>"), st.just("<abbr href='x'>"), st.just("</a>"), st.just("text & more\n"),
    st.just("<!-- <a href='https://hidden.example'> -->"), st.just("<!---->"),
    st.just("<script>var a = '<a href=\"https://s.example\">';</script>"),
    st.just("<style>a[href] { color: red }</style>"), st.just("<p class=\"x\">"), st.just("<br/>"),
    st.just("\r\n"), st.just("<img src='https://cdn.example/i.png' alt=\"<a href=x>\">"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=12))
def test_the_scan_finds_every_link_htmlparser_finds(pieces: list[str]) -> None:
    html = "".join(pieces)
    found = hrefs(html)
    expected = _oracle(html)
    assert len(found) == len(expected), (html, found, expected)
    for href, (at, value) in zip(found, expected, strict=True):
        assert html[href.start:href.end] == href.raw
        inner = value[1:-1] if href.quoted else value
        assert href.raw == inner and at < href.start, (html, href, value)


def test_textarea_and_title_hold_text_not_links() -> None:
    html = ("<title><a href='https://t.example'></title><textarea><a href=\"https://x.example\"></textarea>"
            "<a href='https://real.example'>")
    assert [h.raw for h in hrefs(html)] == ["https://real.example"]


def test_links_in_outlooks_conditional_comments_are_links() -> None:
    """Outlook shows what ``<!--[if mso]>`` holds (a "bulletproof" button's link): it is tracked; a plain comment's
    link is not."""
    html = ('<!--[if mso]><v:roundrect href="https://vml.example"><a href="https://outlook.example">Buy</a>'
            '</v:roundrect><![endif]--><!-- <a href="https://hidden.example"> --><a href="https://all.example">')
    assert [h.raw for h in hrefs(html)] == ["https://outlook.example", "https://all.example"]
