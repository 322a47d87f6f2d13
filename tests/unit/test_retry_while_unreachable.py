"""``shared.db.retry_while_unreachable``: the one wait for an unreachable PostgreSQL (campaign's hand-over, delivery's
recorder and give-back). It tries again while PostgreSQL is away, gives up after its limit, lets any other error out
at once, and logs a wait once — not once per try."""

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from shared import db
from shared.db import Outage, retry_while_unreachable

PAUSE_S = 0.01


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """On a loop of its own, left unset as the thread's loop (the session's async tests keep theirs)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


class Lines:
    """What ``shared.db`` logs, as (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Lines:
    found = Lines()
    monkeypatch.setattr(db, "log", found)
    return found


def starting_up() -> BaseException:
    return asyncpg.exceptions.CannotConnectNowError("the database system is starting up")


def cut() -> BaseException:
    return DBAPIError("select 1", None, ConnectionResetError("reset by peer"), connection_invalidated=True)


class Work:
    """Raises ``errors`` one per call, then answers ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors, self.calls = list(errors), 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_it_tries_again_while_postgres_is_unreachable_and_logs_the_wait_once(lines: Lines) -> None:
    work = Work(starting_up(), cut(), starting_up())
    outage = Outage("thing.waiting", "thing.resumed", lasted="waited_s")
    assert run(retry_while_unreachable(work, give_up_after_s=None, outage=outage, pause_s=PAUSE_S, items=3)) == "done"
    assert work.calls == 4
    assert [(level, event) for level, event, _ in lines.lines] == [("warning", "thing.waiting"), ("info", "thing.resumed")]
    assert lines.lines[0][2] == {"items": 3, "error": "CannotConnectNowError"}
    assert lines.lines[1][2]["items"] == 3 and lines.lines[1][2]["waited_s"] >= 0
    assert outage.down_since is None


def test_it_gives_up_after_its_limit_with_the_last_error(lines: Lines) -> None:
    errors = [cut() for _ in range(1000)]
    work = Work(*errors)
    started = time.monotonic()
    with pytest.raises(DBAPIError) as caught:
        run(retry_while_unreachable(work, give_up_after_s=0.1, outage=Outage("thing.waiting", "thing.resumed"),
                                      pause_s=PAUSE_S))
    assert 0.1 <= time.monotonic() - started < 1
    assert caught.value is errors[work.calls - 1]
    assert 2 < work.calls < 50
    assert [event for _, event, _ in lines.lines] == ["thing.waiting"]  # (no "resumed": it never came back)


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.DivisionByZeroError("division by zero"),  # the statement's fault
    DBAPIError("select 1", None, ValueError("bad parameter")),
    ConnectionRefusedError("not the database"),  # a socket error the driver did not raise (an SMTP relay's)
    TimeoutError(),  # likewise
])
def test_any_other_error_is_raised_at_once(lines: Lines, error: BaseException) -> None:
    work = Work(error)
    started = time.monotonic()
    with pytest.raises(type(error)) as caught:
        run(retry_while_unreachable(work, give_up_after_s=None, outage=Outage("thing.waiting", "thing.resumed"),
                                      pause_s=10))
    assert caught.value is error and work.calls == 1 and time.monotonic() - started < 1
    assert lines.lines == []


def test_an_outage_kept_across_calls_is_one_wait(lines: Lines) -> None:
    """Delivery's recorder: batch after batch held in one outage is logged once, and ``down_since`` tells its
    wrap-up that PostgreSQL is away in between."""
    outage = Outage("thing.held", "thing.recorded", lasted="held_s")
    for _ in range(3):
        with pytest.raises(DBAPIError):
            run(retry_while_unreachable(Work(*(cut() for _ in range(100))), give_up_after_s=0.03, outage=outage,
                                          pause_s=PAUSE_S))
        assert outage.down_since is not None
    assert run(retry_while_unreachable(Work(cut()), give_up_after_s=None, outage=outage, pause_s=PAUSE_S)) == "done"
    assert [event for _, event, _ in lines.lines] == ["thing.held", "thing.recorded"]
    assert outage.down_since is None
