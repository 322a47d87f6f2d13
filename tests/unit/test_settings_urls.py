"""Service URLs derived from the bind address are URLs a client (and a browser) can use."""

import pytest
from pydantic import ValidationError

from shared.settings import Settings


@pytest.mark.parametrize(("host", "expected"), [("0.0.0.0", "http://127.0.0.1:8004"), ("::", "http://[::1]:8004"),
                                                ("127.0.0.1", "http://127.0.0.1:8004"),
                                                ("delivery.internal", "http://delivery.internal:8004")])
def test_a_wildcard_bind_address_is_reached_on_loopback(host: str, expected: str) -> None:
    settings = Settings(host=host, delivery_port=8004)
    assert settings.url_of("delivery") == expected
    assert settings.public_url == expected  # the links in emails
    assert Settings(host=host, delivery_public_url="https://mail.example/d").public_url == "https://mail.example/d"


def test_a_bare_vapid_contact_address_is_taken_as_its_mailto_uri() -> None:
    """RFC 8292 wants a URI; an operator writing the address alone means its mailto:, so it is not refused."""
    assert Settings(vapid_subject="push-ops@acme.example").vapid_subject == "mailto:push-ops@acme.example"
    assert Settings(vapid_subject="https://acme.example/contact").vapid_subject == "https://acme.example/contact"
    with pytest.raises(ValidationError):
        Settings(vapid_subject="push-ops at acme.example")
