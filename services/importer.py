"""``tenure import``: bulk-load profiles and events from CSV or NDJSON through ingest's batch API.

Rows become Segment messages (so imports get the same validation, dedup and identity resolution as
live traffic). A row without ``messageId`` gets one derived from its line number and content, so
re-running an import — or resuming it after a crash from the checkpoint file — never stores a row twice.
Bad rows are reported with their line numbers; they never stop the import.

CSV columns: ``type`` (default ``track``, or ``identify`` with ``--profiles``), ``userId``,
``anonymousId``, ``event``, ``timestamp``, ``messageId``, ``groupId``, ``previousId``; ``traits.NAME`` and
``properties.NAME`` fill those objects, and with ``--profiles`` any other column is a trait. Empty cells
are left out; numbers and booleans stay strings unless the column is named ``NAME:number`` or
``NAME:bool``.
"""

import csv
import hashlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from services.answers import json_of, problem_text
from shared.jsonutil import dumps

TOP_LEVEL = {"type", "userId", "anonymousId", "event", "timestamp", "messageId", "groupId", "previousId", "name"}


@dataclass
class Row:
    line: int
    message: dict[str, Any] | None
    error: str | None = None


@dataclass
class Report:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    resumed_from: int = 0


def _message_id(line: int, raw: str) -> str:
    return "import-" + hashlib.sha256(f"{line}:{raw}".encode()).hexdigest()[:32]


def _typed(column: str, value: str) -> tuple[str, Any]:
    name, _, kind = column.partition(":")
    if kind == "number":
        return name, float(value) if any(c in value for c in ".eE") else int(value)
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
    """Rows with 1-based line numbers, and the byte offset after each (for progress)."""
    with path.open("rb") as f:
        if fmt == "ndjson":
            offset = 0
            for line_no, raw_bytes in enumerate(f, start=1):
                offset += len(raw_bytes)
                raw = raw_bytes.decode("utf-8", errors="replace").strip()
                if not raw:
                    continue
                try:
                    msg = orjson.loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    yield Row(line_no, None, f"invalid JSON: {exc}"), offset
                    continue
                msg.setdefault("type", "identify" if profiles else "track")
                msg.setdefault("messageId", _message_id(line_no, raw))
                yield Row(line_no, msg), offset
            return
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        reader = csv.DictReader(text)
        for record in reader:
            line_no = reader.line_num
            try:
                msg = csv_message(record, profiles=profiles)
            except ValueError as exc:
                yield Row(line_no, None, f"bad value: {exc}"), f.tell()
                continue
            if None in record:
                yield Row(line_no, None, "more cells than header columns"), f.tell()
                continue
            msg.setdefault("messageId", _message_id(line_no, dumps(record)))
            yield Row(line_no, msg), f.tell()


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
        self.path.write_bytes(orjson.dumps({"line": line, "size": self.stat.st_size, "mtime": self.stat.st_mtime}))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def post_batch(client: httpx.Client, write_key: str, batch: list[Row], *, attempts: int = 8) -> dict[str, Any]:
    """POST one batch, honouring 429 ``Retry-After`` and retrying 5xx / network errors with backoff."""
    body = {"batch": [r.message for r in batch]}
    for attempt in range(1, attempts + 1):
        try:
            resp = client.post("/v1/batch", json=body, auth=(write_key, ""))
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
    checkpoint = Checkpoint(path)
    report = Report(resumed_from=checkpoint.load() if resume else 0)
    pending: list[Row] = []

    def flush() -> None:
        if not pending:
            return
        answer = post_batch(client, write_key, pending)
        report.sent += len(pending)
        report.accepted += answer.get("accepted", 0)
        report.duplicates += answer.get("duplicates", 0)
        for r in answer.get("rejected", []):
            errors = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in r["errors"])
            report.rejected.append((pending[r["index"]].line, errors))
        checkpoint.save(pending[-1].line)
        pending.clear()

    for row, offset in read_rows(path, fmt=fmt, profiles=profiles):
        if progress:
            progress(offset)
        if row.line <= report.resumed_from:
            continue
        if row.message is None:
            report.rejected.append((row.line, row.error or "invalid row"))
            continue
        pending.append(row)
        if len(pending) >= batch_size:
            flush()
    flush()
    checkpoint.clear()
    report.rejected.sort()
    return report
