"""Real kernels (deploy.runtime): the int4 tinygemm layers hold exactly the integers the weight method chose,
and the real model's logits match the fake-quant model run in bf16."""

import copy

import pytest
import torch

from qapruner.deploy.runtime import RealLinear, kind_of, realize
from qapruner.errors import QAPrunerError
from qapruner.models.llava import LlavaAdapter
from qapruner.quant import QuantLinear, quantize_
from tiny_models import tiny_llama


def _adapter(model):
    return LlavaAdapter(model, None, "tiny", "tiny", (4, 4))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("preset", ["w4a16-g64", "w4a16", "w4a16-asymw-g64", "w4a16-rot", "w8a16", "w8a8"])
def test_real_kernels_match_the_simulation_in_bf16(preset):
    fake = quantize_(tiny_llama(layers=2), preset)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = _logits(_adapter(copy.deepcopy(fake)).cast(torch.bfloat16).model, ids)  # fake-quant weights, bf16 matmuls
    real = copy.deepcopy(fake)
    counts = realize(_adapter(real))
    assert not any(isinstance(m, QuantLinear) for m in real.modules())
    expected = {"w8a8": "int8-dynamic", "w8a16": "bf16"}.get(preset, "int4")
    assert counts.get(expected, 0) == 14, counts  # 7 linears x 2 layers
    out = _logits(real, ids)
    # int4: same integers, bf16 scales and a different accumulation order; int8: torchao's symmetric activation
    # scales instead of the preset's asymmetric ones
    tol = 0.35 if preset == "w8a8" else 0.08
    assert (out - ref).abs().max() < tol * ref.abs().max(), (out - ref).abs().max()


def test_int4_layer_holds_the_exact_integers():
    from qapruner.deploy.runtime import int4_linear

    for preset in ("w4a16-g64", "w4a16-asymw-g64"):
        ql = quantize_(tiny_llama(layers=1), preset).model.layers[0].mlp.up_proj
        layer = int4_linear(ql)
        assert layer.packed.dtype == torch.uint8 and layer.packed.numel() == ql.weight.numel() // 2  # 2 codes a byte
        x = torch.eye(ql.in_features, dtype=torch.bfloat16)  # the layer applied to the identity = its weight^T
        dq = layer(x).float().T
        expect = ql.weight.detach().float()
        step = ql.weight_scale.repeat_interleave(ql.weight_group_size, dim=1)  # one code step per element
        # a wrong code is off by at least one step; bf16 scales, zeros and outputs cost a few % of one
        assert bool(((dq - expect).abs() < 0.1 * step).all())


def test_int4_layer_computes_exactly_what_torchaos_int4_tensor_computes():
    """Int4Linear calls the op torchao's Int4OpaqueTensor dispatches to, without the subclass: same outputs, bit
    for bit, so results of the earlier subclass path stay valid."""
    from torchao.prototype.quantization.int4.int4_opaque_tensor import Int4OpaqueTensor

    from qapruner.deploy.runtime import INT4_GROUP, int4_linear

    ql = quantize_(tiny_llama(layers=1), "w4a16-g64").model.layers[0].mlp.down_proj
    layer = int4_linear(ql)
    w = Int4OpaqueTensor(qdata=layer.packed, scale_and_zero=layer.scale_and_zero, block_size=[1, INT4_GROUP],
                         shape=ql.weight.shape, act_pre_scale=None)
    x = torch.randn(2, 5, ql.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, w))


def test_activation_presets_without_a_kernel_are_refused():
    fake = quantize_(tiny_llama(layers=1), "w4a4")
    with pytest.raises(QAPrunerError, match="No real kernel"):
        kind_of(fake.model.layers[0].self_attn.q_proj)
    with pytest.raises(QAPrunerError, match="No real kernel"):
        realize(_adapter(fake))
    assert isinstance(fake.model.layers[0].self_attn.q_proj, QuantLinear)  # nothing changed
    assert not isinstance(fake.model.layers[0].self_attn.q_proj, RealLinear)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
                    reason="this CPU has no native bf16 matmul; packing is skipped there (next test)")
def test_fp_model_in_bf16_runs_packed_linears_with_the_same_logits():
    from qapruner.deploy.packed_bf16 import PackedBf16Linear

    model = tiny_llama(layers=2)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = _logits(_adapter(copy.deepcopy(model)).cast(torch.bfloat16).model, ids)  # bf16 F.linear
    counts = realize(_adapter(model))
    assert counts == {"bf16-packed": 14}, counts  # 7 linears x 2 layers; the LM head stays as it is
    assert isinstance(model.model.layers[1].mlp.down_proj, PackedBf16Linear)
    assert type(model.lm_head) is torch.nn.Linear
    out = _logits(model, ids)
    # the same oneDNN bf16 products in another weight layout: equal or off by bf16 accumulation order
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max(), (out - ref).abs().max()
    one = _logits(model, ids[:1, :1])  # a decode-sized call (one row) goes through the same packed weights
    assert torch.allclose(one[0, 0], out[0, 0], atol=0.02 * float(ref.abs().max()))


