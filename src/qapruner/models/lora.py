"""Low-rank adapters for training the testbed, merged into the weights afterwards.

During training: y = W x + (α/r)·B A x with W frozen. The committed asset stores only A and B; loading merges
W ← W + (α/r)·B A, so the deployed language model is a plain Llama whose linears quantize like any other.
"""

from __future__ import annotations

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / base.in_features ** 0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(language_model: nn.Module, rank: int, alpha: float, seed: int = 0) -> dict[str, LoRALinear]:
    gen = torch.Generator().manual_seed(seed)
    wrapped = {}
    for name, module in list(language_model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGETS and isinstance(child, nn.Linear):
                lora = LoRALinear(child, rank, alpha, gen)
                setattr(module, child_name, lora)
                wrapped[f"{name}.{child_name}" if name else child_name] = lora
    return wrapped


def lora_state(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    state = {}
    for name, m in wrapped.items():
        state[f"lora.{name}.a"] = m.lora_a.detach().clone()
        state[f"lora.{name}.b"] = (m.lora_b.detach() * m.scale).clone()  # scale folded into B
    return state


@torch.no_grad()
def load_lora_state(wrapped: dict[str, LoRALinear], state: dict[str, torch.Tensor]) -> None:
    """Continue training from a saved asset: the inverse of ``lora_state`` (B stored with its scale folded in)."""
    for name, m in wrapped.items():
        m.lora_a.copy_(state[f"lora.{name}.a"])
        m.lora_b.copy_(state[f"lora.{name}.b"] / m.scale)


@torch.no_grad()
def merge_lora(language_model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """W ← W + B A for every adapter in ``state`` (keys ``lora.<module>.a|b``); returns the number merged."""
    names = {k[len("lora."):-2] for k in state if k.startswith("lora.")}
    for name in names:
        linear = language_model.get_submodule(name)
        linear.weight += (state[f"lora.{name}.b"] @ state[f"lora.{name}.a"]).to(linear.weight.dtype)
    return len(names)
