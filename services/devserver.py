"""``tenure dev``: every API and worker in one asyncio loop, plus the dev inbox and a demo workspace."""

import asyncio
import contextlib
import importlib
import logging
import shutil
import signal
import sys
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from rich.console import Console
from rich.markup import escape
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.core import create_workspace, workspace_exists
from shared.db import in_transaction
from shared.settings import SERVICES, Settings

DEMO_POSTAL_ADDRESS = "Tenure demo, 1 Example Street, Springfield, IL 62701, USA"
DEMO_TEMPLATE = {
    "name": "welcome",
    "channel": "email",
    "subject": "Welcome to Tenure, {{ profile.first_name | default: 'friend' }}!",
    "html": "<p>Hi {{ profile.first_name | default: 'there' }},</p><p>Thanks for signing up.</p>",
    "text": "Hi {{ profile.first_name | default: 'there' }},\n\nThanks for signing up.\n",
}
DEMO_WELCOME = "Welcome email"  # the demo workspace's campaign sending DEMO_TEMPLATE on `Signed Up`


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stop_signals: list[int] = []
# while run_dev runs: where a stop signal goes; before it, one interrupts (start-up); after it, one is only noted
_stop_target: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
_interrupt = True


def stop_requested() -> bool:
    """Whether Ctrl-C, SIGTERM or SIGHUP came since :func:`catch_stop_signals` (see there)."""
    return bool(_stop_signals)


def _on_stop_signal(signum: int, _frame: object) -> None:
    _stop_signals.append(signum)
    if _stop_target is not None:
        loop, stop = _stop_target
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(stop.set)
    elif _interrupt:
        raise KeyboardInterrupt


def stopping() -> None:
    """From now on a stop signal is only noted (the embedded servers stop undisturbed)."""
    global _interrupt
    _interrupt = False


