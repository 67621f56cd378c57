"""The resumable items file: one writer at a time, duplicates counted once, interrupted writes repaired."""

import json
import os

import pytest

from qapruner.errors import QAPrunerError
from qapruner.eval.store import ItemStore, read_items

CFG = {"task": "t", "mode": "choice"}
HEADER = json.dumps({"config": CFG}) + "\n"


def row(uid, pred="a"):
    return json.dumps({"uid": uid, "pred": pred, "answer": "a", "correct": pred == "a"}) + "\n"


def test_second_writer_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "items.jsonl"
    with ItemStore(path, CFG) as first:
        with pytest.raises(QAPrunerError, match="Another qapruner run is writing .*items.jsonl'; wait for it"):
            ItemStore(path, CFG)
        first.add([{"uid": "1", "pred": "a", "answer": "a", "correct": True}])
    with ItemStore(path, CFG) as again:  # released by the with block
        assert set(again.done) == {"1"}
    store = ItemStore(path, CFG)
    store.close()
    ItemStore(path, CFG).close()  # released by close()


def test_refused_configuration_releases_the_lock(tmp_path):
    path = tmp_path / "items.jsonl"
    ItemStore(path, CFG).close()
    with pytest.raises(QAPrunerError, match="different configuration"):
        ItemStore(path, {"task": "other"})
    ItemStore(path, CFG).close()


def test_duplicate_rows_count_once(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(HEADER + row("1") + row("2") + row("1", pred="b"))
    assert [r["uid"] for r in read_items(path)] == ["1", "2"] and read_items(path)[0]["pred"] == "a"
    with ItemStore(path, CFG) as store:
        assert len(store.done) == 2 and store.done["1"]["pred"] == "a"  # the first row written counts


@pytest.mark.parametrize("torn", ['{"conf', '{"config": {"task": "t", "mo\n', "\n"])
def test_torn_header_without_rows_is_rewritten(tmp_path, torn):
    path = tmp_path / "items.jsonl"
    path.write_text(torn)
    with ItemStore(path, CFG) as store:
        assert store.done == {}
        store.add([{"uid": "1", "pred": "a", "answer": "a", "correct": True}])
    assert path.read_text() == HEADER + row("1")


def test_torn_header_with_rows_asks_to_delete_the_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"conf\n' + row("1"))
    with pytest.raises(QAPrunerError, match=r"items.jsonl' .*unreadable; delete the file"):
        ItemStore(path, CFG)
    ItemStore(path.with_name("other.jsonl"), CFG).close()


def test_torn_last_row_is_dropped_and_truncated_before_appending(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(HEADER + row("1") + row("2")[:15])
    assert [r["uid"] for r in read_items(path)] == ["1"]
    with ItemStore(path, CFG) as store:
        assert set(store.done) == {"1"}
        assert path.read_text() == HEADER + row("1")
        store.add([{"uid": "2", "pred": "a", "answer": "a", "correct": True}])
    assert path.read_text() == HEADER + row("1") + row("2")


def test_unreadable_row_in_the_middle_is_refused(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(HEADER + row("1") + "garbage\n" + row("2"))
    with pytest.raises(QAPrunerError, match="Line 3 of .*items.jsonl' is not a readable result row"):
        ItemStore(path, CFG)


def test_path_under_a_regular_file_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(QAPrunerError, match=r"Cannot write '.*file/sub/items.jsonl': not a directory\.$"):
        ItemStore(tmp_path / "file" / "sub" / "items.jsonl", CFG)


def test_path_that_is_a_directory_is_one_sentence(tmp_path):
    (tmp_path / "items.jsonl").mkdir()
    with pytest.raises(QAPrunerError, match=r"Cannot write '.*items.jsonl': is a directory\.$"):
        ItemStore(tmp_path / "items.jsonl", CFG)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory_is_one_sentence(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(QAPrunerError, match=r"Cannot write '.*items.jsonl': permission denied\.$"):
            ItemStore(locked / "items.jsonl", CFG)
    finally:
        locked.chmod(0o700)
