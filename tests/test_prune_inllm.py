import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from qapruner.errors import QAPrunerError
from qapruner.prune import PruneConfig, PruneContext, Pruner
from qapruner.models.llava import LlavaAdapter, LMInputs
from qapruner.models.llava import position_ids as default_position_ids
from qapruner.prune.inllm import last_token_attention, prune_at_layer

D, V = 48, 64


def tiny_llama(impl="sdpa", seed=0, layers=4):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
    )
    cfg._attn_implementation = impl
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # bigger weights so attention is far from uniform
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return m


def batch(seed=0):
    """Row 0: 30 tokens, visual at 4..19; row 1: 26 tokens (4 left pads), visual at 2..17 of its own text."""
    g = torch.Generator().manual_seed(seed)
    lens, n = [30, 26], 16
    length = max(lens)
    emb = torch.zeros(2, length, D)
    mask = torch.zeros(2, length, dtype=torch.long)
    vis = torch.zeros(2, n, dtype=torch.long)
    starts = [4, 2]
    for r, (ln, st) in enumerate(zip(lens, starts)):
        off = length - ln
        emb[r, off:] = torch.randn(ln, D, generator=g)
        mask[r, off:] = 1
        vis[r] = off + st + torch.arange(n)
    return emb, mask, vis, lens


def forward_with_inllm_pruning(m, emb, mask, vis, pruner, ctx_extra=None):
    """The adapter's in-LLM path on raw tensors (the adapter's LM verbs work on a causal LM too)."""
    adapter = LlavaAdapter(m, None, "tiny", "tiny", (4, 4))
    ctx = PruneContext(visual=emb[:, :1], **ctx_extra) if ctx_extra else None
    return prune_at_layer(adapter, LMInputs(emb, mask, default_position_ids(mask), vis), pruner, ctx)


def plain_last_logits(m, emb, mask):
    with torch.no_grad():
        out = m(inputs_embeds=emb, attention_mask=mask, position_ids=default_position_ids(mask))
    return out.logits[:, -1]


@pytest.mark.parametrize("host,qa", [("fastv", False), ("fastv", True), ("cls", True)])
def test_keep_all_equals_plain_forward(host, qa):
    m = tiny_llama()
    emb, mask, vis, _ = batch()
    p = Pruner(PruneConfig(host, keep=1.0, qa=qa, layer_k=2))
    with torch.no_grad():
        logits, keep = forward_with_inllm_pruning(m, emb, mask, vis, p)
    torch.testing.assert_close(logits, plain_last_logits(m, emb, mask), rtol=1e-5, atol=1e-5)
    assert torch.equal(keep, torch.arange(16).expand(2, -1))


@pytest.mark.parametrize("host,qa,alpha", [("fastv", False, 0.7), ("fastv", True, 0.7), ("fastv", True, "dynamic"), ("divprune", True, 0.7)])
def test_batch_equals_rows_alone(host, qa, alpha):
    m = tiny_llama()
    emb, mask, vis, lens = batch()
    p = Pruner(PruneConfig(host, keep=0.25, qa=qa, alpha=alpha, layer_k=2, group_size=16))
    with torch.no_grad():
        logits, keep = forward_with_inllm_pruning(m, emb, mask, vis, p)
        assert keep.shape == (2, 4)
        for r, ln in enumerate(lens):
            off = emb.shape[1] - ln
            lr, kr = forward_with_inllm_pruning(
                m, emb[r : r + 1, off:], mask[r : r + 1, off:], vis[r : r + 1] - off, p
            )
            assert kr[0].tolist() == keep[r].tolist()
            torch.testing.assert_close(lr[0], logits[r], rtol=1e-4, atol=1e-5)
    assert not torch.equal(keep[0], keep[1])  # each row keeps its own set (here they differ)


