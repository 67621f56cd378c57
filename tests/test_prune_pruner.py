import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qapruner.errors import QAPrunerError
from qapruner.prune import HOSTS, PruneConfig, PruneContext, Pruner, num_keep
from qapruner.prune.fusion import fuse
from qapruner.prune.select import topk_stable

TOPK_HOSTS = ["random", "uniform", "cls", "fastv"]


def make_ctx(b=2, n=16, d=48, seed=0, grid=True):
    g = torch.Generator().manual_seed(seed)
    side = int(math.isqrt(n))
    return PruneContext(
        visual=torch.randn(b, n, d, generator=g),
        grid=(side, side) if grid and side * side == n else None,
        cls_attn=torch.rand(b, n, generator=g),
        text_embeds=torch.randn(b, 5, d, generator=g),
        text_mask=torch.tensor([[1, 1, 1, 1, 1]] + [[0, 0, 1, 1, 1]] * (b - 1)),
        llm_attn=torch.rand(b, n, generator=g),
        matched_error=torch.rand(b, n, generator=g),
    )


def check_indices(idx, b, k, n):
    assert idx.dtype == torch.long and idx.shape == (b, k)
    for row in idx.tolist():
        assert row == sorted(row) and len(set(row)) == k and 0 <= row[0] and row[-1] < n


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("qa", [False, True])
def test_every_host_basic_shape_and_batch_equals_per_image(host, qa):
    ctx = make_ctx(b=3, n=36, seed=1)
    for alpha in ([0.7, "dynamic"] if qa else [0.7]):
        p = Pruner(PruneConfig(host, keep=0.25, qa=qa, alpha=alpha))
        idx = p.select(ctx)
        check_indices(idx, 3, 9, 36)
        for i in range(3):
            assert idx[i].tolist() == p.select(ctx.row(i))[0].tolist()
        assert torch.equal(idx, p.select(ctx))  # deterministic
        s = p.scores(ctx)
        assert s.shape == (3, 36) and torch.isfinite(s).all()


@pytest.mark.parametrize("host", HOSTS)
def test_alpha_one_is_the_host(host):
    ctx = make_ctx(n=25, seed=2)
    ref = Pruner(PruneConfig(host, keep=0.3)).select(ctx)
    assert torch.equal(Pruner(PruneConfig(host, keep=0.3, qa=True, alpha=1.0)).select(ctx), ref)
    # also through the fusion arithmetic itself (no shortcut)
    p = Pruner(PruneConfig(host, keep=0.3, qa=True, alpha=0.5))
    k = p.num_keep(ctx.n)
    fused = fuse(p.host.score(ctx, k), p.sensitivity(ctx), 1.0)
    assert torch.equal(p.host.select(ctx, k, fused), ref)


@pytest.mark.parametrize("host", TOPK_HOSTS)
@pytest.mark.parametrize("sens", ["paper", "matched", "norm"])
def test_alpha_zero_ranks_by_sensitivity_alone(host, sens):
    ctx = make_ctx(n=25, seed=3)
    p = Pruner(PruneConfig(host, keep=0.3, qa=True, alpha=0.0, sensitivity=sens, group_size=16))
    assert torch.equal(p.select(ctx), topk_stable(p.sensitivity(ctx), p.num_keep(25)))


def _outlier_ctx(n=32, d=64, k=8, who=5):
    torch.manual_seed(0)
    v = torch.randn(1, n, d)
    v[0, who, 7] = 200.0  # one massive channel
    # host score: token `who` ranks k + 1, just outside the host's top-k
    order = [i for i in range(n) if i != who]
    ranks = order[:k] + [who] + order[k:]
    sp = torch.empty(1, n)
    for r, i in enumerate(ranks):
        sp[0, i] = 1.0 - r / n
    return PruneContext(visual=v, grid=(4, 8), cls_attn=sp, llm_attn=sp.clone())


