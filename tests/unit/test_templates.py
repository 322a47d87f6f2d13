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
