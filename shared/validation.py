"""Field types for text that ends up in PostgreSQL: what it cannot store is a 422, never a 500."""

import json
import re
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, StringConstraints


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which PostgreSQL text cannot hold"
    try:
        value.encode("utf-8")  # lone surrogates (from JSON "\ud800" escapes) are not text PostgreSQL can hold
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def _storable(value: str) -> str:
    if (problem := _text_problem(value)) is not None:
        raise ValueError(problem)
    return value


def unstorable(value: Any) -> str | None:
    """Why PostgreSQL text or jsonb cannot hold ``value`` (a string, or JSON: lists, objects and scalars): a
    string or object key in it with a NUL or a lone surrogate, and where (``[2]``, ``["key"]``); None if it can."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        at, v = stack.pop()
        if isinstance(v, str):
            if (problem := _text_problem(v)) is not None:
                return f"{at} {problem}" if at else problem
        elif isinstance(v, list):
            stack.extend((f"{at}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                where = f"{at}[{json.dumps(k) if isinstance(k, str) else repr(k)}]"
                if isinstance(k, str) and (problem := _text_problem(k)) is not None:
                    return f"the key {where} {problem}"
                stack.append((where, x))
    return None


# any text PostgreSQL can hold (no NUL, no lone surrogate): e.g. a user's own ids as ingest stored them
StorableText = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$"), AfterValidator(_storable)]

# a reference to a profile: profile id, userId, anonymousId or email
Ref = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$"),
                AfterValidator(_storable)]


@lru_cache(maxsize=1024)
def is_time_zone(name: str) -> bool:
    """An IANA zone name this machine knows (``Europe/Paris``), not an offset label such as ``GMT+0100``."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# JSON's types as the OpenAPI documents state them. Pydantic's lax mode would read `false` as 0, `1` as true,
# "12" as 12 and a number as a Unix time; a client that sends those has a bug we should report, not guess at.
_NUMERIC = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _json_number(value: Any) -> Any:
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number, not a boolean or a string")
    return value


def _json_boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _not_a_number(value: Any) -> Any:
    # (a number's text holds no ":" or "T", which every date-time has: no regex needed for those)
    if isinstance(value, str):
        numeric = ":" not in value and "T" not in value and _NUMERIC.fullmatch(value)
    else:
        numeric = isinstance(value, (bool, int, float))
    if numeric:
        raise ValueError("must be an ISO 8601 date or date-time (e.g. 2026-01-31T12:00:00Z), not a number")
    return value


def _in_utc_range(value: datetime) -> datetime:
    # only a date-time in year 1 or 9999 can leave the range when moved to UTC (offsets are under a day)
    if value.tzinfo is not None and value.year in (1, 9999):
        try:
            value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+03:00 is in year 0 in UTC: no database can take it
            raise ValueError("is out of range (year 1 to 9999 in UTC)") from None
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]
JsonBool = Annotated[bool, BeforeValidator(_json_boolean)]
IsoDatetime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_in_utc_range)]
IsoDate = Annotated[date, BeforeValidator(_not_a_number)]
