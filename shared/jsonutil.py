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


def loads(data: bytes | str) -> Any:
    """Parse JSON with orjson (several times the standard library's speed), falling back to the standard library
    for what orjson refuses and ``json.loads`` takes: integers beyond 64 bits, lone surrogate escapes."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


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
