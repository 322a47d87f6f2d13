"""Field types for text that ends up in PostgreSQL: what it cannot store is a 422, never a 500."""

import re
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, StringConstraints


def _storable(value: str) -> str:
    try:
        value.encode("utf-8")  # lone surrogates (from JSON "\ud800" escapes) are not text PostgreSQL can hold
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return value


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
