"""Prune-aware calibration (``--calib-pruned``, ``compare`` with ``prune_calibration``): calibration samples are
pruned exactly as the evaluation harness prunes, and the calibrated model changes with them."""

from __future__ import annotations

import pytest
import torch

from qapruner.cli import main
from qapruner.errors import QAPrunerError
from qapruner.eval.config import EvalConfig
from qapruner.eval.prepare import calibration_inputs, quantized_copy
from qapruner.models.features import FeatureCache
from qapruner.models.llava import gather_tokens
from qapruner.models.registry import load_model
from qapruner.prune import Pruner, PruneConfig, num_keep
from qapruner.quant import QuantConfig
from qapruner.quant.quant_linear import QuantLinear
from qapruner.tasks import load_task
from qapruner.tasks.base import stratified_subset


@pytest.fixture(scope="module")
def adapter(tiny_llava_dir):
    return load_model(str(tiny_llava_dir))


@pytest.fixture(scope="module")
def task(tiny_jsonl):
    return load_task(f"jsonl:{tiny_jsonl}")


@pytest.mark.parametrize("prune", [PruneConfig("cls", 0.5), PruneConfig("cdpruner", 0.25, qa=True),
                                   PruneConfig("divprune", 0.5, qa=True, sensitivity="norm")])
def test_calibration_samples_hold_the_tokens_the_harness_keeps(adapter, task, prune):
    dense = calibration_inputs(adapter, task, 6, seed=0, batch_size=3)
    pruned = calibration_inputs(adapter, task, 6, seed=0, batch_size=3, prune=prune)
    items = stratified_subset(task.items, 6, 0)
    cache = FeatureCache(adapter, task)
    k = num_keep(prune.keep, adapter.n_visual)
    for b, (kw_dense, kw) in enumerate(zip(dense, pruned)):
        batch = items[3 * b : 3 * b + 3]
        feats, cls = cache.get([it.image for it in batch])
        with torch.no_grad():  # the evaluation path: adapter.forward prunes and reports what it kept
            out = adapter.forward(feats, cls, [it.prompt for it in batch], [it.question for it in batch],
                                  Pruner(prune))
            expected = adapter.assemble([it.prompt for it in batch],
                                        gather_tokens(adapter.project(feats), out.keep)).as_kwargs()
        assert out.keep.shape == (3, k)
        assert kw_dense["inputs_embeds"].shape[1] - kw["inputs_embeds"].shape[1] == adapter.n_visual - k
        assert kw.keys() == expected.keys()
        for name in kw:
            assert torch.equal(kw[name], expected[name]), name


def _act_scales(model) -> list[torch.Tensor]:
    return [m.act_quant.scale.clone() for m in model.modules() if isinstance(m, QuantLinear)]


def _weights(model) -> list[torch.Tensor]:
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, QuantLinear)]


@pytest.mark.parametrize("preset, probe", [("w8a4-static", _act_scales), ("w4a16-gptq", _weights)])
def test_pruned_calibration_changes_the_calibrated_model(adapter, task, preset, probe):
    cfg = QuantConfig.from_preset(preset)
    prune = PruneConfig("cls", 0.25)
    dense, info_dense = quantized_copy(adapter, cfg, task, calib_samples=6)
    pruned, info = quantized_copy(adapter, cfg, task, calib_samples=6, calib_prune=prune)
    again, _ = quantized_copy(adapter, cfg, task, calib_samples=6, calib_prune=prune)
    a, b, c = probe(dense.model), probe(pruned.model), probe(again.model)
    assert len(a) == len(b) > 0
    assert any(not torch.equal(x, y) for x, y in zip(a, b))  # a different token population, another model
    assert all(torch.equal(x, y) for x, y in zip(b, c))      # and deterministic
    assert info["calib_prune"]["host"] == "cls" and info["calib_prune"]["keep"] == 0.25
    assert "calib_prune" not in info_dense


@pytest.mark.parametrize("kw, message", [
    (dict(quant="w4a4-gptq"), "needs a pruning host"),
    (dict(prune=PruneConfig("cls", 0.5)), "needs a pruning host"),            # FP: nothing to calibrate
    (dict(quant="w4a4", prune=PruneConfig("cls", 0.5)), "calibrates"),       # RTN + dynamic: no calibration
    (dict(quant="w4a4-gptq", prune=PruneConfig("fastv", 0.5)), "fastv"),
    (dict(quant="w4a4-gptq", prune=PruneConfig("cls", 0.5, qa=True, sensitivity="matched")), "matched"),
])
def test_unsupported_combinations_are_refused(kw, message):
    with pytest.raises(QAPrunerError, match=message):
        EvalConfig(calib_pruned=True, **kw)


def test_key_changes_only_when_calibrating_on_pruned_tokens():
    base = dict(quant="w4a4-gptq", prune=PruneConfig("cls", 0.5))
    assert "calib_pruned" not in EvalConfig(**base).key()  # the keys of earlier runs stay valid
    assert EvalConfig(calib_pruned=True, **base).key() != EvalConfig(**base).key()


def test_cli_eval_calib_pruned(tiny_llava_dir, tiny_jsonl, tmp_path, capsys):
    common = ["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--quant", "w4a8-static",
              "--prune", "cls", "--keep", "0.5", "--calib-samples", "4"]
    assert main(common + ["--calib-pruned", "--out", str(tmp_path / "p.json")]) == 0
    import json

    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["config"]["calib_pruned"] and summary["quant_info"]["calib_prune"]["host"] == "cls"
    assert main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--quant", "w4a8-static",
                 "--calib-pruned", "--out", str(tmp_path / "x.json")]) == 2
    assert "needs a pruning host" in capsys.readouterr().err
