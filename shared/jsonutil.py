"""JSON encoding for values that came from clients: fast (orjson), and never a crash.

orjson refuses integers beyond 64 bits (``Integer exceeds 64-bit range``), which any client can send;
PostgreSQL's jsonb stores them fine, so those values fall back to the standard library encoder.
"""

import json
import uuid
from collections.abc import Mapping
from typing import Any

import orjson


def _default(value: Any) -> Any:
    """Types orjson does not take natively: asyncpg's UUID subclass (ids read back from PostgreSQL)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError



def dumps_bytes(value: Any, *, sort_keys: bool = False) -> bytes:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(value, default=_default, option=option)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys,
                          default=str).encode()


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    return dumps_bytes(value, sort_keys=sort_keys).decode()


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # every digit a 0, all else a space
_LONG_RUN = b"0" * 19


def has_long_number(data: bytes) -> bool:
    """Whether ``data`` holds 19 digits in a row, so perhaps an integer beyond 64 bits, which orjson reads as a
    float (10^30 as 1e+30, 2^64 + 1 rounded): silently changed. A C-speed pass (a translation and a search);
    a long run inside a string (a phone number, an id) only costs the slower parser."""
    return _LONG_RUN in data.translate(_DIGITS_AS_ZERO)


def loads(data: bytes | str) -> Any:
    """Parse JSON with orjson (several times the standard library's speed), or with the standard library for what
    orjson would change or refuses and ``json.loads`` takes: integers beyond 64 bits, lone surrogate escapes."""
    raw = data.encode() if isinstance(data, str) else data
    if not has_long_number(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def obj(value: Any) -> dict[str, Any]:
    """A JSON object from a client's free-form payload, or {} when it is something else (``context.page``
    may be a string, ``properties`` null)."""
    return value if isinstance(value, dict) else {}


def get_path(obj: Mapping[str, Any], path: str) -> Any:
    """A property by name, where dots reach into nested objects (``product.category``); a key that itself
    contains the dots wins. None when absent. The rule event-property filters follow in segment conditions
    and campaign triggers alike."""
    if path in obj:
        return obj[path]
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur
