from pathlib import Path

from services.importer import csv_message, read_rows


def test_csv_columns_map_to_a_segment_message() -> None:
    msg = csv_message({"userId": "u1", "event": "Order Completed", "properties.revenue:number": "19.5",
                       "traits.vip:bool": "yes", "coupon": "X", "empty": ""}, profiles=False)
    assert msg == {"type": "track", "userId": "u1", "event": "Order Completed",
                   "properties": {"revenue": 19.5, "coupon": "X"}, "traits": {"vip": True}}


def test_profile_rows_put_other_columns_in_traits() -> None:
    msg = csv_message({"userId": "u1", "email": "a@b.c", "age:number": "41"}, profiles=True)
    assert msg == {"type": "identify", "userId": "u1", "traits": {"email": "a@b.c", "age": 41}}


def test_rows_carry_line_numbers_and_stable_ids(tmp_path: Path) -> None:
    f = tmp_path / "e.ndjson"
    f.write_text('{"userId": "a", "event": "E"}\n\nnot json\n[1]\n{"userId": "b", "event": "E", "messageId": "m"}\n')
    rows = [r for r, _ in read_rows(f, fmt="ndjson", profiles=False)]
    assert [(r.line, r.error is None) for r in rows] == [(1, True), (3, False), (4, False), (5, True)]
    assert rows[3].message["messageId"] == "m"
    again = [r for r, _ in read_rows(f, fmt="ndjson", profiles=False)]
    assert again[0].message["messageId"] == rows[0].message["messageId"]


def test_csv_bad_cells_are_reported_by_line(tmp_path: Path) -> None:
    f = tmp_path / "e.csv"
    f.write_text("userId,event,properties.n:number\nu1,E,1\nu2,E,not-a-number\nu3,E,3,extra\nu4,E,1_000\n")
    rows = [r for r, _ in read_rows(f, fmt="csv", profiles=False)]
    assert [(r.line, r.error is None) for r in rows] == [(2, True), (3, False), (4, False), (5, False)]
    assert "'1_000' is not a number" in str(rows[3].error)  # (Python's int() takes it; a typo, not a number)


def test_ctrl_c_while_a_batch_is_recorded_takes_effect_once_it_is(tmp_path: Path) -> None:
    """A batch's counts and its checkpoint are recorded together: Ctrl-C (SIGINT) in between waits for both."""
    import os
    import signal

    import pytest

    from services.importer import Checkpoint, _interrupt_after

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    f = tmp_path / "e.ndjson"
    f.write_text("{}\n")
    checkpoint, recorded = Checkpoint(f), []
    with pytest.raises(KeyboardInterrupt), _interrupt_after():
        recorded.append("counts")
        os.kill(os.getpid(), signal.SIGINT)
        checkpoint.save(7)
        recorded.append("checkpoint")
    assert recorded == ["counts", "checkpoint"] and checkpoint.load() == 7
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.ndjson", "e.ndjson.tenure-import.json"]  # no .part


def test_a_csv_quote_never_closed_is_one_bad_row_holding_the_rest_of_the_file(tmp_path: Path) -> None:
    """It used to be a cell holding every line after it (stored as one event); where the cell was meant to end
    cannot be known, so the row is reported by the line it starts on, naming the lines none of which is sent."""
    f = tmp_path / "e.csv"
    good = [f"u{i},E,2026-01-01T00:00:00Z" for i in range(10)]
    f.write_text("\n".join(["userId,event,timestamp", *good, 'uqbad,Q,"unterminated', *good]) + "\n")
    rows = [r for r, _ in read_rows(f, fmt="csv", profiles=False)]
    assert [r.line for r in rows] == [*range(2, 13)] and all(r.error is None for r in rows[:10])
    assert rows[10].message is None and rows[10].error is not None
    assert rows[10].error.startswith("a quoted cell is never closed: lines 12-22, the rest of the file")
    # a quote left open and closed by the next quoted cell: those lines are one bad row, the rest are read
    f.write_text('userId,event,properties.note\nu1,E,"open\nu2,E,x\nu3,E,"closed"\nu4,E,y\n')
    rows = [r for r, _ in read_rows(f, fmt="csv", profiles=False)]
    assert [(r.line, r.error) for r in rows] == [
        (2, "unreadable row: ',' expected after '\"' (lines 2-4 were not imported: is a quote not closed where it "
            "should be?)"),
        (5, None)]


