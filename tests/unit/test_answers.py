"""How the CLI words a service's answer (services/answers.py)."""

import httpx
import pytest

from services.answers import UnreadableAnswer, json_of, printable, problem_text


def _resp(status: int, body: bytes, content_type: str = "application/problem+json") -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": content_type},
                          request=httpx.Request("GET", "http://campaign.test/v1/campaigns"))


def test_a_problem_reads_as_its_detail_and_field_errors() -> None:
    body = (b'{"title": "Request validation failed", "status": 422, "detail": "The campaign is not valid", '
            b'"errors": [{"at": "steps.0.next", "msg": "no step s9"}, '
            b'{"loc": ["body", "trigger", "event"], "msg": "Field required"}]}')
    assert problem_text(_resp(422, body)) == ("422 The campaign is not valid\n  steps.0.next: no step s9\n"
                                              "  trigger.event: Field required")


@pytest.mark.parametrize("body", [b"<html>Bad gateway</html>", b"[1, 2]", b'{"detail": 5}', b""])
def test_anything_else_reads_as_the_start_of_its_text(body: bytes) -> None:
    assert problem_text(_resp(502, body, "text/html")) == f"502 {body.decode()}".rstrip()


def test_terminal_controls_are_dropped_and_lines_kept() -> None:
    assert printable("a\x1b[31mred\x07\x9b\tb\nc") == "a[31mred\tb\nc"
    assert problem_text(_resp(500, b"\x1b]0;title\x07oops", "text/plain")) == "500 ]0;titleoops"


def test_an_answer_that_is_no_json_says_what_came() -> None:
    assert json_of(_resp(200, b'{"ok": true}', "application/json")) == {"ok": True}
    with pytest.raises(UnreadableAnswer, match=r"GET http://campaign.test/v1/campaigns answered 200 with text/html"):
        json_of(_resp(200, b"<html>login</html>", "text/html"))
