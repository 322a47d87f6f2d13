"""What an operator sees when a process cannot start: a wrong setting, a server that does not answer, a database
nobody migrated. Every such exit is one line on stderr naming the variable (never its value: URLs hold passwords),
and a non-zero status; an API started before `tenure migrate` stays out of its Service (/readyz) until it has run."""

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from shared.embedded import free_port
from shared.testing import Servers, _asyncpg_dsn, fresh_database
from tests.e2e.stack import one_line, process_env, run_on_own_loop, wait_serving

TENURE = str(Path(sys.executable).parent / "tenure")
SECRET = "s3cret-pw"


def _closed_port() -> int:
    return free_port()  # nothing listens on it


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("TENURE_DB_POOL_SIZE", "ten", "TENURE_DB_POOL_SIZE"),
    # parsed, but out of range: a traceback from uvicorn's bind, a pool that can never hand out a connection, and a
    # level the logging module takes for a custom one (nothing logged at all) were all accepted before
    ("TENURE_INGEST_PORT", "70000", "TENURE_INGEST_PORT"),
    ("TENURE_DB_POOL_SIZE", "0", "TENURE_DB_POOL_SIZE"),
    ("TENURE_LOG_LEVEL", "LOUD", "TENURE_LOG_LEVEL"),
    ("TENURE_FEED_POLL_INTERVAL_S", "5s", "TENURE_FEED_POLL_INTERVAL_S"),
    ("TENURE_ENV", "production", "TENURE_ENV"),
    ("TENURE_PROVIDER_RATE_PER_S", "twilio:10", "TENURE_PROVIDER_RATE_PER_S"),
    ("TENURE_DATABASE_URL", f"postgres//tenure:{SECRET}@db.internal/tenure", "TENURE_DATABASE_URL"),
    ("TENURE_DATABASE_URL", f"postgresql://tenure:{SECRET}@db.internal:five/tenure", "TENURE_DATABASE_URL"),
    ("TENURE_DATABASE_URL", f"postgresql://tenure:{SECRET}@x@db.internal/tenure", "TENURE_DATABASE_URL"),
    ("TENURE_REDIS_URL", f"https://:{SECRET}@redis.internal:6379/0", "TENURE_REDIS_URL"),
    # a VAPID contact that is not a mailto:/https: URI: every Web Push would be refused (Apple: 403 BadJwtToken)
    ("TENURE_VAPID_SUBJECT", "push-ops at acme.example", "TENURE_VAPID_SUBJECT"),
    # the placeholder token in prod: refused, and the line shows none of the other settings (a URL's password)
    ("TENURE_ENV", "prod", "TENURE_SIGNING_SECRET"),
])
@pytest.mark.parametrize("command", [["serve", "ingest"], ["worker", "delivery"], ["migrate"]])
def test_a_bad_setting_is_one_line_naming_the_variable(settings, command, variable, value, named) -> None:
    env = process_env(settings, **{"TENURE_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{_closed_port()}/0", variable: value})
    r = subprocess.run([TENURE, *command], env=env, capture_output=True, timeout=60)
    assert r.returncode == 2, r.stderr.decode()
    line = one_line(r.stderr)
    assert line.startswith("configuration error: ") and named in line, line
    assert SECRET not in line and "input" not in line, line


@pytest.mark.parametrize(("variable", "value"), [
    ("TENURE_SIGNING_SECRET", ""), ("TENURE_SIGNING_SECRET", "short-secret"), ("TENURE_INTERNAL_TOKEN", "  "),
    ("TENURE_SIGNING_SECRET_PREVIOUS", f"{'o' * 32},short-secret"),  # a previous secret signs links all the same
])
def test_an_empty_or_short_secret_is_refused_in_prod(settings, variable, value) -> None:
    """An empty signing secret (a key missing from the Secret) let anyone sign a click link: an open redirect."""
    env = process_env(settings, **{"TENURE_ENV": "prod", "TENURE_SIGNING_SECRET": "s" * 32, variable: value})
    r = subprocess.run([TENURE, "serve", "delivery"], env=env, capture_output=True, timeout=60)
    assert r.returncode == 2, r.stderr.decode()
    line = one_line(r.stderr)
    assert line.startswith("configuration error: ") and variable in line, line


@pytest.mark.parametrize("command", [["migrate"], ["worker", "ingest"], ["workspace", "create", "acme"],
                                     ["workspace", "configure", str(uuid.uuid4()), "--retention-days", "30"]])
def test_an_unreachable_database_is_one_line_naming_the_variable(settings, command) -> None:
    port = _closed_port()
    r = subprocess.run([TENURE, *command], capture_output=True, timeout=60,
                       env=process_env(settings, TENURE_DATABASE_URL=f"postgresql://tenure:{SECRET}@127.0.0.1:{port}/x"))
    assert r.returncode == 1, r.stderr.decode()
    line = one_line(r.stderr)
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port} (TENURE_DATABASE_URL)" in line and SECRET not in line


