"""Authentication as FastAPI dependencies, returning a typed :class:`Principal`.

- Management APIs: ``Authorization: Bearer <secret key>``; or the internal token plus an
  ``X-Tenure-Workspace`` header naming the workspace (service-to-service calls).
- Ingest tracking endpoints: the write key (HTTP Basic username, Bearer, or ``writeKey`` in the body —
  ingest resolves the body form itself).
- Internal feeds: the internal token only.

Key lookups are cached in-process for a short time so a hot tracking endpoint does not hit
``core.api_keys`` on every request; a revoked key stops working within :data:`CACHE_TTL_S`.

The workspace an internal call names must exist: an unknown id is a 404 problem (it was accepted, and mail went out
and rows were written for no workspace). Workspaces found are remembered for :data:`CACHE_TTL_S`, so the hot internal
paths (campaign's tracking calls to ingest and sends to delivery) gain no query; ids not found are not remembered, so
a workspace created a moment ago is accepted at once.
"""

import base64
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from shared.core import KeyKind, KeyRecord, lookup_key, workspace_exists
from shared.errors import Forbidden, NotFound, Unauthorized

CACHE_TTL_S = 30.0
WORKSPACE_HEADER = "X-Tenure-Workspace"


@dataclass(frozen=True)
class Principal:
    kind: str  # "write" | "secret" | "internal"
    workspace_id: uuid.UUID | None

    def require_workspace(self) -> uuid.UUID:
        if self.workspace_id is None:
            raise Unauthorized(f"Internal calls to this endpoint must name the workspace in {WORKSPACE_HEADER}")
        return self.workspace_id


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, KeyRecord | None]] = {}

    async def resolve(self, request: Request, raw: str) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._entries.get(raw)
        if hit and hit[0] > now:
            return hit[1]
        async with request.app.state.sessionmaker() as session:
            record = await lookup_key(session, raw)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[raw] = (now + CACHE_TTL_S, record)
        return record


class WorkspaceCache:
    """Workspace ids known to exist (each checked again after :data:`CACHE_TTL_S`)."""

    def __init__(self) -> None:
        self._known: dict[uuid.UUID, float] = {}

    async def exists(self, request: Request, workspace_id: uuid.UUID) -> bool:
        now = time.monotonic()
        if self._known.get(workspace_id, 0.0) > now:
            return True
        async with request.app.state.sessionmaker() as session:
            found = await workspace_exists(session, workspace_id)
        if found:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[workspace_id] = now + CACHE_TTL_S
        return found


def _workspace_cache(request: Request) -> WorkspaceCache:
    cache = getattr(request.app.state, "workspace_cache", None)
    if cache is None:
        cache = request.app.state.workspace_cache = WorkspaceCache()
    return cache


def _key_cache(request: Request) -> KeyCache:
    cache = getattr(request.app.state, "key_cache", None)
    if cache is None:
        cache = request.app.state.key_cache = KeyCache()
    return cache


def credentials_from_header(request: Request) -> str | None:
    """The raw credential in ``Authorization``: a Bearer token, or the Basic username (Segment style)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("Malformed Basic credentials") from None
        return decoded.partition(":")[0] or None
    return None


def _is_internal(request: Request, raw: str) -> bool:
    token: str = request.app.state.settings.internal_token
    return hmac.compare_digest(raw.encode(), token.encode())


def _hint(kind: KeyKind, allowed: set[str]) -> str:
    """What a refused key should have been, by what the route takes."""
    if allowed == {"internal"}:
        return "this endpoint is for Tenure's services, with the internal token"
    if kind == KeyKind.write:
        return "a write key only works on the tracking endpoints; use the workspace's secret key"
    return "use the workspace's write key for tracking calls"


async def principal_for(request: Request, raw: str | None, allowed: set[str]) -> Principal:
    if not raw:
        raise Unauthorized("Send credentials in the Authorization header")
    if "internal" in allowed and _is_internal(request, raw):
        ws = request.headers.get(WORKSPACE_HEADER)
        try:
            wid = uuid.UUID(ws) if ws else None
        except ValueError:
            raise Unauthorized(f"{WORKSPACE_HEADER} is not a workspace id") from None
        if wid is not None and not await _workspace_cache(request).exists(request, wid):
            raise NotFound(f"No workspace {wid} (named in {WORKSPACE_HEADER})")
        principal = Principal("internal", wid)
    else:
        record = await _key_cache(request).resolve(request, raw)
        if record is None:
            raise Unauthorized("Unknown or revoked key")
        if record.kind.value not in allowed:
            raise Forbidden(f"A {record.kind.value} key cannot be used here: {_hint(record.kind, allowed)}")
        principal = Principal(record.kind.value, record.workspace_id)
    if principal.workspace_id:
        structlog.contextvars.bind_contextvars(workspace_id=str(principal.workspace_id))
    return principal


# Declarations only (auto_error off, the value unused): they put each route's credentials in the OpenAPI
# document; the checks above stay the single source of truth. Routes without them are public.
_SECRET_KEY_DOC = HTTPBearer(scheme_name="secretKey", auto_error=False)
_INTERNAL_TOKEN_DOC = HTTPBearer(scheme_name="internalToken", auto_error=False)


async def require_management(request: Request, _: Annotated[object, Depends(_SECRET_KEY_DOC)] = None) -> Principal:
    return await principal_for(request, credentials_from_header(request), {"secret", "internal"})


async def require_internal(request: Request, _: Annotated[object, Depends(_INTERNAL_TOKEN_DOC)] = None) -> Principal:
    return await principal_for(request, credentials_from_header(request), {"internal"})


async def require_workspace(principal: Annotated[Principal, Depends(require_management)]) -> uuid.UUID:
    """Management endpoints scoped to one workspace: its secret key, or internal token + header."""
    return principal.require_workspace()


ManagementDep = Annotated[Principal, Depends(require_management)]
InternalDep = Annotated[Principal, Depends(require_internal)]
WorkspaceDep = Annotated[uuid.UUID, Depends(require_workspace)]
