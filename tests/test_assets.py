"""Named testbed assets, the training recipe of each, and the LoRA state round trip used to warm-start."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qapruner.errors import QAPrunerError
from qapruner.eval.config import EvalConfig
from qapruner.models.assets import ASSETS, DEFAULT_ASSET, canonical_model, asset_file
from qapruner.models.lora import add_lora, load_lora_state, lora_state
from qapruner.models.registry import check_model_spec
from qapruner.train import TrainConfig


def test_testbed_names_its_asset_in_every_run_key(tmp_path):
    assert canonical_model("testbed") == f"testbed:{DEFAULT_ASSET}" and canonical_model("org/llava") == "org/llava"
    assert asset_file("testbed") == ASSETS[DEFAULT_ASSET] and asset_file("testbed:v1") == ASSETS["v1"]
    assert asset_file("testbed:/x/y.safetensors").name == "y.safetensors" and asset_file("org/llava") is None
    # the key of a run on "testbed" differs from one on the other asset: their stored results never mix
    assert EvalConfig(model="testbed").key() == EvalConfig(model=f"testbed:{DEFAULT_ASSET}").key()
    assert EvalConfig(model="testbed").key() != EvalConfig(model="testbed:v1").key()
    with pytest.raises(QAPrunerError, match="named assets: testbed:v1, testbed:v2, testbed:v7"):
        check_model_spec(f"testbed:{tmp_path / 'none.safetensors'}")
    assert ASSETS["v1"].is_file()


def test_recipes_of_committed_assets_load_as_train_configs():
    v1 = TrainConfig.from_recipe(ASSETS["v1"].with_suffix(".json"))
    assert v1.init == "" and v1.tasks == {"easy-vqa": 2700, "fashion-mnist": 1500} and v1.steps == 400
    assert v1.align.steps == 1000 and v1.token_keep == (1.0, 0.5, 0.25, 0.125)
    assert TrainConfig().init == "v1" and "shapes" in TrainConfig().tasks
    v7 = TrainConfig.from_recipe(ASSETS["v7"].with_suffix(".json"))
    assert v7.realign and v7.steps == 200 and v7.dense_weight == 0.5 and v7.position_weight == 5.0
    assert v7.align.position_weight == 10.0 and v7.kind_weights["shapes"]["left"] == 0.5


def test_lora_state_round_trips_for_a_warm_start():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5))
    net[0].q_proj = nn.Linear(6, 4)  # a target name, so add_lora wraps it
    wrapped = add_lora(net, rank=2, alpha=4.0, seed=0)
    for m in wrapped.values():
        nn.init.normal_(m.lora_b)
    state = lora_state(wrapped)
    fresh_net = nn.Sequential(nn.Linear(6, 5))
    fresh_net[0].q_proj = nn.Linear(6, 4)
    fresh = add_lora(fresh_net, rank=2, alpha=4.0, seed=1)
    load_lora_state(fresh, state)
    for name in wrapped:
        assert torch.equal(fresh[name].lora_a, wrapped[name].lora_a)
        torch.testing.assert_close(fresh[name].lora_b, wrapped[name].lora_b)


def test_batches_draw_kinds_by_weight_and_recipes_keep_per_task_token_keep(tmp_path):
    import json
    import random
    from collections import Counter
    from types import SimpleNamespace

    from qapruner.train import _draw_batch

    items = [SimpleNamespace(kind=k, n=i) for i, k in enumerate(["exists"] * 90 + ["left"] * 9 + ["count"])]
    # no weights: the uniform draw the committed assets were trained with (same RNG stream)
    r1, r2 = random.Random(3), random.Random(3)
    assert _draw_batch(items, None, 8, r1) == [items[r2.randrange(100)] for _ in range(8)]
    drawn = Counter(it.kind for it in _draw_batch(items, {"left": 0.5, "count": 0.5}, 4000, random.Random(0)))
    assert set(drawn) == {"left", "count"} and abs(drawn["left"] / 4000 - 0.5) < 0.03  # 1 % of the items, half the draws
    with pytest.raises(ValueError, match="'shape'"):
        _draw_batch(items, {"shape": 1.0}, 2, random.Random(0))
    from qapruner.align import AlignConfig

    cfg = TrainConfig(task_token_keep={"shapes": (1.0,)}, kind_weights={"shapes": {"left": 1.0}}, realign=True,
                      dense_weight=0.5, position_weight=5.0,
                      align=AlignConfig(dense_weight=1.0, position_weight=10.0, position_cos=0.25))
    from dataclasses import asdict

    (tmp_path / "r.json").write_text(json.dumps({"config": asdict(cfg)}))
    back = TrainConfig.from_recipe(tmp_path / "r.json")
    assert back.task_token_keep == {"shapes": (1.0,)} and back.kind_weights == cfg.kind_weights and back == cfg
    from qapruner.tasks.scenes import COMBOS, PATCH_WORDS

    assert PATCH_WORDS[0] == "background" and PATCH_WORDS[1 + COMBOS.index(("red", "circle"))] == "red circle"


def test_train_with_a_missing_warm_start_file_fails_in_one_sentence(tmp_path, capsys):
    from qapruner.cli import main

    assert main(["train", "--init", str(tmp_path / "testbed_v6.safetensors"), "--steps", "1",
                 "--out", str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "warm-start asset" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()
