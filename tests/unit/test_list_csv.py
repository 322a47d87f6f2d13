"""Reading manual-list uploads: line ends, headers, bad input as 422s (found by fuzzing as 500s)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.segment.lists import ids_from_csv
from shared.errors import ValidationFailed


def test_line_ends_header_and_blank_lines() -> None:
    assert ids_from_csv(b"email\r\nada@x.example\rbob@x.example\n\n  carl@x.example ,extra\n") == [
        "ada@x.example", "bob@x.example", "carl@x.example"]
    assert ids_from_csv("\ufeffid\nu-1\n".encode()) == ["u-1"]  # a BOM from a spreadsheet export


@pytest.mark.parametrize("raw", [b"", b"email\n", b"\xff\xfe", b"u-1\x00\n"])
def test_bad_uploads_are_validation_errors(raw: bytes) -> None:
    with pytest.raises(ValidationFailed):
        ids_from_csv(raw)


@given(st.binary(max_size=200))
def test_any_bytes_give_ids_or_a_validation_error(raw: bytes) -> None:
    try:
        ids = ids_from_csv(raw)
    except ValidationFailed:
        return
    assert ids and all(i and len(i) <= 512 for i in ids)
