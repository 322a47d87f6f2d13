"""Field types, and a base model, for text that ends up in PostgreSQL: what it cannot store is a 422, never a
500."""

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, time
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

_LONE_SURROGATE = "contains a lone surrogate (not valid Unicode text)"


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which PostgreSQL text cannot hold"
    try:
        value.encode("utf-8")  # lone surrogates (from JSON "\ud800" escapes) are not text PostgreSQL can hold
    except UnicodeEncodeError:
        return _LONE_SURROGATE
    return None


def _storable(value: str) -> str:
    if (problem := _text_problem(value)) is not None:
        raise ValueError(problem)
    return value


def unstorable(value: Any) -> str | None:
    """Why PostgreSQL text or jsonb cannot hold ``value`` (a string, or JSON: lists, objects and scalars): a
    string or object key in it with a NUL or a lone surrogate, or a number that is no JSON number (``NaN``,
    ``Infinity``, ``1e400`` as Python's JSON parser reads them; YAML's ``.inf``: stored as null, or dropped, they
    changed what was saved), and where (``[2]``, ``["key"]``); None if it can."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        at, v = stack.pop()
        if isinstance(v, str):
            if (problem := _text_problem(v)) is not None:
                return f"{at} {problem}" if at else problem
        elif isinstance(v, float) and not math.isfinite(v):
            problem = f"is {v}: not a number JSON holds (NaN, Infinity or beyond ±1.8e308)"
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


def url_text_problem(value: str) -> str | None:
    """Why a query or path parameter's text is no text at all: a NUL (``%00``), or bytes that are not UTF-8
    (``%FF``; ``%ED%A0%80`` would be a lone surrogate). ``value`` is decoded with ``errors="surrogateescape"``,
    which keeps such bytes as lone surrogates; None if the text is fine."""
    if "\x00" in value:
        return "contains a NUL character (%00)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (percent-encoded bytes that are no character, such as %FF or %ED%A0%80)"
    return None


URL_TEXT_UNCHECKED = "_tenure_url_text_unchecked"


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def url_text_unchecked(endpoint: _Endpoint) -> _Endpoint:
    """Mark a route whose answer must not depend on the text of its URL (the open pixel is always the image):
    the check of every request's parameters (``shared.web``) leaves it alone."""
    setattr(endpoint, URL_TEXT_UNCHECKED, True)
    return endpoint


class StorableModel(BaseModel):
    """A request body whose fields must all be storable in PostgreSQL. A NUL (``\\u0000``) or a lone surrogate
    (``\\ud800``) anywhere in a field — in its text, or in a string or key at any depth of a list or object
    (``data``, ``metadata``, ``traits``) — is refused at that field: a 422 naming it, not a database error, a
    500 or a worker failing later on the value. Nested StorableModels name their own fields
    (``steps.2.webhook.url``), and a field added later is covered without a type to remember.

    The check runs after the field's own validation (pydantic allows no other kind on the ``type`` field of a
    discriminated union): a lone surrogate in a field with a length or a pattern fails that check first, as
    ``string_unicode``, which :func:`error_message` words as this check does."""

    @field_validator("*")
    @classmethod
    def _storable_field(cls, value: Any) -> Any:
        if (problem := unstorable(value)) is not None:
            raise ValueError(problem)
        return value


class FieldError(ValueError):
    """A model validator's complaint about one field (``to``, ``subject``): the 422 names that field (its ``loc``
    ends with it, shared/errors.py) instead of the body as a whole."""

    def __init__(self, field: str | tuple[str, ...], message: str):
        super().__init__(message)
        self.field = field  # a name, or a path inside the model (("locales", "fr", "subject"))


_NO_INPUT = object()