def test_explicit_attention_equals_eager_attentions():
    m = tiny_llama(impl="eager")
    emb, mask, vis, _ = batch()
    kk = 2
    with torch.no_grad():
        out = m(
            inputs_embeds=emb,
            attention_mask=mask,
            position_ids=default_position_ids(mask),
            output_attentions=True,
            output_hidden_states=True,
        )
        ref = out.attentions[kk][:, :, -1].mean(dim=1)  # (B, L)
        h = out.hidden_states[kk]  # input of layer kk
        pos = default_position_ids(mask)
        state = LlavaAdapter(m, None, "tiny", "tiny", (4, 4)).decoder_state(h, mask, pos)
        mine = last_token_attention(m.model.layers[kk], state)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
    assert mine[1, :4].abs().max() == 0  # no attention to left pads

    # and the same signal reaches the pruner inside forward_with_inllm_pruning (SDPA model)
    seen = {}

    class Spy(Pruner):
        def select(self, ctx):
            seen["ctx"] = ctx
            return super().select(ctx)

    # FastV's rule (its public code): the score is the attention row of layer K - 1, the pruned states are the
    # input of layer K
    sdpa = tiny_llama(impl="sdpa")
    with torch.no_grad():
        _, keep = forward_with_inllm_pruning(sdpa, emb, mask, vis, Spy(PruneConfig("fastv", keep=0.25, layer_k=kk)))
    previous = out.attentions[kk - 1][:, :, -1].mean(dim=1).gather(1, vis)
    torch.testing.assert_close(seen["ctx"].llm_attn, previous, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["ctx"].visual, h.gather(1, vis[..., None].expand(-1, -1, D)))
    top = torch.topk(previous, 4, dim=1).indices.sort(dim=1).values
    assert torch.equal(keep, top)
    assert not torch.equal(top, torch.topk(ref.gather(1, vis), 4, dim=1).indices.sort(dim=1).values)


@pytest.mark.parametrize("seed", range(20))
def test_fastv_keeps_the_top_k_of_the_previous_layers_attention(seed):
    """Against eager attention with output_attentions, on random tiny Llamas: K in {1, 2, 3}, keep 4 of 16."""
    m = tiny_llama(impl="eager", seed=seed)
    emb, mask, vis, _ = batch(seed)
    kk = 1 + seed % 3
    with torch.no_grad():
        att = m(inputs_embeds=emb, attention_mask=mask, position_ids=default_position_ids(mask),
                output_attentions=True).attentions
        _, keep = forward_with_inllm_pruning(m, emb, mask, vis, Pruner(PruneConfig("fastv", keep=0.25, layer_k=kk)))
    row = att[kk - 1][:, :, -1].mean(dim=1).gather(1, vis)
    assert torch.equal(keep, torch.topk(row, 4, dim=1).indices.sort(dim=1).values)


def test_fastv_needs_a_previous_layer():
    with pytest.raises(QAPrunerError, match="K must be at least 1"):
        PruneConfig("fastv", keep=0.5, layer_k=0)
    PruneConfig("cls", keep=0.5, layer_k=0)  # K only matters to the in-LLM host


class FakeQuantLinear(nn.Module):
    """Stand-in for the quantization engine's module: same call signature, not an nn.Linear."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        s = lin.weight.abs().amax(dim=1, keepdim=True) / 7
        self.w = nn.Parameter((lin.weight / s).round() * s)
        self.b = lin.bias

    def forward(self, x):
        s = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127
        return nn.functional.linear((x / s).round() * s, self.w, self.b)


def test_works_with_swapped_linears():
    m = tiny_llama()
    for layer in m.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, FakeQuantLinear(child))
    emb, mask, vis, _ = batch()
    with torch.no_grad():
        full, _ = forward_with_inllm_pruning(m, emb, mask, vis, Pruner(PruneConfig("fastv", keep=1.0)))
        torch.testing.assert_close(full, plain_last_logits(m, emb, mask), rtol=1e-5, atol=1e-5)
        logits, keep = forward_with_inllm_pruning(m, emb, mask, vis, Pruner(PruneConfig("fastv", 0.25, qa=True)))
    assert logits.shape == (2, V) and torch.isfinite(logits).all() and keep.shape == (2, 4)


def test_ctx_extra_and_matched_callable():
    m = tiny_llama()
    emb, mask, vis, _ = batch()
    calls = {}

    def err(v):
        calls["shape"] = tuple(v.shape)
        return v.pow(2).sum(-1)

    p = Pruner(PruneConfig("cls", 0.25, qa=True, sensitivity="matched"))
    with torch.no_grad():
        _, keep = forward_with_inllm_pruning(
            m, emb, mask, vis, p, ctx_extra={"cls_attn": torch.rand(2, 16), "matched_error": err, "grid": (4, 4)}
        )
    assert calls["shape"] == (2, 16, D) and keep.shape == (2, 4)


def test_inllm_errors():
    m = tiny_llama()
    emb, mask, vis, _ = batch()
    with pytest.raises(QAPrunerError):
        forward_with_inllm_pruning(m, emb, mask, vis, Pruner(PruneConfig("fastv", 0.5, layer_k=4)))
    with pytest.raises(QAPrunerError):
        forward_with_inllm_pruning(nn.Linear(2, 2), emb, mask, vis, Pruner(PruneConfig("fastv", 0.5)))
    with pytest.raises(QAPrunerError, match="cls_attn"):
        forward_with_inllm_pruning(m, emb, mask, vis, Pruner(PruneConfig("cls", 0.5)))
