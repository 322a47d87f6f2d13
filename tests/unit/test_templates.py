import re
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.campaign.templates import TemplateError, babel_locale, render, validate, variables_for
from shared.errors import body_error


def test_html_is_escaped_text_is_not() -> None:
    profile = {"id": "p1", "user_id": "u1", "traits": {"first_name": "<b>Ada</b>"}}
    out = render({"subject": "Hi {{ profile.first_name }}", "html": "<p>{{ profile.first_name }}</p>",
                  "text": "Hi {{ traits.first_name }}"}, variables_for(profile, {"name": "Signed Up"}))
    assert out.html == "<p>&lt;b&gt;Ada&lt;/b&gt;</p>"
    assert out.text == "Hi <b>Ada</b>"
    assert out.subject == "Hi <b>Ada</b>"


def test_missing_trait_falls_back_to_default() -> None:
    out = render({"subject": "Hi {{ profile.first_name | default: 'there' }}", "html": None, "text": "x"},
                 variables_for({"traits": {}}, {}))
    assert out.subject == "Hi there"


def test_event_properties_are_available() -> None:
    out = render({"subject": "{{ event.properties.plan }}", "html": None, "text": "x"},
                 variables_for({"traits": {}}, {"properties": {"plan": "pro"}}))
    assert out.subject == "pro"


def test_syntax_errors_name_the_field() -> None:
    with pytest.raises(TemplateError) as info:
        validate({"subject": "ok", "html": "{% if %}", "text": None})
    assert info.value.field == "html"


def test_plain_text_is_generated_from_html_and_css_is_inlined() -> None:
    from services.campaign.templates import render
    from shared.html_text import html_to_text

    html = ("<html><head><style>p { color: red }</style><title>x</title></head><body><h1>Hi {{ name }}</h1>"
            "<p>Read <a href='https://acme.example/a'>this</a> &amp; that.</p><ul><li>one</li><li>two</li></ul>"
            "<script>alert(1)</script></body></html>")
    out = render({"subject": " S ", "html": html, "text": None}, {"name": "<Ada>"})
    assert out.subject == "S"
    assert '<p style="color: red;">' in (out.html or "") and "<style>" not in (out.html or "")
    assert "&lt;Ada&gt;" in (out.html or "")
    assert out.text == "Hi <Ada>\n\nRead this (https://acme.example/a) & that.\n\n- one\n- two"
    assert render({"subject": "S", "html": "<p>x</p>", "text": "mine"}, {}).text == "mine"
    assert html_to_text("<p>a</p><p><a href='#top'>b</a></p>") == "a\n\nb"


def test_snippets_are_shared_partials() -> None:
    from services.campaign.templates import render

    snippets = {"footer": "-- {{ company }}"}
    out = render({"subject": "S", "text": "Hello{% render 'footer', company: 'Acme' %}", "html": None}, {}, snippets)
    assert out.text == "Hello-- Acme"


@pytest.mark.parametrize("name", ["Ada\r\nBcc: evil@example.com", "Ada\nBcc: evil@example.com",
                                  "Ada\u2028Bcc: evil@example.com", "Ada \r\n\r\n Bcc: evil@example.com"])
def test_subject_and_preheader_stay_one_line_whatever_a_trait_holds(name: str) -> None:
    out = render({"subject": "Hi {{ profile.name }}", "preheader": "For {{ profile.name }}",
                  "html": "<p>x</p>"}, variables_for({"traits": {"name": name}}, {}))
    assert out.subject == "Hi Ada Bcc: evil@example.com"
    assert out.preheader == "For Ada Bcc: evil@example.com"


# --------------------------------------------------------------------------- dates and amounts for the recipient

PARIS, NEW_YORK = ZoneInfo("Europe/Paris"), ZoneInfo("America/New_York")


@pytest.mark.parametrize(("value", "paris", "new_york", "utc"), [
    ("2026-12-03T18:00:00Z", "19:00 CET", "13:00 EST", "18:00 UTC"),  # an offset: that moment
    ("2026-12-03T20:00:00+02:00", "19:00 CET", "13:00 EST", "18:00 UTC"),
    ("2026-12-03 18:00", "19:00 CET", "13:00 EST", "18:00 UTC"),  # none: UTC
    ("Dec 3 2026 6pm", "19:00 CET", "13:00 EST", "18:00 UTC"),  # (dateutil reads it, as Liquid's date does)
    (1796320800, "19:00 CET", "13:00 EST", "18:00 UTC"),  # a Unix timestamp
    ("1796320800", "19:00 CET", "13:00 EST", "18:00 UTC"),
    (1796320800.0, "19:00 CET", "13:00 EST", "18:00 UTC"),
    (datetime(2026, 12, 3, 18, 0), "19:00 CET", "13:00 EST", "18:00 UTC"),
    (datetime(2026, 12, 3, 18, 0, tzinfo=UTC), "19:00 CET", "13:00 EST", "18:00 UTC"),
    ("2026-12-03", "00:00 ", "00:00 ", "00:00 "),  # a calendar day: the same day everywhere
    ("3 December 2026", "00:00 ", "00:00 ", "00:00 "),
    (date(2026, 12, 3), "00:00 ", "00:00 ", "00:00 "),
])
def test_date_shows_the_moment_on_the_recipients_clock(value, paris: str, new_york: str, utc: str) -> None:
    fields = {"text": "{{ event.when | date: '%Y-%m-%d %H:%M %Z' }}"}
    for zone, want in ((PARIS, paris), (NEW_YORK, new_york), (None, utc)):  # (none given: UTC)
        assert render(fields, {"event": {"when": value}}, zone=zone).text == f"2026-12-03 {want}", (value, zone)
    summer = render(fields, {"event": {"when": "2026-07-03T18:00:00Z"}}, zone=PARIS).text
    assert summer == "2026-07-03 20:00 CEST"


