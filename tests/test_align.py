"""Stage-1 projector alignment: labels read off easy-VQA questions, and alignment on separable features."""

import torch

from qapruner.align import AlignConfig, align_projector, easy_vqa_labels, fashion_labels
from qapruner.tasks.base import Item


def _item(image, q, a):
    return Item(uid=f"u{image}{q}", image=image, question=q, prompt=q, choices=(), answer=a)


def test_easy_vqa_labels_use_open_questions_only():
    items = [_item(0, "what is the blue shape?", "rectangle"),
             _item(0, "is there not a circle?", "yes"),          # negation: must not label a circle
             _item(0, "is no yellow shape present?", "yes"),
             _item(1, "what color is the triangle?", "teal"),
             _item(2, "is there a red shape?", "yes")]           # yes/no only: no label
    assert easy_vqa_labels(items) == {0: {"color": "blue", "shape": "rectangle"},
                                      1: {"color": "teal", "shape": "triangle"}}


def test_fashion_labels_map_letters_to_class_names():
    assert fashion_labels([_item(7, "q", "J"), _item(8, "q", "A")]) == {7: {"class": "Ankle boot"},
                                                                        8: {"class": "T-shirt/top"}}


class _Cache:
    def __init__(self, feats):
        self.feats = feats

    def get(self, images):
        return self.feats[images], None


def test_alignment_learns_separable_classes_at_word_norm():
    g = torch.Generator().manual_seed(0)
    words = torch.randn(3, 16, generator=g) * 2.0
    centers = torch.randn(3, 8, generator=g)
    labels = {i: {"class": ("a", "b", "c")[i % 3]} for i in range(60)}
    feats = torch.stack([centers[i % 3] + 0.3 * torch.randn(10, 8, generator=g) for i in range(60)])
    torch.manual_seed(1)  # the projector's init must not depend on which tests ran before (CI saw 0.93 at step 0)
    proj = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
    norm = words.norm(dim=1).mean().item()
    hist = align_projector(proj, [(_Cache(feats), labels)], {"class": (("a", "b", "c"), words)}, norm,
                           AlignConfig(steps=150, batch_size=30, tokens_per_image=10, lr=1e-2), log=lambda m: None)
    assert hist[0]["acc"] < 0.8 and sum(h["acc"] for h in hist[-10:]) / 10 == 1.0
    out = proj(feats)
    assert abs(out.norm(dim=-1).mean().item() / norm - 1) < 0.1


def test_shapes_labels_take_single_object_scenes_only():
    from qapruner.align import shapes_labels
    from qapruner.tasks import load_task

    items = load_task("shapes", "test").items[:60]
    labels = shapes_labels(items)
    singles = {it.image for it in items if it.kind == "count" and it.answer == "one"}
    assert set(labels) == singles and len(singles) == 5  # scenes 0, 3, 6, ... hold one object
    from qapruner.tasks.shapes import scenes

    for image, lab in labels.items():
        (obj,) = scenes("test")[image].objects
        assert lab == {"color": obj.color, "shape": obj.shape}


def test_patch_labels_mark_inner_box_rim_and_background():
    from qapruner.tasks.scenes import COMBOS, Obj, Scene, patch_labels

    scene = Scene((255, 255, 255), (Obj("circle", "red", 112, 112, 28),))
    lab = patch_labels([scene], edge=-1)[0].reshape(16, 16)
    cls = 1 + COMBOS.index(("red", "circle"))
    # patch centres are 7 + 14 k: k = 7, 8 lie within 0.7 * 28 px of 112, k = 6..9 within 28 px
    assert (lab[7:9, 7:9] == cls).all() and (lab == cls).sum() == 4
    assert (lab[6:10, 6:10] != 0).all() and (lab == -1).sum() == 12 and (lab == 0).sum() == 256 - 16
    assert (patch_labels([scene])[0] >= 0).all()  # edge=0: the rim counts as background


def _dense_pool(g):
    centers = torch.randn(3, 8, generator=g) * 2
    lab = torch.randint(-1, 3, (40, 12), generator=g)
    feats = centers[lab.clamp(min=0)] + 0.3 * torch.randn(40, 12, 8, generator=g)
    return _Cache(feats), {i: {} for i in range(40)}, {i: lab[i] for i in range(40)}


