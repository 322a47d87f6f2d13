"""`tenure import` against a real ingest process: bad rows by line number, idempotent re-runs, resume."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from shared.embedded import free_port

TENURE = str(Path(sys.executable).parent / "tenure")


@pytest.fixture
def ingest_url(settings):
    port = free_port()
    env = {**os.environ, "TENURE_DATABASE_URL": settings.database_url, "TENURE_REDIS_URL": settings.redis_url,
           "TENURE_INGEST_PORT": str(port), "TENURE_LOG_LEVEL": "WARNING",
           "TENURE_QUEUE_PREFIX": settings.queue_prefix + "-import"}
    proc = subprocess.Popen([TENURE, "serve", "ingest"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "ingest did not start"
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _import(url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TENURE, "import", *args, "--url", url, "--write-key", key, "--batch-size", "3"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


async def _count(sessionmaker, ws, type_: str) -> int:
    async with sessionmaker() as s:
        return (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws and type = :t"),
                                {"ws": ws, "t": type_})).scalar_one()


async def test_import_events_reports_bad_lines_and_is_idempotent(ingest_url, workspace, sessionmaker, tmp_path):
    f = tmp_path / "orders.csv"
    rows = ["userId,event,timestamp,properties.revenue:number"]
    rows += [f"u{i},Order Completed,2026-0{1 + i % 9}-01T10:00:00Z,{i}.5" for i in range(8)]
    rows.insert(4, ",Order Completed,2026-01-01T00:00:00Z,1")  # line 5: no user
    rows.insert(7, "u9,Order Completed,2026-01-01T00:00:00Z,lots")  # line 8: not a number
    f.write_text("\n".join(rows) + "\n")
    first = _import(ingest_url, workspace.write_key, str(f))
    assert first.returncode == 3, first.stderr
    assert "line 5:" in first.stderr and "line 8:" in first.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 8
    again = _import(ingest_url, workspace.write_key, str(f))
    assert "0 stored" in again.stderr and "8 already there" in again.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 8


async def test_import_resumes_after_the_checkpoint(ingest_url, workspace, sessionmaker, tmp_path):
    f = tmp_path / "people.ndjson"
    f.write_text("".join(f'{{"userId": "p{i}", "traits": {{"email": "p{i}@example.com"}}}}\n' for i in range(10)))
    stat = f.stat()
    # an earlier run was cut off after line 6 was acknowledged
    (tmp_path / "people.ndjson.tenure-import.json").write_text(
        f'{{"line": 6, "size": {stat.st_size}, "mtime": {stat.st_mtime}}}')
    r = _import(ingest_url, workspace.write_key, "--profiles", str(f))
    assert r.returncode == 0, r.stderr
    assert "resumed after line 6" in r.stderr and "4 stored" in r.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "identify") == 4
    assert not (tmp_path / "people.ndjson.tenure-import.json").exists()
    bad_key = _import(ingest_url, "wk_wrong", str(f))
    assert bad_key.returncode == 1 and "import stopped" in bad_key.stderr