def error_location(error: Mapping[str, Any], data: Any = _NO_INPUT) -> list[str]:
    """A pydantic error's ``loc`` as text, with the field a :class:`FieldError` names. With ``data``, the input
    the ``loc`` starts from, it is made a path in that input (:func:`input_path`)."""
    loc = [str(p) for p in error.get("loc", ())]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc = [*loc, *((cause.field,) if isinstance(cause.field, str) else cause.field)]
    return loc if data is _NO_INPUT else input_path(loc, data)


def input_path(loc: list[str], data: Any) -> list[str]:
    """``loc`` as a path in ``data``, the input it was found in. Pydantic puts the tag of a discriminated union
    in a location (``steps.0.delay.seconds``, ``trigger.schedule.cron``), which no client can follow into its
    request: the first part met at an object that is that object's ``type`` is left out (the tag may also be a
    key: an event trigger's ``event`` is ``trigger.event.event``)."""
    out: list[str] = []
    at: Any = data
    tagged: Any = None
    for part in loc:
        if isinstance(at, dict) and at is not tagged and part == at.get("type"):
            tagged = at  # the union's tag: the same object goes on
            continue
        out.append(part)
        if isinstance(at, dict):
            at = at.get(part)
        elif isinstance(at, list) and part.isdigit() and int(part) < len(at):
            at = at[int(part)]
        else:
            at = None
    return out


def error_message(error: Mapping[str, Any]) -> str:
    """A pydantic error's message for people; pydantic's own for a lone surrogate in a string with a length or
    a pattern says "unable to parse raw data as a unicode string"."""
    if error.get("type") == "string_unicode":
        return f"Value error, {_LONE_SURROGATE}"
    return str(error.get("msg"))


def errors_text(exc: Any, data: Any = _NO_INPUT) -> str:
    """A pydantic ``ValidationError`` for a line of text: each error at its place (with ``data``, the input
    validated, a path in it: ``steps.0.next``), pydantic's "Value error, " prefix left out (a refused message
    in a batch read "to: : Value error, to is not a valid email address")."""
    return "; ".join(f"{'.'.join(error_location(e, data)) or 'input'}: {error_message(e).removeprefix('Value error, ')}"
                     for e in exc.errors(include_url=False))


# What delivery takes in a message (``POST /v1/messages``), and so what campaign's templates are held to on save: a
# template over them was saved, and then every send of it failed at delivery.
MESSAGE_SUBJECT_MAX = 998  # RFC 5322's line length (a push's title too)
MESSAGE_BODY_MAX = 1_000_000  # an email's HTML or text part, a push's body
SMS_TEXT_MAX = 1_600  # ten concatenated segments: what carriers deliver as one SMS


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


# RFC 5646 §2.1's well-formed language tag (its ABNF, case-insensitive); not checked against the IANA registry,
# so a tag registered later still passes. Grandfathered tags that do not fit the langtag syntax are listed.
_LANGTAG = (r"(?:[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4,8})"  # language (with up to three extlangs)
            r"(?:-[a-z]{4})?"  # script
            r"(?:-(?:[a-z]{2}|[0-9]{3}))?"  # region
            r"(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*"  # variants
            r"(?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*"  # extensions
            r"(?:-x(?:-[a-z0-9]{1,8})+)?")  # private use
_IRREGULAR = ("en-GB-oed|i-ami|i-bnn|i-default|i-enochian|i-hak|i-klingon|i-lux|i-mingo|i-navajo|i-pwn|i-tao|"
              "i-tay|i-tsu|sgn-BE-FR|sgn-BE-NL|sgn-CH-DE")
_LANGUAGE_TAG = re.compile(rf"{_LANGTAG}|x(?:-[a-z0-9]{{1,8}})+|{_IRREGULAR}", re.IGNORECASE | re.ASCII)
LANGUAGE_TAG_MAX = 35  # RFC 5646 §4.4.1: 35 characters hold every tag in practical use