def _ids(f: Path, fmt: str = "csv") -> list[str]:
    return [r.message["messageId"] for r, _ in read_rows(f, fmt=fmt, profiles=False)]


def test_derived_ids_do_not_change_when_other_rows_are_deleted(tmp_path: Path) -> None:
    """A row's id comes from its content and its ordinal among identical rows, not its line: deleting a bad row
    (or any other) and importing again stores no row twice, while identical rows stay distinct."""
    f = tmp_path / "e.csv"
    rows = [f"u{i},E,2026-01-01T00:00:00Z" for i in range(5)] + ["u9,E,2026-01-01T00:00:00Z"] * 2 + ["u1,Seen,"] * 2
    f.write_text("userId,event,timestamp\n" + "\n".join(rows) + "\n")
    before = _ids(f)
    assert len(set(before)) == len(before)
    del rows[1], rows[5]  # the second row, and the first of the two identical u9 rows
    f.write_text("userId,event,timestamp\n" + "\n".join(rows) + "\n")
    assert _ids(f) == [before[0], *before[2:6], *before[7:]]
    # without a timestamp the file's path is part of the id: the same row in another file is another event
    other = tmp_path / "other.csv"
    other.write_text(f.read_text())
    assert _ids(other)[:-2] == _ids(f)[:-2] and not set(_ids(other)[-2:]) & set(_ids(f)[-2:])


def test_a_null_or_empty_message_id_is_derived_like_a_missing_one(tmp_path: Path) -> None:
    f = tmp_path / "e.ndjson"
    f.write_text('{"userId": "a", "event": "E", "messageId": null}\n{"userId": "a", "event": "E", "messageId": ""}\n'
                 '{"userId": "a", "event": "E", "messageId": "m"}\n')
    ids = _ids(f, "ndjson")
    assert ids[0].startswith("import-") and ids[1].startswith("import-") and ids[2] == "m"
    assert _ids(f, "ndjson") == ids and ids[0] != ids[1]


def test_legacy_ids_are_the_ids_releases_before_gave(tmp_path: Path) -> None:
    """Ids from releases before 2026-11-29 (line and content), read off that release for these files: with
    ``legacy_ids`` a file it imported is imported again without storing a row twice; the new ids differ."""
    c = tmp_path / "e.csv"
    c.write_text('userId,event,timestamp,properties.plan\nu1,E,2026-01-01T00:00:00Z,"pro\nplus"\n'
                 'u2,E,2026-01-02T00:00:00Z\n')
    n = tmp_path / "e.ndjson"
    n.write_text('{"userId": "a", "event": "E", "timestamp": "2026-01-01T00:00:00Z"}\n\n'
                 '{"userId": "b", "event": "E", "timestamp": "2026-01-01T00:00:00Z"}\n')
    legacy = {c: ["import-6b56f1ec326ee58eb66af779c8fb137f", "import-1533fcf101696d58bd77acaf08303617"],
              n: ["import-abc4837a08b24eb0b0a879e9e8ef7a61", "import-2ec6023a7f70e8ac1b989947c139befb"]}
    for f, fmt in ((c, "csv"), (n, "ndjson")):
        got = [r.message["messageId"] for r, _ in read_rows(f, fmt=fmt, profiles=False, legacy_ids=True)]
        assert got == legacy[f]
        assert not set(_ids(f, fmt)) & set(legacy[f])


def test_a_checkpoint_of_a_release_before_resumes_with_its_ids(tmp_path: Path) -> None:
    """A half-done import of a release before 2026-11-29 left a checkpoint without "ids": resuming it derives the
    ids its rows were sent with, so the rows sent but not yet acknowledged are not stored twice."""
    from services.importer import Checkpoint

    f = tmp_path / "e.csv"
    f.write_text("userId,event\nu1,E\n")
    st = f.stat()
    (tmp_path / "e.csv.tenure-import.json").write_text(
        f'{{"line": 1, "size": {st.st_size}, "mtime": {st.st_mtime}}}')
    checkpoint = Checkpoint(f)
    assert checkpoint.load() == 1 and checkpoint.legacy_ids
    checkpoint.save(2)  # the resumed run checkpoints: the run after it resumes with the same ids
    resumed = Checkpoint(f)
    assert resumed.load() == 2 and resumed.legacy_ids
    fresh = tmp_path / "new.csv"  # a run of this release: its ids
    fresh.write_text("userId,event\nu1,E\n")
    Checkpoint(fresh).save(1)
    again = Checkpoint(fresh)
    assert again.load() == 1 and not again.legacy_ids
