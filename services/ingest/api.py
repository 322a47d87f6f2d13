"""Ingest HTTP routes: the Segment tracking API, the event feed and profile lookup."""

import gzip
import json
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

import orjson
import structlog
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import TypeAdapter, ValidationError
from pydantic_core.core_schema import ErrorType

from services.ingest import eventlog, privacy, profiles, sdk_settings, tracking
from services.ingest.schemas import (
    AliasMessage,
    BatchItem,
    BatchRequest,
    ErasureCreate,
    ExportOut,
    FeedPage,
    GroupMessage,
    IdentifyMessage,
    LookupOut,
    LookupRequest,
    PageMessage,
    PrivacyRequestOut,
    ProfileEventList,
    ProfileList,
    ProfileOut,
    Rejected,
    ResolveOut,
    ResolveRequest,
    ScreenMessage,
    TrackMessage,
    TrackResponse,
)
from shared import metrics
from shared.auth import InternalDep, WorkspaceDep, credentials_from_header, principal_for
from shared.db import SessionDep
from shared.errors import (
    COMMON_ERRORS,
    AppError,
    BadRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    ValidationFailed,
    place_error,
    problem_schema,
)
from shared.feed import Cursor, backlog
from shared.jsonutil import dumps_bytes, has_long_number
from shared.pagination import AfterDep, SeqAfterDep
from shared.routing import SegmentRoute
from shared.settings import Settings

log = structlog.get_logger()

MAX_MESSAGE_BYTES = 32 * 1024
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # a JSON \u0000 escape, not an escaped backslash + "u0000"
_TYPE_FIELD = 32  # bytes a single-message route may add to its message: "type": "<kind>"
WAKE_FUNCTION = "on_events"  # the job consumers of the event log register

tracking_router = APIRouter(prefix="/v1", tags=["tracking"])
feed_router = APIRouter(prefix="/v1", tags=["feed"])
profiles_router = APIRouter(prefix="/v1", tags=["profiles"], route_class=SegmentRoute)  # ids may hold a "/"

_item_adapter: TypeAdapter[Any] = TypeAdapter(BatchItem)
ProfileRef = Annotated[str, Path(description="profile id, userId, anonymousId or email (in any case); a `/` in it "
                                             "percent-encoded (`org%2F123`), as a path segment is")]
# (their problems also carry `code` and `message`, which Segment's and RudderStack's SDKs read: services/ingest/app.py)
_TRACK_ERRORS = {
    **{status: problem_schema(entry["description"], sdk_members=True) for status, entry in COMMON_ERRORS.items()},
    403: problem_schema("A secret key was used where the write key belongs", sdk_members=True),
    413: problem_schema("Over 32 KB per message, or over the batch limit (500 KB unless TENURE_INGEST_MAX_BATCH_BYTES "
                        "says otherwise); `limit_bytes` says the limit", sdk_members=True),
    429: problem_schema("Over the workspace's rate limit: retry after `Retry-After` seconds", sdk_members=True),
}


@dataclass
class _Body:
    """A request's JSON object, with what the per-message checks need to know of its raw bytes."""

    doc: dict[str, Any]
    size: int  # bytes after decompression
    unrepresentable: bool = False  # some value is an :class:`_Unrepresentable` (NaN, 1e400, …): its message is refused


@dataclass(frozen=True)
class _Unrepresentable:
    """A number the body holds that no JSON store can: ``NaN`` / ``Infinity`` (what Python's ``json.dumps`` writes
    by default, so segment-analytics-python sends them), a float beyond a double (``1e400``) or an integer of more
    digits than Python converts. Parsed as this marker, so the message holding it is refused on its own instead
    of the whole batch (a 400 the SDKs do not retry: every other event of the batch was lost)."""

    text: str


