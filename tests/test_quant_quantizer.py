import pytest
import torch
from hypothesis import given, settings, strategies as st

from qapruner.errors import QAPrunerError
from qapruner.quant.quantizer import (
    check_bits, fake_quant, fake_quant_groups, fake_quant_minmax, int_range, qparams_from_range, quantize_int,
    quantize_weight_rtn, weight_qparams,
)


def test_int_ranges():
    assert int_range(4, True) == (-8, 7)
    assert int_range(4, False) == (0, 15)
    assert int_range(8, True) == (-128, 127)
    assert int_range(2, False) == (0, 3)


def test_symmetric_hand_computed():
    # absmax 7 at 4 bits -> scale exactly 1, codes are round-half-even of x
    x = torch.tensor([[-7.0, 2.4, -0.6, 3.5, 2.5, 7.0]], dtype=torch.float64)
    s, z = qparams_from_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True), 4, True)
    assert s.item() == 1.0 and z.item() == 0.0
    assert quantize_int(x, s, z, 4, True).tolist() == [[-7, 2, -1, 4, 2, 7]]
    assert fake_quant_minmax(x, 4, True).tolist() == [[-7.0, 2.0, -1.0, 4.0, 2.0, 7.0]]
    # 8 bits, absmax 2.54 -> scale 0.02
    y = torch.tensor([2.54, -1.0, 0.011], dtype=torch.float64)
    s, z = qparams_from_range(y.min(), y.max(), 8, True)
    assert s.item() == pytest.approx(0.02, abs=1e-15)
    assert quantize_int(y, s, z, 8, True).tolist() == [127, -50, 1]


def test_asymmetric_hand_computed():
    # 3 bits, range [-2, 5] -> scale 1, zero point 2
    x = torch.tensor([-2.0, 0.4, 1.5, 5.0, 2.6], dtype=torch.float64)
    s, z = qparams_from_range(x.min(), x.max(), 3, False)
    assert s.item() == 1.0 and z.item() == 2.0
    assert quantize_int(x, s, z, 3, False).tolist() == [0, 2, 4, 7, 5]
    assert fake_quant(x, s, z, 3, False).tolist() == [-2.0, 0.0, 2.0, 5.0, 3.0]


def test_asymmetric_range_contains_zero():
    x = torch.tensor([1.0, 2.0, 3.0])  # all positive: the range is widened to [0, 3] so 0 is on the grid
    s, z = qparams_from_range(x.min(), x.max(), 2, False)
    assert s.item() == 1.0 and z.item() == 0.0
    assert fake_quant(torch.tensor(0.0), s, z, 2, False).item() == 0.0


def test_zero_rows_do_not_divide_by_zero():
    x = torch.zeros(3, 8)
    assert torch.equal(fake_quant_minmax(x, 4, True), x)
    assert torch.equal(fake_quant_minmax(x, 4, False), x)


def test_sixteen_bits_is_identity():
    x = torch.randn(4, 8)
    assert fake_quant_minmax(x, 16, True) is x
    assert quantize_weight_rtn(x, 16) is x


@pytest.mark.parametrize("bad", [1, 9, 0, 32, 4.0, "4", True])
def test_bad_bits(bad):
    with pytest.raises(QAPrunerError):
        check_bits(bad)


def test_weight_groups_hand_computed():
    w = torch.tensor([[1.0, -7.0, 3.2, 0.0, 0.5, 0.25, -0.5, 0.1]])
    q = quantize_weight_rtn(w, 4, True, group_size=4)
    # group 1: absmax 7 -> scale 1; group 2: absmax 0.5 -> scale 0.5/7
    assert q[0, :4].tolist() == [1.0, -7.0, 3.0, 0.0]
    s = 0.5 / 7
    expected = (torch.round(w[0, 4:] / s) * s)
    assert torch.equal(q[0, 4:], expected)


def test_group_size_must_divide():
    with pytest.raises(QAPrunerError, match="does not divide"):
        quantize_weight_rtn(torch.randn(4, 576), 4, group_size=100)
    with pytest.raises(QAPrunerError):
        fake_quant_groups(torch.randn(2, 10), 4, True, 4)


def test_clip_search_never_worse_and_helps_with_outlier():
    torch.manual_seed(0)
    w = torch.randn(16, 256)
    w[:, 0] = 12.0  # one outlier column
    plain = quantize_weight_rtn(w, 3, True, clip_search=False)
    clipped = quantize_weight_rtn(w, 3, True, clip_search=True)
    e_plain = (w - plain).pow(2).sum(1)
    e_clip = (w - clipped).pow(2).sum(1)
    assert bool((e_clip <= e_plain + 1e-6).all())
    assert e_clip.sum() < e_plain.sum()


def test_grid_values_round_trip_exactly():
    torch.manual_seed(1)
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            w = torch.randn(32, 64)
            s, z = weight_qparams(w, bits, sym, clip_search=True)
            q = fake_quant(w, s, z, bits, sym)
            assert torch.equal(fake_quant(q, s, z, bits, sym), q)


shapes = st.tuples(st.integers(1, 6), st.integers(1, 40))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.sampled_from([2, 3, 4, 5, 6, 7, 8]), sym=st.booleans(), seed=st.integers(0, 2**16),
       spread=st.floats(1e-3, 1e3))
def test_property_error_bound_and_idempotence(shape, bits, sym, seed, spread):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * spread)
    xmin, xmax = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    s, z = qparams_from_range(xmin, xmax, bits, sym)
    q = fake_quant(x, s, z, bits, sym)
    # in range (no clipping): error at most half a step
    assert bool(((x - q).abs() <= s / 2 * (1 + 1e-9)).all())
    # idempotent on a fixed grid; codes are integers inside the range
    assert torch.equal(fake_quant(q, s, z, bits, sym), q)
    codes = quantize_int(x, s, z, bits, sym)
    lo, hi = int_range(bits, sym)
    assert bool((codes == codes.round()).all()) and codes.min() >= lo and codes.max() <= hi


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 4), g=st.sampled_from([4, 8, 16]),
       bits=st.sampled_from([2, 3, 4, 8]), sym=st.booleans(), seed=st.integers(0, 2**16))
def test_property_groups_match_rowwise(rows, groups, g, bits, sym, seed):
    x = torch.randn(rows, groups * g, generator=torch.Generator().manual_seed(seed))
    grouped = fake_quant_groups(x, bits, sym, g)
    manual = torch.cat([fake_quant_minmax(x[:, i * g:(i + 1) * g], bits, sym) for i in range(groups)], dim=1)
    assert torch.equal(grouped, manual)
    w = quantize_weight_rtn(x, bits, sym, group_size=g)
    assert torch.equal(w, manual)


@pytest.mark.parametrize("sym", [True, False])
def test_inplace_fast_path_is_bit_identical_to_the_formula(sym):
    """Without autograd fake_quant runs in place on one buffer; it must equal the written formula bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(64, 96) * torch.rand(64, 1) * 10
    scale, zero = qparams_from_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True), 4, sym)
    formula = (quantize_int(x, scale, zero, 4, sym) - zero) * scale
    fast = fake_quant(x, scale, zero, 4, sym)
    assert torch.equal(fast, formula)
    xg = x.clone().requires_grad_(True)  # the autograd path is the formula itself
    assert torch.equal(fake_quant(xg, scale, zero, 4, sym).detach(), formula)
    assert torch.equal(x, xg.detach())  # the input is never modified
