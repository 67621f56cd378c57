"""The ``shapes`` task: deterministic scenes, answers that follow from the scene, balanced yes/no, and a
wording that carries no information about the answer."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from qapruner.tasks import load_task
from qapruner.tasks.scenes import COLORS, SIZE, render
from qapruner.tasks.shapes import COUNTS, LEFT_GAP, scenes


@pytest.fixture(scope="module")
def test_split():
    return load_task("shapes", "test")


def test_every_answer_follows_from_its_scene(test_split):
    all_scenes = scenes("test")
    for it in test_split.items:
        objs = all_scenes[it.image].objects
        q = it.question
        assert it.answer in it.choices
        if it.kind == "shape":
            color = re.match(r"What shape is the (\w+) object\?", q).group(1)
            assert [o.shape for o in objs if o.color == color] == [it.answer]
        elif it.kind == "color":
            shape = re.match(r"What color is the (\w+)\?", q).group(1)
            assert [o.color for o in objs if o.shape == shape] == [it.answer]  # asked only of a unique shape
        elif it.kind == "exists":
            color, shape = re.match(r"Is there a (\w+) (\w+)\?", q).groups()
            present = any(o.color == color and o.shape == shape for o in objs)
            assert it.answer == ("yes" if present else "no")
        elif it.kind == "count":
            assert it.answer == COUNTS[len(objs) - 1]
        else:
            assert it.kind == "left"
            a, b = re.match(r"Is the (\w+) shape left of the (\w+) shape\?", q).groups()
            (oa,), (ob,) = [o for o in objs if o.color == a], [o for o in objs if o.color == b]
            assert abs(oa.cx - ob.cx) >= LEFT_GAP and it.answer == ("yes" if oa.cx < ob.cx else "no")


def test_yes_no_templates_are_exactly_balanced_and_counts_uniform(test_split):
    c = Counter((it.kind, it.answer) for it in test_split.items)
    assert c[("exists", "yes")] == c[("exists", "no")] == 500
    assert c[("left", "yes")] == c[("left", "no")] > 250
    assert c[("count", "one")] == 334 and c[("count", "two")] == c[("count", "three")] == 333
    assert {it.kind for it in test_split.items} == {"shape", "color", "exists", "count", "left"}


def test_the_wording_alone_predicts_nothing(test_split):
    """A text-only model at its best (the majority answer of each exact question in the train split) stays at
    chance on the test split: the questions carry no prior an LLM could exploit."""
    majority = defaultdict(Counter)
    for it in load_task("shapes", "train").items:
        majority[it.question][it.answer] += 1
    right = defaultdict(list)
    for it in test_split.items:
        guess = majority[it.question].most_common(1)[0][0] if it.question in majority else None
        right[it.kind].append(guess == it.answer)
    chance = {"shape": 1 / 3, "color": 1 / 8, "exists": 1 / 2, "count": 1 / 3, "left": 1 / 2}
    for kind, r in right.items():
        assert abs(np.mean(r) - chance[kind]) < 0.06, kind


def test_scenes_are_deterministic_rendered_and_disjoint_between_splits(test_split):
    again = load_task("shapes", "test")
    assert again.items == test_split.items
    a, b = np.asarray(test_split.load_image(5)), np.asarray(again.load_image(5))
    assert a.shape == (SIZE, SIZE, 3) and np.array_equal(a, b)
    for scene in scenes("test")[:30]:
        img = np.asarray(render(scene))
        for o in scene.objects:  # the centre pixel of every object shows its colour
            assert tuple(img[o.cy + o.r // 3, o.cx]) == COLORS[o.color]
    test_scenes, train_scenes = set(scenes("test")), set(scenes("train"))
    assert not test_scenes & train_scenes
    assert load_task("shapes", "train").image_count == 4000 and test_split.image_count == 1000