async def _read_json(request: Request, limit: int, per: str) -> _Body:
    """The body as a JSON object, refused with a 413 over ``limit`` bytes (after gzip) ``per`` message or batch."""
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding == "gzip":
        try:
            raw = _gunzip(raw, limit)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise BadRequest(f"Body is not valid gzip: {exc}") from exc
    elif encoding not in ("", "identity"):
        raise BadRequest(f"Unsupported Content-Encoding {encoding!r}: send gzip or nothing")
    if len(raw) > limit:
        size = f"{limit // 1024} KB" if limit % 1024 == 0 else f"{limit} bytes"
        raise PayloadTooLarge(f"Request body is over the limit of {size} per {per}", limit_bytes=limit)
    body, unrepresentable = _loads(raw)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return _Body(body, len(raw), unrepresentable)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every member of a gzip body (RFC 1952 allows several, as ``cat a.gz b.gz`` makes), at most ``limit + 1``
    bytes of it (enough to say it is over the limit). A stream cut short, its CRC and length unchecked, is refused:
    it was taken whole, and a multi-member body was cut after its first member."""
    out = bytearray()
    for _ in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += d.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            return bytes(out)
        if not d.eof:
            raise zlib.error("the body ends before its gzip stream does")
        data = d.unused_data
        if not data.strip(b"\x00"):  # (zeros after the last member: padding, which gzip itself skips)
            return bytes(out)
    # (each member copies what follows it: thousands of empty ones took minutes of this process, before any key)
    raise zlib.error(f"over {MAX_GZIP_MEMBERS} gzip members")


MAX_GZIP_MEMBERS = 16


def _loads(raw: bytes) -> tuple[Any, bool]:
    """The body's JSON, and whether it holds an :class:`_Unrepresentable` number."""
    long_number = has_long_number(raw)  # orjson would read an integer beyond 64 bits as a float
    error: BadRequest | None = None
    if not long_number:
        try:
            return orjson.loads(raw), False
        except orjson.JSONDecodeError as exc:
            error = BadRequest(f"The request body is not valid JSON: {exc}")
    # The standard library's parser, for what orjson refuses or would change: a lone surrogate escape (JSON's
    # grammar allows it, and JavaScript's JSON.stringify writes one for a string cut in the middle of an emoji,
    # "\ud83d": read as Segment's API and browsers do, U+FFFD), integers beyond 64 bits, and numbers no store can
    # hold (marked, refused per message).
    marked: list[_Unrepresentable] = []

    def mark(text: str) -> _Unrepresentable:
        marked.append(_Unrepresentable(text if len(text) <= 40 else f"{text[:20]}… ({len(text)} characters)"))
        return marked[-1]

    def number(text: str) -> float | _Unrepresentable:
        value = float(text)
        return mark(text) if value in (float("inf"), float("-inf")) else value

    def integer(text: str) -> int | _Unrepresentable:
        return mark(text) if len(text) > _MAX_INT_DIGITS else int(text)

    try:
        doc = json.loads(raw, parse_constant=mark, parse_float=number, parse_int=integer)
    except (ValueError, RecursionError) as exc:
        raise error or BadRequest(f"The request body is not valid JSON: {exc}") from None
    try:
        return _without_lone_surrogates(doc), bool(marked)
    except RecursionError:  # (nested deeper than the interpreter recurses: no message is shaped so)
        raise BadRequest("The request body is nested too deeply") from None


_MAX_INT_DIGITS = 4300  # (sys.int_info.default_max_str_digits: int() refuses longer text)


def _holds_unrepresentable(value: Any) -> _Unrepresentable | None:
    stack = [value]  # (iterative: a body may nest as deep as the parser went)
    while stack:
        v = stack.pop()
        if isinstance(v, _Unrepresentable):
            return v
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    return value


async def _authorize(request: Request, body: dict[str, Any]) -> Any:
    in_body = body["writeKey"] if isinstance(body.get("writeKey"), str) else None
    if in_body is None and request.url.path.startswith(beacon_router.prefix):  # (a beacon's key is in its URL)
        in_body = request.query_params.get("writeKey")
    try:
        raw = credentials_from_header(request)
    except Unauthorized:
        if not in_body:
            raise
        raw = None  # a header a proxy or an SDK mangled does not void the write key in the body
    # campaign journeys update traits as the workspace (internal token + X-Tenure-Workspace)
    try:
        return await principal_for(request, raw or in_body, {"write", "internal"})
    except Unauthorized:
        # Segment's OAuth form: a Bearer access token from Segment's authorization server, never a key of ours,
        # beside the write key in the body (what segment-analytics-python sends with OAuth configured)
        if raw and in_body and in_body != raw:
            return await principal_for(request, in_body, {"write", "internal"})
        raise


