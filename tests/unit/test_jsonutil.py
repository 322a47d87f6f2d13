"""shared.jsonutil: orjson's speed without what orjson changes or refuses."""

import json

from hypothesis import given
from hypothesis import strategies as st

from shared.jsonutil import dumps, has_long_number, loads

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(_values)
def test_loads_reads_what_the_standard_library_reads(value) -> None:
    """Integers of any size come back exact (orjson alone turns 2^64 and beyond into floats), as do lone
    surrogates in strings, which orjson refuses."""
    text = json.dumps(value)
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)
    assert loads(dumps(value)) == json.loads(text)


def test_a_long_run_of_digits_is_noticed_wherever_it_is() -> None:
    assert has_long_number(b'{"n": 18446744073709551616}')
    assert has_long_number(b'{"n": -9223372036854775809}')
    assert has_long_number(b'{"phone": "+4915112345678901234567"}')  # in a string: only the slower parser
    assert not has_long_number(b'{"n": 922337203685477580, "id": "0b7ee0a4-52ab-4c5e-9a5f-3b2b0e6f1c43"}')
    assert loads(b"[18446744073709551616, 1.5, -9223372036854775809]") == [2**64, 1.5, -(2**63) - 1]
