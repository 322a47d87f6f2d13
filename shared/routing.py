"""Routes whose path parameters may hold a ``/``: a user id (``org/123``), an email address (``team/ops@x.com``).

A client sends such an id percent-encoded in its path segment (``/v1/profiles/org%2F123``), as HTTP clients do.
The server decodes the whole path before routing (ASGI ``path``), which makes that ``/`` a separator: the route
is not found, or worse, ``/v1/profiles/org%2Fevents`` becomes the events of ``org``. The raw path (ASGI
``raw_path``) still tells the two apart, so :class:`SegmentRoute` matches on it: each segment decoded on its own,
an encoded slash kept inside its segment. Use it as a router's ``route_class``.
"""

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

_ESCAPED = re.compile("%2F|%25")
_CACHE = "tenure.segment_path"  # the scope key holding the path computed for this request (or None)


def routed(scope: Scope, method: str) -> bool:
    """Whether some route of the app takes ``method`` at this request's path (asked of each route through
    ``matches``, which included routers answer too)."""
    return any(route.matches({**scope, "method": method})[0] == Match.FULL for route in scope["app"].router.routes)


def _escape(segment: str) -> str:
    return segment.replace("%", "%25").replace("/", "%2F")


def unescape(value: str) -> str:
    """A parameter's value from :func:`segment_path`'s form (``%2F`` back to ``/``, ``%25`` to ``%``)."""
    return _ESCAPED.sub(lambda m: "/" if m.group(0) == "%2F" else "%", value)


def segment_path(raw_path: bytes, errors: str = "replace") -> str:
    """The raw path (its query, if the server left it there, cut off) with each segment percent-decoded on its own
    (UTF-8, ``errors`` as for :meth:`bytes.decode`), and the ``%`` and ``/`` that decoding put in a segment written
    ``%25`` and ``%2F`` again: a route's regex sees the client's segments, :func:`unescape` gives the values."""
    path = raw_path.partition(b"?")[0]
    return "/".join(_escape(unquote_to_bytes(segment).decode("utf-8", errors)) for segment in path.split(b"/"))


def _routed_path(scope: Scope) -> str | None:
    """The request's path as :class:`SegmentRoute` routes it (``root_path`` included where ``path`` has it), or
    None when ``path`` is to be used as it is: the raw path holds no encoded slash, or it is missing or does not
    correspond to ``path`` (something rewrote the path). Worked out once per request."""
    if _CACHE in scope:
        return scope[_CACHE]  # type: ignore[no-any-return]
    routed = None
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and (b"%2F" in raw or b"%2f" in raw):
        escaped = segment_path(raw)
        decoded, path, root = unescape(escaped), scope["path"], scope.get("root_path", "")
        if path == decoded:
            routed = escaped
        elif root and path == root + decoded:  # a server whose ``raw_path`` lacks the ``root_path`` ``path`` has
            routed = root + escaped
    scope[_CACHE] = routed
    return routed


class SegmentRoute(APIRoute):
    """An ``APIRoute`` whose path parameters may hold an encoded ``/``: matched on the raw path's segments when it
    has one (``%2F``), so ``/profiles/org%2F123/events`` is ``/profiles/{ref}/events`` with ``ref`` = ``org/123``,
    while a real ``/`` still separates segments. Without an encoded slash it matches as ``APIRoute`` does."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        routed = _routed_path(scope)
        if routed is None:
            return super().matches(scope)
        match, child = super().matches({**scope, "path": routed})
        if match is not Match.NONE:
            inherited = scope.get("path_params", {})
            child["path_params"] = {name: unescape(value) if isinstance(value, str) and name not in inherited
                                    else value for name, value in child["path_params"].items()}
        return match, child


def path_parameters(scope: Scope, errors: str) -> dict[str, Any] | None:
    """The matched route's path parameters read again from the raw path, each decoded with ``errors`` (e.g.
    ``surrogateescape``, to see bytes that are not UTF-8, which the server's decoding turns into U+FFFD); None
    when the raw path is missing or does not match the route."""
    raw, route = scope.get("raw_path"), scope.get("route")
    regex = getattr(route, "path_regex", None)
    if not isinstance(raw, bytes) or regex is None:
        return None
    if isinstance(route, SegmentRoute):
        path, read = segment_path(raw, errors), unescape
    else:
        path, read = unquote_to_bytes(raw.partition(b"?")[0]).decode("utf-8", errors), str
    root = scope.get("root_path", "")
    if (match := regex.match(path.removeprefix(root) if root else path)) is None:
        return None
    return {name: read(value) for name, value in match.groupdict().items()}
