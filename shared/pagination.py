"""How every list endpoint pages: ``limit`` and ``after``, the ``next_cursor`` of the previous page.

Cursors are opaque: base64url of a tag and the position the previous page ended on (an id, a sequence number,
``channel:address``, as the service's query reads it). The tag binds a cursor to the list that gave it (the route
and its path parameters) and to the workspace: another list's cursor, or another workspace's, is a 400 problem,
not a page that starts at an unrelated position. Routes take :data:`AfterDep` (lists in id order),
:data:`SeqAfterDep` (sequence numbers) or :data:`PageDep` (positions the service checks itself), pass
``page.position`` to the service and answer ``page.next(last)``.
"""

import base64
import hashlib
import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from shared.auth import require_workspace
from shared.errors import BadRequest

_INVALID_CURSOR = "Invalid cursor: pass the next_cursor of a previous page of this list"


def _list_of(request: Request, workspace_id: uuid.UUID) -> str:
    """What a cursor is bound to: the workspace, the route and its path parameters (``/v1/campaigns/{campaign_id}
    /sends`` of one campaign), not the URL as sent (its encoding, a proxy's prefix)."""
    route = request.scope.get("route")
    template = getattr(route, "path_format", None) or request.url.path
    return f"{workspace_id}\n{template}" + "".join(f"\n{k}={v}" for k, v in sorted(request.path_params.items()))


def _tag(listing: str) -> str:
    return hashlib.sha256(listing.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Page:
    """A list endpoint's ``after``: where the previous page ended (``position``), and :meth:`next` to hand out
    the next page's cursor."""

    listing: str
    position: str | None

    def next(self, position: str | None) -> str | None:
        if position is None:
            return None
        return base64.urlsafe_b64encode(f"{_tag(self.listing)}.{position}".encode()).rstrip(b"=").decode()


def _page(request: Request, workspace_id: Annotated[uuid.UUID, Depends(require_workspace)],
          after: str | None = Query(None, description="next_cursor of the previous page of this list (opaque)")
          ) -> Page:
    listing = _list_of(request, workspace_id)
    if after in (None, ""):
        return Page(listing, None)
    try:
        raw = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(_INVALID_CURSOR) from None
    tag, dot, position = raw.partition(".")
    if not (dot and position):
        raise BadRequest(_INVALID_CURSOR)
    if tag != _tag(listing):
        raise BadRequest("This cursor is another list's next_cursor (or another workspace's): pass one from a "
                         "previous page of this list")
    return Page(listing, position)


PageDep = Annotated[Page, Depends(_page)]
"""A list's ``after`` whose position the service checks itself (``channel:address``, ``created_at token``)."""


def _id_page(page: PageDep) -> Page:
    """A list paged by id: the position must be a UUID (a bad one is a 400, not a 500)."""
    if page.position is None:
        return page
    try:
        return Page(page.listing, str(uuid.UUID(page.position)))
    except ValueError:
        raise BadRequest(_INVALID_CURSOR) from None


AfterDep = Annotated[Page, Depends(_id_page)]
"""A list's ``after`` for lists in id order: ``page.position`` is the id the previous page ended on."""


def _seq_page(page: PageDep) -> Page:
    """A list paged by a sequence number (newest first): the position must be one PostgreSQL's bigint holds."""
    if page.position is not None and not (page.position.isascii() and page.position.isdigit()
                                          and int(page.position) < 2**63):
        raise BadRequest(_INVALID_CURSOR)
    return page


SeqAfterDep = Annotated[Page, Depends(_seq_page)]
"""A list's ``after`` for lists in sequence order: ``page.position`` is the number the previous page ended on."""
