"""The pruning entry point: ``Pruner(config).select(ctx) -> (B, k)`` kept indices, ascending per row.

Host alone:  idx = host.select(ctx, k, S^P)
QA variant:  idx = host.select(ctx, k, S),  S = alpha * S^P + (1 - alpha) * S^Q
(S^P on [0, 1]: min-max of the host score for top-k hosts, normalised relevance for CDPruner, 1 for
DivPrune; S^Q from ``sensitivity.py``.) alpha == 1 is routed to the host path, so it is the host exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qapruner.prune.config import PruneConfig, num_keep
from qapruner.prune.context import PruneContext
from qapruner.prune.fusion import fuse
from qapruner.prune.hosts import make_host
from qapruner.prune.sensitivity import dynamic_alpha, quant_error, token_sensitivity


class Pruner:
    def __init__(self, config: PruneConfig):
        self.config = config
        self.host = make_host(config.host, config.seed)
        if config.clip_model is not None:
            self.host.relevance = "clip"

    # ---- what the caller must compute -------------------------------------------------------------
    @property
    def required(self) -> frozenset[str]:
        """PruneContext fields without which ``select`` raises."""
        need = set(self.host.needs)
        if self.config.qa and self.config.sensitivity == "matched":
            need.add("matched_error")
        return frozenset(need)

    @property
    def needs(self) -> frozenset[str]:
        """PruneContext fields the runner should compute: the required ones plus optional ones the host uses."""
        if self.config.is_noop:
            return frozenset({"visual"})
        return self.required | self.host.optional

    @property
    def location(self) -> str:
        """Where the host prunes: "input" (the projector outputs, before the LLM) or "layer" (the input of LLM
        layer K, FastV; see ``inllm.prune_at_layer``)."""
        return self.host.location

    def at_layer(self, adapter, inputs, ctx: PruneContext | None = None):
        """The "layer" location: choose at layer K while ``adapter`` runs its decoder loop; returns
        (last logits (B, V), kept indices (B, k)). See ``inllm.prune_at_layer``."""
        from qapruner.prune.inllm import prune_at_layer

        return prune_at_layer(adapter, inputs, self, ctx)

    def num_keep(self, n: int) -> int:
        return num_keep(self.config.keep, n)

    # ---- scores -----------------------------------------------------------------------------------
    def sensitivity(self, ctx: PruneContext) -> Tensor:
        """S^Q (B, N) in [0, 1]."""
        c = self.config
        err = ctx.matched_error if c.sensitivity == "matched" else None
        return token_sensitivity(ctx.visual, c.sensitivity, c.bits, c.group_size, error=err)

    def alpha(self, ctx: PruneContext) -> float | Tensor:
        """The fusion weight: the configured float, or a (B,) tensor for alpha = "dynamic" (from the CV of the
        error E: the deployed quantizer's for "matched", the simulated one for "paper" and "norm")."""
        if self.config.alpha != "dynamic":
            return float(self.config.alpha)
        c = self.config
        raw = ctx.matched_error.float() if c.sensitivity == "matched" else quant_error(ctx.visual, c.bits, c.group_size)
        return dynamic_alpha(raw)

    def _use_qa(self) -> bool:
        return self.config.qa and self.config.alpha != 1.0

    def scores(self, ctx: PruneContext) -> Tensor:
        """(B, N) score the selection uses: the fused S for QA, the host's S^P otherwise (for plots).

        For CDPruner this is the DPP quality q; for DivPrune the quality (constant 1 for the host).
        """
        ctx.validate(self.required, who=f"{self.config.host!r} pruner")
        k = self.num_keep(ctx.n)
        sp = self.host.score(ctx, k)
        if not self._use_qa():
            return sp
        return fuse(sp, self.sensitivity(ctx), self.alpha(ctx))

    # ---- selection --------------------------------------------------------------------------------
    def select(self, ctx: PruneContext) -> Tensor:
        """Kept indices (B, k) LongTensor, ascending per row; k = num_keep(keep, N), the same for every row."""
        if self.config.is_noop:
            ctx.validate(frozenset(), who=f"{self.config.host!r} pruner")
            return torch.arange(ctx.n, device=ctx.visual.device).expand(ctx.batch, -1).clone()
        k = self.num_keep(ctx.n)
        s = self.scores(ctx)
        if k >= ctx.n:
            return torch.arange(ctx.n, device=ctx.visual.device).expand(ctx.batch, -1).clone()
        return self.host.select(ctx, k, s).to(ctx.visual.device)

    def __repr__(self) -> str:
        return f"Pruner({self.config})"
