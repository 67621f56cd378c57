import copy

import pytest
import torch

from qapruner.errors import QAPrunerError
from qapruner.quant import (
    ActQuantConfig, GPTQConfig, QuantConfig, QuantLinear, WeightQuantConfig, activation_error,
    quantize_,
)
from qapruner.quant.gptq import HessianAccumulator, gptq_quantize_weight
from qapruner.models.parts import lm_parts
from qapruner.quant.layer_inputs import capture_layer0_inputs
from qapruner.quant.quantizer import fake_quant_minmax, quantize_weight_rtn
from tiny_models import tiny_llama, tiny_llava, tiny_llava_inputs

SMALL = dict(hidden=72, intermediate=192)  # 9 heads of 8; Hadamard 72 = 2·36, 192 = 16·12


def small_llama(layers=2, seed=0):
    return tiny_llama(layers=layers, seed=seed, **SMALL)


def calib_ids(n=4, seq=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 128, (1, seq), generator=g)} for _ in range(n)]


def layer0_output_error(fp_model, q_model, calib):
    """Squared error of decoder layer 0's output on the calibration inputs (FP layer-0 inputs)."""
    fp_parts, q_parts = lm_parts(fp_model), lm_parts(q_model)
    err = 0.0
    with torch.no_grad():
        for hs, kw in capture_layer0_inputs(fp_parts, calib):
            err += (fp_parts.layers[0](hs, **kw) - q_parts.layers[0](hs, **kw)).pow(2).sum().item()
    return err


def test_gptq_beats_rtn_on_a_matrix():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g)
    x = torch.randn(2048, 64, generator=g) @ mix  # correlated inputs, as in real activations
    w = torch.randn(32, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(x[:1024]); acc.add(x[1024:])
    assert torch.allclose(acc.h, 2 * x.double().T @ x.double() / 2048, rtol=1e-10, atol=1e-8)
    wcfg = WeightQuantConfig(bits=3, clip_search=False)
    rtn = quantize_weight_rtn(w, 3, True)
    errs = {}
    for act_order in (False, True):
        q = gptq_quantize_weight(w, acc.h, wcfg, GPTQConfig(act_order=act_order, block_size=16))
        # every GPTQ column lies on the same per-row grid as RTN's
        scale = w.abs().amax(1, keepdim=True) / 3
        assert torch.allclose(q / scale, torch.round(q / scale), atol=1e-4)
        errs[act_order] = (x @ (w - q).T).pow(2).sum().item()
    e_rtn = (x @ (w - rtn).T).pow(2).sum().item()
    assert errs[False] < 0.8 * e_rtn and errs[True] < 0.8 * e_rtn


def test_gptq_groups_and_blocks():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)
    w = torch.randn(16, 64, generator=g)
    acc = HessianAccumulator(64)
    acc.add(x)
    q = gptq_quantize_weight(w, acc.h, WeightQuantConfig(bits=4, group_size=16), GPTQConfig(block_size=8))
    rtn = quantize_weight_rtn(w, 4, True, group_size=16, clip_search=True)
    assert (x @ (w - q).T).pow(2).sum() < (x @ (w - rtn).T).pow(2).sum()
    for grp in range(4):  # at most 16 levels per (row, group)
        cols = q[:, grp * 16:(grp + 1) * 16]
        assert all(len(set(row.tolist())) <= 16 for row in cols)


def test_gptq_lower_layer_output_error_than_rtn():
    calib = calib_ids()
    fp = small_llama()
    errors = {}
    for preset in ("w3a16", "w3a16-gptq"):
        model = small_llama()
        quantize_(model, preset, calib=calib)
        errors[preset] = layer0_output_error(fp, model, calib)
    assert errors["w3a16-gptq"] < errors["w3a16"]


def test_gptq_on_llava_sees_image_tokens():
    model = tiny_llava(layers=1, **SMALL)
    calib = [tiny_llava_inputs(seed=i) for i in range(2)]
    captured = capture_layer0_inputs(lm_parts(model), calib)
    assert captured[0][0].shape[1] == 24  # 8 text + 16 image tokens
    quantize_(model, "w4a4-rot-gptq", calib=calib)
    out = model(**tiny_llava_inputs(seed=5)).logits
    assert torch.isfinite(out).all()
    assert lm_parts(model).layers[0].self_attn.q_proj.weight_quantized


def test_calibration_required():
    for preset in ("w4a16-gptq", "w8a8-static", "w8a8-smooth"):
        with pytest.raises(QAPrunerError, match="calib"):
            quantize_(small_llama(layers=1), preset)


def test_quantize_twice_is_an_error():
    model = quantize_(small_llama(layers=1), "w8a8")
    with pytest.raises(QAPrunerError):
        quantize_(model, "w8a8")


def test_unsupported_model():
    with pytest.raises(QAPrunerError):
        quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a8")