def test_dense_term_aligns_each_patch_and_is_off_by_default():
    g = torch.Generator().manual_seed(0)
    words = torch.randn(3, 16, generator=g) * 2.0
    pool = _dense_pool(g)
    groups = {"patch": (("background", "a", "b"), words)}
    norm = words.norm(dim=1).mean().item()

    def run(weight):
        torch.manual_seed(1)
        proj = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
        cfg = AlignConfig(steps=120, batch_size=20, tokens_per_image=12, lr=1e-2, dense_weight=weight)
        return align_projector(proj, [pool], groups, norm, cfg, log=lambda m: None)

    hist = run(1.0)
    assert hist[0]["patch_acc"] < 0.8 and min(h["patch_acc"] for h in hist[-10:]) == 1.0
    off = run(0.0)  # dense_weight 0: only the norm term trains, and no patch accuracy is recorded
    assert "patch_acc" not in off[-1] and off[-1]["loss"] == off[-1]["norm_loss"]


def test_position_loss_exact_values():
    from qapruner.align import position_loss

    u = torch.tensor([1.0, 0.0])
    # grid 3: columns 0, 1, 2 are x = -1, 0, 1; rho 0.3 -> target cosines -0.3, 0, 0.3
    t = torch.tensor([[[-0.3, 0.954], [0.0, 1.0], [0.5, 0.866], [0.9, 0.436]]])
    cols = torch.tensor([[0, 1, 2, 2]])
    lab = torch.tensor([[4, 7, 1, 0]])  # the last patch is background: ignored
    assert torch.isclose(position_loss(t, cols, lab, u, 0.3, 3), torch.tensor(0.2 ** 2 / 3))
    assert position_loss(t, cols, torch.zeros_like(lab), u, 0.3, 3).item() == 0.0  # no object patch


def test_position_term_puts_the_column_on_the_left_right_direction():
    """Features that carry the column (plus class centres and noise): with the term on, the object tokens'
    cosine with u follows rho * x; with it off (default) no position loss is computed."""
    g = torch.Generator().manual_seed(0)
    words = torch.randn(3, 16, generator=g) * 2.0
    lr_words = torch.randn(2, 16, generator=g) * 2.0
    centers = torch.randn(3, 8, generator=g) * 2
    lab = torch.randint(0, 3, (40, 16), generator=g)
    feats = centers[lab] + 0.3 * torch.randn(40, 16, 8, generator=g)
    feats[..., 0] += torch.arange(16) % 4 - 1.5                      # the column, readable from the features
    pool = (_Cache(feats), {i: {} for i in range(40)}, {i: lab[i] for i in range(40)})
    groups = {"patch": (("background", "a", "b"), words), "position": (("left", "right"), lr_words)}
    norm = words.norm(dim=1).mean().item()

    def run(weight):
        torch.manual_seed(1)
        proj = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        cfg = AlignConfig(steps=200, batch_size=20, tokens_per_image=16, lr=1e-2, dense_weight=1.0,
                          position_weight=weight, position_cos=0.3)
        return proj, align_projector(proj, [pool], groups, norm, cfg, log=lambda m: None)

    proj, hist = run(10.0)
    assert hist[0]["position_loss"] > 0.02 and max(h["position_loss"] for h in hist[-10:]) < 0.01
    from qapruner.align import left_right_direction

    with torch.no_grad():
        cos = torch.nn.functional.normalize(proj(feats), dim=-1) @ left_right_direction(lr_words)
    x = 2 * (torch.arange(16) % 4) / 3 - 1
    pairs = torch.stack([cos[lab > 0], x.expand(40, 16)[lab > 0]])
    assert torch.corrcoef(pairs)[0, 1] > 0.9
    assert "position_loss" not in run(0.0)[1][-1]


def test_position_term_without_patch_labels_is_refused():
    import pytest

    from qapruner.errors import QAPrunerError
    from qapruner.train import TrainConfig

    with pytest.raises(QAPrunerError, match="position_weight needs dense_weight"):
        AlignConfig(position_weight=1.0)
    with pytest.raises(QAPrunerError, match="position_weight needs dense_weight"):
        TrainConfig(position_weight=1.0)
