"""JSONL scoring modes (lettered vs. answer words) and the generate-mode answer parser."""

import json

import pytest
from PIL import Image

from qapruner.errors import QAPrunerError
from qapruner.eval.scoring import normalize_answer, parse_generated
from qapruner.tasks import load_task
from qapruner.tasks.base import MC_ANSWER, SHORT_ANSWER

YES_NO = ("yes", "no")


@pytest.mark.parametrize("text,choices,pred", [
    ("no no no no no", (), "no"),
    ("no no no no no", YES_NO, "no"),
    ("no there is no rectangle in the image", (), "no"),
    ("no there is no rectangle in the image", YES_NO, "no"),
    ("No.", (), "no"),
    ("No.", YES_NO, "no"),
    ("The answer is yes", YES_NO, "yes"),
    ("B.", ("A", "B", "C"), "B"),
    ("The answer is A", ("A", "B", "C"), "A"),
    ("the shape is dark red", ("red", "dark red", "blue"), "dark red"),
    ("\nThe Fire-Hydrant. It is red", (), "fire hydrant"),
    ("2.5 meters.", (), "2.5 meters"),
])
def test_parse_generated(text, choices, pred):
    assert parse_generated(text, choices) == pred


@pytest.mark.parametrize("text", ["it is either yes or no", "I would not say yes, rather no"])
def test_two_choices_not_at_the_start_are_not_a_choice(text):
    pred = parse_generated(text, YES_NO)
    assert pred not in YES_NO and normalize_answer(pred) != normalize_answer("no")


def test_normalize_answer():
    assert normalize_answer("  The  Fire-Hydrant! ") == "fire hydrant"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("Don't") == "dont" and normalize_answer("the") == "the"


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "ok.png")
    return tmp_path


def write(folder, *lines):
    f = folder / "t.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return f"jsonl:{f}"


Q = {"image": "ok.png", "question": "What color is the shape?", "choices": ["red", "green"], "answer": "red"}


def test_words_scoring_asks_a_short_answer_with_the_words_as_candidates(folder):
    task = load_task(write(folder, dict(Q, scoring="words"), Q, dict(Q, answer="green", scoring="letters")))
    words, letters, letters2 = task.items
    assert words.prompt == f"What color is the shape?\n{SHORT_ANSWER}"
    assert words.choices == ("red", "green") and words.answer == "red"
    assert letters.choices == ("A", "B") and letters.answer == "A" and letters.prompt.endswith(MC_ANSWER)
    assert "B. green" in letters.prompt and letters2.answer == "B"


def test_a_scoring_line_sets_the_default_for_the_lines_after_it(folder):
    task = load_task(write(folder, Q, {"scoring": "words"}, Q, dict(Q, scoring="letters")))
    assert [it.choices for it in task.items] == [("A", "B"), ("red", "green"), ("A", "B")]
    assert [it.uid for it in task.items] == ["jsonl/1", "jsonl/3", "jsonl/4"]


@pytest.mark.parametrize("line,match", [
    (dict(Q, choices=["red", " Red "]), r"t.jsonl:1: the choice 'Red' appears twice"),
    (dict(Q, choices=["red", "green", "RED"], scoring="words"), r"t.jsonl:1: the choice 'RED' appears twice"),
    (dict(Q, answer="blue", scoring="words"), r"t.jsonl:1: the answer 'blue' is not one of its choices"),
    (dict(Q, scoring="numbers"), r"t.jsonl:1: 'scoring' must be 'letters' or 'words'"),
])
def test_bad_choices_name_file_and_line(folder, line, match):
    with pytest.raises(QAPrunerError, match=match):
        load_task(write(folder, line))
