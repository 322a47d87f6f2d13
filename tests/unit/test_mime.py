"""MIME building: whatever the content, a receiver parsing the message gets back exactly what was sent."""

import email
import email.policy
import re
from email.header import decode_header, make_header
from email.utils import parseaddr

import pytest
from aiosmtplib.email import flatten_message as flatten  # what aiosmtplib puts on the wire
from hypothesis import given, settings
from hypothesis import strategies as st

from services.delivery.mailer import Email, build_mime

# a header value is one line: no controls, nor U+2028/U+2029 (Zl, Zp), which delivery's API refuses there
_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
_LINE = (st.text(_CHARS, max_size=120) | st.text(_CHARS, min_size=900, max_size=998)).map(str.strip)  # receivers drop a value's edge spaces
_BODY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), max_size=400)


def _wire(mail: Email) -> bytes:
    """What aiosmtplib puts on the wire (line ends as CRLF)."""
    mime = build_mime(mail)
    return re.sub(rb"\r?\n", b"\r\n", mime) if isinstance(mime, bytes) else flatten(mime, utf8=True)


def _parsed(mail: Email) -> email.message.EmailMessage:
    return email.message_from_string(_wire(mail).decode(), policy=email.policy.default)  # type: ignore[return-value]


def _mail(**kw: object) -> Email:
    base = {"message_id": "5f0c4a52-8a0e-4a7b-9c1e-3a1d2b3c4d5e", "sender": "Tenure <hello@tenure.example>",
            "to": "ada@example.com", "subject": "Hi", "html": "<p>Hi</p>", "text": "Hi",
            "headers": (("List-Unsubscribe", f"<https://t.example/u/{'x' * 120}>"),
                        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))}
    return Email(**{**base, **kw})  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(subject=_LINE, name=_LINE, text=_BODY, html=_BODY)
def test_any_content_round_trips(subject: str, name: str, text: str, html: str) -> None:
    sender = f'"{name.replace(chr(34), "").replace(chr(92), "").strip()}" <news@tenure.example>'
    msg = _parsed(_mail(subject=subject, sender=sender, text=text or None, html=html or None))
    assert msg["Subject"] == subject
    assert msg["From"].addresses[0].addr_spec == "news@tenure.example"
    # the display name through the RFC 2047 decoder (the default policy's address parser puts a space
    # between adjacent encoded-words of a phrase, which RFC 2047 says to drop)
    display = parseaddr(email.message_from_bytes(_wire(_mail(sender=sender)))["From"])[0]
    assert str(make_header(decode_header(display))) == sender.split('"')[1]
    assert msg["Message-ID"] == "<5f0c4a52-8a0e-4a7b-9c1e-3a1d2b3c4d5e@tenure.example>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Unsubscribe"] == f"<https://t.example/u/{'x' * 120}>"  # one URL, never folded or encoded
    assert b"List-Unsubscribe: <https://" in _wire(_mail())
    wire = _wire(_mail(subject=subject, sender=sender, text=text, html=html))
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    assert all(len(word) <= 75 for word in re.findall(rb"=\?utf-8\?[bq]\?[^?]*\?=", wire))  # RFC 2047
    for subtype, sent in (("plain", text), ("html", html)):
        body = msg.get_body((subtype,))
        if sent:
            assert body is not None
            assert body.get_content().replace("\r\n", "\n").rstrip("\n") == sent.rstrip("\n")


def test_both_parts_make_one_multipart_alternative() -> None:
    msg = _parsed(_mail(subject="Reçu ✓", text="Merci é", html="<p>Merci é</p>"))
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(p["Content-Transfer-Encoding"] == "quoted-printable" for p in msg.iter_parts())
    assert msg["Subject"] == "Reçu ✓"
    # RFC 5322 §4.3: "GMT" is an obsolete zone a sender must not generate
    assert re.search(rb"\r\nDate: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} \+0000\r\n", _wire(_mail()))


def test_an_internationalized_address_keeps_utf8_headers() -> None:
    msg = _parsed(_mail(to="jürgen@exämple.de"))  # SMTPUTF8: raw UTF-8 headers
    assert msg["To"].addresses[0].addr_spec == "jürgen@exämple.de"
    assert f"List-Unsubscribe: <https://t.example/u/{'x' * 120}>".encode() in _wire(_mail(to="jürgen@exämple.de"))


@pytest.mark.parametrize("field", ["subject", "to"])
def test_a_line_break_in_a_header_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match="linefeed or carriage return"):
        build_mime(_mail(**{field: "x@example.com\r\nBcc: all@example.com"}))
