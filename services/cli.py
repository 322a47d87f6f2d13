"""The ``tenure`` command: run services and workers, migrate, manage workspaces, and ``tenure dev``.

This is the one module that may import every service (the dev supervisor runs them all in one process).

Output goes through rich, whose markup (``[red]…[/]``) is ours only: text from servers, files, settings and
names is escaped (``rich.markup.escape``) where it enters a string with markup, or printed with markup off. A
``[/]`` in a server's error would otherwise be a MarkupError (a traceback instead of the error), and ``[bold]``
would style what should be shown as written. Emoji codes (``:smile:``) are not replaced either.
"""

import asyncio
import contextlib
import errno
import importlib
import os
import re
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import httpx
import orjson
import typer
import uvicorn
import uvloop
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.answers import UnreadableAnswer, json_of, printable
from shared.core import KeyKind
from shared.db import in_transaction
from shared.settings import SERVICES, Environment, Settings

app = typer.Typer(help="Tenure: lifecycle marketing backend.", no_args_is_help=True, add_completion=False,
                  rich_markup_mode="markdown")
workspace_app = typer.Typer(help="Manage workspaces.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
console = Console(stderr=True, emoji=False)  # messages
# tables asked for (stdout); written to a file or pipe, as wide as their content rather than rich's 80 columns
out = Console(emoji=False, width=None if sys.stdout.isatty() else 240)


class Service(StrEnum):
    ingest = "ingest"
    segment = "segment"
    campaign = "campaign"
    delivery = "delivery"



def _safe(text: str) -> str:
    """Text from a server, a file or the user, for rich: no markup (``[/]`` would raise), no terminal controls."""
    return escape(printable(text))

def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr, unwrapped (rich wraps at 80 columns when stderr is no terminal, as in a pod), then exit."""
    console.print(message, soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def configuration_errors(exc: Exception) -> list[str]:
    """A refused configuration as one line per problem, each naming its variable and never its value (a URL
    with a password, a secret)."""
    if isinstance(exc, ValidationError):
        lines = []
        for e in exc.errors(include_url=False, include_input=False, include_context=False):
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"TENURE_{str(e['loc'][0]).upper()}: {msg}" if e["loc"] else msg)
        return lines
    if isinstance(exc, SettingsError) and (field := re.search(r'field "(\w+)"', str(exc))):
        return [f"TENURE_{field[1].upper()}: not valid JSON"]
    return [str(exc)]


def _load_settings() -> Settings:
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        for line in configuration_errors(exc):
            console.print(f"[red]configuration error:[/red] {_safe(line)}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _with_database(settings: Settings, *, redis: bool = True, schemas: tuple[str, ...] | None = None
                   ) -> Iterator[Settings]:
    """Settings with a database (and, with ``redis``, a Redis) URL: the configured ones, else the embedded dev
    servers. Commands that only talk to PostgreSQL (migrate, workspace) pass ``redis=False``: a migration Job given
    only TENURE_DATABASE_URL must not start a Redis server of its own. Embedded servers are for ``TENURE_ENV=dev``
    only: elsewhere an unset URL is refused (exit 2, as ``serve`` and ``worker`` do), or a Job missing its Secret's
    key would migrate a throw-away database and report success.

    With ``schemas``, a configured PostgreSQL that does not answer, or whose ``schemas`` are not migrated, ends the
    command with one line and exit 1 (as ``worker`` does) instead of a driver traceback at its first query."""
    if settings.database_url and (settings.redis_url or not redis):
        if schemas is not None and (problem := asyncio.run(_postgres_problem(settings, schemas))):
            _fail(f"[red]{_safe(problem)}[/red]", 1)
        yield settings
        return
    if settings.env != Environment.dev:
        _require_urls(settings if redis else settings.model_copy(update={"redis_url": "unused"}))
    from shared.embedded import EmbeddedServers
    from shared.logging import configure_logging

    configure_logging(settings)  # the servers' log lines go to stderr: stdout may be a command's --json answer

    with EmbeddedServers(settings.state_dir, postgres=not settings.database_url,
                         redis=redis and not settings.redis_url) as emb:
        ready = settings.model_copy(update={"database_url": settings.database_url or emb.database_url,
                                            "redis_url": settings.redis_url or emb.redis_url})
        if not settings.database_url:  # the embedded database is ours to keep current (`tenure workspace create`
            from shared.migrate import upgrade_all  # before the first `tenure dev` found no tables)

            upgrade_all(ready)
        yield ready


def _require_urls(settings: Settings) -> None:
    missing = [name for name, v in (("TENURE_DATABASE_URL", settings.database_url),
                                    ("TENURE_REDIS_URL", settings.redis_url)) if not v]
    if missing:
        _fail(f"[red]{', '.join(missing)} not set.[/red] `tenure dev` starts embedded servers; "
              "this command needs real ones.", 2)


def _reason(exc: BaseException) -> str:
    """An exception as one line: the driver's own error when SQLAlchemy wrapped it."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    first = re.sub(r"^<class '[\w.]+'>: ", "", first)
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


def _where(url: str) -> str:
    """host:port of a URL, never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or 'localhost'}{f':{port}' if port else ''}"


async def _postgres_problem(settings: Settings, schemas: tuple[str, ...] = ()) -> str | None:
    """Why this process cannot start on ``TENURE_DATABASE_URL``: the server does not answer (or refuses the
    credentials or the database), or ``schemas`` are not migrated to this release."""
    from sqlalchemy import text

    from shared.db import create_engine
    from shared.migrate import schema_problem

    url = settings.require_database_url()
    engine = create_engine(settings, application_name="tenure-preflight", pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            return await schema_problem(conn, schemas)
    except Exception as exc:  # noqa: BLE001 - whatever stops the connection, said in one line
        return f"cannot connect to PostgreSQL at {_where(url)} (TENURE_DATABASE_URL): {_reason(exc)}"
    finally:
        await engine.dispose()


async def _redis_problem(settings: Settings) -> str | None:
    from redis.asyncio import Redis

    url = settings.require_redis_url()
    client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        await client.ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"cannot connect to Redis at {_where(url)} (TENURE_REDIS_URL): {_reason(exc)}"
    finally:
        await client.aclose()


def _metrics_port_problem(settings: Settings) -> str | None:
    """Why the worker cannot serve its /metrics and /healthz (``TENURE_WORKER_METRICS_PORT``): the port is taken
    (it failed with a 120-line traceback once the worker had started)."""
    import socket

    port = settings.worker_metrics_port
    if port <= 0:
        return None
    try:
        with socket.create_server((settings.host, port)):
            return None
    except OSError as exc:
        return (f"cannot serve worker metrics on {settings.host}:{port} (TENURE_WORKER_METRICS_PORT): "
                f"{exc.strerror or exc}")


@app.command()
def migrate() -> None:
    """Upgrade every schema (core, ingest, segment, campaign, delivery) to the latest revision. Idempotent."""
    from shared.logging import configure_logging
    from shared.migrate import MigrationBlocked, upgrade_all

    with _with_database(_load_settings(), redis=False) as settings:
        configure_logging(settings)  # a schema a newer release migrated is left as it is, said in one line
        if problem := asyncio.run(_postgres_problem(settings)):
            _fail(f"[red]{_safe(problem)}[/red]", 1)
        try:
            upgrade_all(settings)
        except MigrationBlocked as exc:
            _fail(f"[red]{_safe(str(exc))}[/red]", 1)
    console.print("[green]migrations applied[/green]")


@app.command()
def serve(
    service: Service,
    host: Annotated[str | None, typer.Option(help="bind address (default TENURE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: the service's TENURE_<SERVICE>_PORT)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes (in Kubernetes: 1, and replicas)")] = 1,
) -> None:
    """Run one service's HTTP API."""
    settings = _load_settings()
    _require_urls(settings)
    with _shared_metrics(workers):
        uvicorn.run(
            f"services.{service.value}.app:create_app", factory=True, host=host or settings.host,
            port=port or settings.port_of(service.value), workers=workers, log_config=None,
            proxy_headers=True, timeout_graceful_shutdown=20, access_log=False,
        )


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """Several worker processes behind one port answer a scrape one at a time: each process's own counters showed
    a share of the requests, a different one per scrape. With ``workers`` > 1 they keep their values in files of
    one directory (prometheus-client's multiprocess mode) that any of them sums: ``PROMETHEUS_MULTIPROC_DIR`` if set
    (it must be empty at start), else a temporary directory removed at exit."""
    from shared.metrics import MULTIPROCESS_DIR

    if workers == 1 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="tenure-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory  # (the worker processes are spawned: they read it at import)
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


@app.command()
def worker(
    service: Service,
    burst: Annotated[bool, typer.Option(help="exit once the queue is empty")] = False,
) -> None:
    """Run one service's arq worker. Exits 1, saying why in one line, when PostgreSQL or Redis does not answer or
    the schemas are not migrated to this release (an API starts anyway and reports it at /readyz)."""
    settings = _load_settings()
    _require_urls(settings)
    if problem := (asyncio.run(_postgres_problem(settings, ("core", service.value)))
                   or asyncio.run(_redis_problem(settings)) or _metrics_port_problem(settings)):
        _fail(f"[red]{_safe(problem)}[/red]", 1)
    module = importlib.import_module(f"services.{service.value}.worker")
    # uvloop, as uvicorn picks for the APIs: a worker is all socket round trips, and its event loop's
    # cost per wake-up is a third of asyncio's (bench/RESULTS.md); arq runs on the current loop
    asyncio.set_event_loop(uvloop.new_event_loop())
    module.create_worker(settings, burst=burst).run()


def _workspace_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        console.print("[red]not a workspace id[/red]")
        raise typer.Exit(2) from None


@workspace_app.command("create")
def workspace_create(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="print {workspace_id, write_key, secret_key}")] = False,
) -> None:
    """Create a workspace and print its keys (shown once: only their hashes are stored)."""
    from shared.core import create_workspace

    with _with_database(_load_settings(), redis=False, schemas=("core",)) as settings:
        created = asyncio.run(in_transaction(settings, lambda session: create_workspace(session, name)))
    payload = {"workspace_id": str(created.workspace_id), "write_key": created.write_key,
               "secret_key": created.secret_key}
    if as_json:
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
        return
    table = Table(title=f"workspace {_safe(name)}", show_header=False)
    for k, v in payload.items():
        table.add_row(k, _safe(v))
    out.print(table)
    console.print("Keep the keys: they are not shown again.")


