"""Field types for text that ends up in PostgreSQL: what it cannot store is a 422, never a 500."""

from typing import Annotated

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
