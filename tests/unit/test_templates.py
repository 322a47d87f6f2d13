import pytest

from services.campaign.templates import TemplateError, render, validate, variables_for


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