def test_a_database_that_does_not_exist_is_one_line(settings) -> None:
    url = make_url(settings.database_url).set(database=f"missing_{uuid.uuid4().hex[:8]}")
    r = subprocess.run([TENURE, "migrate"], capture_output=True, timeout=60,
                       env=process_env(settings, TENURE_DATABASE_URL=url.render_as_string(hide_password=False)))
    assert r.returncode == 1, r.stderr.decode()
    assert "does not exist" in one_line(r.stderr)


def test_a_worker_without_redis_is_one_line_naming_the_variable(settings) -> None:
    port = _closed_port()
    r = subprocess.run([TENURE, "worker", "campaign"], capture_output=True, timeout=60,
                       env=process_env(settings, TENURE_REDIS_URL=f"redis://:{SECRET}@127.0.0.1:{port}/0"))
    assert r.returncode == 1, r.stderr.decode()
    line = one_line(r.stderr)
    assert f"cannot connect to Redis at 127.0.0.1:{port} (TENURE_REDIS_URL)" in line and SECRET not in line


def test_a_worker_whose_metrics_port_is_taken_is_one_line_naming_the_variable(settings) -> None:
    """It started, then failed with a 120-line traceback (not JSON) when it came to serve /metrics and /healthz."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run([TENURE, "worker", "ingest"], capture_output=True, timeout=60,
                           env=process_env(settings, TENURE_WORKER_METRICS_PORT=str(port), TENURE_HOST="127.0.0.1"))
    assert r.returncode == 1, r.stderr.decode()
    line = one_line(r.stderr)
    assert f"cannot serve worker metrics on 127.0.0.1:{port} (TENURE_WORKER_METRICS_PORT)" in line, line


@pytest.fixture
def empty_database(servers: Servers) -> Iterator[str]:
    """A database on the test server that `tenure migrate` never ran on; dropped afterwards."""
    with fresh_database(servers, "tenure_unmigrated") as url:
        yield url


@pytest.mark.parametrize("command", [["worker", "segment"], ["workspace", "create", "acme"]])
def test_a_command_run_before_migrations_says_so_and_exits(settings, empty_database, command) -> None:
    """(`tenure workspace create` printed a 60-line traceback ending in `relation "core.workspaces" does not exist`.)"""
    r = subprocess.run([TENURE, *command], capture_output=True, timeout=60,
                       env=process_env(settings, TENURE_DATABASE_URL=empty_database))
    assert r.returncode == 1, r.stderr.decode()
    assert one_line(r.stderr) == "schema core is not migrated: run `tenure migrate`"


def test_an_api_started_before_migrations_is_not_ready_until_they_ran(settings, empty_database) -> None:
    port = free_port()
    env = process_env(settings, TENURE_DATABASE_URL=empty_database)
    proc = subprocess.Popen([TENURE, "serve", "campaign", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(base, proc)
        before = httpx.get(f"{base}/readyz", timeout=10)
        assert before.status_code == 503
        assert before.json()["checks"]["schema"] == "schema core is not migrated: run `tenure migrate`"
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # liveness: no restart for this

        migrated = subprocess.run([TENURE, "migrate"], env=env, capture_output=True, timeout=120)
        assert migrated.returncode == 0, migrated.stderr.decode()
        after = httpx.get(f"{base}/readyz", timeout=10)
        assert after.status_code == 200, after.text
        assert after.json()["checks"] == {"postgres": "ok", "schema": "ok", "redis": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize(("service", "method", "path", "body"), [
    ("ingest", "POST", "/v1/track", {"userId": "u1", "event": "Signed Up", "messageId": "m-1"}),
    ("campaign", "GET", "/v1/campaigns", None),
])
def test_an_api_on_an_unmigrated_database_answers_503(settings, empty_database, tmp_path, service, method, path,
                                                      body) -> None:
    """Before `tenure migrate` ran, a request is refused as during a PostgreSQL outage (503 with Retry-After: the
    client tries again, the pod is not ready anyway), and the log says what to do, without a traceback."""
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([TENURE, "serve", service, "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=err, env=process_env(settings, TENURE_DATABASE_URL=empty_database))
        base = f"http://127.0.0.1:{port}"
        try:
            wait_serving(base, proc)
            r = httpx.request(method, f"{base}{path}", json=body, auth=("a-key", ""), timeout=10)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.headers["Retry-After"]
    assert "tenure migrate" in r.json()["detail"], r.json()
    logged = log.read_text()
    assert "tenure migrate" in logged and "Traceback" not in logged, logged


def test_a_database_one_release_ahead_is_ready(settings, empty_database) -> None:
    """During a rolling update the next release migrates first (expand): pods of this one stay ready."""
    env = process_env(settings, TENURE_DATABASE_URL=empty_database)
    assert subprocess.run([TENURE, "migrate"], env=env, capture_output=True, timeout=120).returncode == 0

    async def newer() -> None:
        dsn, kw = _asyncpg_dsn(empty_database)
        conn = await asyncpg.connect(dsn, **kw)
        try:
            await conn.execute("update segment.alembic_version set version_num = 'segment_9999'")
        finally:
            await conn.close()

    run_on_own_loop(newer())
    r = subprocess.run([TENURE, "worker", "segment", "--burst"], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()


def test_migrate_leaves_a_schema_one_release_ahead_as_it_is(settings, empty_database) -> None:
    """A rollback (or an init container of the old release during a rollout) runs this release's `tenure migrate`
    on a schema the next release migrated: nothing to do for it, said in one line, and the other schemas migrate."""
    env = process_env(settings, TENURE_DATABASE_URL=empty_database)

    async def sql(*statements: str) -> list[str]:
        dsn, kw = _asyncpg_dsn(empty_database)
        conn = await asyncpg.connect(dsn, **kw)
        try:
            for statement in statements[:-1]:
                await conn.execute(statement)
            return [r[0] for r in await conn.fetch(statements[-1])]
        finally:
            await conn.close()

    run_on_own_loop(sql("create schema ingest",
                        "create table ingest.alembic_version (version_num varchar(32) primary key)",
                        "insert into ingest.alembic_version values ('ingest_9999')", "select 1"))
    r = subprocess.run([TENURE, "migrate"], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    line = one_line(r.stderr.replace(b"migrations applied", b""))
    assert "ingest" in line and "ingest_9999" in line and "Traceback" not in line, line
    assert run_on_own_loop(sql("select version_num from ingest.alembic_version")) == ["ingest_9999"]
    assert run_on_own_loop(sql("select version_num from segment.alembic_version")) != []  # migrated all the same

    again = subprocess.run([TENURE, "migrate"], env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()


@pytest.mark.parametrize("environment", ["prod", "test"])
def test_migrate_without_a_database_outside_dev_is_one_line(settings, tmp_path, environment) -> None:
    """A migration Job whose Secret lacks TENURE_DATABASE_URL must fail, not migrate an embedded throw-away
    database and report success; only `TENURE_ENV=dev` starts embedded servers."""
    env = process_env(settings, TENURE_ENV=environment, TENURE_STATE_DIR=str(tmp_path / "state"),
                      TENURE_SIGNING_SECRET="a-real-signing-secret", TENURE_INTERNAL_TOKEN="a-real-internal-token")
    del env["TENURE_DATABASE_URL"]
    r = subprocess.run([TENURE, "migrate"], env=env, capture_output=True, timeout=120)
    assert r.returncode == 2, r.stderr.decode()
    assert one_line(r.stderr).startswith("TENURE_DATABASE_URL not set.")
    assert not (tmp_path / "state").exists()


def test_an_api_starts_and_serves_while_redis_is_down(settings, workspace) -> None:
    """Redis only carries wake-ups (the workers' poll catches up) and rate-limit counts (failing open): an ingest
    pod started during a Redis outage stays ready and stores what it is sent."""
    port = free_port()
    env = process_env(settings, TENURE_REDIS_URL=f"redis://:{SECRET}@127.0.0.1:{_closed_port()}/0")
    proc = subprocess.Popen([TENURE, "serve", "ingest", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=5)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()[1].decode()
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["postgres"] == "ok" and ready.json()["checks"]["redis"].startswith("error: ")
        tracked = httpx.post(f"{base}/v1/track", auth=(workspace.write_key, ""), timeout=10,
                             json={"userId": "u1", "event": "Signed Up", "messageId": uuid.uuid4().hex})
        assert tracked.status_code == 200 and tracked.json()["accepted"] == 1, tracked.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM)


def test_readiness_answers_in_time_when_redis_accepts_and_never_answers(settings) -> None:
    """A Redis behind a dead route or a full server: connections open, nothing comes back. /readyz still answers
    inside the probe's 3 s timeout (k8s/base/patches/api-defaults.yaml), ready and degraded."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)  # the kernel completes handshakes; nobody ever reads or writes
    port = free_port()
    env = process_env(settings, TENURE_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    proc = subprocess.Popen([TENURE, "serve", "segment", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(base, proc)
        for _ in range(2):
            started = time.monotonic()
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert time.monotonic() - started < 3, "slower than the readiness probe's timeout"
            assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "error: TimeoutError", ready.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        silent.close()


@pytest.mark.parametrize("command", [["migrate"], ["workspace", "create", "ops"]])
def test_commands_that_only_use_postgres_start_no_redis(settings, tmp_path, command) -> None:
    """A migration Job given its own Secret with only TENURE_DATABASE_URL (docs/operations.md, "Migrations") runs
    the migrations and nothing else: no embedded Redis server in the Job's pod."""
    env = process_env(settings, TENURE_STATE_DIR=str(tmp_path / "state"), TENURE_LOG_LEVEL="INFO")
    del env["TENURE_REDIS_URL"]
    r = subprocess.run([TENURE, *command], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert b"embedded" not in r.stderr and not (tmp_path / "state" / "redis").exists(), r.stderr.decode()
