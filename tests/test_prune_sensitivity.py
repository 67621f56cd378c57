import math

import pytest
import torch

from qapruner.errors import QAPrunerError
from qapruner.prune.sensitivity import (
    activation_span,
    dynamic_alpha,
    fake_quant_groupwise,
    minmax,
    norm_sensitivity,
    quant_error,
    sensitivity_score,
    token_sensitivity,
)


def test_quant_error_hand_computed_1x8_g4():
    # group 1: absmax 7 -> s = 1, every value is on the grid -> error 0
    # group 2: absmax 1 -> s = 1/7: 0.6 -> 4/7 (err 0.2/7), -1 -> -1, 0 -> 0, 0.25 -> 2/7 (err -0.25/7)
    x = torch.tensor([[1.0, 2.0, 3.0, 7.0, 0.6, -1.0, 0.0, 0.25]])
    xq = fake_quant_groupwise(x, bits=4, group_size=4)
    expect_q = torch.tensor([[1.0, 2.0, 3.0, 7.0, 4 / 7, -1.0, 0.0, 2 / 7]])
    torch.testing.assert_close(xq, expect_q, rtol=0, atol=1e-6)
    e = quant_error(x, bits=4, group_size=4)
    assert e.shape == (1,)
    assert e.item() == pytest.approx(math.sqrt(0.2**2 + 0.25**2) / 7, rel=1e-5)
    assert activation_span(x).item() == pytest.approx(8.0)


def test_partial_last_group_gets_own_scale():
    torch.manual_seed(0)
    x = torch.randn(3, 10)
    x[:, 9] *= 50  # outlier in the partial group must not affect the full groups
    q = fake_quant_groupwise(x, bits=4, group_size=4)
    parts = [fake_quant_groupwise(x[:, i : i + 4], 4, 4) for i in (0, 4)] + [fake_quant_groupwise(x[:, 8:], 4, 2)]
    torch.testing.assert_close(q, torch.cat(parts, dim=-1), rtol=0, atol=0)


def test_d576_g128_matches_explicit_groups():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 576)
    e = quant_error(x, 4, 128)
    sq = sum(
        (x[..., i : i + 128] - fake_quant_groupwise(x[..., i : i + 128], 4, 128)).pow(2).sum(-1)
        for i in range(0, 576, 128)
    )
    torch.testing.assert_close(e, sq.sqrt(), rtol=1e-5, atol=1e-6)


def test_group_larger_than_d_is_per_token_and_zero_vector_is_safe():
    x = torch.zeros(1, 2, 6)
    assert torch.equal(quant_error(x, 4, 128), torch.zeros(1, 2))
    x = torch.tensor([[0.5, -3.5, 1.0]])
    # single group, s = 3.5 / 7 = 0.5: values on the grid -> error 0
    assert quant_error(x, 4, 128).item() == pytest.approx(0.0, abs=1e-6)


def test_minmax_nan_free_on_constant_rows():
    s = torch.full((2, 7), 3.25)
    out = minmax(s)
    assert torch.isfinite(out).all() and torch.equal(out, torch.zeros(2, 7))
    sq = sensitivity_score(torch.ones(2, 7, 16))  # all tokens equal
    assert torch.isfinite(sq).all() and torch.equal(sq, torch.zeros(2, 7))
    out = minmax(torch.tensor([[1.0, 3.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.5]]))


def test_sensitivity_score_range_and_matched_error():
    torch.manual_seed(2)
    v = torch.randn(2, 9, 32)
    sq = sensitivity_score(v, 4, 8)
    assert sq.shape == (2, 9) and sq.min() >= 0 and sq.max() <= 1
    err = torch.rand(2, 9)
    m = sensitivity_score(v, 4, 8, error=err)
    torch.testing.assert_close(m, 0.5 * minmax(err) + 0.5 * minmax(activation_span(v)))


def test_bf16_input_computed_in_fp32():
    torch.manual_seed(3)
    v = torch.randn(1, 4, 64)
    torch.testing.assert_close(quant_error(v.bfloat16(), 4, 32), quant_error(v.bfloat16().float(), 4, 32))


def test_dynamic_alpha_formula():
    flat = torch.ones(1, 10)  # CV 0 -> 0.55
    assert dynamic_alpha(flat).item() == pytest.approx(0.55)
    spiky = torch.tensor([[100.0] + [0.001] * 99])  # CV huge -> clamp -> 0.45
    assert dynamic_alpha(spiky).item() == pytest.approx(0.45)
    e = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    cv = e.std(correction=0) / e.mean()
    assert dynamic_alpha(e).item() == pytest.approx(0.55 - 0.10 * min(max((cv.item() - 0.2), 0), 1), rel=1e-6)


def test_bad_bits_or_group_raise():
    with pytest.raises(QAPrunerError):
        fake_quant_groupwise(torch.ones(1, 4), bits=1)
    with pytest.raises(QAPrunerError):
        fake_quant_groupwise(torch.ones(1, 4), group_size=0)


# ---- the authors' released L2-norm sensitivity (--sensitivity norm) -------------------------------------------
def _released_norm_score(image_features: torch.Tensor) -> torch.Tensor:
    """Transcribed from royalneverwin/QVLM llava/model/llava_arch.py (encode_images, add_quant): min and max over
    the whole batch, +1e-6 in numerator and denominator."""
    q = image_features.norm(dim=-1)
    q_min, q_max = q.min(), q.max()
    return (q - q_min + 1e-6) / (q_max - q_min + 1e-6)


def test_norm_sensitivity_hand_computed():
    # norms 5, 1, 3 -> (n - 1 + 1e-6) / (4 + 1e-6)
    x = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, -3.0]]])
    got = norm_sensitivity(x)
    eps = 1e-6
    expect = torch.tensor([[(4 + eps) / (4 + eps), eps / (4 + eps), (2 + eps) / (4 + eps)]])
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-9)


def test_norm_sensitivity_equals_released_code_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 32, generator=g) * torch.rand(3, 16, 1, generator=g) * 5
    got = norm_sensitivity(x)
    for b in range(3):  # the released evaluation runs one image per batch
        torch.testing.assert_close(got[b : b + 1], _released_norm_score(x[b : b + 1]), rtol=0, atol=1e-7)
    # over a batch of 3 the released code's min/max span all images, so scores differ from per-image ones
    assert not torch.allclose(got, _released_norm_score(x), atol=1e-4)


def test_norm_sensitivity_constant_norms_are_all_one_and_bf16_safe():
    x = torch.tensor([[[1.0, 0.0], [0.0, -1.0], [0.6, 0.8]]])
    torch.testing.assert_close(norm_sensitivity(x), torch.ones(1, 3), rtol=0, atol=1e-6)
    xb = torch.randn(2, 8, 16).to(torch.bfloat16)
    assert norm_sensitivity(xb).dtype == torch.float32
    torch.testing.assert_close(norm_sensitivity(xb), norm_sensitivity(xb.float()))


def test_token_sensitivity_dispatch():
    x = torch.randn(2, 10, 256, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(token_sensitivity(x, "paper"), sensitivity_score(x))
    torch.testing.assert_close(token_sensitivity(x, "norm"), norm_sensitivity(x))
    err = torch.rand(2, 10)
    torch.testing.assert_close(token_sensitivity(x, "matched", error=err), sensitivity_score(x, error=err))
    with pytest.raises(QAPrunerError):
        token_sensitivity(x, "matched")
    with pytest.raises(QAPrunerError):
        token_sensitivity(x, "l2")
