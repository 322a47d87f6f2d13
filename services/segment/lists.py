"""Manual lists: profiles uploaded by hand (ids through the API or a CSV file), usable in conditions.

Uploaded references (profile id, userId, anonymousId or email) are resolved to profiles by ingest,
which owns identity; references no profile has are reported back, not stored. Adding or removing
members re-evaluates those profiles at once, in the same transaction, so segments reading the list
follow it.
"""

import csv
import io
import re
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.segment import evaluation
from shared.db import fetch_one, fetch_page, insert_one_or_conflict, row_dict
from shared.errors import UpstreamUnavailable, ValidationFailed, place_error
from shared.http import InternalClient
from shared.jsonutil import loads

MAX_IDS = 10_000
_CONTROL = re.compile(r"[\x00-\x1f]")
# a header naming the column (compared lower-cased, without spaces, "_" and "-": "Anonymous ID", "E-mail")
_HEADERS = {"id", "ids", "userid", "email", "emailaddress", "profileid", "anonymousid"}
_COLUMNS = ("l.id, l.name, l.created_at, (select count(*) from segment.list_members m "
            "where m.workspace_id = l.workspace_id and m.list_id = l.id) as members")


def _unreadable(detail: str, msg: str) -> ValidationFailed:
    """A CSV upload refused as a whole: its problem names the body."""
    return ValidationFailed(detail, errors=[place_error(["body"], msg)])


def ids_from_csv(raw: bytes) -> list[str]:
    """The first column of a CSV file (a header naming the column, e.g. ``id``/``email``, is skipped)."""
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _unreadable("The CSV file is not UTF-8", f"not UTF-8 text: {exc.reason} at byte {exc.start + 1}"
                          ) from None
    try:  # newline="": the csv module itself handles \n, \r\n and bare \r line ends
        reader = csv.reader(io.StringIO(content, newline=""))
        rows = [(reader.line_num, row[0].strip()) for row in reader if row and row[0].strip()]
    except csv.Error as exc:
        raise _unreadable(f"The CSV file could not be read: {exc}", f"not CSV: {exc}") from None
    bad = [line for line, ref in rows if _CONTROL.search(ref) or len(ref) > 512]
    if bad:
        msg = f"ids on lines {bad[:10]} have control characters or are over 512 characters"
        raise _unreadable(msg[0].upper() + msg[1:], msg)
    ids = [ref for _, ref in rows]
    if ids and re.sub(r"[\s_-]", "", ids[0].lower()) in _HEADERS:
        ids = ids[1:]
    if not ids:
        raise _unreadable("The CSV file has no ids", "no ids in its first column (a header alone is none)")
    if len(ids) > MAX_IDS:
        raise _unreadable(f"At most {MAX_IDS} ids per upload", f"over {MAX_IDS} ids")
    return ids


async def create_list(session: AsyncSession, ws: uuid.UUID, name: str) -> dict[str, Any]:
    row = await insert_one_or_conflict(
        session,
        "insert into segment.lists (id, workspace_id, name) values (:id, :ws, :name) "
        "returning id, name, created_at, 0 as members",
        {"id": uuid.uuid4(), "ws": ws, "name": name},
        f"A list named {name!r} already exists",
    )
    return row_dict(row)


async def get_list(session: AsyncSession, ws: uuid.UUID, list_id: uuid.UUID) -> dict[str, Any]:
    return await fetch_one(session, f"select {_COLUMNS} from segment.lists l where l.workspace_id = :ws and l.id = :id",
                           {"ws": ws, "id": list_id}, missing=f"No list {list_id}")


async def list_lists(session: AsyncSession, ws: uuid.UUID, after: str | None, limit: int
                     ) -> tuple[list[dict[str, Any]], str | None]:
    return await fetch_page(
        session,
        f"select {_COLUMNS} from segment.lists l where l.workspace_id = :ws "
        f"and (CAST(:after AS uuid) is null or l.id > CAST(:after AS uuid)) order by l.id limit :lim",
        {"ws": ws, "after": after}, limit,
    )


async def resolve(internal: InternalClient, ws: uuid.UUID, refs: list[str]) -> dict[str, uuid.UUID]:
    resp = await internal.request("POST", "ingest", "/v1/profiles/resolve", retry=True,
                                  headers={"X-Tenure-Workspace": str(ws)}, json={"refs": refs})
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"ingest answered {resp.status_code} resolving profiles")
    return {ref: uuid.UUID(pid) for ref, pid in loads(resp.content)["profiles"].items()}


async def change_members(session: AsyncSession, ws: uuid.UUID, list_id: uuid.UUID, found: dict[str, uuid.UUID],
                         refs: list[str], *, add: bool) -> dict[str, Any]:
    """Add (or remove) resolved profiles, then re-evaluate them so segments reading the list follow."""
    await get_list(session, ws, list_id)
    pids = sorted(set(found.values()))
    params = {"ws": ws, "lid": list_id, "pids": pids}
    if add:
        res = await session.execute(text(
            "insert into segment.list_members (workspace_id, list_id, profile_id) "
            "select :ws, :lid, p from unnest(CAST(:pids AS uuid[])) as p on conflict do nothing"), params)
    else:
        res = await session.execute(text(
            "delete from segment.list_members where workspace_id = :ws and list_id = :lid "
            "and profile_id = any(CAST(:pids AS uuid[]))"), params)
    changed = res.rowcount  # type: ignore[attr-defined]
    if changed:
        await evaluation.reevaluate(session, ws, pids, lifecycle=False)
    unknown = [r for r in dict.fromkeys(refs) if r not in found]
    return {"added": changed if add else 0, "removed": 0 if add else changed, "unknown": unknown}
