"""``tenure import``: bulk-load profiles and events from CSV or NDJSON through ingest's batch API.

Rows become Segment messages (so imports get the same validation, dedup and identity resolution as
live traffic). A row without ``messageId`` (or with a null or empty one) gets one derived from its content
(:class:`_DerivedIds`), so re-running an import — after resuming it from the checkpoint file, or after
deleting or fixing other rows — never stores a row twice.
Bad rows are reported with the line they start on (and, with ``rejects``, written to a file as the import
goes: :class:`Rejects`); they never stop the import. A CSV quote that is never closed is one bad row holding
the rest of the file, none of which is imported. Ctrl-C stops it wherever it is (:class:`Interrupted`: how
far ingest has acknowledged, the checkpoint's line). Files may start with a
UTF-8 byte order mark (what spreadsheet programs write). Batches are cut at ``batch_size`` rows or before
they pass ingest's 500 KB per request, whichever comes first; a row over ingest's 32 KB per message is
reported rather than sent.

CSV columns: ``type`` (default ``track``, or ``identify`` with ``--profiles``), ``userId``,
``anonymousId``, ``event``, ``timestamp``, ``messageId``, ``groupId``, ``previousId``; ``traits.NAME`` and
``properties.NAME`` fill those objects, and with ``--profiles`` any other column is a trait. Empty cells
are left out; numbers and booleans stay strings unless the column is named ``NAME:number`` or
``NAME:bool``.
"""

import contextlib
import csv
import hashlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson
from pydantic import TypeAdapter, ValidationError

from services.answers import json_of, problem_text
from shared.jsonutil import dumps, loads
from shared.validation import IsoOrUnixDatetime, unstorable

MAX_MESSAGE_BYTES = 32 * 1024  # ingest's limits (services/ingest/api.py)
MAX_BATCH_BYTES = 475_000  # under ingest's 500 KB per batch, with room for the envelope (as analytics-python)
BOM = b"\xef\xbb\xbf"
TOP_LEVEL = {"type", "userId", "anonymousId", "event", "timestamp", "messageId", "groupId", "previousId", "name"}


@dataclass
class Row:
    line: int
    message: dict[str, Any] | None
    error: str | None = None
    encoded: bytes = b""  # the message as sent


@dataclass
class Report:
    sent: int = 0  # rows sent and answered (ingest stored, already had or rejected each)
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    resumed_from: int = 0
    acknowledged: int = 0  # the last line ingest has answered for (what the checkpoint holds)


class Interrupted(Exception):
    """Ctrl-C (``KeyboardInterrupt``) stopped the import at line ``line``. ``report`` covers the rows through
    ``report.acknowledged`` (the checkpoint's line); the rows after it were not answered (a batch in flight may
    have been stored: resuming sends it again and ingest keeps each message once)."""

    def __init__(self, report: Report, line: int):
        super().__init__(f"interrupted at line {line}")
        self.report, self.line = report, line


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Ctrl-C during the block takes effect at its end: a batch's answer and its checkpoint are recorded together.
    Only where Python's own handler is in place (the main thread; not when a caller handles SIGINT itself)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


class _DerivedIds:
    """Ids for a file's rows without ``messageId``: from the row's text and its ordinal among identical rows
    before it in the file, never its line, so a re-run, a resumed import or one after other rows were deleted or
    fixed stores each row once, while two identical rows stay two events. A row without ``timestamp`` is dated
    by its import, so the file's path is part of it too: the same row in day1.csv and day2.csv (or in two
    folders' events.csv) is two events, not one (a row with a timestamp, the same in two files, is the same
    event). Such a file moved or renamed is a new import. Holds a 64-bit key per distinct row (for the
    ordinals): some 80 MB per million rows."""

    def __init__(self, source: str, *, legacy: bool = False):
        self.source = source
        self.legacy = legacy
        self.seen: dict[int, int] = {}

    def __call__(self, msg: dict[str, Any], raw: str, line: int, legacy_raw: str | None = None) -> str:
        if self.legacy:  # as releases before 2026-11-29 derived them: from the row's (last) line and content
            key = f"{line}:{legacy_raw or raw}"
            key = key if msg.get("timestamp") not in (None, "") else f"{self.source}:{key}"
            return "import-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        key = raw if msg.get("timestamp") not in (None, "") else f"{self.source}:{raw}"
        digest = hashlib.sha256(key.encode())
        first = int.from_bytes(digest.digest()[:8])
        ordinal = self.seen.get(first, 0)
        self.seen[first] = ordinal + 1
        if ordinal:  # (the first keeps the plain hash)
            digest.update(f"#{ordinal}".encode())
        return "import-" + digest.hexdigest()[:32]


