"""Which SMTP refusals are hard bounces (the address is suppressed) and which refuse only the message or sender."""

import pytest

from services.delivery.smtp_session import Reply, hard_bounce


@pytest.mark.parametrize(("stage", "code", "text", "bounce"), [
    ("RCPT", 550, "5.1.1 <ada@example.com>: Recipient address rejected: User unknown", True),
    ("RCPT", 550, "Requested action not taken: mailbox unavailable", True),  # no enhanced status: RCPT's 5xx
    ("RCPT", 553, "5.1.3 Bad recipient address syntax", True),
    ("RCPT", 556, "5.1.10 Recipient address has null MX", True),
    ("RCPT", 550, "5.2.1 The email account that you tried to reach is disabled", True),
    ("DATA", 550, "5.1.1 user unknown (refused after DATA)", True),
    ("RCPT", 554, "5.7.1 Relay access denied", False),  # our sender's problem, not the address's
    ("RCPT", 550, "5.7.1 Service unavailable; client host blocked using Spamhaus", False),
    ("RCPT", 552, "5.2.2 Mailbox full", False),
    ("DATA", 552, "5.3.4 Message size exceeds fixed limit", False),
    ("DATA", 554, "5.5.1 no valid recipients", False),
    ("MAIL", 550, "sender rejected", False),
    ("RCPT", 450, "4.2.1 mailbox busy", False),  # temporary: tried again
    ("RCPT", 451, "4.1.1 try again later", False),
])
def test_a_refusal_is_a_hard_bounce_only_when_the_address_takes_no_mail(stage: str, code: int, text: str,
                                                                        bounce: bool) -> None:
    assert hard_bounce(stage, Reply(code, text)) is bounce
