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


async def test_an_imported_row_dated_in_the_future_is_reported_not_made_live(ingest_url, workspace, sessionmaker,
                                                                            tmp_path):
    """A mistyped year (2099 for 2019) was dated "now" by ingest, without a word: history became a live event that
    started journeys. Such a row is reported by its line; a clock a few hours ahead is not a typo."""
    from datetime import UTC, datetime, timedelta

    soon = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    f = tmp_path / "signups.csv"
    f.write_text(f"userId,event,timestamp\nfut1,Signed Up,2099-05-01T10:00:00Z\nhist1,Signed Up,2020-05-01T10:00:00Z\n"
                 f"soon1,Signed Up,{soon}\nfut2,Signed Up,4102444800\n")
    r = _import(ingest_url, workspace.write_key, str(f))
    assert r.returncode == 3, r.stderr
    assert "line 2: timestamp 2099-05-01T10:00:00Z is in the future" in r.stderr, r.stderr
    assert "line 5: timestamp 4102444800 is in the future" in r.stderr, r.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 2


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


async def test_a_csv_quote_never_closed_is_reported_where_it_opens_and_nothing_after_it_is_imported(
        ingest_url, workspace, sessionmaker, tmp_path):
    """The cell used to hold the rest of the file (one event storing ten rows as a property, reported as fine):
    where it was meant to end cannot be known, so the row is reported by its first line, the lines it took are
    named, and none of them is imported. With the quote closed, importing again stores just those rows."""
    f = tmp_path / "orders.csv"
    good = [f"u{i},Order Completed,2026-01-0{1 + i % 9}T10:00:00Z" for i in range(10)]
    after = [f"v{i},Order Completed,2026-01-0{1 + i % 9}T10:00:00Z" for i in range(10)]
    f.write_text("\n".join(["userId,event,timestamp", *good, 'uqbad,"Order Completed,2026-01-01T10:00:00Z', *after]) + "\n")
    r = _import(ingest_url, workspace.write_key, str(f))
    assert r.returncode == 3, r.stderr
    assert "10 stored, 0 already there, 1 rejected" in r.stderr, r.stderr
    assert "line 12: a quoted cell is never closed: lines 12-22, the rest of the file, cannot be read" in r.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 10
    f.write_text("\n".join(["userId,event,timestamp", *good, 'uqbad,"Order Completed",2026-01-01T10:00:00Z', *after]) + "\n")
    again = _import(ingest_url, workspace.write_key, str(f))
    assert again.returncode == 0 and "11 stored, 10 already there, 0 rejected" in again.stderr, again.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 21


async def test_deleting_a_reported_row_and_importing_again_stores_no_row_twice(ingest_url, workspace, sessionmaker,
                                                                              tmp_path):
    """Ids derived from the line changed for every row after a deleted one, so fixing a file as the report says
    and running it again stored those rows a second time. Identical rows stay two events; so do rows without a
    timestamp, whose ids hold the file's path too."""
    f = tmp_path / "orders.csv"
    rows = [f"u{i},Order Completed,2026-01-01T10:{i:02}:00Z,{i}" for i in range(40)]
    rows[8] = ",Order Completed,2026-01-01T00:00:00Z,1"  # line 10: no user
    rows[20:20] = ["twin,Order Completed,2026-01-02T00:00:00Z,5"] * 2 + ["late,Logged In,,"] * 2
    f.write_text("userId,event,timestamp,properties.n:number\n" + "\n".join(rows) + "\n")
    first = _import(ingest_url, workspace.write_key, str(f))
    assert first.returncode == 3 and "43 stored" in first.stderr and "line 10: " in first.stderr, first.stderr
    lines = f.read_text().splitlines(keepends=True)
    del lines[9]  # sed -i 10d
    f.write_text("".join(lines))
    again = _import(ingest_url, workspace.write_key, str(f))
    assert again.returncode == 0 and "0 stored, 43 already there, 0 rejected" in again.stderr, again.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 43


