import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import BadRequest
from shared.feed import Cursor


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1))
def test_cursor_round_trips(xid: int, seq: int) -> None:
    assert Cursor.decode(Cursor(xid, seq).encode()) == Cursor(xid, seq)


def test_empty_cursor_is_the_start() -> None:
    assert Cursor.decode("") == Cursor.decode(None) == Cursor(0, 0)


@pytest.mark.parametrize("raw", ["abc", "1", "1-", "-1", "1-2-3", "x-1"])
def test_garbage_cursor_is_a_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest):
        Cursor.decode(raw)