@pytest.mark.parametrize("host", ["cls", "fastv"])
def test_outlier_token_kept_by_qa_not_by_host(host):
    ctx = _outlier_ctx()
    assert 5 not in Pruner(PruneConfig(host, keep=0.25)).select(ctx)[0].tolist()
    assert 5 in Pruner(PruneConfig(host, keep=0.25, qa=True)).select(ctx)[0].tolist()
    assert 5 in Pruner(PruneConfig(host, keep=0.25, qa=True, alpha="dynamic")).select(ctx)[0].tolist()


def test_norm_sensitivity_fuses_like_the_released_code():
    """--sensitivity norm: the DPP quality is alpha * relevance + (1 - alpha) * minmax_eps(||x_i||), as in the
    released QVLM code (one image per batch there), and a high-norm token enters the selection."""
    from qapruner.prune.hosts.cdpruner import instruction_relevance
    from qapruner.prune.select import dpp_greedy, dpp_kernel

    ctx = make_ctx(b=1, n=36, d=48, seed=4)
    n = ctx.visual.norm(dim=-1)
    q = 0.7 * instruction_relevance(ctx.visual, ctx.text_embeds, ctx.text_mask) + \
        0.3 * (n - n.min() + 1e-6) / (n.max() - n.min() + 1e-6)
    p = Pruner(PruneConfig("cdpruner", keep=0.25, qa=True, sensitivity="norm"))
    torch.testing.assert_close(p.scores(ctx), q)
    assert torch.equal(p.select(ctx), dpp_greedy(dpp_kernel(ctx.visual, q), 9).sort(dim=-1).values)
    ctx = _outlier_ctx()
    assert 5 in Pruner(PruneConfig("cls", keep=0.25, qa=True, sensitivity="norm")).select(ctx)[0].tolist()


def test_outlier_uniform():
    torch.manual_seed(0)
    v = torch.randn(1, 64, 64)
    ctx = PruneContext(visual=v, grid=(8, 8))
    host = Pruner(PruneConfig("uniform", keep=0.25)).select(ctx)[0].tolist()
    who = next(i for i in range(64) if i not in host and (i - 1 in host or i + 1 in host))
    v[0, who, 3] = 300.0
    assert who not in Pruner(PruneConfig("uniform", keep=0.25)).select(ctx)[0].tolist()
    assert who in Pruner(PruneConfig("uniform", keep=0.25, qa=True, alpha=0.5)).select(ctx)[0].tolist()


def test_uniform_qa_is_the_host_above_its_alpha_threshold():
    """docs/pruning.md: on a 16x16 grid at k = 32 the best non-anchor has S^P = s = 0.553, so even a token
    with S^Q = 1 against anchors at S^Q = 0 overtakes an anchor only when alpha < 1 / (2 - s) ~ 0.691."""
    from qapruner.prune.hosts.uniform import uniform_score

    s = sorted(set(uniform_score(16, 16, 32).tolist()), reverse=True)[1]
    threshold = 1.0 / (2.0 - s)
    assert s == pytest.approx(0.553, abs=1e-3)
    torch.manual_seed(0)
    v = torch.randn(1, 256, 64) * 0.01
    host = Pruner(PruneConfig("uniform", keep=0.125)).select(PruneContext(visual=v, grid=(16, 16)))[0].tolist()
    v[0, [i for i in range(256) if i not in host], 3] = 300.0  # every non-anchor is an extreme outlier
    ctx = PruneContext(visual=v, grid=(16, 16))
    above = Pruner(PruneConfig("uniform", keep=0.125, qa=True, alpha=threshold + 0.01)).select(ctx)[0].tolist()
    below = Pruner(PruneConfig("uniform", keep=0.125, qa=True, alpha=threshold - 0.01)).select(ctx)[0].tolist()
    assert above == host
    assert below != host


