import json
from collections import Counter

import pytest

from qapruner.errors import QAPrunerError
from qapruner.tasks import load_task
from qapruner.tasks.base import LETTERS


def test_easy_vqa_test_split_shape():
    task = load_task("easy-vqa")
    assert len(task.items) == 9673 and task.image_count == 1000
    assert len(task.items[0].choices) == 13 and all(it.answer in it.choices for it in task.items)
    assert task.items[0].prompt.endswith("Answer the question using a single word or phrase.")


def test_fashion_mnist_is_lettered_multiple_choice():
    task = load_task("fashion-mnist")
    assert len(task.items) == 10000 and task.image_count == 10000
    item = task.items[0]
    assert item.choices == tuple(LETTERS[:10]) and item.answer in item.choices
    assert "J. Ankle boot" in item.prompt
    assert item.prompt.endswith("Answer with the option's letter from the given choices directly.")
    img = task.load_image(0)
    assert img.size == (28, 28) and img.mode == "RGB"


def test_stratified_subset_is_exact_deterministic_and_proportional():
    task = load_task("easy-vqa")
    a, b = task.subset(500, seed=3), task.subset(500, seed=3)
    assert [i.uid for i in a.items] == [i.uid for i in b.items] and len(a.items) == 500
    assert [i.uid for i in task.subset(500, seed=4).items] != [i.uid for i in a.items]
    full, sub = Counter(i.answer for i in task.items), Counter(i.answer for i in a.items)
    for answer, count in full.items():
        assert abs(sub[answer] - 500 * count / len(task.items)) <= 1  # largest-remainder apportionment
    assert "500 of 9673" in a.meta["subset"]


def test_subset_rejects_zero():
    with pytest.raises(QAPrunerError, match="positive"):
        load_task("easy-vqa").subset(0)


def test_unknown_task():
    with pytest.raises(QAPrunerError, match="Unknown task"):
        load_task("imagenet")


def test_jsonl_task(tiny_jsonl):
    task = load_task(f"jsonl:{tiny_jsonl}")
    assert len(task.items) == 12 and task.image_count == 12
    assert task.items[0].choices == ("A", "B", "C", "D") and task.items[1].answer == "B"
    assert "B. green" in task.items[0].prompt


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"image": "x.png", "question": "q"}', "lacks"),
    ('{"image": "missing.png", "question": "q", "answer": "a"}', "does not exist"),
    ('{"image": "bad.png", "question": "q", "answer": "a"}', "cannot be read"),
    ('{"image": "ok.png", "question": "q", "answer": "z", "choices": ["a", "b"]}', "not one of its choices"),
])
def test_jsonl_errors(tmp_path, content, match):
    from PIL import Image

    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    f = tmp_path / "t.jsonl"
    f.write_text(content + "\n")
    with pytest.raises(QAPrunerError, match=match):
        load_task(f"jsonl:{f}")


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(QAPrunerError, match="does not exist"):
        load_task(f"jsonl:{tmp_path / 'nope.jsonl'}")


def test_scienceqa_missing_gives_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("QAPRUNER_SCIENCEQA", str(tmp_path))
    with pytest.raises(QAPrunerError, match="ScienceQA is not available locally"):
        load_task("scienceqa-img")
