"""How every list endpoint pages: ``limit`` and ``after``, the ``next_cursor`` of the previous page.

Cursors are opaque: base64url of a tag and the position the previous page ended on (an id, a sequence number,
``channel:address``, a :class:`~shared.db.Stamp`, as the service's query reads it). The tag is a MAC (HMAC-SHA256
under ``TENURE_SIGNING_SECRET``, which every replica shares; one under a previous secret of a rotation is still taken)
of the position and of what the cursor belongs to: the workspace, the list (the route and its path parameters) and the
filters that define it (every query parameter but ``after`` and ``limit``; a search's definition). Another list's
cursor, one of the same list with other filters, another workspace's, or an edited one is a 400 problem
(:class:`~shared.errors.InvalidCursor`), not a page that starts at an unrelated position. Routes take
:data:`AfterDep` (lists in id order), :data:`SeqAfterDep` (sequence numbers), :data:`StampAfterDep` (histories,
newest first) or :data:`PageDep` (positions the service checks itself), pass ``page.position`` to the service and
answer ``page.next(last)``; a route whose ``after`` is in its body builds its page with :func:`page_of`.
"""

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from shared.auth import require_workspace
from shared.db import Stamp
from shared.errors import InvalidCursor

_NOT_FILTERS = frozenset({"after", "limit"})  # page where, and how much: the list is the same


def _list_of(request: Request, workspace_id: uuid.UUID, defined_by: object) -> bytes:
    """What a cursor is bound to: the workspace, the route and its path parameters (``/v1/campaigns/{campaign_id}
    /sends`` of one campaign), not the URL as sent (its encoding, a proxy's prefix), and the filters: every query
    parameter but ``after`` and ``limit`` (``user`` of a user's devices, ``trait.plan`` of a profile search, in any
    order), plus ``defined_by`` (what a body defines, e.g. a search's definition)."""
    route = request.scope.get("route")
    template = getattr(route, "path_format", None) or request.url.path
    filters = sorted((k, v) for k, v in request.query_params.multi_items() if k not in _NOT_FILTERS)
    return json.dumps([str(workspace_id), template, sorted((k, str(v)) for k, v in request.path_params.items()),
                       filters, defined_by], sort_keys=True, separators=(",", ":"), default=str).encode()


def _tag(secret: str, listing: bytes, position: str) -> str:
    mac = hmac.digest(secret.encode(), b"tenure-cursor\0" + listing + b"\0" + position.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()  # no "." in it: base64url's alphabet


@dataclass(frozen=True)
class Page:
    """A list endpoint's ``after``: where the previous page ended (``position``), and :meth:`next` to hand out
    the next page's cursor."""

    listing: bytes
    position: str | None
    secret: str

    def next(self, position: str | Stamp | None) -> str | None:
        if position is None:
            return None
        text = str(position)
        return base64.urlsafe_b64encode(f"{_tag(self.secret, self.listing, text)}.{text}".encode()
                                        ).rstrip(b"=").decode()

    @property
    def stamp(self) -> Stamp | None:
        """The position as a :class:`Stamp` (a :data:`StampAfterDep` page has checked it is one)."""
        return Stamp.parse(self.position) if self.position is not None else None


def page_of(request: Request, workspace_id: uuid.UUID, after: str | None, *, where: str = "query",
            defined_by: object = None) -> Page:
    """The page ``after`` asks for, once its tag is checked; ``where`` names the part of the request ``after`` came
    in (for the 400's ``errors``), ``defined_by`` what else defines the list (a search's definition)."""
    listing = _list_of(request, workspace_id, defined_by)
    settings = request.app.state.settings
    secret: str = settings.signing_secret  # next pages' cursors; those handed out before a rotation still count
    if after in (None, ""):
        return Page(listing, None, secret)
    try:
        raw = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor(where) from None
    tag, dot, position = raw.partition(".")
    if not (dot and position) or not any(hmac.compare_digest(tag.encode(), _tag(key, listing, position).encode())
                                         for key in settings.signing_secrets):
        raise InvalidCursor(where)
    return Page(listing, position, secret)


def _page(request: Request, workspace_id: Annotated[uuid.UUID, Depends(require_workspace)],
          after: str | None = Query(None, description="next_cursor of the previous page of this list, with the same "
                                                      "filters (opaque)")
          ) -> Page:
    return page_of(request, workspace_id, after)


PageDep = Annotated[Page, Depends(_page)]
"""A list's ``after`` whose position the service checks itself (``channel:address``, ``created_at token``)."""


def _id_page(page: PageDep) -> Page:
    """A list paged by id: the position must be a UUID (a bad one is a 400, not a 500)."""
    if page.position is None:
        return page
    try:
        return Page(page.listing, str(uuid.UUID(page.position)), page.secret)
    except ValueError:
        raise InvalidCursor() from None


AfterDep = Annotated[Page, Depends(_id_page)]
"""A list's ``after`` for lists in id order: ``page.position`` is the id the previous page ended on."""


def _seq_page(page: PageDep) -> Page:
    """A list paged by a sequence number (newest first): the position must be one PostgreSQL's bigint holds."""
    if page.position is not None and not (page.position.isascii() and page.position.isdigit()
                                          and int(page.position) < 2**63):
        raise InvalidCursor()
    return page


SeqAfterDep = Annotated[Page, Depends(_seq_page)]
"""A list's ``after`` for lists in sequence order: ``page.position`` is the number the previous page ended on."""


def _stamp_page(page: PageDep) -> Page:
    """A history paged newest first: the position must be a :class:`Stamp` (``created_at id``)."""
    if page.position is not None:
        try:
            Stamp.parse(page.position)
        except ValueError:
            raise InvalidCursor() from None
    return page


StampAfterDep = Annotated[Page, Depends(_stamp_page)]
"""A history's ``after`` (newest first): ``page.stamp`` is where the previous page ended."""
