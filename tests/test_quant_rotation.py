import pytest
import torch

from qapruner.errors import QAPrunerError
from qapruner.quant import QuantConfig, QuantLinear, WeightQuantConfig, quantize_
from qapruner.quant.hadamard import (
    OnlineHadamard, hadamard_factors, hadamard_matrix, paley1, paley2, random_hadamard, random_orthogonal,
)
from tiny_models import tiny_llama, tiny_llava, tiny_llava_inputs

FP_ROT = {"hadamard": QuantConfig(weight=WeightQuantConfig(bits=16), rotation="hadamard"),
          "random": QuantConfig(weight=WeightQuantConfig(bits=16), rotation="random")}


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 24, 28, 36, 40, 44, 48, 60, 72, 96, 144, 192, 288, 576, 768, 1536, 2304])
def test_hadamard_is_hadamard(n):
    h = hadamard_matrix(n)
    assert h.shape == (n, n)
    assert bool(((h == 1) | (h == -1)).all())
    hf = h.double()  # exact: integer sums < 2^53
    assert torch.equal(hf @ hf.T, n * torch.eye(n, dtype=torch.float64))


def test_paley_constructions_and_factorisation():
    for q in (3, 7, 11, 19, 23, 31, 43):
        h = paley1(q)
        assert torch.equal(h @ h.T, (q + 1) * torch.eye(q + 1, dtype=h.dtype))
    for q in (5, 13, 17, 29, 37):
        h = paley2(q)
        assert torch.equal(h @ h.T, 2 * (q + 1) * torch.eye(2 * (q + 1), dtype=h.dtype))
    assert hadamard_factors(576)[0] == 16 and hadamard_factors(576)[1].shape[0] == 36
    assert hadamard_factors(1536)[0] == 128 and hadamard_factors(1536)[1].shape[0] == 12


def test_no_hadamard_for_odd_order():
    with pytest.raises(QAPrunerError):
        hadamard_matrix(9)


@pytest.mark.parametrize("n", [576, 1536])
def test_online_hadamard_matches_dense_and_is_orthogonal(n):
    had = OnlineHadamard(n)
    x = torch.randn(3, 5, n, dtype=torch.float64)
    q = had.matrix()
    assert torch.allclose(had(x), x @ q, atol=1e-12)
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_random_rotations_are_orthogonal_and_seeded():
    for f in (random_hadamard, random_orthogonal):
        q = f(576, seed=3)
        assert torch.allclose(q @ q.T, torch.eye(576, dtype=q.dtype), atol=1e-12)
        assert torch.equal(q, f(576, seed=3)) and not torch.equal(q, f(576, seed=4))


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotated_llama_same_logits(kind):
    # testbed widths: hidden 576 (= 16·36), intermediate 1536 (= 128·12), tied embeddings
    model = tiny_llama(layers=2, dtype=torch.float64)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = model(input_ids=ids).logits
    quantize_(model, FP_ROT[kind])
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)  # carries the online Hadamard
    assert model.model.layers[0].mlp.down_proj.input_transform is not None
    out = model(input_ids=ids).logits
    # LlamaRMSNorm computes in fp32 even for fp64 models, hence 1e-5 rather than 1e-12
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    assert not torch.allclose(model.model.embed_tokens.weight[:4].float(), model.lm_head.weight[:4].float())


def test_rotated_llama_fp32_same_logits():
    model = tiny_llama(layers=1)
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(1))
    ref = model(input_ids=ids).logits
    quantize_(model, FP_ROT["hadamard"])
    assert torch.allclose(model(input_ids=ids).logits, ref, atol=2e-4, rtol=0)


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotated_llava_same_logits(kind):
    model = tiny_llava(layers=1, dtype=torch.float64)
    inputs = tiny_llava_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].double()
    ref = model(**inputs).logits
    proj_before = model.model.multi_modal_projector.linear_2.weight.detach().clone()
    quantize_(model, FP_ROT[kind])
    assert not torch.equal(model.model.multi_modal_projector.linear_2.weight, proj_before)
    out = model(**inputs).logits
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), (out - ref).abs().max()
    # vision tower and projector are not quantized by default
    assert not any(isinstance(m, QuantLinear) for m in model.model.vision_tower.modules())
    assert not isinstance(model.model.multi_modal_projector.linear_2, QuantLinear)
