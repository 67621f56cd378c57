import pytest
import torch

from dpp_reference import dpp_greedy_naive, dpp_logdet, dpp_map_exhaustive
from qapruner.prune.select import cosine_distance, dpp_greedy, dpp_kernel, maxmin_greedy, topk_stable


def _kernel(seed, b=1, n=8, d=5):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(b, n, d, generator=g)
    q = torch.rand(b, n, generator=g) + 0.05
    return dpp_kernel(f, q)


def test_topk_stable_tie_break_and_order():
    s = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5]])
    assert topk_stable(s, 3).tolist() == [[0, 1, 3]]
    assert topk_stable(s, 4).tolist() == [[0, 1, 2, 3]]
    assert topk_stable(torch.zeros(1, 5), 2).tolist() == [[0, 1]]


def test_topk_nan_raises():
    from qapruner.errors import QAPrunerError

    with pytest.raises(QAPrunerError):
        topk_stable(torch.tensor([[0.1, float("nan")]]), 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_fast_greedy_equals_naive_greedy(seed, k):
    L = _kernel(seed, n=8, d=8)  # full rank: beyond the rank every log det is -inf and greedy order is arbitrary
    assert dpp_greedy(L, k)[0].tolist() == dpp_greedy_naive(L[0], k).tolist()


@pytest.mark.parametrize("seed", range(10))
def test_greedy_k1_is_exact_map(seed):
    L = _kernel(100 + seed)
    idx, _ = dpp_map_exhaustive(L[0], 1)
    assert dpp_greedy(L, 1)[0].tolist() == idx.tolist()


def test_greedy_logdet_close_to_exhaustive():
    """Greedy MAP is not always optimal; on small random kernels it is close (and never above the optimum)."""
    gaps, exact = [], 0
    for seed in range(30):
        L = _kernel(200 + seed, n=9, d=6)
        for k in (2, 3, 4):
            g = dpp_logdet(L[0], dpp_greedy(L, k)[0])
            _, best = dpp_map_exhaustive(L[0], k)
            assert g <= best + 1e-9
            gaps.append(best - g)
            exact += gaps[-1] < 1e-9
    gaps = torch.tensor(gaps)
    assert exact / len(gaps) >= 0.6  # greedy finds the exact MAP in most small cases
    assert gaps.max() < 1.0  # and is never far off: det ratio > e^-1
    assert gaps.mean() < 0.1


def test_dpp_batched_equals_per_row():
    L = _kernel(7, b=4, n=20, d=12)
    batched = dpp_greedy(L, 6)
    for i in range(4):
        assert batched[i].tolist() == dpp_greedy(L[i : i + 1], 6)[0].tolist()


def test_dpp_k_equals_rank_deficient_still_returns_k_distinct():
    f = torch.randn(1, 10, 3)  # rank 3 kernel, ask for 6
    out = dpp_greedy(dpp_kernel(f), 6)[0]
    assert len(set(out.tolist())) == 6 and out.tolist() == sorted(out.tolist())


def _maxmin_naive(dist, k, q=None):
    n = dist.shape[0]
    q = torch.ones(n) if q is None else q
    sel = []
    for t in range(k):
        best, bi = None, None
        for i in range(n):
            if i in sel:
                continue
            m = min(dist[i, j].item() for j in range(n) if j != i) if t == 0 else min(dist[i, j].item() for j in sel)
            v = q[i].item() * m
            if best is None or v > best:
                best, bi = v, i
        sel.append(bi)
    return sorted(sel)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("weighted", [False, True])
def test_maxmin_equals_naive(seed, weighted):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(2, 12, 6, generator=g)
    q = torch.rand(2, 12, generator=g) if weighted else None
    d = cosine_distance(f)
    out = maxmin_greedy(d, 5, q)
    for i in range(2):
        assert out[i].tolist() == _maxmin_naive(d[i], 5, None if q is None else q[i])


def test_maxmin_duplicates_do_not_repeat():
    f = torch.ones(1, 6, 4)  # all identical: every distance 0
    out = maxmin_greedy(cosine_distance(f), 4)
    assert out.tolist() == [[0, 1, 2, 3]]
