"""``tenure import``: bulk-load profiles and events from CSV or NDJSON through ingest's batch API.

Rows become Segment messages (so imports get the same validation, dedup and identity resolution as
live traffic). A row without ``messageId`` gets one derived from its line number and content (and, for a row
without ``timestamp``, the file's path), so re-running an import — or resuming it after a crash from the
checkpoint file — never stores a row twice.
Bad rows are reported with the line they start on; they never stop the import. Ctrl-C stops it wherever it
is (:class:`Interrupted`: how far ingest has acknowledged, the checkpoint's line). Files may start with a
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
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson

from services.answers import json_of, problem_text
from shared.jsonutil import dumps, loads
from shared.validation import unstorable

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


def _message_id(msg: dict[str, Any], line: int, raw: str, source: str) -> str:
    """The id of a row without ``messageId``: from its line and content, so a re-run or a resumed import stores
    it once. A row without ``timestamp`` is dated by its import, so the file's path is part of it too: the same
    row in day1.csv and day2.csv (or in two folders' events.csv) is two events, not one (a row with a timestamp,
    the same in two files, is the same event). Such a file moved or renamed is a new import."""
    key = f"{line}:{raw}" if msg.get("timestamp") not in (None, "") else f"{source}:{line}:{raw}"
    return "import-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _typed(column: str, value: str) -> tuple[str, Any]:
    name, _, kind = column.partition(":")
    if kind == "number":
        try:
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


def read_rows(path: Path, *, fmt: str, profiles: bool) -> Iterator[tuple[Row, int]]:
    """Rows with the 1-based line each starts on, and the byte offset after each (for progress)."""
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
                msg.setdefault("messageId", _message_id(msg, line_no, raw, str(path.resolve())))
                yield Row(line_no, msg), offset
            return
        yield from _csv_rows(f, profiles=profiles, source=str(path.resolve()))


class UnreadableFile(Exception):
    """The file cannot be imported at all (its CSV header is not text)."""


def _not_utf8(cells: list[str]) -> bool:
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are no UTF-8, kept as lone surrogates by "surrogateescape"
        return True
    return False


def _csv_rows(f: BinaryIO, *, profiles: bool, source: str) -> Iterator[tuple[Row, int]]:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
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
            yield Row(start, None, f"unreadable row: {exc}"), f.tell()
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
        # derived from the row's last line, as before rows were reported by their first: re-importing a file
        # gives its rows the ids they were stored under
        msg.setdefault("messageId", _message_id(msg, reader.line_num, dumps(_as_dict_reader_gave(record, cells)),
                                                source))
        yield Row(start, msg), f.tell()


def _as_dict_reader_gave(record: dict[str, str], cells: list[str]) -> dict[str, str | None]:
    """The row as ``csv.DictReader`` gave it (missing cells None), which earlier ids were derived from."""
    return {k: (v if i < len(cells) else None) for i, (k, v) in enumerate(record.items())}


class Checkpoint:
    """``FILE.tenure-import.json``: the last line the server acknowledged, for ``--resume``."""

    def __init__(self, source: Path):
        self.path = source.with_name(source.name + ".tenure-import.json")
        self.stat = source.stat()

    def load(self) -> int:
        if not self.path.exists():
            return 0
        state = orjson.loads(self.path.read_bytes())
        if state.get("size") != self.stat.st_size or state.get("mtime") != self.stat.st_mtime:
            return 0  # the file changed: start over (message ids still dedup what was sent)
        return int(state.get("line", 0))

    def save(self, line: int) -> None:
        """Written whole or not at all (a new file renamed over the old): never a half-written checkpoint."""
        part = self.path.with_name(self.path.name + ".part")
        part.write_bytes(orjson.dumps({"line": line, "size": self.stat.st_size, "mtime": self.stat.st_mtime}))
        os.replace(part, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


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


def run_import(path: Path, *, client: httpx.Client, write_key: str, fmt: str, profiles: bool, batch_size: int,
               resume: bool, progress: Callable[[int], None] | None = None) -> Report:
    """Send the file's rows in batches; raises :class:`Interrupted` on Ctrl-C (``KeyboardInterrupt``)."""
    checkpoint = Checkpoint(path)
    report = Report(resumed_from=checkpoint.load() if resume else 0)
    report.acknowledged = report.resumed_from
    pending: list[Row] = []
    pending_bytes = 0
    line = report.resumed_from

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
                report.rejected.append((pending[r["index"]].line, errors))
            checkpoint.save(pending[-1].line)
            report.acknowledged = pending[-1].line
            pending.clear()
            pending_bytes = 0

    try:
        for row, offset in read_rows(path, fmt=fmt, profiles=profiles):
            line = row.line
            if progress:
                progress(offset)
            if row.line <= report.resumed_from:
                continue
            if row.message is None:
                report.rejected.append((row.line, row.error or "invalid row"))
                continue
            if (problem := unstorable(row.message)) is not None:  # (NaN: orjson would send null)
                report.rejected.append((row.line, f"cannot be stored: {problem}"))
                continue
            try:
                row.encoded = orjson.dumps(row.message)
            except TypeError as exc:  # a string that is no Unicode text (a lone surrogate from a JSON escape)
                report.rejected.append((row.line, f"cannot be sent: {exc}"))
                continue
            if len(row.encoded) > MAX_MESSAGE_BYTES:
                report.rejected.append((row.line, f"message is over 32 KB ({len(row.encoded)} bytes as JSON)"))
                continue
            if pending and pending_bytes + len(row.encoded) + 1 > MAX_BATCH_BYTES:
                flush()
            pending.append(row)
            pending_bytes += len(row.encoded) + 1
            if len(pending) >= batch_size:
                flush()
        flush()
    except KeyboardInterrupt:
        # the rows after the acknowledged line are read again on resume, and their bad rows reported then
        report.rejected = sorted(r for r in report.rejected if r[0] <= report.acknowledged)
        raise Interrupted(report, line) from None
    checkpoint.clear()
    report.rejected.sort()
    return report
