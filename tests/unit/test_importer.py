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
    f.write_text("userId,event,properties.n:number\nu1,E,1\nu2,E,not-a-number\nu3,E,3,extra\n")
    rows = [r for r, _ in read_rows(f, fmt="csv", profiles=False)]
    assert [(r.line, r.error is None) for r in rows] == [(2, True), (3, False), (4, False)]


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
