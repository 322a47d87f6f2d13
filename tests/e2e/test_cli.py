"""The `tenure` command as a user runs it: migrate, workspace create, dev + mail; and what it prints of servers'
answers, files and names, which rich must not read as markup."""

import asyncio
import contextlib
import importlib
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from shared.embedded import free_port
from shared.testing import http_server

TENURE = str(Path(sys.executable).parent / "tenure")


def _env(settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "TENURE_DATABASE_URL": settings.database_url, "TENURE_REDIS_URL": settings.redis_url,
            "TENURE_INTERNAL_TOKEN": settings.internal_token, "TENURE_LOG_LEVEL": "WARNING", **extra}


def test_migrate_is_idempotent(settings) -> None:
    for _ in range(2):
        r = subprocess.run([TENURE, "migrate"], env=_env(settings), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()


async def test_workspace_create_json_keys_work(settings, apps) -> None:
    r = subprocess.run([TENURE, "workspace", "create", "acme", "--json"], env=_env(settings), capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    keys = json.loads(r.stdout)
    assert set(keys) == {"workspace_id", "write_key", "secret_key"}
    tracked = await apps["ingest"].post("/v1/track", auth=(keys["write_key"], ""), json={"userId": "u", "event": "E"})
    assert tracked.status_code == 200
    missing = await apps["ingest"].get("/v1/profiles/nobody", headers={"Authorization": f"Bearer {keys['secret_key']}"})
    assert missing.status_code == 404


@pytest.mark.parametrize("command", [["serve", "ingest"], ["worker", "delivery"]])
def test_serve_and_worker_refuse_to_run_without_servers(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TENURE_DATABASE_URL", "TENURE_REDIS_URL")}
    r = subprocess.run([TENURE, *command], env=env, capture_output=True, timeout=60)
    assert r.returncode == 2 and b"TENURE_DATABASE_URL" in r.stderr


def test_dev_runs_everything_and_the_printed_example_reaches_the_inbox(settings, tmp_path) -> None:
    ports = {f"TENURE_{s}_PORT": str(free_port()) for s in ("INGEST", "SEGMENT", "CAMPAIGN", "DELIVERY", "INBOX", "SMTP")}
    env = _env(settings, TENURE_STATE_DIR=str(tmp_path / "state"), TENURE_QUEUE_PREFIX=settings.queue_prefix + "-dev",
               TENURE_FEED_POLL_INTERVAL_S="1", **ports)
    proc = subprocess.Popen([TENURE, "dev"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    inbox = f"http://127.0.0.1:{ports['TENURE_INBOX_PORT']}"
    ingest = f"http://127.0.0.1:{ports['TENURE_INGEST_PORT']}"
    try:
        demo_file = tmp_path / "state" / "demo.json"
        _wait_until_up(proc, f"{ingest}/readyz", 60, demo_file.exists)
        demo = json.loads(demo_file.read_text())
        wk = (demo["write_key"], "")
        httpx.post(f"{ingest}/v1/identify", auth=wk, timeout=10,
                   json={"userId": "ada", "traits": {"email": "ada@example.com", "first_name": "Ada"}})
        httpx.post(f"{ingest}/v1/track", auth=wk, timeout=10, json={"userId": "ada", "event": "Signed Up"})
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([TENURE, "mail", "--json", "--url", inbox], env=env, capture_output=True, timeout=30)
            mails = json.loads(r.stdout) if r.returncode == 0 else []
            if mails:
                break
            assert time.monotonic() < deadline, "no mail in the dev inbox"
            time.sleep(0.5)
        assert [m["subject"] for m in mails] == ["Welcome to Tenure, Ada!"]
        assert "1 Example Street" in mails[0]["text"]  # the demo workspace's postal address (CAN-SPAM)
        page = httpx.get(inbox + "/", timeout=5)
        assert page.status_code == 200 and "Welcome to Tenure, Ada!" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.stderr.read().decode()[-3000:]


def test_dev_names_the_ports_in_use_before_starting_anything(tmp_path) -> None:
    """Another `tenure dev`, or a mail catcher such as Mailpit (1025/8025), holds a port: say which, start nothing."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {f"TENURE_{s}_PORT": str(free_port()) for s in ("INGEST", "SEGMENT", "CAMPAIGN", "DELIVERY", "INBOX")}
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
        env.update(TENURE_STATE_DIR=str(tmp_path / "state"), TENURE_SMTP_PORT=str(port), **ports)
        r = subprocess.run([TENURE, "dev"], env=env, capture_output=True, timeout=60)
    assert r.returncode == 2, r.stderr.decode()
    assert f"127.0.0.1:{port} (TENURE_SMTP_PORT)" in " ".join(r.stderr.decode().split())
    assert not (tmp_path / "state").exists()  # no embedded server was started


def test_dev_stops_its_embedded_servers_when_the_terminal_hangs_up(tmp_path) -> None:
    """Closing the terminal `make run` runs in sends SIGHUP to its foreground job: the embedded PostgreSQL
    (detached by pgserver) and Redis must stop with `tenure dev`, not live on."""
    import psutil

    env, ports = _dev_env(tmp_path)
    proc = subprocess.Popen([TENURE, "dev"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    servers: list[int] = []
    try:
        servers += _embedded_servers(proc, ports, tmp_path)
        os.killpg(proc.pid, signal.SIGHUP)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    left = [p for p in map(psutil.Process, filter(psutil.pid_exists, servers)) if p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.terminate()
    assert not left, f"still running after SIGHUP: {[p.name() for p in left]}"


def test_dev_pressed_ctrl_c_again_and_again_still_stops_its_embedded_servers(tmp_path) -> None:
    """An impatient user holds Ctrl-C down: the signals that come while `tenure dev` is stopping must not cut the
    embedded servers' shutdown short (it used to end in pgserver's atexit traceback, without "stopped")."""
    import psutil

    env, ports = _dev_env(tmp_path)
    log = tmp_path / "dev.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([TENURE, "dev"], env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    servers: list[int] = []
    try:
        servers += _embedded_servers(proc, ports, tmp_path)
        while proc.poll() is None:  # a key held down repeats: Ctrl-C until it has exited
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = log.read_text()
    left = [p for p in map(psutil.Process, filter(psutil.pid_exists, servers)) if p.status() != psutil.STATUS_ZOMBIE]
    for p in left:
        p.terminate()
    assert not left, f"still running after Ctrl-C: {[p.name() for p in left]}"
    assert "stopped" in said and "Traceback" not in said, said[-3000:]


def _dev_env(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """`tenure dev`'s environment with no servers given (so embedded ones) and free ports: (env, ports)."""
    ports = {f"TENURE_{s}_PORT": str(free_port()) for s in ("INGEST", "SEGMENT", "CAMPAIGN", "DELIVERY", "INBOX", "SMTP")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}
    env.update(TENURE_STATE_DIR=str(tmp_path / "state"), TENURE_DEV_DEMO="false", TENURE_LOG_LEVEL="WARNING", **ports)
    return env, ports


def _embedded_servers(proc: subprocess.Popen[bytes], ports: dict[str, str], tmp_path: Path) -> list[int]:
    """Once `tenure dev` is up: the pids of its embedded PostgreSQL and Redis."""
    import psutil

    _wait_until_up(proc, f"http://127.0.0.1:{ports['TENURE_INGEST_PORT']}/readyz", 120)
    servers = [int((tmp_path / "state" / "pgdata" / "postmaster.pid").read_text().split()[0])]
    servers += [c.pid for c in psutil.Process(proc.pid).children() if c.name() == "redis-server"]
    assert len(servers) == 2
    return servers


def _wait_until_up(proc: subprocess.Popen, ready_url: str, timeout_s: float,
                   also: Callable[[], bool] = lambda: True) -> None:
    """Until ``tenure dev`` answers ready (and ``also`` holds); fails with its stderr if it died."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if also() and httpx.get(ready_url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "tenure dev did not come up"
        time.sleep(0.2)


# ---- text from servers, files and names is printed as written --------------------------------------------------

MARKUP = "[bold]x[/bold] [/]"  # rich markup: "[/]" closes nothing (a MarkupError), "[bold]" would style


@pytest.fixture(scope="module")
def served(settings) -> Iterator[dict[str, str]]:
    """Ingest, segment and campaign on loopback ports (uvicorn in this process), for `apply`, `get`, `demo` and
    `import`."""
    ports = {name: free_port() for name in ("ingest", "segment", "campaign")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    reachable = settings.model_copy(update={f"{name}_url": url for name, url in urls.items()})
    with contextlib.ExitStack() as stack:
        for name, port in ports.items():
            stack.enter_context(http_server(importlib.import_module(f"services.{name}.app").create_app(reachable),
                                            port=port))
        yield urls


def _tenure(settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TENURE, *args], env=_env(settings, COLUMNS="250", **env), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)  # (a command that would ask gets no terminal)


def _said(r: subprocess.CompletedProcess[str]) -> str:
    """What the command printed, lines joined (rich wraps long ones), with no traceback in it."""
    assert "Traceback" not in r.stdout + r.stderr and "MarkupError" not in r.stdout + r.stderr, r.stderr
    return " ".join((r.stdout + r.stderr).split())


def test_apply_prints_names_and_the_services_refusal_as_written(settings, served, workspace, tmp_path) -> None:
    """The plan names each item; a refusal is shown whole (the service's problem document, or its check made
    before anything is written), naming the item it is about; exit 1."""
    path = tmp_path / "markup.yaml"
    path.write_text(yaml.safe_dump({"templates": [
        {"name": MARKUP, "subject": "Hi", "text": "Hello"},
        {"name": "broken", "subject": "Hi", "text": "{% render '" + MARKUP + "' %}"},  # campaign refuses it
    ]}))
    env = {"TENURE_SEGMENT_URL": served["segment"], "TENURE_CAMPAIGN_URL": served["campaign"],
           "TENURE_SECRET_KEY": workspace.secret_key}
    for args in (["--dry-run"], []):
        r = _tenure(settings, "apply", "-f", str(path), *args, **env)
        assert r.returncode == 1, r.stderr
        said = _said(r)
        assert f"error: template 'broken': Template text is not valid: no snippet named '{MARKUP}'" in said, said
        assert "nothing was applied" in said, said
    path.write_text(yaml.safe_dump({"templates": [{"name": MARKUP, "subject": "Hi", "text": "Hello"}], "segments": [
        {"name": "listed", "definition": {"type": "segment", "segment_id": "0f0c2a9e-55b3-4c59-9d4e-000000000000"}}]}))
    r = _tenure(settings, "apply", "-f", str(path), **env)  # (a segment id only segment knows of: refused by it)
    assert r.returncode == 1, r.stderr
    said = _said(r)
    assert f"create template {MARKUP}" in said and "create segment listed" in said
    assert "error: segment 'listed': POST segment/v1/segments: 422" in said and "no segment" in said, said
    assert f"applied: create template '{MARKUP}' not applied: create segment 'listed'" in said, said
    templates = httpx.get(f"{served['campaign']}/v1/templates", headers={
        "Authorization": f"Bearer {workspace.secret_key}"}).json()["templates"]
    assert [t["name"] for t in templates] == [MARKUP]  # applied before the refusal, as the error says


def test_apply_refuses_a_file_with_a_template_campaign_would_refuse_before_writing_any_of_it(
        settings, served, workspace, tmp_path) -> None:
    """A valid template, one reading ``{{ profle.first_name }}``, then a campaign using the first: the diff
    announced three creates, then `tenure apply` exited 1 having written the first template but not the
    campaign. The file is refused before the first write, naming the template and the variable."""
    path = tmp_path / "partial.yaml"
    path.write_text("""
templates:
  - name: part2-ok
    subject: "hi"
    text: "hello"
  - name: part2-bad
    subject: "hi {{ profle.first_name }}"
    text: "hello"
campaigns:
  - name: part2-camp
    trigger: {type: event, event: Part2}
    steps:
      - {id: m, type: send, template: part2-ok}
""")
    r = _tenure(settings, "apply", "-f", str(path), TENURE_SEGMENT_URL=served["segment"],
                TENURE_CAMPAIGN_URL=served["campaign"], TENURE_SECRET_KEY=workspace.secret_key)
    assert r.returncode == 1, r.stderr
    said = _said(r)
    assert ("error: template 'part2-bad': Template subject is not valid: unknown variable 'profle' (templates see "
            "profile, traits, event, referral, loyalty, attributes) (line 1, column 7)") in said, said
    assert "nothing was applied" in said and "create template part2-ok" not in said, said
    headers = {"Authorization": f"Bearer {workspace.secret_key}"}
    assert httpx.get(f"{served['campaign']}/v1/templates", headers=headers).json()["templates"] == []
    assert httpx.get(f"{served['campaign']}/v1/campaigns", headers=headers).json()["campaigns"] == []


def _answering(status: int, content_type: str, body: bytes) -> Any:
    """An ASGI app answering every request the same way: a proxy in front of the services, say."""
    async def app(scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode())]})
        await send({"type": "http.response.body", "body": body})
    return app


@pytest.mark.parametrize("command", [["get", "campaigns"], ["demo", "--write-key", "wk_unused"]])
def test_get_and_demo_print_an_error_answer_as_written(settings, served, workspace, command) -> None:
    """A refusal is shown as its detail and field errors (not its raw JSON), markup and all; an answer that is
    no JSON at all (a proxy's HTML page) is an error naming what came, with no traceback and no terminal
    control sequence passed through; exit 1 both times."""
    problem = orjson.dumps({"type": "about:blank", "title": "Refused", "status": 409, "detail": f"busy {MARKUP}",
                            "errors": [{"at": "steps.0", "msg": f"no {MARKUP}"}]})
    with http_server(_answering(409, "application/problem+json", problem)) as port:
        r = _tenure(settings, *command, "--key", workspace.secret_key, TENURE_SEGMENT_URL=served["segment"],
                    TENURE_CAMPAIGN_URL=f"http://127.0.0.1:{port}")
    assert r.returncode == 1, r.stderr
    said = _said(r)
    assert f"error: GET campaign/v1/templates: 409 busy {MARKUP} steps.0: no {MARKUP}" in said, said
    page = b"<html><body>\x1b[31mBad gateway</body></html>"
    with http_server(_answering(200, "text/html", page)) as port:
        r = _tenure(settings, *command, "--key", workspace.secret_key, TENURE_SEGMENT_URL=served["segment"],
                    TENURE_CAMPAIGN_URL=f"http://127.0.0.1:{port}")
    assert r.returncode == 1, r.stderr
    said = _said(r)
    assert "answered 200 with text/html, not JSON" in said and "Bad gateway" in said, said
    assert "\x1b" not in r.stdout + r.stderr


@pytest.mark.parametrize("command", [["apply", "-f", "examples/lifecycle.yaml"], ["get", "campaigns"], ["demo"]])
def test_a_service_that_does_not_answer_is_named_with_a_hint(settings, workspace, command) -> None:
    """A user who runs `tenure demo` (or apply, get) with `tenure dev` stopped read only httpx's "All connection
    attempts failed": the error names the address it tried and asks whether `tenure dev` runs. (`import` says
    the same, after retrying for a minute and a half.)"""
    closed = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{closed}"
    args = [str(Path(__file__).parents[2] / a) if a.endswith(".yaml") else a for a in command]
    keys = (["--write-key", workspace.write_key] if command[0] == "demo" else []) + ["--key", workspace.secret_key]
    r = _tenure(settings, *args, *keys, TENURE_INGEST_URL=url, TENURE_SEGMENT_URL=url, TENURE_CAMPAIGN_URL=url)
    assert r.returncode == 1, r.stderr
    said = _said(r)
    assert f"cannot reach {url} (ConnectError" in said and "is `tenure dev` running?" in said, said


async def test_demo_pauses_the_dev_welcome_and_names_the_campaigns_holding_people_out(
        settings, served, workspace, sessionmaker) -> None:
    """After `tenure demo` one `Signed Up` sent two welcomes (the dev workspace's and Onboarding's); and its closing
    words named only win-back's holdout, though churn prevention holds 10 % out too (Lena's email may not come)."""
    from services.devserver import create_welcome

    async with sessionmaker() as s, s.begin():
        welcome = await create_welcome(s, workspace.workspace_id)
    urls = {f"TENURE_{name.upper()}_URL": url for name, url in served.items()}
    r = await asyncio.to_thread(_tenure, settings, "demo", "--write-key", workspace.write_key,
                                "--key", workspace.secret_key, **urls)
    assert r.returncode == 0, r.stderr
    said = _said(r)
    assert "campaign 'Welcome email' (tenure dev's welcome) paused: Onboarding sends the welcome now" in said, said
    assert "campaigns with a holdout leave that share of their entrants out to measure their lift (Churn " \
           "prevention 10 %, Win-back 10 %: Lena, at risk, or Grace, churned, may be one" in said, said
    async with httpx.AsyncClient(base_url=served["campaign"]) as http:
        got = await http.get(f"/v1/campaigns/{welcome['id']}", headers={"Authorization": f"Bearer {workspace.secret_key}"})
    assert got.json()["status"] == "paused", got.text


def test_import_reports_bad_rows_as_written_and_exits_3(settings, served, workspace, tmp_path) -> None:
    """A bad row is reported with the cell that failed; the good rows are stored."""
    path = tmp_path / "orders.csv"
    path.write_text(f"userId,event,properties.total:number\nu1,Order Completed,{MARKUP}\nu2,Order Completed,5\n")
    r = _tenure(settings, "import", str(path), "--url", served["ingest"], "--write-key", workspace.write_key)
    assert r.returncode == 3, r.stderr
    said = _said(r)
    assert "1 stored" in said and f"line 2: bad value: column 'properties.total:number': '{MARKUP}' is not a number" in said


def test_import_help_names_the_file_format(settings) -> None:
    """The columns a CSV takes and what an NDJSON line is were only in services/importer.py's docstring."""
    r = _tenure(settings, "import", "--help")
    assert r.returncode == 0, r.stderr
    said = _said(r)
    for column in ("userId", "anonymousId", "event", "timestamp", "messageId", "traits.NAME", "properties.NAME",
                   "NAME:number", "NAME:bool", "--profiles"):
        assert column in said, (column, said)
    assert "NDJSON (.ndjson, .jsonl): one JSON object per line, a Segment message" in said, said


def test_workspace_create_and_configure_print_names_and_values_as_written(settings, workspace) -> None:
    created = _tenure(settings, "workspace", "create", MARKUP)
    assert created.returncode == 0 and f"workspace {MARKUP}" in _said(created), created.stderr
    r = _tenure(settings, "workspace", "configure", str(workspace.workspace_id), "--set", f"timezone={MARKUP}")
    assert r.returncode == 2, r.stderr
    assert f"timezone: Value error, unknown time zone '{MARKUP}'" in _said(r) and "nothing was changed" in r.stderr


def test_mail_lists_subjects_as_written(settings) -> None:
    from services.devinbox.inbox import Mailbox, create_inbox_app, start_smtp

    box, smtp_port = Mailbox(), free_port()
    smtp = start_smtp(box, "127.0.0.1", smtp_port)
    try:
        with smtplib.SMTP("127.0.0.1", smtp_port) as client:
            client.sendmail("shop@example.com", ["ada@example.com"],
                            f"Subject: {MARKUP}\r\nFrom: shop@example.com\r\nTo: ada@example.com\r\n\r\nHi\r\n")
        with http_server(create_inbox_app(box)) as port:
            r = _tenure(settings, "mail", "--url", f"http://127.0.0.1:{port}")
    finally:
        smtp.stop()
    assert r.returncode == 0 and f"ada@example.com │ {MARKUP}" in _said(r), r.stdout


def _cli_json(settings, *args: str, code: int = 0) -> Any:
    r = subprocess.run([TENURE, *args, "--json"], env=_env(settings), capture_output=True, timeout=60)
    assert r.returncode == code, r.stderr.decode()
    return json.loads(r.stdout) if code == 0 else r.stderr.decode()


async def test_a_leaked_key_is_replaced_and_revoked_with_the_cli(settings, apps, monkeypatch) -> None:
    """Rotation as an operator does it: add a key, move the SDKs to it, revoke the old one, by its id or by the
    key itself (what one holds when it has leaked). Every API refuses a revoked key, one already in use too once
    its cache entry lapses (30 s in production, none here); the last secret key is kept unless --force."""
    from shared import auth

    monkeypatch.setattr(auth, "CACHE_TTL_S", 0.0)
    ws = _cli_json(settings, "workspace", "create", "rotated")
    wid, old_write, old_secret = ws["workspace_id"], ws["write_key"], ws["secret_key"]

    async def track(key: str) -> int:
        return (await apps["ingest"].post("/v1/track", auth=(key, ""), json={"userId": "u", "event": "E"})).status_code

    async def manage(key: str) -> int:
        return (await apps["campaign"].get("/v1/campaigns", headers={"Authorization": f"Bearer {key}"})).status_code

    assert await track(old_write) == 200 and await manage(old_secret) == 200
    new_write = _cli_json(settings, "workspace", "add-key", wid, "--kind", "write")
    assert new_write["kind"] == "write" and new_write["key"].startswith(new_write["hint"].rstrip("…"))
    assert await track(new_write["key"]) == 200 and await track(old_write) == 200  # both, while SDKs move over

    revoked = _cli_json(settings, "workspace", "revoke-key", old_write)  # by the key itself
    assert revoked["kind"] == "write" and revoked["revoked_at"]
    assert await track(old_write) == 401 and await track(new_write["key"]) == 200
    assert _cli_json(settings, "workspace", "revoke-key", revoked["id"]) == revoked  # again: nothing changes

    # the last secret key stays unless forced; once another exists, the old one goes (by its id)
    refused = _cli_json(settings, "workspace", "revoke-key", old_secret, code=1)
    assert "last secret key" in refused and await manage(old_secret) == 200
    new_secret = _cli_json(settings, "workspace", "add-key", wid, "--kind", "secret")
    listed = _cli_json(settings, "workspace", "keys", wid)
    old_secret_id = next(k["id"] for k in listed if k["kind"] == "secret" and k["id"] != new_secret["id"])
    _cli_json(settings, "workspace", "revoke-key", old_secret_id)
    assert await manage(old_secret) == 401 and await manage(new_secret["key"]) == 200
    assert await track(new_secret["key"]) == 403  # (a secret key is not a write key)
    listed = _cli_json(settings, "workspace", "keys", wid)
    assert [(k["kind"], k["revoked_at"] is not None) for k in listed] == [
        ("write", True), ("secret", True), ("write", False), ("secret", False)]
    assert "key" not in listed[2]  # the keys themselves are shown once, at creation
    # the workspace's last secret key, forced: nothing reaches its management APIs but the CLI
    _cli_json(settings, "workspace", "revoke-key", new_secret["id"], code=1)
    forced = subprocess.run([TENURE, "workspace", "revoke-key", new_secret["id"], "--force"], env=_env(settings),
                            capture_output=True, timeout=60)
    assert forced.returncode == 0 and await manage(new_secret["key"]) == 401


def test_key_commands_name_what_they_cannot_find(settings) -> None:
    for args, code, says in ((["workspace", "keys", "nope"], 2, "not a workspace id"),
                             (["workspace", "keys", "00000000-0000-0000-0000-000000000000"], 1, "no workspace"),
                             (["workspace", "add-key", "00000000-0000-0000-0000-000000000000", "--kind", "write"], 1,
                              "no workspace"),
                             (["workspace", "revoke-key", "wk_not-a-key"], 1, "no such key")):
        r = subprocess.run([TENURE, *args], env=_env(settings), capture_output=True, timeout=60)
        assert (r.returncode, says in r.stderr.decode()) == (code, True), r.stderr.decode()
