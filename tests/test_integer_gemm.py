"""The integer GEMM of fake-quant W·A linears (quant.integer_gemm): the factored int8 product equals the exact
(float64) product of the dequantized operands to within the two roundings of the scales, and switches only
the layers whose grids allow it."""

import copy

import pytest
import torch

from qapruner.errors import QAPrunerError
from qapruner.eval.config import EvalConfig
from qapruner.quant import QuantConfig, QuantLinear, quantize_
from qapruner.quant.quantizer import minmax_qparams, quantize_int
from qapruner.quant.integer_gemm import integer_gemm_refusal, integer_linear, integer_weight, use_integer_gemm
from tiny_models import tiny_llama

EPS = torch.finfo(torch.float32).eps


def _layer(preset: str, seed: int = 0) -> QuantLinear:
    return quantize_(tiny_llama(layers=1, seed=seed), preset).model.layers[0].mlp.down_proj  # 1536 -> 576


def _exact(ql: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The product of the dequantized operands, (q − z)·s, formed and multiplied in float64: what both paths
    approximate (the fp32 fake-quant path rounds each operand and each partial sum)."""
    c = ql.act_quant.cfg
    if c.granularity == "tensor":
        s, z = ql.act_quant.scale, ql.act_quant.zero
    else:
        s, z = minmax_qparams(x, c.bits, c.sym, -1, c.clip_ratio)
    xq = (quantize_int(x, s, z, c.bits, c.sym) - z).double() * s.double()
    wq = (ql.integer_weight() - ql.weight_zero.to(torch.int32)).double() * ql.weight_scale.double()
    return xq @ wq.T


@pytest.mark.parametrize("preset", ["w4a4", "w4a8", "w8a8", "w4a4-syma", "w8a8-syma", "w4a4-asymw", "w4a4-aclip0.9"])
def test_the_integer_product_is_the_exact_product_rounded_twice(preset):
    ql = _layer(preset)
    x = torch.randn(5, 7, ql.in_features, generator=torch.Generator().manual_seed(1)) * 3
    ref = _exact(ql, x)
    with torch.no_grad():
        y = integer_linear(x, ql.act_quant, integer_weight(ql), None)
        fake = ql(x)  # the fp32 fake-quant path
    assert y.shape == fake.shape == ref.shape and y.dtype == torch.float32
    # int32 sums are exact and convert exactly below 2^24; then two products with the scales: <= 2 ulp (+ the
    # rounding of the fp32 grid values the reference starts from, which are exact multiples of the same scales)
    err = ((y.double() - ref).abs() / ref.abs().clamp_min(1e-30))
    big = ref.abs() > 1e-3 * ref.abs().max()  # relative error of near-cancellations is meaningless
    assert float(err[big].max()) <= 3 * EPS, float(err[big].max())
    # the fp32 fake-quant path is farther from the exact product: it rounds every partial sum
    assert float((fake.double() - ref).abs().max()) >= float((y.double() - ref).abs().max())


def test_static_activation_scales_use_the_calibrated_grid():
    ql = _layer("w4a8")
    aq = ql.act_quant
    aq.cfg = QuantConfig.from_preset("w4a8-static").act
    aq.scale.fill_(0.05)
    aq.zero.fill_(131.0)  # asymmetric 8-bit: the offset path (codes 0..255 shifted into int8)
    aq.calibrated = True
    x = torch.randn(9, ql.in_features, generator=torch.Generator().manual_seed(2))
    ref = _exact(ql, x)
    with torch.no_grad():
        y = integer_linear(x, aq, integer_weight(ql), ql.bias)
    assert torch.allclose(y.double(), ref, rtol=3 * EPS, atol=1e-6 * float(ref.abs().max()))


def test_a_tiny_model_switches_its_wa_linears_and_keeps_its_logits():
    model = quantize_(tiny_llama(layers=2), "w4a4-rot")
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    fast = copy.deepcopy(model)
    assert use_integer_gemm(fast) == 14  # 7 linears x 2 layers
    calls = []
    real_int_mm = torch._int_mm
    try:
        torch._int_mm = lambda a, b: calls.append(a.shape) or real_int_mm(a, b)
        with torch.no_grad():
            out = fast(input_ids=ids).logits
    finally:
        torch._int_mm = real_int_mm
    assert len(calls) == 14 and calls[0] == (24, 576)  # batch x tokens flattened
    assert not torch.equal(out, ref)  # another summation: not bit-identical ...
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()  # ... but equal to fp32 rounding
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    assert use_integer_gemm(fast, on=False) == 0
    with torch.no_grad():
        assert torch.equal(fast(input_ids=ids).logits, ref)  # switched back: the fp32 path, bit for bit


@pytest.mark.parametrize("preset, words", [
    ("w4a16", "quantizes not both"), ("w16a4", "quantizes not both"), ("w4a4-g64", "groups of 64"),
    ("w4a4-ag64", "per token or per tensor"), ("w8a8-asymw", "do not fit"),
])
def test_presets_the_integer_gemm_cannot_run_are_refused_in_one_sentence(preset, words):
    reason = integer_gemm_refusal(QuantConfig.from_preset(preset))
    assert reason is not None and words in reason
    with pytest.raises(QAPrunerError, match=words):
        EvalConfig(quant=preset, gemm="integer")


def test_a_model_off_the_cpu_is_refused_in_one_sentence():
    model = quantize_(tiny_llama(layers=1), "w4a4").to("meta")
    with pytest.raises(QAPrunerError, match="runs on the CPU"):
        use_integer_gemm(model)


def test_the_gemm_is_in_the_key_only_when_it_is_the_integer_one():
    assert "gemm" not in EvalConfig(quant="w4a4").key()  # runs made before the option keep their key
    assert EvalConfig(quant="w4a4", gemm="integer").key()["gemm"] == "integer"
    assert integer_gemm_refusal(QuantConfig.from_preset("w4a4-rot-gptq")) is None
    with pytest.raises(QAPrunerError, match="--gemm"):
        EvalConfig(quant="w4a4", gemm="int")


def test_eval_and_compare_run_wa_rows_on_the_integer_gemm(tiny_llava_dir, tiny_jsonl, tmp_path, capsys):
    import json

    from qapruner.cli import main
    from qapruner.compare.config import CompareConfig
    from qapruner.compare.grid import build_grid

    rows = {}
    for gemm in ("float", "integer"):
        out = tmp_path / f"{gemm}.json"
        assert main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--quant", "w4a4-rot",
                     "--prune", "cdpruner", "--keep", "0.5", "--qa", "--gemm", gemm, "--out", str(out)]) == 0
        s = json.loads(out.read_text())
        assert s["config"]["gemm"] == gemm and s["n"] == 12
        assert s["quant_info"].get("integer_gemm_layers", 0) == (14 if gemm == "integer" else 0)  # 7 linears x 2 layers
        rows[gemm] = [json.loads(x) for x in out.with_suffix(".items.jsonl").read_text().splitlines()[1:]]
    # the same items, predictions and kept tokens on this tiny model (its logits differ in the last bits only)
    assert [(r["pred"], r["kept"]) for r in rows["float"]] == [(r["pred"], r["kept"]) for r in rows["integer"]]
    assert main(["eval", "--model", str(tiny_llava_dir), "--task", f"jsonl:{tiny_jsonl}", "--quant", "w4a16",
                 "--gemm", "integer"]) == 2
    assert "quantizes not both" in capsys.readouterr().err
    # compare: quantized rows carry the option (their own ids), FP rows do not
    cfg = CompareConfig(model=str(tiny_llava_dir), tasks=[f"jsonl:{tiny_jsonl}"], quant=["w4a4"], gemm="integer",
                        hosts=["cls"], keeps=[0.5])
    gemms = {r.quant: r.eval_config(cfg).gemm for r in build_grid(cfg)}
    assert gemms == {None: "float", "w4a4": "integer"}
    with pytest.raises(QAPrunerError, match="groups of 64"):
        CompareConfig(quant=["w4a4", "w4a4-g64"], gemm="integer")