def test_the_same_moment_is_shown_on_each_recipients_clock_in_turn() -> None:
    """Liquid's date caches what it parses by value, and 18:00 UTC equals 19:00 CET: through it, the second
    recipient of a batch would be shown the first one's clock."""
    fields = {"subject": "At {{ event.when | date: '%H:%M' }}"}
    got = [render(fields, {"event": {"when": "2026-12-03T18:00:00Z"}}, zone=z).subject
           for z in (PARIS, NEW_YORK, PARIS)]
    assert got == ["At 19:00", "At 13:00", "At 19:00"]


def test_now_is_the_recipients_now_and_the_rest_is_as_liquid_has_it() -> None:
    fields = {"text": "{{ 'now' | date: '%Z' }}|{{ 'today' | date: '%Z' }}|{{ nothing | date: '%H' }}|"
                      "{{ 'soon' | date: '%H' }}|{{ event.when | date: '<%H>' }}"}
    text = render(fields, {"event": {"when": "2026-12-03T18:00:00Z"}}, zone=PARIS).text or ""
    assert text.split("|")[:2] == [datetime.now(PARIS).strftime("%Z")] * 2
    assert text.split("|")[2:] == ["", "soon", "<19>"]
    html = render({"html": "<p>{{ event.when | date: '%H' }}</p>"}, {"event": {"when": "<b>"}}, zone=PARIS).html
    assert html == "<p>&lt;b&gt;</p>"  # text that is no date is shown as it is, escaped in HTML


@pytest.mark.parametrize(("locale", "want"), [
    (None, "€1,234.50"), ("en-US", "€1,234.50"), ("fr", "1\u202f234,50\u00a0€"), ("fr-CA", "1\u00a0234,50\u00a0€"),
    ("fr_ca", "1\u00a0234,50\u00a0€"), ("de-AT", "€\u00a01.234,50"), ("de-XX", "1.234,50\u00a0€"),
    ("xx-YY", "€1,234.50"), ("", "€1,234.50"), (42, "€1,234.50"),
])
def test_money_is_written_as_the_recipients_locale_writes_it(locale, want: str) -> None:
    assert render({"text": "{{ 1234.5 | money: 'EUR' }}"}, {}, locale=locale).text == want
    assert babel_locale(locale).language == ({"fr": "fr", "de": "de"}.get(str(locale)[:2], "en"))


@pytest.mark.parametrize(("value", "currency", "want"), [
    (12.5, "EUR", "€12.50"), ("12.5", "eur", "€12.50"), (" -3 ", "USD", "-$3.00"), (0.1, "EUR", "€0.10"),
    (12.345, "EUR", "€12.35"), ("12.5", "JPY", "¥13"), (Decimal("1e20"), "GBP", "£100,000,000,000,000,000,000.00"),
    (None, "EUR", ""), ("", "EUR", ""), ("  ", "EUR", ""),
])
def test_money_formats_numbers_rounding_half_up_and_nothing_for_no_value(value, currency: str, want: str) -> None:
    assert render({"text": "[{{ v | money: c }}]"}, {"v": value, "c": currency}).text == f"[{want}]"
    assert render({"text": "[{{ missing | money: 'EUR' }}]"}, {}).text == "[]"


@pytest.mark.parametrize(("value", "currency", "why"), [
    ("twelve", "EUR", "money: 'twelve' is not a number"), ("1,234.50", "EUR", "is not a number"),
    ("€12", "EUR", "is not a number"), (True, "EUR", "expected a number, found bool"),
    ([1], "EUR", "expected a number, found list"), ("NaN", "EUR", "is not an amount"),
    ("Infinity", "EUR", "is not an amount"), (Decimal("1e99"), "EUR", "is out of range"),
    (1, "EURO", "'EURO' is not a currency code"), (1, "XYZ", "'XYZ' is not a currency code"),
    (1, None, "a currency code is needed"), (1, 5, "a currency code is needed"),
])
def test_money_refuses_what_is_no_amount_or_no_currency_as_a_render_error(value, currency, why: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(why)) as info:
        render({"subject": "S", "text": "{{ v | money: c }}"}, {"v": value, "c": currency})
    assert info.value.field == "text"


def test_a_money_filter_without_a_known_currency_is_refused_on_save() -> None:
    with pytest.raises(TemplateError, match=r"'EUT' is not a currency code") as info:
        validate({"html": "<p>\n  {% if x %}{{ 5 | money: 'EUT' }}{% endif %}</p>"})
    assert (info.value.field, info.value.line, info.value.column) == ("html", 2, 20)  # (where `money` is)
    for source in ("{{ 5 | money }}", "{% assign t = 5 | money %}", "{% liquid\necho 5 | money: '' %}",
                   "{% for i in (1..2) %}{{ i | money: 'ABC' }}{% endfor %}"):
        with pytest.raises(TemplateError):
            validate({"text": source})
    validate({"text": "{{ 5 | money: 'usd' }}{{ 5 | money: c }}{% assign c = 'X' %}{{ 5 | money: c }}"})


def test_body_errors_are_shaped_as_fastapis() -> None:
    assert body_error("steps.2.next", "no step s9") == {
        "loc": ["body", "steps", "2", "next"], "msg": "no step s9", "type": "value_error", "at": "steps.2.next"}
    assert body_error(["locales", "fr.CA", "html"], "bad", line=1, column=4) == {
        "loc": ["body", "locales", "fr.CA", "html"], "msg": "bad", "type": "value_error", "at": "locales.fr.CA.html",
        "line": 1, "column": 4}