def is_language_tag(value: str) -> bool:
    """A well-formed BCP 47 language tag (``fr``, ``fr-CA``, ``zh-Hant-TW``, ``es-419``); ``fr_CA``, text with spaces
    or line breaks, and anything over 35 characters are not."""
    return len(value) <= LANGUAGE_TAG_MAX and _LANGUAGE_TAG.fullmatch(value) is not None


def as_language_tag(value: str) -> str:
    """A locale as systems write it, as a BCP 47 tag where the mapping is plain: POSIX's ``en_US.UTF-8`` and
    ``de_DE@euro`` → ``en-US``, ``de-DE``; Java's and Android's ``zh_TW_#Hant`` → ``zh-Hant-TW``; surrounding
    blanks dropped. Anything else is returned as given (for :func:`is_language_tag` to judge)."""
    tag = value.strip()
    if "." in tag or "@" in tag:  # POSIX: language_TERRITORY.codeset@modifier
        tag = re.split(r"[.@]", tag, maxsplit=1)[0]
    if "_#" in tag:  # Java Locale.toString(): language_COUNTRY_#Script
        head, _, script = tag.partition("_#")
        language, _, country = head.partition("_")
        tag = "-".join(x for x in (language, script, country) if x)
    return tag.replace("_", "-")


def _language_tag(value: str) -> str:
    tag = as_language_tag(value)
    if not is_language_tag(tag):
        raise ValueError(f"not a BCP 47 language tag (e.g. fr, fr-CA, zh-Hant-TW): {value[:40]!r}")
    return tag


# a field holding a locale (the 422 names the field; its loc is the field's): BCP 47, with the locales systems
# write (en_US, en_US.UTF-8, zh_TW_#Hant) read as their tags
LanguageTag = Annotated[str, AfterValidator(_language_tag)]


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


FIRST_INSTANT = datetime.min.replace(tzinfo=UTC)
LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


def finite_instant(value: datetime) -> bool:
    """Whether PostgreSQL keeps ``value`` as itself: asyncpg sends the calendar's first and last instants
    (0001-01-01T00:00Z, 9999-12-31T23:59:59.999999Z) as ``-infinity`` / ``infinity``, read back without an offset."""
    at = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return FIRST_INSTANT < at < LAST_INSTANT


def _in_utc_range(value: datetime) -> datetime:
    # only a date-time in year 1 or 9999 can leave the range when moved to UTC (offsets are under a day)
    if value.year in (1, 9999):
        try:
            at = value.astimezone(UTC) if value.tzinfo is not None else value
        except OverflowError:  # 0001-01-01T00:00+03:00 is in year 0 in UTC: no database can take it
            raise ValueError("is out of range (year 1 to 9999 in UTC)") from None
        if not finite_instant(at):  # one event at 0001-01-01T00:00Z stopped every reader of ingest's feed
            raise ValueError("is out of range (after 0001-01-01T00:00:00Z and before 9999-12-31T23:59:59.999999Z)")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]


def bounded_json_int(**bounds: int) -> Any:
    """:data:`JsonInt` within ``bounds`` (``ge``, ``le``…), which its JSON Schema shows as ``minimum``/``maximum``
    also inside ``X | None``: a bound given after JsonInt's validator (``JsonInt | None = Field(ge=1)``) came out as
    pydantic's own ``ge``, which no schema tool knows, so clients saw no bound."""
    return Annotated[int, Field(**bounds), BeforeValidator(_json_number)]
JsonFloat = Annotated[float, BeforeValidator(_json_number)]
JsonBool = Annotated[bool, BeforeValidator(_json_boolean)]
IsoDatetime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_in_utc_range)]
IsoDate = Annotated[date, BeforeValidator(_not_a_number)]


# ISO 8601's basic format (20261129T030000Z, 20261129T0300+0100), which pydantic does not read
_ISO_BASIC = re.compile(r"(\d{4})(\d{2})(\d{2})[T ](\d{2})(\d{2})(\d{2}(?:[.,]\d+)?)?(Z|[+-]\d{2}(?::?\d{2})?)?",
                        re.IGNORECASE)


