"""Locales are BCP 47 language tags (RFC 5646): delivery refuses anything else in a message's ``locale`` (it
stored and echoed any text, line breaks included), and campaign sends a profile's locale only as one."""

import uuid

import pytest

from services.campaign import dispatch
from shared.validation import is_language_tag

WELL_FORMED = ["fr", "fr-CA", "FR-ca", "zh-Hant-TW", "es-419", "de-CH-1901", "sl-rozaj-biske", "sr-Latn-RS",
               "zh-yue-HK", "en-US-u-ca-gregory", "en-a-bbb-x-a-ccc", "x-whatever", "i-klingon", "en-GB-oed", "gsw"]
NOT = ["", "f", "fr_CA", "fr-", "-fr", "fr-CA ", " fr", "fr\r\nBcc: evil@example.com", "fr\n", "français",
       "english language", "12", "en-US.UTF-8", "fr-CA-" + "a" * 30, "de-x", "en-a", "abcdefghi"]


@pytest.mark.parametrize("tag", WELL_FORMED)
def test_well_formed_tags(tag: str) -> None:
    assert is_language_tag(tag)


@pytest.mark.parametrize("value", NOT)
def test_not_tags(value: str) -> None:
    assert not is_language_tag(value)


@pytest.mark.parametrize(("trait", "sent"), [("fr-CA", "fr-CA"), ("pt_BR", "pt-BR"), (" de ", "de"),
                                             ("en US", None), ("fr\r\nBcc: x", None), (42, None), (None, None)])
def test_campaign_sends_the_profiles_locale_as_a_tag(trait: object, sent: str | None) -> None:
    """A profile's locale as SDKs report it (``pt_BR`` from some) goes to delivery as a tag; one that is no
    locale is left out rather than making delivery refuse the message. (The body is the profile's variant's: with
    the default's, no locale goes, so that delivery's footer speaks the body's language.)"""
    send = {"id": uuid.uuid4(), "idempotency_key": "k", "message_type": "marketing", "campaign_id": uuid.uuid4(),
            "profile_id": uuid.uuid4(), "trigger_data": {}}
    tpl = {"channel": "email", "subject": "Hi", "text": "Hello", "html": None,
           "locales": {"fr": {"text": "Bonjour"}, "pt": {"text": "Olá"}, "de": {"text": "Hallo"}}}
    profile = {"user_id": "u-1", "traits": {"email": "ada@example.com", "locale": trait}}
    request = dispatch.prepare(send, tpl, profile)
    assert isinstance(request, dict) and request.get("locale") == sent


@pytest.mark.parametrize(("written", "tag"), [
    ("en_US", "en-US"), ("en_US.UTF-8", "en-US"), ("de_DE@euro", "de-DE"), ("zh_TW_#Hant", "zh-Hant-TW"),
    ("sr__#Latn", "sr-Latn"), (" fr-FR ", "fr-FR"), ("C.UTF-8", "C"), ("fr\r\nBcc: x", "fr\r\nBcc: x")])
def test_locales_as_systems_write_them_read_as_tags(written: str, tag: str) -> None:
    """POSIX (``en_US.UTF-8``), Java/Android (``zh_TW_#Hant``) and padded locales are the tags they mean, so a
    message is not refused for how a device reports its locale; what is no locale stays as it is (refused)."""
    from shared.validation import as_language_tag

    assert as_language_tag(written) == tag


def test_a_message_takes_a_locale_as_devices_report_it() -> None:
    from pydantic import ValidationError

    from services.delivery.schemas import MessageCreate

    base = {"idempotency_key": "k", "to": "ada@example.com", "subject": "Hi", "text": "x"}
    assert MessageCreate.model_validate({**base, "locale": "en_US.UTF-8"}).locale == "en-US"
    assert MessageCreate.model_validate({**base, "locale": "zh_TW_#Hant"}).locale == "zh-Hant-TW"
    with pytest.raises(ValidationError):
        MessageCreate.model_validate({**base, "locale": "fr\r\nBcc: evil@example.com"})