def test_outlier_cdpruner():
    torch.manual_seed(0)
    n, d = 32, 64
    v = torch.randn(1, n, d)
    v[0, 5, 7] = 200.0
    text = torch.randn(1, 1, d) * 0.1
    text[0, 0, 7] = -10.0  # the outlier is the least instruction-relevant token: host quality 0
    ctx = PruneContext(visual=v, grid=None, text_embeds=text)
    assert 5 not in Pruner(PruneConfig("cdpruner", keep=0.25)).select(ctx)[0].tolist()
    assert 5 in Pruner(PruneConfig("cdpruner", keep=0.25, qa=True, alpha=0.3)).select(ctx)[0].tolist()


def test_outlier_divprune():
    # 7 tight clusters of 4 tokens + a pair (twin, 50 x twin) in its own direction; k = 8 keeps one per
    # group. Cosine distance cannot tell the pair apart, so DivPrune keeps the lower index (the twin);
    # the QA variant keeps the massive copy.
    torch.manual_seed(0)
    d = 32
    dirs = torch.linalg.qr(torch.randn(d, d))[0][:8]
    toks = [dirs[c] + 0.01 * torch.randn(d) for c in range(7) for _ in range(4)]
    twin = dirs[7] + 0.3 * torch.randn(d)
    toks += [twin, 50 * twin]
    ctx = PruneContext(visual=torch.stack(toks)[None], grid=None)
    host = Pruner(PruneConfig("divprune", keep=8 / 30)).select(ctx)[0].tolist()
    qa = Pruner(PruneConfig("divprune", keep=8 / 30, qa=True)).select(ctx)[0].tolist()
    assert 28 in host and 29 not in host
    assert 29 in qa and 28 not in qa
    assert len({i // 4 for i in qa}) == 8  # still one token per group


@pytest.mark.parametrize(
    "keep,n,k", [(0.5, 5, 2), (0.5, 7, 4), (0.001, 10, 1), (0.999, 10, 10), (0.125, 576, 72), (1 / 3, 9, 3), (0.3, 1, 1)]
)
def test_kept_count_rounding_edges(keep, n, k):
    assert num_keep(keep, n) == k
    ctx = make_ctx(b=2, n=n, seed=4, grid=False)
    for host in ("random", "cdpruner", "divprune"):
        check_indices(Pruner(PruneConfig(host, keep=keep, qa=True)).select(ctx), 2, k, n)


@settings(max_examples=40, deadline=None)
@given(keep=st.floats(min_value=1e-6, max_value=1.0, exclude_min=False), n=st.integers(1, 50))
def test_kept_count_property(keep, n):
    ctx = PruneContext(visual=torch.randn(1, n, 8))
    idx = Pruner(PruneConfig("random", keep=keep, qa=True)).select(ctx)
    assert idx.shape == (1, num_keep(keep, n))
    assert idx.shape[1] == (n if keep >= 1 else max(1, round(keep * n)))


@pytest.mark.parametrize("keep", [1.0, 1])
def test_keep_one_is_noop(keep):
    ctx = PruneContext(visual=torch.randn(2, 10, 8))  # no signals at all: a no-op needs none
    p = Pruner(PruneConfig("fastv", keep=keep, qa=True))
    assert p.needs == {"visual"}
    assert torch.equal(p.select(ctx), torch.arange(10).expand(2, -1))


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.5, 2, float("nan"), float("inf"), "half", None, True])
def test_bad_keep_raises(keep):
    with pytest.raises(QAPrunerError):
        PruneConfig("random", keep=keep)


@pytest.mark.parametrize(
    "kw",
    [
        dict(host="nope"),
        dict(alpha=1.5),
        dict(alpha=float("nan")),
        dict(alpha="adaptive"),
        dict(bits=1),
        dict(bits=4.0),
        dict(group_size=0),
        dict(sensitivity="exact"),
        dict(layer_k=-1),
    ],
)
def test_bad_config_raises(kw):
    args = dict(host="cls", keep=0.5) | kw
    with pytest.raises(QAPrunerError):
        PruneConfig(**args)


