"""Field types for text that ends up in PostgreSQL: what it cannot store is a 422, never a 500."""

from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, StringConstraints


def _storable(value: str) -> str:
    try:
        value.encode("utf-8")  # lone surrogates (from JSON "\ud800" escapes) are not text PostgreSQL can hold
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (not valid Unicode text)") from None
    return value


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