def test_default_scope_and_patterns():
    model = quantize_(small_llama(layers=1), "w4a8")
    qnames = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(qnames) == 7 and "lm_head" not in qnames
    cfg = QuantConfig(weight=WeightQuantConfig(bits=4), include=("*.mlp.*", "lm_head"), exclude=("*.down_proj",))
    model = quantize_(small_llama(layers=1), cfg)
    qnames = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert qnames == {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "lm_head"}
    with pytest.raises(QAPrunerError, match="match no linear"):
        quantize_(small_llama(layers=1), QuantConfig(include=("nothing.*",)))


def test_llava_projector_by_pattern():
    model = tiny_llava(layers=1)
    cfg = QuantConfig(weight=WeightQuantConfig(bits=8), include=("model.multi_modal_projector.*",))
    quantize_(model, cfg)
    assert isinstance(model.model.multi_modal_projector.linear_2, QuantLinear)
    assert not isinstance(model.model.language_model.layers[0].self_attn.q_proj, QuantLinear)


def test_w8a8_close_to_fp_and_w4a4_not():
    ids = calib_ids(1, seed=9)[0]["input_ids"]
    ref = small_llama()(input_ids=ids).logits
    err = {}
    for p in ("w8a8", "w4a4", "w8a8-static"):
        m = quantize_(small_llama(), p, calib=calib_ids())
        err[p] = (m(input_ids=ids).logits - ref).pow(2).mean().item()
    assert err["w8a8"] < err["w4a4"] / 20
    assert err["w8a8-static"] < err["w4a4"]


def test_static_scales_are_calibrated():
    model = quantize_(small_llama(layers=1), "w16a8-static", calib=calib_ids(2))
    aq = model.model.layers[0].self_attn.q_proj.act_quant
    assert aq.calibrated and aq.scale.item() > 0 and aq.scale.ndim == 0


def test_smoothquant_is_fp_exact_and_helps():
    calib = calib_ids()
    ids = calib_ids(1, seed=7)[0]["input_ids"]
    ref = small_llama()(input_ids=ids).logits
    sm = quantize_(small_llama(), QuantConfig(weight=WeightQuantConfig(bits=16), smooth=0.5), calib=calib)
    assert torch.allclose(sm(input_ids=ids).logits, ref, atol=1e-4)


def test_kv_cache_quant():
    ids = calib_ids(1, seed=3)[0]["input_ids"]
    ref = small_llama()(input_ids=ids).logits
    m8 = quantize_(small_llama(), "w16a16-kv8")
    m3 = quantize_(small_llama(), "w16a16-kv3")
    e8 = (m8(input_ids=ids).logits - ref).abs().max().item()
    e3 = (m3(input_ids=ids).logits - ref).abs().max().item()
    assert 0 < e8 < e3
    out = m3.generate(ids[:, :8], max_new_tokens=3, do_sample=False)  # cache path
    assert out.shape == (1, 11)


def test_error_at_first_layer():
    x = torch.randn(2, 10, 72)
    assert activation_error(lm_parts(small_llama(layers=1)).layers[0], x) is None  # FP
    assert activation_error(lm_parts(quantize_(small_llama(layers=1), "w4a16")).layers[0], x) is None  # weight-only
    model = quantize_(small_llama(layers=1), "w16a4")
    e = activation_error(lm_parts(model).layers[0], x)
    assert e.shape == (2, 10)
    h = model.model.layers[0].input_layernorm(x)
    assert torch.allclose(e, (h - fake_quant_minmax(h, 4, False)).norm(dim=-1))
    e8 = activation_error(lm_parts(quantize_(small_llama(layers=1), "w16a8")).layers[0], x)
    assert bool((e8 < e).all())


def test_error_at_first_layer_llava_rotated():
    model = tiny_llava(layers=1)
    quantize_(model, "w4a4-rot")
    x = torch.randn(1, 16, 576)  # what the LM receives (already in the rotated basis)
    e = activation_error(lm_parts(model).layers[0], x)
    assert e.shape == (1, 16) and bool((e > 0).all())


@pytest.mark.parametrize("preset", ["w16a8-rot-static", "w4a16-rot-gptq"])
def test_calibration_embeds_built_before_rotation_give_the_same_model(preset):
    """Calibration given as FP ``inputs_embeds`` (as the evaluation runner builds them) must be mapped into the
    rotated basis: the result equals calibrating on ``input_ids`` that go through the rotated model itself."""
    base = small_llama(layers=1)
    ids = calib_ids(2)
    with torch.no_grad():
        embeds = [{"inputs_embeds": base.get_input_embeddings()(kw["input_ids"])} for kw in ids]
    a = quantize_(copy.deepcopy(base), preset, calib=ids)
    b = quantize_(copy.deepcopy(base), preset, calib=embeds)
    x = calib_ids(1, seed=7)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=x).logits, b(input_ids=x).logits, rtol=1e-4, atol=1e-4)
