"""FastV inside ``generate``: hooks that prune at the input of layer K in the prefill and keep layers ≥ K
consistent with their shorter KV cache in every later step (see ``deploy.generate``)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..errors import QAPrunerError
from ..models.attention import SDPA_LIKE
from ..models.llava import additive_mask, gather_tokens


class _LayerPruning:
    """Hooks for one generate call: drop visual tokens at the input of layer K in the prefill and keep layers
    ≥ K consistent with their shorter KV cache in every later step."""

    def __init__(self, handle, vpos: Tensor, mask: Tensor, base):  # handle: deploy.generate.PruningHandle
        self.handle, self.adapter, self.pruner = handle, handle.adapter, handle.pruner
        self.k = self.pruner.config.layer_k
        self.vpos, self.full_mask, self.base = vpos, mask, base
        self.calls = self.since = 0
        self.keep: Tensor | None = None
        self.llm_attn: Tensor | None = None  # FastV's score, computed entering layer K - 1 in the prefill
        self.short_mask: Tensor | None = None  # (B, L') padding mask of the pruned prompt
        self.step: dict = {}

    def install(self) -> list:
        a = self.adapter
        impl = getattr(a.parts.lm.config, "_attn_implementation", None)
        if impl is not None and impl not in SDPA_LIKE:
            raise QAPrunerError(f"In-LLM (FastV) pruning in generate needs attn_implementation 'sdpa' or 'eager', "
                                f"got {impl!r}.")
        hooks = [a.parts.lm.register_forward_pre_hook(self._lm_hook, with_kwargs=True)]
        if "llm_attn" in self.pruner.needs:  # FastV's score: the attention layer K - 1 computes in the prefill
            hooks.append(a.layer(self.k - 1).register_forward_pre_hook(self._attention_hook, with_kwargs=True))
        for i in range(self.k, a.num_layers):
            hooks.append(a.layer(i).register_forward_pre_hook(self._layer_hook(i), with_kwargs=True))
        return hooks

    def _lm_hook(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids")
        q = (embeds if embeds is not None else ids).shape[1]
        m2d = kwargs.get("attention_mask")
        if m2d is not None and (not isinstance(m2d, Tensor) or m2d.dim() != 2):
            raise QAPrunerError("In-LLM (FastV) pruning in generate needs a 2-D attention mask (dynamic KV cache).")
        if (embeds if embeds is not None else ids).shape[0] != self.vpos.shape[0]:
            raise QAPrunerError("In-LLM (FastV) pruning in generate needs one sequence per prompt "
                                "(num_beams = num_return_sequences = 1).")
        self.calls += 1
        if self.calls > 1:
            self.since += q  # tokens after the prompt, this step's included
        if self.calls == 1 and q != self.full_mask.shape[1]:
            raise QAPrunerError("In-LLM (FastV) pruning in generate expects the whole prompt in the first forward.")
        self.step = {"q": q, "mask2d": m2d, "prefill": self.calls == 1}
        return None

    def _attention_hook(self, module, args, kwargs):
        """Prefill, entering layer K - 1: the last position's head-averaged attention row of that layer."""
        from ..prune.inllm import last_token_attention

        if self.step["prefill"] and self.pruner.num_keep(self.vpos.shape[1]) < self.vpos.shape[1]:
            hidden = args[0] if args else kwargs["hidden_states"]
            state = self._state(hidden, kwargs)
            self.llm_attn = last_token_attention(module, state).gather(1, self.vpos)
        return None

    def _state(self, hidden: Tensor, kwargs):
        from ..models.llava import DecoderState

        b, mask = self.vpos.shape[0], self.full_mask
        pos = kwargs["position_ids"].expand(b, -1)
        cos, sin = (t.expand(b, -1, -1) for t in kwargs["position_embeddings"])
        return DecoderState(hidden, mask, pos, additive_mask(mask, hidden.dtype), (cos, sin))

    def _layer_hook(self, i: int):
        def hook(module, args, kwargs):
            step = self.step
            if i == self.k:
                hidden = args[0] if args else kwargs["hidden_states"]
                if step["prefill"]:
                    hidden = self._prune(hidden, kwargs)
                    if args:
                        args = (hidden,) + tuple(args[1:])
                    else:
                        kwargs["hidden_states"] = hidden
                else:
                    self._decode_mask(step, hidden.dtype)
            kwargs["attention_mask"] = step["mask4d"]
            if step["prefill"]:
                kwargs["position_ids"] = step["position_ids"]
                kwargs["position_embeddings"] = step["position_embeddings"]
            return args, kwargs
        return hook

    def _prune(self, hidden: Tensor, kwargs) -> Tensor:
        """Prefill at layer K: choose (exactly as ``prune.inllm.prune_at_layer``) and drop the other visual tokens."""
        from ..prune.context import PruneContext

        a, pruner, vp = self.adapter, self.pruner, self.vpos
        b, n = vp.shape
        mask = self.full_mask
        state = self._state(hidden, kwargs)
        pos, (cos, sin) = state.position_ids, state.position_embeddings
        if pruner.num_keep(n) >= n:
            keep_idx = torch.arange(n, device=vp.device).expand(b, -1).clone()
        else:
            vis = gather_tokens(hidden, vp)
            base = self.base if self.base is not None else PruneContext(visual=vis, grid=a.grid)
            matched = base.matched_error(vis) if callable(base.matched_error) else base.matched_error
            llm_attn = self.llm_attn if "llm_attn" in pruner.needs else None
            with torch.no_grad():
                keep_idx = pruner.select(replace(base, visual=vis, llm_attn=llm_attn, matched_error=matched))
            keep_idx = keep_idx.to(vp.device)
        keep = torch.ones(mask.shape, dtype=torch.bool, device=vp.device)
        keep.scatter_(1, vp, False)
        keep.scatter_(1, vp.gather(1, keep_idx), True)
        new_len = keep.shape[1] - (n - keep_idx.shape[1])
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :new_len]  # kept, original order
        self.keep = keep_idx
        self.short_mask = mask.gather(1, order)
        self.step.update(mask4d=additive_mask(self.short_mask, hidden.dtype), position_ids=pos.gather(1, order),
                         position_embeddings=(gather_tokens(cos, order), gather_tokens(sin, order)))
        return gather_tokens(hidden, order)

    def _decode_mask(self, step: dict, dtype: torch.dtype) -> None:
        """A later step: layers ≥ K attend over their own cache, the pruned prompt plus every token since."""
        q, m2d, full = step["q"], step["mask2d"], self.full_mask.shape[1]
        short = self.short_mask
        if m2d is not None:
            tail = m2d[:, full:].to(short.device, short.dtype)
        else:  # no padding anywhere: generate dropped the all-ones mask
            tail = torch.ones(short.shape[0], self.since, dtype=short.dtype, device=short.device)
        step["mask4d"] = _step_mask(torch.cat([short, tail], dim=1), q, dtype)


def _step_mask(mask2d: Tensor, q: int, dtype: torch.dtype) -> Tensor:
    """(B, KV) padding mask -> (B, 1, q, KV) additive mask for the last ``q`` positions (causal among them)."""
    kv = mask2d.shape[1]
    dev = mask2d.device
    rows = torch.arange(kv - q, kv, device=dev)[:, None]
    allowed = (torch.arange(kv, device=dev)[None, :] <= rows)[None] & mask2d.bool()[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=dev)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=dev)
    return torch.where(allowed, zero, neg)[:, None]