async def _store(request: Request, body: _Body,
                 items: list[tuple[int, Any]], *, batch_sent_at: datetime | None,
                 batch_context: dict[str, Any]) -> TrackResponse:
    principal = await _authorize(request, body.doc)
    ws = principal.require_workspace()
    settings: Settings = request.app.state.settings
    await request.app.state.request_counter.check(f"ingest:{ws}", settings.ingest_rate_limit_per_s)
    received_at = datetime.now(UTC)
    envelopes: list[tracking.Envelope] = []
    sent: dict[int, tuple[int, str | None]] = {}  # id() of an envelope -> its index and the messageId it gave
    rejected: list[Rejected] = []
    # Sizes and NULs are checked on each message as re-encoded (orjson may write a number longer than it
    # came: 1e15 → 1000000000000000.0). When the whole body re-encodes within 32 KB and without a NUL, no
    # message can break either rule, and one encoding of the body replaces one per message.
    whole = dumps_bytes(body.doc) if body.size <= MAX_MESSAGE_BYTES else None
    one_by_one = whole is None or len(whole) + _TYPE_FIELD > MAX_MESSAGE_BYTES or b"\\u0000" in whole
    # a batch's context is merged under each message's own (tracking.normalize): its NUL is theirs
    context_nul = bool(batch_context) and _has_nul(dumps_bytes(batch_context))
    for index, item in items:
        if not isinstance(item, dict):
            rejected.append(Rejected(index=index, errors=[{"msg": "a message must be a JSON object",
                                                           "type": "dict_type"}]))
            continue
        mid = item.get("messageId") if isinstance(item.get("messageId"), str) else None
        if body.unrepresentable and (number := _holds_unrepresentable(item)) is not None:
            rejected.append(Rejected(index=index, message_id=mid, errors=[{
                "msg": f"message holds a number JSON storage cannot: {number.text} (NaN and Infinity are not JSON; "
                       f"a float beyond ±1.8e308 or an integer of over {_MAX_INT_DIGITS} digits cannot be kept)",
                "type": "unrepresentable_number"}]))
            continue
        encoded = dumps_bytes(item) if one_by_one else b""
        if len(encoded) > MAX_MESSAGE_BYTES:
            rejected.append(Rejected(index=index, message_id=mid,
                                     errors=[{"msg": "message is over 32 KB", "type": "too_large"}]))
            continue
        if _has_nul(encoded):  # PostgreSQL text and jsonb cannot hold NUL
            rejected.append(Rejected(index=index, message_id=mid,
                                     errors=[{"msg": "message contains a NUL character (\\u0000)", "type": "nul"}]))
            continue
        if context_nul and _has_nul(dumps_bytes({**batch_context, **_own_context(item)})):
            rejected.append(Rejected(index=index, message_id=mid, errors=[{
                "msg": "message contains a NUL character (\\u0000) in the batch's context", "type": "nul"}]))
            continue
        try:
            msg = _item_adapter.validate_python(item)
        except ValidationError as exc:
            errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                      for e in exc.errors(include_url=False)]
            rejected.append(Rejected(index=index, message_id=mid, errors=errors))
            continue
        envelopes.append(tracking.normalize(msg, received_at, batch_sent_at=batch_sent_at,
                                            batch_context=batch_context))
        sent[id(envelopes[-1])] = (index, mid)
    if rejected:
        _report_rejected(rejected)
    if not envelopes:
        raise ValidationFailed("No valid message in the request", rejected=[r.model_dump() for r in rejected])
    result = await request.app.state.committer.submit(ws, envelopes)
    if result.refused:  # (the committer answers an error instead when it refused them all)
        refused = [Rejected(index=sent[id(env)][0], message_id=sent[id(env)][1], errors=[{
            "msg": f"the database refused this message (SQLSTATE {state}); the others were stored",
            "type": "refused_by_database"}]) for env, state in result.refused]
        _report_rejected(refused)
        rejected = sorted(rejected + refused, key=lambda r: r.index)
    log.info("ingest.recorded", accepted=result.accepted, duplicates=result.duplicates, suppressed=result.suppressed,
             rejected=len(rejected))
    if result.accepted:
        for service in ("segment", "campaign"):
            request.app.state.waker.request(service, WAKE_FUNCTION)
    return TrackResponse(accepted=result.accepted, duplicates=result.duplicates, suppressed=result.suppressed,
                         rejected=rejected)