def _set_message_id(msg: dict[str, Any], ids: _DerivedIds, raw: str, line: int, legacy_raw: str | None = None
                    ) -> None:
    """A null or empty ``messageId`` is no id: ingest would make up a random one, which a re-run makes up again."""
    if msg.get("messageId") in (None, ""):
        msg["messageId"] = ids(msg, raw, line, legacy_raw)


def _typed(column: str, value: str) -> tuple[str, Any]:
    name, _, kind = column.partition(":")
    if kind == "number":
        try:
            if "_" in value:  # (Python's int() and float() take "1_000"; no spreadsheet writes it, a typo may)
                raise ValueError(value)
            return name, float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ValueError(f"column {column!r}: {value!r} is not a number") from None
    if kind == "bool":
        return name, value.strip().lower() in ("1", "true", "yes", "y")
    return name, value


def csv_message(record: dict[str, str], *, profiles: bool) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "identify" if profiles else "track"}
    for column, value in record.items():
        if column is None or value is None or value == "":
            continue
        name, typed = _typed(column.strip(), value)
        if name in TOP_LEVEL:
            msg[name] = typed
        elif name.startswith("traits."):
            msg.setdefault("traits", {})[name.removeprefix("traits.")] = typed
        elif name.startswith("properties."):
            msg.setdefault("properties", {})[name.removeprefix("properties.")] = typed
        elif profiles:
            msg.setdefault("traits", {})[name] = typed
        else:
            msg.setdefault("properties", {})[name] = typed
    return msg


def read_rows(path: Path, *, fmt: str, profiles: bool, legacy_ids: bool = False) -> Iterator[tuple[Row, int]]:
    """Rows with the 1-based line each starts on, and the byte offset after each (for progress); ``legacy_ids``:
    rows without ``messageId`` get the ids releases before 2026-11-29 gave them (:class:`_DerivedIds`)."""
    ids = _DerivedIds(str(path.resolve()), legacy=legacy_ids)
    with path.open("rb") as f:
        if fmt == "ndjson":
            offset = 0
            for line_no, raw_bytes in enumerate(f, start=1):
                offset += len(raw_bytes)
                if line_no == 1:
                    raw_bytes = raw_bytes.removeprefix(BOM)
                try:
                    raw = raw_bytes.decode("utf-8").strip()
                except UnicodeDecodeError as exc:
                    yield Row(line_no, None, f"not UTF-8 text: {exc.reason} at byte {exc.start + 1}"), offset
                    continue
                if not raw:
                    continue
                try:
                    msg = loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    yield Row(line_no, None, f"invalid JSON: {exc}"), offset
                    continue
                msg.setdefault("type", "identify" if profiles else "track")
                _set_message_id(msg, ids, raw, line_no)
                yield Row(line_no, msg), offset
            return
        yield from _csv_rows(f, profiles=profiles, ids=ids)


class UnreadableFile(Exception):
    """The file cannot be imported at all (its CSV header is not text)."""


def _not_utf8(cells: list[str]) -> bool:
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are no UTF-8, kept as lone surrogates by "surrogateescape"
        return True
    return False