def test_packing_is_skipped_without_native_bf16_and_for_int8_layers(monkeypatch):
    from qapruner.deploy import packed_bf16

    w8a8 = quantize_(tiny_llama(layers=1), "w8a8")
    assert "bf16-packed" not in realize(_adapter(w8a8))  # torchao's int8 linears are nn.Linear with int8 tensors
    monkeypatch.setattr(packed_bf16, "can_pack_bf16", lambda device: False)
    assert realize(_adapter(tiny_llama(layers=1))) == {}
    w8a16 = quantize_(tiny_llama(layers=1), "w8a16")
    assert realize(_adapter(w8a16)) == {"bf16": 7}


@pytest.fixture(scope="module")
def wide_llava_dir(tmp_path_factory):
    """A tiny LLaVA checkpoint whose decoder linears are 128 / 256 wide: multiples of the int4 kernel's group."""
    from tiny_checkpoint import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("wide_llava"), hidden=128)


@pytest.mark.parametrize("compressed", [True, False], ids=["packed", "decompressed"])
@pytest.mark.parametrize("preset,kernel", [("w4a16-g64", "int4"), ("w8a8", "int8-dynamic")])
def test_loaded_export_runs_the_same_real_kernels_as_the_model_it_was_exported_from(wide_llava_dir, tmp_path,
                                                                                   preset, kernel, compressed):
    """`eval --model DIR --real`: compressed-tensors' linears, still packed (what --real loads) or decompressed,
    become real kernels (not bf16 with compressed-tensors' fake-quant forward, and never bf16 without its
    activation quantizer): the same int4 codes and the same logits as realizing the in-memory model the export
    was written from."""
    from qapruner.deploy.export import export_compressed
    from qapruner.models.registry import load_model

    source = load_model(str(wide_llava_dir), device=torch.device("cpu"))
    quantize_(source.model, preset)
    export_compressed(source.model, tmp_path / "export", source.processor)
    loaded = load_model(str(tmp_path / "export"), device=torch.device("cpu"), compressed=compressed)
    q_proj = loaded.parts.layers[0].self_attn.q_proj
    params = dict(q_proj.named_parameters())
    if compressed:  # the integers as stored: int4 packed in int32 words, or int8
        assert params["weight_packed" if preset != "w8a8" else "weight"].dtype in (torch.int32, torch.int8)
    else:
        assert params["weight"].dtype == torch.float32
    ids = torch.randint(4, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    counts = [realize(source), realize(loaded)]
    assert counts[0] == counts[1] and counts[1][kernel] == 14, counts  # 7 linears x 2 layers
    assert not any(hasattr(m, "quantization_scheme") for m in loaded.parts.layers.modules())
    from compressed_tensors.offload.cache import OffloadCache  # its dispatch moved tensors on every access

    assert not any(isinstance(m._parameters, OffloadCache) for m in loaded.model.modules())
    assert not hasattr(loaded.model, "ct_decompress_hook")
    with torch.no_grad():
        ref, out = (a.model(input_ids=ids).logits.float() for a in (source, loaded))
    assert torch.equal(out, ref)
    if kernel == "int4":
        a, b = (ad.parts.layers[1].mlp.down_proj.linear for ad in (source, loaded))
        assert torch.equal(a.packed, b.packed) and torch.equal(a.scale_and_zero, b.scale_and_zero)


def test_compressed_scheme_without_a_kernel_is_refused_and_nothing_changes(wide_llava_dir, tmp_path):
    from qapruner.deploy.export import export_compressed
    from qapruner.models.registry import load_model

    source = load_model(str(wide_llava_dir), device=torch.device("cpu"))
    quantize_(source.model, "w8a8")
    export_compressed(source.model, tmp_path / "export", source.processor)
    loaded = load_model(str(tmp_path / "export"), device=torch.device("cpu"))
    q_proj = loaded.parts.layers[0].self_attn.q_proj
    q_proj.quantization_scheme.input_activations.dynamic = False  # static activation scales: no kernel here
    q_proj.quantization_scheme.input_activations.strategy = "tensor"
    with pytest.raises(QAPrunerError, match="No real kernel here runs compressed-tensors 8-bit tensor activations"):
        realize(loaded)
    assert loaded.parts.layers[0].self_attn.q_proj is q_proj
    assert not any(isinstance(m, QuantLinear) for m in loaded.model.modules())