def catch_stop_signals() -> None:
    """Ctrl-C, SIGTERM (kill) and SIGHUP (the terminal closed) stop `tenure dev` alike (by default the last two
    would end the process at once and leave the embedded servers running), by one handler for the whole run:

    - during start-up (embedded servers, migrations) a signal is noted and raised as ``KeyboardInterrupt``, to cut
      the blocking work short. The note is what start-up checks before each stage: Python prints and drops a
      ``KeyboardInterrupt`` raised inside a finalizer (a weakref callback, a ``__del__``), and start-up then went
      on to serve as if no Ctrl-C had come;
    - while :func:`run_dev` runs, it sets run_dev's stop event (our handler also keeps ``asyncio.run`` from
      installing its own, which cancelled the main task: pages of tracebacks from servers caught starting);
    - after it, it is only noted: Ctrl-C pressed again must not cut the embedded servers' shutdown short (it
      interrupted pgserver's ``pg_ctl stop``, and a signal while asyncio closed its loop wrote to a closed fd)."""
    global _interrupt
    _interrupt = True
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the supervisor (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def create_welcome(session: AsyncSession, ws: uuid.UUID) -> dict[str, Any]:
    """The demo workspace's welcome campaign (``tenure demo`` pauses it: examples/lifecycle.yaml's Onboarding
    welcomes the same sign-ups)."""
    from services.campaign import campaigns

    tpl = await campaigns.create_template(session, ws, DEMO_TEMPLATE)
    return await campaigns.create_campaign(session, ws, {
        "name": DEMO_WELCOME, "trigger": {"type": "event", "event": "Signed Up"},
        "template_id": tpl["id"], "message_type": "marketing",
    })


async def ensure_demo(settings: Settings) -> dict[str, Any]:
    """The demo workspace's keys: created (with a welcome campaign) on first start, then reused."""
    path = Path(settings.state_dir) / "demo.json"

    async def work(session: AsyncSession) -> tuple[dict[str, Any], bool]:
        """The keys, and whether they are new."""
        if path.exists():
            demo = orjson.loads(path.read_bytes())
            if await workspace_exists(session, uuid.UUID(demo["workspace_id"])):
                return dict(demo), False
        created = await create_workspace(session, f"demo-{uuid.uuid4().hex[:6]}")
        # marketing email carries a postal address (CAN-SPAM): the demo's shows where it goes
        await session.execute(text("update core.workspaces set settings = settings || CAST(:s AS jsonb) "
                                   "where id = :id"), {"id": created.workspace_id, "s": orjson.dumps(
                                       {"postal_address": DEMO_POSTAL_ADDRESS}).decode()})
        await create_welcome(session, created.workspace_id)
        return {"workspace_id": str(created.workspace_id), "write_key": created.write_key,
                "secret_key": created.secret_key}, True

    demo, new = await in_transaction(settings, work)
    if new:  # (written once the workspace is committed)
        path.write_bytes(orjson.dumps(demo, option=orjson.OPT_INDENT_2))
        path.chmod(0o600)
    return demo


def _tenure_command() -> str:
    """How the user can run ``tenure`` from here (``.venv/bin/tenure`` after ``make run``)."""
    exe = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path("tenure")
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return "tenure" if shutil.which("tenure") == str(exe) else str(exe)


def _banner(settings: Settings, demo: dict[str, Any] | None) -> str:
    """Rich markup: only the title is styled (settings and paths are escaped)."""
    return "\n[bold green]Tenure is running[/bold green]\n" + escape(_banner_text(settings, demo))


def _banner_text(settings: Settings, demo: dict[str, Any] | None) -> str:
    urls = "\n".join(f"  {s:<9} {settings.url_of(s)}/docs" for s in SERVICES)  # type: ignore[arg-type]
    text = f"\nAPIs (OpenAPI docs):\n{urls}\n"
    if settings.dev_inbox:
        text += f"  inbox     http://{settings.host}:{settings.inbox_port}  (SMTP on {settings.smtp_port})\n"
    if demo:
        ingest = settings.url_of("ingest")
        wk = demo["write_key"]
        text += (
            f"\nDemo workspace {demo['workspace_id']}\n  write key  {wk}\n  secret key {demo['secret_key']}\n"
            f"\nTry it (a welcome email lands in the inbox; once per messageId, so change it to see another):\n"
            f"  curl -u '{wk}:' {ingest}/v1/identify -H 'content-type: application/json' \\\n"
            f"    -d '{{\"userId\":\"ada\",\"traits\":{{\"email\":\"ada@example.com\",\"first_name\":\"Ada\"}}}}'\n"
            f"  curl -u '{wk}:' {ingest}/v1/track -H 'content-type: application/json' \\\n"
            f"    -d '{{\"userId\":\"ada\",\"event\":\"Signed Up\",\"messageId\":\"signup-ada\"}}'\n"
            f"  {_tenure_command()} mail      (or open http://{settings.host}:{settings.inbox_port})\n"
        )
    return text + "\nCtrl-C stops everything."


async def run_dev(settings: Settings, *, demo: bool, console: Console) -> None:
    """Serve until Ctrl-C, SIGTERM or SIGHUP (see :func:`catch_stop_signals`, which the caller installs)."""
    global _stop_target, _interrupt
    stop = asyncio.Event()
    _stop_target = (asyncio.get_running_loop(), stop)
    try:
        if not stop_requested():  # one that came before (its KeyboardInterrupt perhaps dropped) starts nothing
            await _serve(settings, demo=demo, console=console, stop=stop)
    finally:
        _stop_target, _interrupt = None, False


async def _serve(settings: Settings, *, demo: bool, console: Console, stop: asyncio.Event) -> None:
    from shared.logging import configure_logging

    configure_logging(settings)
    if logging.getLogger().level == logging.INFO:
        # five servers share this process: their "Started server process" / "Uvicorn running on" lines (five
        # of each) would bury the banner, which lists every URL; errors (a port in use) still show
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    demo_keys = await ensure_demo(settings) if demo else None
    if stop.is_set():
        return
    servers: list[_Server] = []
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.app")
        cfg = uvicorn.Config(module.create_app(settings), host=settings.host, port=settings.port_of(name),
                             log_config=None, access_log=False, timeout_graceful_shutdown=10)
        servers.append(_Server(cfg))
    smtp = None
    if settings.dev_inbox:
        from services.devinbox.inbox import Mailbox, create_inbox_app, start_smtp

        mailbox = Mailbox(Path(settings.state_dir) / "mail.jsonl")
        smtp = start_smtp(mailbox, settings.host, settings.smtp_port)
        servers.append(_Server(uvicorn.Config(create_inbox_app(mailbox), host=settings.host,
                                              port=settings.inbox_port, log_config=None, access_log=False)))
    workers = [importlib.import_module(f"services.{name}.worker").create_worker(settings, handle_signals=False)
               for name in SERVICES]
    server_tasks = [asyncio.create_task(s.serve()) for s in servers]
    worker_tasks = [asyncio.create_task(w.async_run()) for w in workers]
    while not all(s.started for s in servers):
        if stop.is_set() or any(t.done() for t in server_tasks):
            break
        await asyncio.sleep(0.05)
    if all(s.started for s in servers):
        # plain text, never wrapped: the curl lines must survive copy-paste
        console.print(_banner(settings, demo_keys), soft_wrap=True, highlight=False)
    elif not stop.is_set():
        console.print("[red]a server failed to start (port in use?); stopping[/red]")
        stop.set()
    await stop.wait()
    for s in servers:
        s.should_exit = True
    for t in worker_tasks:
        t.cancel()
    await asyncio.gather(*server_tasks, *worker_tasks, return_exceptions=True)
    for w in workers:
        with contextlib.suppress(Exception):
            await w.close()
    if smtp is not None:
        smtp.stop()