async def _configure_workspace(session: Any, workspace_id: uuid.UUID, changes: dict[str, Any], unset: list[str]
                               ) -> dict[str, Any] | None:
    """Apply ``changes`` (and drop ``unset`` keys) to a workspace's settings, validated as a whole
    (shared.workspace_config) in the transaction that writes them; None if there is no such workspace."""
    from sqlalchemy import text

    from shared.workspace_config import checked

    current = (await session.execute(text("select settings from core.workspaces where id = :id for update"),
                                     {"id": workspace_id})).first()
    if current is None:
        return None
    merged = {k: v for k, v in {**(current[0] or {}), **changes}.items() if k not in unset and v is not None}
    checked(merged)
    await session.execute(text("update core.workspaces set settings = CAST(:s AS jsonb) where id = :id"),
                          {"s": orjson.dumps(merged).decode(), "id": workspace_id})
    return merged


def _setting(raw: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE as JSON (a bare word is taken as a string: ``timezone=Europe/Paris``)."""
    from shared.workspace_config import KEYS

    key, sep, value = raw.partition("=")
    if not sep or key not in KEYS:
        raise typer.BadParameter(f"{raw!r}: expected KEY=JSON with KEY one of {', '.join(KEYS)}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


@workspace_app.command("configure")
def workspace_configure(
    workspace_id: str,
    retention_days: Annotated[int | None, typer.Option(min=0, help="drop events older than this; 0 = keep all")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=JSON, repeatable, e.g. --set 'quiet_hours={\"sms\": {\"start\": \"21:00\", "
                      "\"end\": \"08:00\"}}' (keys and shapes: docs/configuration.md)")] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", help="KEY to remove (back to the default)")] = None,
) -> None:
    """Change a workspace's settings: retention, time zone, quiet hours, frequency caps, lifecycle
    thresholds, purchase events, lead score, topics, SMS HELP text. Checked as a whole before anything is
    written; prints the resulting settings."""
    from pydantic import ValidationError

    wid = _workspace_id(workspace_id)
    changes: dict[str, Any] = dict(_setting(raw) for raw in set_ or [])
    removed = list(unset or [])
    if retention_days is not None:
        if retention_days:
            changes["retention_days"] = retention_days
        else:
            removed.append("retention_days")
    try:
        with _with_database(_load_settings(), redis=False, schemas=("core",)) as settings:
            result = asyncio.run(in_transaction(settings, lambda session: _configure_workspace(session, wid, changes,
                                                                                           removed)))
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            console.print(f"[red]{_safe('.'.join(str(p) for p in e['loc']))}: {_safe(e['msg'])}[/red]")
        console.print("nothing was changed")
        raise typer.Exit(2) from None
    if result is None:
        console.print(f"[red]no workspace {_safe(workspace_id)}[/red]")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def _key_row(key: Any) -> dict[str, Any]:
    return {"id": str(key.id), "workspace_id": str(key.workspace_id), "kind": key.kind.value, "hint": key.hint,
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}


def _print_keys(keys: list[dict[str, Any]], title: str) -> None:
    table = Table(title=_safe(title))
    table.add_column("id", no_wrap=True, min_width=36)  # (whole: it is what revoke-key takes)
    for col in ("kind", "hint", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        table.add_row(k["id"], k["kind"], _safe(k["hint"]), k["created_at"][:19], (k["revoked_at"] or "")[:19])
    out.print(table)


@workspace_app.command("list")
def workspace_list(
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list (with each workspace's settings)")] = False,
) -> None:
    """List the workspaces, oldest first: id, name, when created, how many keys are in use, and the settings
    changed from their defaults (`configure`)."""
    from shared.core import list_workspaces

    with _with_database(_load_settings(), redis=False, schemas=("core",)) as settings:
        found = asyncio.run(in_transaction(settings, list_workspaces))
    rows = [{"id": str(w.id), "name": w.name, "created_at": w.created_at.isoformat(), "active_keys": w.active_keys,
             "settings": w.settings} for w in found]
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    table = Table(title="workspaces")
    for col in ("id", "name", "created", "keys", "settings"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], _safe(r["name"]), r["created_at"][:19], str(r["active_keys"]),
                      _safe(", ".join(sorted(r["settings"]))))
    out.print(table)


@workspace_app.command("keys")
def workspace_keys(
    workspace_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
) -> None:
    """List a workspace's API keys (revoked ones too): id, kind, the key's first characters, when created and
    revoked. The keys themselves are not stored, only their hashes."""
    from shared.core import KeyNotFound, list_keys

    wid = _workspace_id(workspace_id)
    with _with_database(_load_settings(), redis=False, schemas=("core",)) as settings:
        try:
            keys = asyncio.run(in_transaction(settings, lambda session: list_keys(session, wid)))
        except KeyNotFound:
            _fail(f"[red]no workspace {_safe(workspace_id)}[/red]", 1)
    rows = [_key_row(k) for k in keys]
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    _print_keys(rows, f"keys of workspace {workspace_id}")


@workspace_app.command("add-key")
def workspace_add_key(
    workspace_id: str,
    kind: Annotated[KeyKind, typer.Option(help="write (tracking SDKs) or secret (management APIs)")],
    as_json: Annotated[bool, typer.Option("--json", help="print {id, ..., key}")] = False,
) -> None:
    """Add a key beside the workspace's others and print it (shown once). To rotate a key: add one, put it where
    the old one was used, then revoke the old one."""
    from shared.core import KeyNotFound, add_key

    wid = _workspace_id(workspace_id)
    with _with_database(_load_settings(), redis=False, schemas=("core",)) as settings:
        try:
            info, raw = asyncio.run(in_transaction(settings, lambda session: add_key(session, wid, kind)))
        except KeyNotFound:
            _fail(f"[red]no workspace {_safe(workspace_id)}[/red]", 1)
    row = {**_key_row(info), "key": raw}
    if as_json:
        sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return
    _print_keys([row], f"new {kind.value} key")
    out.print(_safe(raw))
    console.print("Keep the key: it is not shown again.")


@workspace_app.command("revoke-key")
def workspace_revoke_key(
    key: Annotated[str, typer.Argument(help="a key id (`tenure workspace keys`), or the key itself")],
    force: Annotated[bool, typer.Option(help="revoke even the workspace's last secret key")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the revoked key's record")] = False,
) -> None:
    """Revoke a key: every service refuses it (401) within 30 s, the time they cache a key they have seen.
    Revoking a revoked key changes nothing."""
    from shared.core import KeyNotFound, LastSecretKey, revoke_key

    with _with_database(_load_settings(), redis=False, schemas=("core",)) as settings:
        try:
            info = asyncio.run(in_transaction(settings, lambda session: revoke_key(session, key, force=force)))
        except (KeyNotFound, LastSecretKey) as exc:
            _fail(f"[red]{_safe(str(exc))}[/red]", 1)
    row = _key_row(info)
    if as_json:
        sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return
    _print_keys([row], "revoked")


@workspace_app.command("delete")
def workspace_delete(
    workspace_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="delete without asking for the workspace's name")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print {workspace_id, deleted: {table: rows}}")] = False,
    settle_seconds: Annotated[float, typer.Option(
        min=0, help="wait this long after revoking the keys before the last sweep (services trust a key they checked "
                    "within 30 s)")] = 35.0,
) -> None:
    """Delete a workspace and everything every service holds for it (profiles, events, segments, campaigns,
    journeys, messages, suppressions, keys), for good. Its keys are refused at once (within the 30 s a service caches
    a key), its campaigns paused and its queued messages dropped; the rows go in batches while the services keep
    serving the others, and are swept again once every service has seen the keys revoked. A run cut short (or one
    that found rows still being written: exit 1) is finished by running it again. Without `--yes` the workspace's
    name is asked for; with no terminal to ask on, `--yes` is required (exit 2)."""
    from shared.core import KeyNotFound, workspace_name
    from shared.db import create_engine, create_sessionmaker
    from shared.workspace_deletion import SCHEMAS, StillWritten, delete_workspace

    wid = _workspace_id(workspace_id)
    with _with_database(_load_settings(), redis=False, schemas=("core", *SCHEMAS)) as settings:
        name = asyncio.run(in_transaction(settings, lambda session: workspace_name(session, wid)))
        if name is None:
            _fail(f"[red]no workspace {_safe(workspace_id)}[/red]", 1)
        if not yes:
            if not sys.stdin.isatty():
                _fail("[red]not deleting without --yes[/red] (no terminal to ask for the workspace's name on)", 2)
            typed = typer.prompt(f"This deletes workspace {name!r} and all its data for good. Type its name", err=True)
            if typed != name:
                _fail("[red]the name differs: nothing was deleted[/red]", 1)

        def progress(table: str, rows: int) -> None:
            if not as_json:
                console.print(f"deleted {rows:,} rows of {table}", highlight=False)

        async def run() -> dict[str, int]:
            engine = create_engine(settings, pool_size=1, application_name="tenure-workspace-delete")
            try:
                return await delete_workspace(create_sessionmaker(engine), wid, settle_s=settle_seconds,
                                              progress=progress)
            finally:
                await engine.dispose()

        try:
            deleted = asyncio.run(run())
        except KeyNotFound:  # deleted meanwhile by another run
            _fail(f"[red]no workspace {_safe(workspace_id)}[/red]", 1)
        except StillWritten as exc:
            _fail(f"[red]{_safe(str(exc))}[/red]", 1)
    if as_json:
        sys.stdout.write(orjson.dumps({"workspace_id": str(wid), "deleted": deleted}).decode() + "\n")
        return
    console.print(f"workspace {_safe(name)} ({wid}) deleted: {sum(deleted.values()):,} rows in {len(deleted)} tables",
                  highlight=False)


@app.command()
def mail(
    as_json: Annotated[bool, typer.Option("--json", help="raw JSON")] = False,
    url: Annotated[str | None, typer.Option(help="inbox URL (default http://HOST:TENURE_INBOX_PORT)")] = None,
) -> None:
    """Show what the dev inbox (started by `tenure dev`) has received."""
    settings = _load_settings()
    base = url or settings.local_url(settings.inbox_port)
    try:
        messages = json_of(httpx.get(f"{base}/api/messages", timeout=5))["messages"]
    except (httpx.HTTPError, UnreadableAnswer, KeyError, TypeError) as exc:  # (not a dev inbox answering)
        console.print(f"[red]no dev inbox at {_safe(base)}[/red] ({type(exc).__name__}); is `tenure dev` running?")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(orjson.dumps(messages).decode() + "\n")
        return
    table = Table(title=f"dev inbox ({len(messages)})")
    for col in ("received", "to", "subject"):
        table.add_column(col)
    for m in messages:
        table.add_row(_safe(m["received_at"][:19]), _safe(", ".join(m["to"])), _safe(m["subject"]))
    out.print(table)


@app.command("import")
def import_file(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a .csv or .ndjson file")],
    write_key: Annotated[str, typer.Option(envvar="TENURE_WRITE_KEY", help="the workspace's write key")],
    url: Annotated[str | None, typer.Option(help="ingest URL (default: TENURE_INGEST_URL or local)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or ndjson (default: from the extension)")] = None,
    profiles: Annotated[bool, typer.Option("--profiles", help="rows are profiles (identify), not events")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=2000)] = 500,
    resume: Annotated[bool, typer.Option(help="continue after the last acknowledged line")] = True,
    rejects: Annotated[Path | None, typer.Option(dir_okay=False, help="write every rejected row (line, reason) to "
                                                 "this CSV file as the import goes; a resumed run appends")] = None,
    legacy_ids: Annotated[bool, typer.Option(
        "--legacy-ids", help="derive the ids of rows without messageId as releases before 2026-11-29 did (from "
                             "line and content): to import again a file that such a release imported, storing "
                             "nothing twice")] = False,
) -> None:
    """Import profiles or events from CSV / NDJSON; resumable; bad rows are reported by line number.

    CSV: a header row, then a message per row. Columns are Segment's field names, camelCase: userId,
    anonymousId, event, timestamp (ISO 8601), messageId, type (track, or identify with --profiles; also page,
    screen, group, alias), name, groupId, previousId. traits.NAME and properties.NAME fill those objects; any
    other column is a property (a trait with --profiles), so user_id is not userId. Empty cells are left out.
    Cells are text unless the column is typed: NAME:number (properties.revenue:number, traits.age:number) or
    NAME:bool (traits.vip:bool; 1, true, yes and y are true, anything else false).

    NDJSON (.ndjson, .jsonl): one JSON object per line, a Segment message as ingest's /v1/batch takes it,
    such as {"userId": "ada", "event": "Signed Up", "properties": {"plan": "pro"}}; type defaults as for CSV.

    A row without messageId gets one from its content, so importing the same file again stores nothing twice."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from services.importer import Interrupted, UnreadableFile, run_import

    settings = _load_settings()
    kind = (fmt or path.suffix.lstrip(".")).lower()
    if kind not in ("csv", "ndjson", "jsonl"):
        console.print("[red]unknown format:[/red] use --format csv or --format ndjson")
        raise typer.Exit(2)
    if rejects is not None and rejects.resolve() == path.resolve():
        console.print("[red]--rejects is the file being imported:[/red] name another file")
        raise typer.Exit(2)
    base = url or settings.url_of("ingest")
    with httpx.Client(base_url=base, timeout=60) as client, Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task(f"importing {_safe(path.name)}", total=path.stat().st_size)
        try:
            report = run_import(path, client=client, write_key=write_key, fmt="csv" if kind == "csv" else "ndjson",
                                profiles=profiles, batch_size=batch_size, resume=resume, rejects=rejects,
                                legacy_ids=legacy_ids, progress=lambda done: bar.update(task, completed=done))
        except (PermissionError, httpx.HTTPError, UnreadableAnswer) as exc:
            console.print(f"[red]import stopped:[/red] {_safe(_failure(exc))} (run again to resume)")
            raise typer.Exit(1) from None
        except (UnreadableFile, OSError) as exc:  # (OSError: the rejects file cannot be written)
            console.print(f"[red]import stopped:[/red] {_safe(str(exc))}")
            raise typer.Exit(1) from None
        except Interrupted as stop:
            interrupted = stop
        else:
            interrupted = None
    if interrupted is not None:
        _import_interrupted(interrupted, path, resume, rejects)
    if report.resumed_from:
        appended = f" (this run's rejected rows are appended to {_safe(str(rejects))})" if rejects else ""
        console.print(f"resumed after line {report.resumed_from}{appended}", highlight=False)
    _import_report(report, rejects)
    if report.rejected:
        raise typer.Exit(3)


def _import_report(report: Any, rejects: Path | None) -> None:
    console.print(f"[green]{report.accepted} stored[/green], {report.duplicates} already there, "
                  f"{len(report.rejected)} rejected, {report.sent} sent")
    for line, why in report.rejected[:50]:
        console.print(f"  line {line}: {_safe(why)}", highlight=False)
    if len(report.rejected) > 50:
        where = f"all are in {_safe(str(rejects))}" if rejects else "list them all with --rejects FILE"
        console.print(f"  … and {len(report.rejected) - 50} more: {where}", highlight=False)
    elif report.rejected and rejects:
        console.print(f"  (also in {_safe(str(rejects))})", highlight=False)


def _import_interrupted(stop: Any, path: Path, resume: bool, rejects: Path | None) -> NoReturn:
    """Ctrl-C: how far the import got and how to go on; exit status 130 (128 + SIGINT), as shells report it."""
    report, done = stop.report, stop.report.acknowledged
    console.print(f"[yellow]import interrupted[/yellow] at line {stop.line} of {_safe(str(path))}", highlight=False)
    if report.resumed_from:
        console.print(f"(this run resumed after line {report.resumed_from})", highlight=False)
    if done:
        console.print(f"ingest has acknowledged every row through line {done}; in this run:", highlight=False)
        _import_report(report, rejects)
        again = "the same command" if resume else "the same command without --no-resume"
        console.print(f"to resume after line {done}, run {again} (--no-resume starts over). Rows after it that "
                      "reached ingest before the interruption are sent again and stored once.", highlight=False)
    else:
        console.print("no row was acknowledged yet: running the command again starts from the first line "
                      "(rows that reached ingest are stored once).", highlight=False)
    raise typer.Exit(130)


def _failure(exc: BaseException) -> str:
    """An error to print. httpx's own words for a server that does not answer name no address ("All connection
    attempts failed"): say which one, and what is likely wrong."""
    if not isinstance(exc, httpx.TransportError):
        return str(exc)
    try:
        url = exc.request.url
    except RuntimeError:  # no request attached
        return str(exc)
    where = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
    text = f"cannot reach {where} ({type(exc).__name__}: {exc})"
    if isinstance(exc, httpx.ConnectError):
        text += "; is `tenure dev` running? (services elsewhere: set TENURE_<SERVICE>_URL)"
    return text


def _resource_api(http: httpx.AsyncClient, secret_key: str) -> Any:
    from services.resources import Api

    settings = _load_settings()
    urls = {s: settings.url_of(s) for s in ("segment", "campaign")}  # type: ignore[arg-type]
    return Api(http, urls, {"Authorization": f"Bearer {secret_key}"})


SecretKey = Annotated[str, typer.Option("--key", envvar="TENURE_SECRET_KEY", help="the workspace's secret key")]


@app.command()
def apply(
    file: Annotated[Path, typer.Option("-f", "--file", exists=True, dir_okay=False, help="YAML: programs, templates, "
                                       "segments, campaigns")],
    key: SecretKey,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the diff, change nothing")] = False,
) -> None:
    """Create or update programs, templates, segments and campaigns from a file, idempotently; shows the diff
    first. A file the services would refuse (an item each checks on save) is refused before anything is
    written; a write refused later says which items were applied and which were not."""
    from services import resources

    async def run() -> int:
        desired = resources.load(file.read_text())
        async with httpx.AsyncClient(timeout=30) as http:
            api = _resource_api(http, key)
            try:
                changes = await resources.plan(api, desired)
            except resources.ResourceError as exc:
                raise resources.ResourceError(f"{exc}\nnothing was applied") from None
            for c in changes:
                style = {"create": "green", "update": "yellow", "unchanged": "dim"}[c.action]
                console.print(f"[{style}]{c.action:9}[/] {c.kind[:-1]} {_safe(c.name)}", highlight=False)
                if c.diff:
                    console.print(c.diff, markup=False, highlight=False, soft_wrap=True)  # each line whole: +/- kept
            pending = [c for c in changes if c.action != "unchanged"]
            if pending and not dry_run:
                await resources.apply(api, changes)
            verb = "would change" if dry_run else "changed"
            console.print(f"{len(pending)} {verb}, {len(changes) - len(pending)} unchanged")
            return 0

    try:
        raise typer.Exit(asyncio.run(run()))
    except (resources.ResourceError, httpx.HTTPError) as exc:  # (unwrapped: each item on its own line)
        console.print(f"[red]error:[/] {_safe(_failure(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


class Kind(StrEnum):
    campaigns = "campaigns"


@app.command()
def get(
    kind: Kind,
    key: SecretKey,
    output: Annotated[str, typer.Option("-o", "--output", help="yaml (a file `tenure apply` takes back)")] = "yaml",
) -> None:
    """Export the workspace's campaigns with their templates and segments as YAML."""
    from services import resources

    if output != "yaml":
        raise typer.BadParameter("only -o yaml is supported", param_hint="--output")

    async def run() -> str:
        async with httpx.AsyncClient(timeout=30) as http:
            return await resources.export(_resource_api(http, key))

    try:
        sys.stdout.write(asyncio.run(run()))
    except (resources.ResourceError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/] {_safe(_failure(exc))}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def demo(
    write_key: Annotated[str | None, typer.Option(envvar="TENURE_WRITE_KEY",
                                                  help="default: the dev workspace's")] = None,
    key: Annotated[str | None, typer.Option("--key", envvar="TENURE_SECRET_KEY",
                                            help="secret key; default: the dev workspace's")] = None,
) -> None:
    """Apply the six lifecycle campaigns (examples/lifecycle.yaml: nine campaigns, referral being four), pause the
    dev workspace's own welcome campaign (Onboarding welcomes the same sign-ups) and simulate users in several
    languages and time zones at every lifecycle stage; watch the mail arrive in the dev inbox (`tenure dev`)."""
    from services import demo as demo_mod
    from services import resources

    settings = _load_settings()
    if write_key is None or key is None:
        state = Path(settings.state_dir) / "demo.json"
        if not state.exists():
            console.print(f"[red]error:[/] no keys in {_safe(str(state.resolve()))}: run `tenure dev` first (the demo "
                          "workspace's keys are kept in its state directory, TENURE_STATE_DIR, ./.tenure by default: "
                          "run this where you ran it), or pass --write-key and --key", highlight=False)
            raise typer.Exit(1)
        keys = orjson.loads(state.read_bytes())
        write_key, key = write_key or keys["write_key"], key or keys["secret_key"]

    async def go() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as http:
            return await demo_mod.run(http, _resource_api(http, key), settings.url_of("ingest"), write_key)

    try:
        for line in asyncio.run(go()):
            console.print(line, markup=False, highlight=False)
    except (resources.ResourceError, httpx.HTTPError) as exc:
        console.print(f"[red]error:[/] {_safe(_failure(exc))}", highlight=False)
        raise typer.Exit(1) from None
    inbox = settings.local_url(settings.inbox_port)
    held = ", ".join(f"{name} {percent} %" for name, percent in demo_mod.holdouts())
    holdout = (f", and campaigns with a holdout leave that share of their entrants out to measure their lift ({held}: "
               "Lena, at risk, or Grace, churned, may be one, and then gets no email from it)") if held else ""
    console.print(f"Watch the campaigns arrive at {_safe(inbox)} (welcome, engagement, churn prevention, win-back, "
                  f"referral, loyalty). Later steps wait for days or local times{_safe(holdout)}: see "
                  "GET /v1/profiles/{id}/journeys on campaign for where each person is and why.", highlight=False)


@app.command()
def dev(
    demo: Annotated[bool, typer.Option(help="create the demo workspace on first start")] = True,
) -> None:
    """Run everything in one process: four APIs, four workers, the dev inbox; embedded Postgres/Redis
    when TENURE_DATABASE_URL / TENURE_REDIS_URL are not set. Ctrl-C stops it all."""
    from services.devserver import catch_stop_signals, run_dev, stop_requested, stopping
    from shared.logging import configure_logging
    from shared.migrate import upgrade_all

    base = _load_settings()
    taken = _ports_in_use(base)
    if taken:
        console.print(f"[red]in use:[/red] {_safe(', '.join(taken))}. Is another `tenure dev` running (or a mail "
                      "catcher on 1025/8025)? Stop it, or set those variables to free ports.", highlight=False)
        raise typer.Exit(2)
    configure_logging(base)
    catch_stop_signals()
    try:
        with _with_database(base) as settings:
            try:
                if settings.dev_inbox:  # delivery sends to the local inbox
                    settings = settings.model_copy(update={"smtp_host": settings.host})
                upgrade_all(settings)
                Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
                if not stop_requested():
                    asyncio.run(run_dev(settings, demo=demo and settings.dev_demo, console=console))
            except KeyboardInterrupt:
                pass
            finally:
                stopping()
    except KeyboardInterrupt:  # while the embedded servers were starting (they stopped what had started)
        pass
    console.print("stopped")


def _ports_in_use(settings: Settings) -> list[str]:
    """The ports `tenure dev` would listen on that something else holds, checked before anything starts."""
    wanted = {f"TENURE_{s.upper()}_PORT": settings.port_of(s) for s in SERVICES}
    if settings.dev_inbox:
        wanted.update(TENURE_INBOX_PORT=settings.inbox_port, TENURE_SMTP_PORT=settings.smtp_port)
    taken = []
    for var, port in wanted.items():
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is free
            try:
                sock.bind((settings.host, port))
            except OSError as exc:  # anything but "in use" is for the servers to report
                if exc.errno == errno.EADDRINUSE:
                    taken.append(f"{settings.host}:{port} ({var})")
    return taken


def main() -> None:  # pragma: no cover - console script entry
    app()