# the reasons a message is refused for, as the counter's label: ours and pydantic's error types (a bounded set)
_REJECT_REASONS = frozenset({"too_large", "nul", "unrepresentable_number", "refused_by_database",
                             *get_args(ErrorType)})
_LOGGED_REJECTIONS = 20


def _report_rejected(rejected: list[Rejected]) -> None:
    """Count the refused messages and name them in a warning: no SDK reads the answer's ``rejected``, so this is all
    an operator learns of them. Ids and error types only, never the messages' content."""
    for r in rejected:
        reason = r.errors[0].get("type") if r.errors else None
        metrics.INGEST_REJECTED.labels(reason if reason in _REJECT_REASONS else "other").inc()
    log.warning("ingest.rejected", rejected=len(rejected), messages=[
        {"message_id": r.message_id if r.message_id is None else r.message_id[:100], "index": r.index,
         "reasons": list(dict.fromkeys(str(e.get("type")) for e in r.errors))} for r in rejected[:_LOGGED_REJECTIONS]])


def _has_nul(encoded: bytes) -> bool:
    return b"\\u0000" in encoded and _NUL_ESCAPE.search(encoded) is not None


def _own_context(item: dict[str, Any]) -> dict[str, Any]:
    context = item.get("context")
    return context if isinstance(context, dict) else {}


_CONTEXT = {"locale": "fr-FR", "timezone": "Europe/Paris", "library": {"name": "analytics-python", "version": "2.4.0"}}
_EXAMPLES: dict[str, dict[str, Any]] = {
    "track": {"userId": "u-42", "event": "Order Completed", "messageId": "order-1234",
              "properties": {"order_id": "1234", "revenue": 42.5, "currency": "EUR"},
              "timestamp": "2026-11-28T09:30:00Z", "context": _CONTEXT},
    "identify": {"userId": "u-42", "anonymousId": "b5f1c2d0-device", "traits": {
        "email": "ada@example.com", "first_name": "Ada", "plan": "pro"}, "context": _CONTEXT},
    "page": {"anonymousId": "b5f1c2d0-device", "name": "Pricing", "properties": {
        "url": "https://acme.example/pricing", "referrer": "https://www.google.com/"}},
    "screen": {"userId": "u-42", "name": "Cart", "properties": {"items": 3}},
    "group": {"userId": "u-42", "groupId": "acme-inc", "traits": {"name": "Acme Inc", "industry": "retail",
                                                                  "employees": 120, "plan": "enterprise"}},
    "alias": {"previousId": "b5f1c2d0-device", "userId": "u-42"},
}
_EXAMPLES["batch"] = {"batch": [{"type": kind, **body} for kind, body in _EXAMPLES.items()],
                      "sentAt": "2026-11-28T09:30:01Z", "context": {"library": {"name": "analytics-node"}}}


def _body_doc(model: type[Any], *, typed_by_path: bool = False, example: str = "batch") -> dict[str, Any]:
    """The request body as documentation: routes parse it themselves (gzip, ``writeKey`` in body).
    ``typed_by_path``: the route sets the message's ``type`` (Segment's API ignores a body's own)."""
    schema = model.model_json_schema(by_alias=True)
    if typed_by_path:
        schema["properties"]["type"] = {"description": "ignored: the path gives the type"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": schema, "examples": {example: {"value": _EXAMPLES[example]}}}}},
        "security": [{"writeKey": []}],
    }