@pytest.mark.parametrize(
    "host,missing", [("cls", "cls_attn"), ("fastv", "llm_attn"), ("cdpruner", "text_embeds")]
)
def test_missing_signal_raises(host, missing):
    ctx = make_ctx(n=16)
    setattr(ctx, missing, None)
    with pytest.raises(QAPrunerError, match=missing):
        Pruner(PruneConfig(host, keep=0.5)).select(ctx)


def test_matched_needs_matched_error():
    ctx = make_ctx(n=16)
    ctx.matched_error = None
    p = Pruner(PruneConfig("cls", keep=0.5, qa=True, sensitivity="matched"))
    assert "matched_error" in p.needs
    with pytest.raises(QAPrunerError, match="matched_error"):
        p.select(ctx)


def test_needs():
    assert Pruner(PruneConfig("random", 0.5)).needs == {"visual"}
    assert Pruner(PruneConfig("uniform", 0.5)).needs == {"visual", "grid"}
    assert Pruner(PruneConfig("cls", 0.5)).needs == {"visual", "cls_attn"}
    assert Pruner(PruneConfig("fastv", 0.5)).needs == {"visual", "llm_attn"}
    assert Pruner(PruneConfig("fastv", 0.5)).location == "layer"
    assert Pruner(PruneConfig("divprune", 0.5)).needs == {"visual"}
    assert Pruner(PruneConfig("cdpruner", 0.5)).needs == {"visual", "text_embeds", "text_mask"}


def test_bad_shapes_raise():
    with pytest.raises(QAPrunerError):
        Pruner(PruneConfig("cls", 0.5)).select(PruneContext(visual=torch.randn(1, 4, 8), cls_attn=torch.rand(1, 5)))
    with pytest.raises(QAPrunerError):
        Pruner(PruneConfig("uniform", 0.5)).select(PruneContext(visual=torch.randn(1, 4, 8), grid=(3, 3)))
    with pytest.raises(QAPrunerError):
        Pruner(PruneConfig("random", 0.5)).select(PruneContext(visual=torch.randn(4, 8)))


def test_random_host_seeded():
    ctx = PruneContext(visual=torch.randn(2, 30, 8))
    a = Pruner(PruneConfig("random", 0.2, seed=1)).select(ctx)
    assert torch.equal(a, Pruner(PruneConfig("random", 0.2, seed=1)).select(ctx))
    assert not torch.equal(a, Pruner(PruneConfig("random", 0.2, seed=2)).select(ctx))


def test_uniform_host_spreads_over_grid():
    ctx = PruneContext(visual=torch.randn(1, 64, 8), grid=(8, 8))
    idx = Pruner(PruneConfig("uniform", 0.25)).select(ctx)[0]
    rows, cols = (idx // 8).tolist(), (idx % 8).tolist()
    assert sorted(set(rows)) == [1, 3, 5, 7] and sorted(set(cols)) == [1, 3, 5, 7]
    for n, grid in [(576, (24, 24)), (256, (16, 16)), (35, (5, 7))]:
        for keep in (0.05, 0.125, 0.33, 0.9):
            c = PruneContext(visual=torch.randn(1, n, 4), grid=grid)
            check_indices(Pruner(PruneConfig("uniform", keep)).select(c), 1, num_keep(keep, n), n)


def test_dynamic_alpha_is_per_image():
    ctx = make_ctx(b=2, n=16)
    ctx.visual[1, 3, 0] = 500.0
    a = Pruner(PruneConfig("cls", 0.5, qa=True, alpha="dynamic")).alpha(ctx)
    assert a.shape == (2,) and 0.45 <= a.min() and a.max() <= 0.55 and a[1] < a[0]


def test_bf16_visual():
    ctx = make_ctx(n=16)
    ctx.visual = ctx.visual.bfloat16()
    ctx.text_embeds = ctx.text_embeds.bfloat16()
    for host in HOSTS:
        check_indices(Pruner(PruneConfig(host, 0.25, qa=True)).select(ctx), 2, 4, 16)
