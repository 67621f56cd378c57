"""Decode steps of a bf16 model attend in fp32 (models/attention.py); everything else is transformers' SDPA."""

import copy

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from qapruner.models.attention import NAME, fp32_decode_sdpa
from qapruner.models.llava import LlavaAdapter
from tiny_models import tiny_llama


class _Module(torch.nn.Module):  # what sdpa_attention_forward reads from the attention module
    num_key_value_groups = 3
    is_causal = True
    training = False


def _qkv(q_len: int, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(q_len)
    q = torch.randn(2, 9, q_len, 64, generator=g).to(dtype)
    k, v = (torch.randn(2, 3, 20, 64, generator=g).to(dtype) for _ in range(2))
    return q, k, v


def test_one_query_row_is_computed_in_fp32_and_returned_in_bf16():
    q, k, v = _qkv(1)
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., :5] = False  # left padding of the second sequence
    out, _ = fp32_decode_sdpa(_Module(), q, k, v, mask)
    ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(3, 1), v.float().repeat_interleave(3, 1),
                                         attn_mask=mask).transpose(1, 2).to(torch.bfloat16)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    native, _ = sdpa_attention_forward(_Module(), q, k, v, mask)
    assert not torch.equal(out, native)  # bf16 SDPA rounds differently: the fp32 path is really taken
    assert (out.float() - native.float()).abs().max() < 0.05


def test_prefill_and_fp32_calls_are_transformers_sdpa_unchanged():
    for q_len, dtype in ((7, torch.bfloat16), (1, torch.float32)):
        q, k, v = _qkv(q_len, dtype)
        k, v = k[..., :7, :], v[..., :7, :]
        out, _ = fp32_decode_sdpa(_Module(), q, k, v, None)
        assert torch.equal(out, sdpa_attention_forward(_Module(), q, k, v, None)[0])


def test_cast_selects_it_and_a_padded_batch_keeps_its_mask():
    model = tiny_llama(layers=2)
    ids = torch.randint(4, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: without the mask the padded row's logits would change
    ref = LlavaAdapter(copy.deepcopy(model).to(torch.bfloat16), None, "t", "t", (4, 4)).model
    adapter = LlavaAdapter(model, None, "t", "t", (4, 4)).cast(torch.bfloat16)
    assert adapter.model.config._attn_implementation == NAME and ref.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(adapter.model(input_ids=ids, attention_mask=mask).logits,
                           ref(input_ids=ids, attention_mask=mask).logits)  # prefill: the same kernel, same mask
        unmasked = ref(input_ids=ids).logits
        assert not torch.equal(unmasked[1], ref(input_ids=ids, attention_mask=mask).logits[1])
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                  pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        ours, theirs = adapter.model.generate(**kw), ref.generate(**kw)
    # decode steps differ only by bf16 vs fp32 attention rounding
    assert len(ours.logits) == 6
    for a, b in zip(ours.logits, theirs.logits):
        assert (a - b).abs().max() < 0.05 * b.abs().max()