def _single(kind: str, model: type, summary: str) -> None:
    async def handler(request: Request) -> TrackResponse:
        body = await _read_json(request, MAX_MESSAGE_BYTES, "message")
        item = {k: v for k, v in body.doc.items() if k != "writeKey"}
        item["type"] = kind
        return await _store(request, body, [(0, item)], batch_sent_at=None,
                            batch_context={})

    handler.__name__ = kind
    tracking_router.add_api_route(
        f"/{kind}", handler, methods=["POST"], response_model=TrackResponse, summary=summary,
        operation_id=kind, responses=_TRACK_ERRORS, openapi_extra=_body_doc(model, typed_by_path=True, example=kind),
    )
    # analytics.js (analytics-next) posts each call to the type's first letter: /v1/t, /v1/i, /v1/p, /v1/s, ...
    tracking_router.add_api_route(f"/{kind[0]}", handler, methods=["POST"], response_model=TrackResponse,
                                  include_in_schema=False)


_single("track", TrackMessage, "Record an action a user performed")
_single("identify", IdentifyMessage, "Tie a user to their traits (email, name, locale, timezone, …)")
_single("page", PageMessage, "Record a page view")
_single("screen", ScreenMessage, "Record a mobile screen view")
_single("group", GroupMessage, "Tie a user to an account (B2B) and record the account's traits")
_single("alias", AliasMessage, "Declare that previousId and userId are one person (merges their profiles)")