def _client_time(value: Any) -> Any:
    """Date-time text as clients really send it, rewritten for pydantic (which reads ISO 8601's extended format
    and Unix times):

    - ``…+01`` → ``…+01:00``: PostgreSQL writes a whole-hour offset so (``2026-11-29 03:00:00+01``), and a server
      integration sends its database's timestamps as they come;
    - ISO 8601's basic format, ``20261129T030000Z``;
    - RFC 2822 / RFC 1123 dates, ``Sun, 29 Nov 2026 03:00:00 GMT`` (HTTP's Date, JavaScript's toUTCString()).
    Anything else is left for pydantic to read or refuse."""
    if not isinstance(value, str) or len(value) < 11 or (value[4] == "-" and value[-3] not in "+-"):
        return value  # (the common case, extended ISO 8601 with a full offset or none, costs two comparisons)
    if value[4] == "-":
        if value[-2:].isdigit() and value[-4].isdigit() and ":" in value:
            return value + ":00"
        return value
    if m := _ISO_BASIC.fullmatch(value.strip()):
        y, mo, d, h, mi, sec, zone = m.groups()
        zone = zone or ""
        if len(zone) == 5 and zone[0] in "+-":
            zone = f"{zone[:3]}:{zone[3:]}"
        return f"{y}-{mo}-{d}T{h}:{mi}:{(sec or '00').replace(',', '.')}{zone}"
    if "," in value[:10] or value[:3].isalpha():
        try:
            return parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return value
    return value


# the tracking API's client times: ISO 8601, or a Unix time as some SDKs and hand-written clients send it (a number
# or its text; pydantic reads one beyond ±2e10 as milliseconds). Refusing it lost the whole event.
IsoOrUnixDatetime = Annotated[datetime, BeforeValidator(_client_time), AfterValidator(_in_utc_range),
                              WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"},
                                                        {"type": "number", "description": "Unix time, s or ms"}]},
                                             mode="validation")]


# a number written as text, as PostgreSQL's numeric reads it (segment's set_evaluation.py holds the same pattern): no
# "NaN", "Infinity", "1_000", spaces or exponents past 99, which Python's float alone would take
NUMERIC_TEXT = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,2})?"
_NUMERIC_TEXT_RE = re.compile(NUMERIC_TEXT)


def numeric_text(v: str) -> bool:
    return _NUMERIC_TEXT_RE.fullmatch(v) is not None


def ordered_number(v: Any) -> float | int | None:
    """A value as a number for ``gt`` / ``lt`` …: a number (not a bool) or a text holding one ("42", traits
    imported from a CSV or a form, a price an SDK sent as "19.99"), else None. Segment conditions and campaign
    filters order values alike: a trait of "42" never matched ``gt 40``."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return v
    if isinstance(v, str) and numeric_text(v):
        return float(v)
    return None


DayWindow = tuple[time, time]  # (start, end) of a day, local; an end of 24:00 is time.max
_DAY_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))")


def parse_day_window(raw: str) -> DayWindow | None:
    """``"08:00-21:00"`` → (08:00, 21:00); ``""`` → None (no window); ``"08:00-24:00"`` ends at midnight.
    ValueError for anything else, a window that ends before it starts included. The setting's check and the
    sender read windows with this one rule (a window one took and the other refused stopped every batch)."""
    if not raw:
        return None
    m = _DAY_WINDOW.fullmatch(raw)
    if not m:
        raise ValueError(f"{raw!r} is not HH:MM-HH:MM, as in 08:00-21:00")
    start = time(int(m[1]), int(m[2]))
    end = time.max if m[5] else time(int(m[3]), int(m[4]))
    if end <= start:
        raise ValueError(f"{raw!r}: the window must end after it starts, on the same day, as in 08:00-21:00")
    return start, end