async def test_a_null_or_empty_message_id_is_derived_so_a_rerun_stores_nothing_twice(ingest_url, workspace,
                                                                                    sessionmaker, tmp_path):
    f = tmp_path / "events.ndjson"
    f.write_text('{"userId": "a", "event": "E", "messageId": null}\n{"userId": "a", "event": "E", "messageId": ""}\n'
                 '{"userId": "a", "event": "E"}\n')
    assert "3 stored" in _import(ingest_url, workspace.write_key, str(f)).stderr
    again = _import(ingest_url, workspace.write_key, str(f))
    assert again.returncode == 0 and "0 stored, 3 already there" in again.stderr, again.stderr
    assert await _count(sessionmaker, workspace.workspace_id, "track") == 3


def _rejects_file(path: Path) -> list[int]:
    import csv

    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["line", "reason"] and all(len(r) == 2 and r[1] for r in rows[1:]), rows[:3]
    return [int(r[0]) for r in rows[1:]]


def test_rejects_file_keeps_every_rejected_row_across_a_kill_and_the_resumed_run(ingest_url, workspace, tmp_path):
    """The report on the terminal shows 50 bad rows and is lost with a killed run (the resumed run reports only
    the rows after the checkpoint): ``--rejects FILE`` lists every one, written with each checkpoint, so a
    SIGKILLed run leaves the rows through the checkpoint's line and the resumed run appends the rest."""
    f = tmp_path / "many.ndjson"
    lines = [f'{{"userId": "r{i}", "traits": {{"n": {i}}}}}' for i in range(1, 3001)]
    bad = list(range(10, 3001, 10))
    for line in bad:
        lines[line - 1] = "not json"
    f.write_text("\n".join(lines) + "\n")
    checkpoint, rejects = tmp_path / "many.ndjson.tenure-import.json", tmp_path / "bad rows.csv"
    args = [TENURE, "import", str(f), "--profiles", "--url", ingest_url, "--write-key", workspace.write_key]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([*args, "--batch-size", "3", "--rejects", str(rejects)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists() or orjson.loads(checkpoint.read_bytes())["line"] < 100:
            assert proc.poll() is None, "the import ended before it was killed"
            assert time.monotonic() < deadline, "the import acknowledged nothing"
            time.sleep(0.02)
        proc.kill()
    finally:
        proc.wait()
    done = orjson.loads(checkpoint.read_bytes())["line"]
    assert 100 <= done < 3000
    kept = _rejects_file(rejects)
    assert set(kept) >= {line for line in bad if line <= done} and set(kept) <= set(bad), (done, kept)

    resumed = subprocess.run([*args, "--rejects", str(rejects)], capture_output=True, text=True, timeout=120, env=env)
    assert resumed.returncode == 3, resumed.stderr
    assert f"resumed after line {done} (this run's rejected rows are appended to {rejects})" in resumed.stderr
    assert re.search(rf"… and \d+ more: all are in {re.escape(str(rejects))}\n", resumed.stderr), resumed.stderr
    listed = _rejects_file(rejects)
    # (a kill between a batch's rows written and its checkpoint saved lists them twice: at most one here)
    assert set(listed) == set(bad) and len(listed) - len(bad) <= 1, listed
    assert not checkpoint.exists()

    # without --rejects the report says how to see the rows it leaves out; a run that does not resume starts the
    # file over
    whole = subprocess.run([*args, "--no-resume"], capture_output=True, text=True, timeout=120, env=env)
    assert whole.returncode == 3 and "300 rejected" in whole.stderr, whole.stderr
    assert "  … and 250 more: list them all with --rejects FILE\n" in whole.stderr, whole.stderr
    again = subprocess.run([*args, "--no-resume", "--rejects", str(rejects)], capture_output=True, text=True,
                           timeout=120, env=env)
    assert again.returncode == 3, again.stderr
    assert _rejects_file(rejects) == bad
