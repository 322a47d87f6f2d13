"""`tenure import` against a real ingest process: bad rows by line number, idempotent re-runs, resume."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
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


async def test_import_reads_spreadsheet_csv_and_reports_rows_by_their_first_line(ingest_url, workspace, sessionmaker,
                                                                                 tmp_path):
    # what spreadsheet programs write: a byte order mark, CRLF line ends, quoted cells holding line breaks
    f = tmp_path / "export.csv"
    f.write_bytes(b"\xef\xbb\xbfuserId,event,properties.note\r\n"
                  b'u1,Signed Up,"line one\r\nline two"\r\n'  # lines 2-3
                  b"u2,,no event\r\n"  # line 4
                  b'u3,"Order\r\nCompleted",x\r\n'  # lines 5-6
                  b"u4,Bought,caf\xe9\r\n"  # line 7: Latin-1, not UTF-8
                  b'u5,"Multi\r\nline",\r\n'  # lines 8-9
                  b"u6,Bought,\xff\r\n")  # line 10
    r = _import(ingest_url, workspace.write_key, str(f))
    assert r.returncode == 3, r.stderr
    assert "3 stored" in r.stderr and "3 rejected" in r.stderr, r.stderr
    assert "line 4: track.event" in r.stderr
    assert "line 7: not UTF-8 text" in r.stderr and "line 10: not UTF-8 text" in r.stderr
    async with sessionmaker() as s:
        rows = (await s.execute(text("select user_id, event, properties from ingest.events where workspace_id = :ws "
                                     "order by user_id"), {"ws": workspace.workspace_id})).all()
    assert [(u, e) for u, e, _ in rows] == [("u1", "Signed Up"), ("u3", "Order\r\nCompleted"), ("u5", "Multi\r\nline")]
    assert rows[0][2] == {"note": "line one\r\nline two"}


async def test_import_ndjson_with_a_byte_order_mark_and_a_line_that_is_not_utf8(ingest_url, workspace, sessionmaker,
                                                                              tmp_path):
    f = tmp_path / "events.ndjson"
    f.write_bytes(b'\xef\xbb\xbf{"userId": "a", "event": "E"}\r\n\r\n{"userId": "b", "event": "\xe9t\xe9"}\n'
                  b'{"userId": "c", "event": "E"}\n')
    r = _import(ingest_url, workspace.write_key, str(f))
    assert r.returncode == 3, r.stderr
    assert "2 stored" in r.stderr and "line 3: not UTF-8 text" in r.stderr, r.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 2


async def test_import_cuts_batches_under_the_500_kb_limit(ingest_url, workspace, sessionmaker, tmp_path):
    # 600 rows of ~2 KB: 500-row batches would be ~1 MB, which ingest refuses whole (413) and the import used to
    # stop there on every run; a row over 32 KB is reported by its line and the rest go on
    f = tmp_path / "wide.ndjson"
    lines = [orjson.dumps({"userId": f"w{i % 7}", "event": "Wide", "properties": {"i": i, "blob": "x" * 2000}})
             for i in range(600)]
    lines.insert(100, orjson.dumps({"userId": "w", "event": "Huge", "properties": {"blob": "y" * 40_000}}))
    f.write_bytes(b"\n".join(lines) + b"\n")
    r = subprocess.run([TENURE, "import", str(f), "--url", ingest_url, "--write-key", workspace.write_key],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 3, r.stderr
    assert "600 stored" in r.stderr and "line 101: message is over 32 KB" in r.stderr, r.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 600


def _interrupted_import(url: str, key: str, f: Path, checkpoint: Path) -> tuple[int, str]:
    """``tenure import`` sent SIGINT (what Ctrl-C sends) once ingest has acknowledged a few batches: its exit
    status and what it said."""
    proc = subprocess.Popen([TENURE, "import", str(f), "--profiles", "--url", url, "--write-key", key,
                             "--batch-size", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists():  # a batch acknowledged: well inside the import
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the import acknowledged nothing"
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


async def test_ctrl_c_stops_the_import_saying_how_far_it_got_and_how_to_resume(ingest_url, workspace, sessionmaker,
                                                                               tmp_path):
    """Ctrl-C (SIGINT) during an import: no traceback, the line reached and the line ingest has acknowledged
    through (the checkpoint's), what this run stored and rejected up to there, how to resume; exit status 130. The
    resumed run goes on from that line and stores every row once."""
    f = tmp_path / "many.ndjson"
    rows = 3000
    lines = [f'{{"userId": "c{i}", "traits": {{"n": {i}}}}}' for i in range(1, rows + 1)]
    lines[1] = "not json"  # line 2: reported by the interrupted run (the resumed one starts after it)
    f.write_text("\n".join(lines) + "\n")
    checkpoint = tmp_path / "many.ndjson.tenure-import.json"
    status, err = _interrupted_import(ingest_url, workspace.write_key, f, checkpoint)
    assert status == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = re.search(r"import interrupted at line (\d+) of \S*many\.ndjson", err)
    through = re.search(r"acknowledged every row through line (\d+)", err)
    assert said and through, f"Ctrl-C should say how far the import got: {err!r}"
    reached, done = int(said.group(1)), int(through.group(1))
    assert 3 <= done <= reached < rows, err
    assert orjson.loads(checkpoint.read_bytes())["line"] == done  # what the resume starts after
    # what this run did through that line: every row but the bad one stored, the bad one reported
    assert f"\n{done - 1} stored, 0 already there, 1 rejected, {done - 1} sent\n" in err, err
    assert "line 2: invalid JSON" in err, err
    assert f"to resume after line {done}, run the same command" in err, err
    assert await _count(sessionmaker, workspace.workspace_id, "identify") >= done - 1

    resumed = subprocess.run([TENURE, "import", str(f), "--profiles", "--url", ingest_url, "--write-key",
                              workspace.write_key], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after line {done}" in resumed.stderr, resumed.stderr
    # the batch in flight at Ctrl-C may have been stored: sent again, it is "already there"
    counts = re.search(r"\n(\d+) stored, (\d+) already there, 0 rejected, (\d+) sent\n", resumed.stderr)
    assert counts, resumed.stderr
    stored, there, sent = map(int, counts.groups())
    assert sent == stored + there == rows - done and there <= 3, resumed.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "identify") == rows - 1
    assert not checkpoint.exists()


async def test_rows_without_times_in_two_files_are_two_events_and_nan_is_reported_not_nulled(
        ingest_url, workspace, sessionmaker, tmp_path):
    """The same row with no timestamp in day1.csv and day2.csv is two imports of two events (each dated by its
    import), while re-running one file still stores nothing twice; a NaN, which the tracking API refuses, is
    reported with its line instead of being sent as null."""
    day1, day2 = tmp_path / "day1" / "events.csv", tmp_path / "day2" / "events.csv"  # (the same name)
    for f in (day1, day2):
        f.parent.mkdir()
        f.write_text("userId,event\nday-u,Logged In\n")
    assert "1 stored" in _import(ingest_url, workspace.write_key, str(day1)).stderr
    assert "1 stored" in _import(ingest_url, workspace.write_key, str(day2)).stderr
    assert "0 stored" in _import(ingest_url, workspace.write_key, str(day2)).stderr
    async with sessionmaker() as s:
        logins = (await s.execute(text("select count(*) from ingest.events where workspace_id = :ws "
                                       "and user_id = 'day-u'"), {"ws": workspace.workspace_id})).scalar_one()
    assert logins == 2

    nan = tmp_path / "nan.ndjson"
    nan.write_text('{"userId": "n", "event": "A", "properties": {"x": NaN}}\n'
                   '{"userId": "n", "event": "B", "properties": {"x": 1}}\n')
    out = _import(ingest_url, workspace.write_key, str(nan))
    assert out.returncode == 3 and "line 1:" in out.stderr and "NaN" in out.stderr, out.stderr
    async with sessionmaker() as s:
        stored = (await s.execute(text("select event, properties from ingest.events where workspace_id = :ws "
                                       "and user_id = 'n'"), {"ws": workspace.workspace_id})).all()
    assert [(e, p) for e, p in stored] == [("B", {"x": 1})]