def _csv_rows(f: BinaryIO, *, profiles: bool, ids: _DerivedIds) -> Iterator[tuple[Row, int]]:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    # strict: a quote never closed is an error at the end of the file, not a cell holding the rest of it, and a
    # quote closed before the cell ends (`"a"b`, often a quote left open closed by the next quoted cell) is one too
    reader = csv.reader(text, strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines: a row is reported by its first
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if header is None:
                raise UnreadableFile(f"line {start}: the CSV header cannot be read: {exc}") from None
            yield Row(start, None, _unreadable(exc, start, reader.line_num)), f.tell()
            continue
        if not cells:  # a blank line
            continue
        if header is None:
            if _not_utf8(cells):
                raise UnreadableFile(f"line {start}: the CSV header is not UTF-8 text")
            header = cells
            continue
        if _not_utf8(cells):
            yield Row(start, None, "not UTF-8 text"), f.tell()
            continue
        if len(cells) > len(header):
            yield Row(start, None, "more cells than header columns"), f.tell()
            continue
        record = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
        try:
            msg = csv_message(record, profiles=profiles)
        except ValueError as exc:
            yield Row(start, None, f"bad value: {exc}"), f.tell()
            continue
        # (a legacy id came from the row's last line and the row as csv.DictReader gave it)
        _set_message_id(msg, ids, dumps(record), reader.line_num, dumps(_as_dict_reader_gave(record, cells)))
        yield Row(start, msg), f.tell()


def _as_dict_reader_gave(record: dict[str, str], cells: list[str]) -> dict[str, str | None]:
    """The row as ``csv.DictReader`` gave it (missing cells None), which legacy ids were derived from."""
    return {k: (v if i < len(cells) else None) for i, (k, v) in enumerate(record.items())}


def _unreadable(exc: csv.Error, first: int, last: int) -> str:
    """Why the row from line ``first`` to ``last`` (where the reader stopped) is not CSV. Where a quoted cell was
    meant to end cannot be known: the lines it took are named, none of them imported."""
    lines = f"line {first}" if first == last else f"lines {first}-{last}"
    if str(exc) == "unexpected end of data":  # (the end of the file inside a quoted cell)
        return (f"a quoted cell is never closed: {lines}, the rest of the file, cannot be read reliably and were "
                "not imported (close the quote and import the file again)")
    return f"unreadable row: {exc}" + ("" if first == last else f" ({lines} were not imported: is a quote not "
                                                              "closed where it should be?)")


IDS_VERSION = 2  # how rows without messageId get theirs (_DerivedIds): checkpoints say which a run used


class Checkpoint:
    """``FILE.tenure-import.json``: the last line the server acknowledged, for ``--resume``."""

    def __init__(self, source: Path, *, legacy_ids: bool = False):
        self.path = source.with_name(source.name + ".tenure-import.json")
        self.stat = source.stat()
        self.legacy_ids = legacy_ids  # the ids the checkpointed run derived (a resume derives them alike)

    def load(self) -> int:
        if not self.path.exists():
            return 0
        state = orjson.loads(self.path.read_bytes())
        if state.get("size") != self.stat.st_size or state.get("mtime") != self.stat.st_mtime:
            return 0  # the file changed: start over (message ids still dedup what was sent)
        # a checkpoint of a release before 2026-11-29 (no "ids"): its rows were sent with the legacy ids
        self.legacy_ids = self.legacy_ids or state.get("ids") != IDS_VERSION
        return int(state.get("line", 0))

    def save(self, line: int) -> None:
        """Written whole or not at all (a new file renamed over the old): never a half-written checkpoint."""
        part = self.path.with_name(self.path.name + ".part")
        part.write_bytes(orjson.dumps({"line": line, "size": self.stat.st_size, "mtime": self.stat.st_mtime,
                                       "ids": "legacy" if self.legacy_ids else IDS_VERSION}))
        os.replace(part, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class Rejects:
    """``--rejects FILE``: every rejected row as CSV (``line,reason``), written and flushed with the checkpoint
    that covers it, so a run stopped any way (Ctrl-C, a kill, a crash) leaves the rows through the checkpoint's
    line in it and the run that resumes from there appends the others (it reads them again). A run that does not
    resume starts the file over. (A kill between the write and the checkpoint lists that batch's rows twice.)"""

    def __init__(self, path: Path, *, append: bool):
        self.file = path.open("a" if append else "w", encoding="utf-8", errors="backslashreplace", newline="")
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(["line", "reason"])
            self.file.flush()

    def write(self, rows: list[tuple[int, str]]) -> None:
        if rows:
            self.writer.writerows(sorted(rows))
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def post_batch(client: httpx.Client, write_key: str, batch: list[Row], *, attempts: int = 8) -> dict[str, Any]:
    """POST one batch, honouring 429 ``Retry-After`` and retrying 5xx / network errors with backoff."""
    body = b'{"batch":[' + b",".join(r.encoded for r in batch) + b"]}"
    for attempt in range(1, attempts + 1):
        try:
            resp = client.post("/v1/batch", content=body, auth=(write_key, ""),
                               headers={"Content-Type": "application/json"})
        except httpx.TransportError:
            if attempt == attempts:
                raise
            time.sleep(min(30, 0.5 * 2 ** attempt))
            continue
        if resp.status_code == 429 or resp.status_code >= 500:
            if attempt == attempts:
                resp.raise_for_status()
            time.sleep(float(resp.headers.get("Retry-After", min(30, 0.5 * 2 ** attempt))))
            continue
        if resp.status_code == 422:  # every message in the batch was rejected
            return {"accepted": 0, "duplicates": 0, "rejected": json_of(resp).get("rejected", [])}
        if resp.status_code in (401, 403):
            raise PermissionError(problem_text(resp))
        resp.raise_for_status()
        return dict(json_of(resp))
    raise RuntimeError("unreachable")


FUTURE_MARGIN = timedelta(days=1)  # clocks of the system the file came from may run a little ahead


def _ahead(value: Any) -> str | None:
    """``value`` as written when it is a time more than :data:`FUTURE_MARGIN` after now (a mistyped year: 2099
    for 2019); None otherwise, or when it is no time at all (ingest says what is wrong with it)."""
    if value in (None, ""):
        return None
    try:
        when = _CLIENT_TIME.validate_python(value)
    except ValidationError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return str(value) if when > datetime.now(UTC) + FUTURE_MARGIN else None


_CLIENT_TIME: TypeAdapter[datetime] = TypeAdapter(IsoOrUnixDatetime)


def run_import(path: Path, *, client: httpx.Client, write_key: str, fmt: str, profiles: bool, batch_size: int,
               resume: bool, progress: Callable[[int], None] | None = None, rejects: Path | None = None,
               legacy_ids: bool = False) -> Report:
    """Send the file's rows in batches, writing rejected rows to ``rejects`` (:class:`Rejects`) if given; raises
    :class:`Interrupted` on Ctrl-C (``KeyboardInterrupt``)."""
    checkpoint = Checkpoint(path, legacy_ids=legacy_ids)
    report = Report(resumed_from=checkpoint.load() if resume else 0)
    report.acknowledged = report.resumed_from
    rejects_out = Rejects(rejects, append=report.resumed_from > 0) if rejects else None
    pending: list[Row] = []
    pending_bytes = 0
    line = report.resumed_from
    unwritten: list[tuple[int, str]] = []  # rejected rows not in the rejects file yet

    def reject(row_line: int, why: str) -> None:
        report.rejected.append((row_line, why))
        if rejects_out:
            unwritten.append((row_line, why))

    def write_rejects(through: int) -> None:
        if rejects_out:
            rejects_out.write([r for r in unwritten if r[0] <= through])
            unwritten[:] = [r for r in unwritten if r[0] > through]

    def flush() -> None:
        nonlocal pending_bytes
        if not pending:
            return
        answer = post_batch(client, write_key, pending)
        with _interrupt_after():
            report.sent += len(pending)
            report.accepted += answer.get("accepted", 0)
            report.duplicates += answer.get("duplicates", 0)
            for r in answer.get("rejected", []):
                errors = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in r["errors"])
                reject(pending[r["index"]].line, errors)
            write_rejects(pending[-1].line)  # (before the checkpoint: a row listed twice rather than never)
            checkpoint.save(pending[-1].line)
            report.acknowledged = pending[-1].line
            pending.clear()
            pending_bytes = 0

    try:
        for row, offset in read_rows(path, fmt=fmt, profiles=profiles, legacy_ids=checkpoint.legacy_ids):
            line = row.line
            if progress:
                progress(offset)
            if row.line <= report.resumed_from:
                continue
            if row.message is None:
                reject(row.line, row.error or "invalid row")
                continue
            if (problem := unstorable(row.message)) is not None:  # (NaN: orjson would send null)
                reject(row.line, f"cannot be stored: {problem}")
                continue
            if (ahead := _ahead(row.message.get("timestamp"))) is not None:
                reject(row.line, f"timestamp {ahead} is in the future: an imported row is history (ingest would date "
                                 "it now, a live event that starts journeys); correct it, or leave it out for a "
                                 "live event")
                continue
            try:
                row.encoded = orjson.dumps(row.message)
            except TypeError as exc:  # a string that is no Unicode text (a lone surrogate from a JSON escape)
                reject(row.line, f"cannot be sent: {exc}")
                continue
            if len(row.encoded) > MAX_MESSAGE_BYTES:
                reject(row.line, f"message is over 32 KB ({len(row.encoded)} bytes as JSON)")
                continue
            if pending and pending_bytes + len(row.encoded) + 1 > MAX_BATCH_BYTES:
                flush()
            pending.append(row)
            pending_bytes += len(row.encoded) + 1
            if len(pending) >= batch_size:
                flush()
        flush()
        write_rejects(line)
    except KeyboardInterrupt:
        # the rows after the acknowledged line are read again on resume, and their bad rows reported then
        report.rejected = sorted(r for r in report.rejected if r[0] <= report.acknowledged)
        raise Interrupted(report, line) from None
    finally:
        if rejects_out:
            rejects_out.close()
    checkpoint.clear()
    report.rejected.sort()
    return report