async def _batch(request: Request) -> TrackResponse:
    settings: Settings = request.app.state.settings
    body = await _read_json(request, settings.ingest_max_batch_bytes, "batch")
    if body.unrepresentable and (number := _holds_unrepresentable(
            {k: v for k, v in body.doc.items() if k != "batch"})) is not None:
        raise BadRequest(f"The batch's own fields (context, sentAt …) hold a number JSON storage cannot: {number.text}")
    try:
        req = BatchRequest.model_validate(body.doc)
    except ValidationError as exc:
        await _authorize(request, body.doc)  # a wrong key is reported before a malformed body
        raise ValidationFailed(
            "The batch does not match the schema",
            errors=[{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors(include_url=False)],
        ) from None
    items = list(enumerate(req.batch))
    return await _store(request, body, items, batch_sent_at=req.sent_at,
                        batch_context=req.context)


for _path, _op in (("/batch", "batch"), ("/import", "import_batch")):
    tracking_router.add_api_route(
        _path, _batch, methods=["POST"], response_model=TrackResponse, operation_id=_op,
        summary="Record many messages at once (what analytics SDKs send)", responses=_TRACK_ERRORS,
        openapi_extra=_body_doc(BatchRequest),
    )
# analytics-next in batching mode, analytics-swift and analytics-kotlin post batches to {apiHost}/b
tracking_router.add_api_route("/b", _batch, methods=["POST"], response_model=TrackResponse, include_in_schema=False)
# RudderStack's JavaScript SDK with `useBeacon: true`: navigator.sendBeacon of a batch, the write key in the query
# (a beacon carries no header of its own), as rudder-server takes it
beacon_router = APIRouter(prefix="/beacon/v1", tags=["tracking"])
beacon_router.add_api_route(
    "/batch", _batch, methods=["POST"], response_model=TrackResponse, operation_id="beacon_batch",
    summary="A batch sent by navigator.sendBeacon (RudderStack's useBeacon), the write key as ?writeKey=",
    responses=_TRACK_ERRORS, openapi_extra={**_body_doc(BatchRequest), "parameters": [{
        "name": "writeKey", "in": "query", "required": False, "schema": {"type": "string"},
        "description": "the workspace's write key (a beacon cannot send an Authorization header)"}]},
)


@tracking_router.get(
    "/projects/{write_key}/settings",
    operation_id="sdk_settings",
    summary="The settings Segment's client SDKs load at start (point their CDN host here)",
    description=("What Segment's CDN serves to analytics.js (`cdnURL`), analytics-swift and analytics-kotlin "
                 "(`cdnHost`): the `apiHost` to send events to (`TENURE_INGEST_PUBLIC_URL`, else this request's host) "
                 "and the SDKs' own telemetry switched off."),
    responses={404: problem_schema("No workspace has this write key")},
    openapi_extra={"security": []},  # the write key is in the path, as in Segment's CDN URL
)
async def get_sdk_settings(
    write_key: Annotated[str, Path(max_length=512)], request: Request, response: Response
) -> dict[str, Any]:
    try:
        await principal_for(request, write_key, {"write"})
    except AppError:  # unknown, revoked or not a write key: the URL is public, say no more
        raise NotFound("No workspace has this write key") from None
    settings: Settings = request.app.state.settings
    if settings.ingest_public_url:
        api_host, protocol = sdk_settings.api_host_of(settings.ingest_public_url)
        response.headers["Cache-Control"] = "public, max-age=300"
    else:  # taken from the request: not for shared caches, whose key ignores Host
        api_host = f"{request.url.netloc}{request.scope.get('root_path', '')}/v1"
        protocol = "http" if request.url.scheme == "http" and request.url.hostname in sdk_settings.LOOPBACK else None
        response.headers["Cache-Control"] = "no-store"
    return sdk_settings.settings_for(write_key, api_host, protocol)


@feed_router.get(
    "/events",
    response_model=FeedPage,
    operation_id="read_event_feed",
    summary="Events committed after a cursor, in a stable order (internal token)",
    responses=COMMON_ERRORS,
)
async def read_event_feed(
    _: InternalDep,
    session: SessionDep,
    after: Annotated[str | None, Query(description="next_cursor of the previous page; empty = start")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> dict[str, Any]:
    cursor = Cursor.decode(after)
    async with session.begin():
        events, next_cursor = await eventlog.read_feed(session, cursor, limit)
        behind = await backlog(session, "ingest.events", next_cursor)
    return {"events": events, "next_cursor": next_cursor.encode(), "behind": behind}


@profiles_router.post(
    "/profiles/resolve",
    response_model=ResolveOut,
    operation_id="resolve_profiles",
    summary="Profile ids for many references at once (internal token, X-Tenure-Workspace)",
    responses=COMMON_ERRORS,
)
async def resolve_profile_refs(body: ResolveRequest, principal: InternalDep, session: SessionDep) -> dict[str, Any]:
    ws = principal.require_workspace()
    async with session.begin():
        found = await profiles.resolve_refs(session, ws, body.refs)
    return {"profiles": {ref: str(pid) for ref, pid in found.items()}}


@profiles_router.post(
    "/profiles/lookup",
    response_model=LookupOut,
    operation_id="lookup_profiles",
    summary="Many profiles by id at once, merges followed (internal token, X-Tenure-Workspace)",
    responses=COMMON_ERRORS,
)
async def lookup_profiles(body: LookupRequest, principal: InternalDep, session: SessionDep) -> dict[str, Any]:
    ws = principal.require_workspace()
    async with session.begin():
        return {"profiles": await profiles.get_many(session, ws, body.ids)}


@profiles_router.get(
    "/profiles/{ref}",
    response_model=ProfileOut,
    operation_id="get_profile",
    summary="A profile by id, userId, anonymousId or email",
    responses={**COMMON_ERRORS, 404: problem_schema("No such profile")},
)
async def get_profile(
    ws: WorkspaceDep,
    session: SessionDep,
    ref: ProfileRef,
) -> dict[str, Any]:
    async with session.begin():
        return await profiles.get_profile(session, ws, ref)


@profiles_router.get(
    "/profiles",
    response_model=ProfileList,
    operation_id="list_profiles",
    summary="List and search profiles",
    description=("Filters combine with AND. `trait.NAME=VALUE` (one per trait, for as many traits as needed; the same "
                 "`trait.NAME` twice is a 422) matches a trait whose value, as text, is exactly VALUE: numbers and "
                 "booleans as JSON writes them (`trait.age=30`, `trait.vip=true`)."),
    responses=COMMON_ERRORS,
)
async def list_profiles(
    ws: WorkspaceDep,
    session: SessionDep,
    page: AfterDep,
    request: Request,
    user_id: Annotated[str | None, Query(description="exact userId: the profile's own or one merged into it (an "
                                                     "alias's `previousId`, as `GET /v1/profiles/{ref}` finds it)")
                       ] = None,
    email: Annotated[str | None, Query(description="email trait, in any case")] = None,
    q: Annotated[str | None, Query(max_length=200, description="substring of a userId (the profile's own or one "
                                                               "merged into it), the email or a name")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    traits: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("trait."):
            if key.removeprefix("trait.") in traits:  # (the last value was used: a trait holds one value)
                msg = "takes one value; it was given more than once"
                raise ValidationFailed(f"The query parameter {key!r} {msg}", errors=[place_error(["query", key], msg)])
            traits[key.removeprefix("trait.")] = value
    async with session.begin():
        items, nxt = await profiles.list_profiles(session, ws, user_id=user_id, email=email, traits=traits, q=q,
                                                  after=page.position, limit=limit)
    return {"profiles": items, "next_cursor": page.next(nxt)}


@profiles_router.get(
    "/profiles/{ref}/events",
    response_model=ProfileEventList,
    operation_id="list_profile_events",
    summary="A profile's events, newest first",
    responses={**COMMON_ERRORS, 404: problem_schema("No such profile")},
)
async def list_profile_events(
    ws: WorkspaceDep,
    session: SessionDep,
    ref: ProfileRef,
    page: SeqAfterDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    after = int(page.position) if page.position else None
    async with session.begin():
        items, nxt = await profiles.profile_events(session, ws, ref, after=after, limit=limit)
    return {"events": items, "next_cursor": page.next(nxt)}


privacy_router = APIRouter(prefix="/v1/privacy", tags=["privacy"], route_class=SegmentRoute)


@privacy_router.post(
    "/erasure",
    status_code=202,
    response_model=PrivacyRequestOut,
    operation_id="request_erasure",
    summary="Erase a user everywhere (GDPR art. 17 / CCPA delete)",
    description=("Removes the profile, identities and events here at once, then asks segment, campaign and "
                 "delivery to erase theirs (a service that fails is asked again after a back-off); follow `status` "
                 "and `services` on the returned request. By email, every profile holding that address (in any "
                 "case) is erased. Until it is `completed`, events naming the user's ids "
                 "(and aliases from them) are dropped (`suppressed` in the tracking answer); with `suppress`, they "
                 "stay dropped afterwards.\n\n"
                 "A user ingest holds nothing about (never seen, or erased already) is not an error: the request is "
                 "recorded and answered 202 the same way, with no `profile_ids` and nothing `removed`; the other "
                 "services are asked to erase what they hold under that id (a service that keeps records by "
                 "profile only answers it removed nothing), and the id is suppressed (as a userId, an "
                 "anonymousId and an email) while pending, and for good with `suppress`.\n\n"
                 "Once completed, the request no longer holds the person's id: `subject` becomes a salted "
                 "SHA-256 digest (see the response's `subject`)."),
    responses=COMMON_ERRORS,
)
async def request_erasure(
    body: ErasureCreate, ws: WorkspaceDep, session: SessionDep, request: Request
) -> dict[str, Any]:
    async with session.begin():
        result = await privacy.erase(session, ws, body.user, suppress=body.suppress)
    request.app.state.waker.request("ingest", "propagate_privacy")
    return result


@privacy_router.get("/requests/{request_id}", response_model=PrivacyRequestOut, operation_id="get_privacy_request",
                    summary="A privacy request and each service's status",
                    responses={**COMMON_ERRORS, 404: problem_schema("No such request")})
async def get_privacy_request(request_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await privacy.get_request(session, ws, request_id)


# (the schema documents the answer; not a response_model: the other services' parts pass through as they sent them)
@privacy_router.get("/export/{ref}", operation_id="export_user",
                    summary="Everything held about a user, as JSON",
                    description=("Ingest's records and each other service's about the user. By email, every "
                                 "profile holding that address is included: `profile` is the one "
                                 "`GET /v1/profiles/{ref}` finds, `other_profiles` the rest, and `identities` and "
                                 "`events` are those of them all. A reference no profile has (an address only "
                                 "delivery knows) gets what the other services hold under it, with `profile` null. "
                                 "Each profile's `groups` are the accounts it belongs to with the account's current "
                                 "traits, whichever member (or the app) set them: they describe the account, not the "
                                 "person; an erasure ends the membership and leaves the account."),
                    responses={200: {"model": ExportOut, "description": "Successful Response"}, **COMMON_ERRORS,
                               404: problem_schema("Nothing is held under that reference")})
async def export_user(ref: ProfileRef, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    async with session.begin():
        return await privacy.export(session, request.app.state.internal, ws, ref)
