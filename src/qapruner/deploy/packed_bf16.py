"""bf16 linears whose weights oneDNN reordered once into its blocked layout (``PackedBf16Linear``)."""

from __future__ import annotations

import torch
from torch import nn


# The batch-size hint oneDNN picks the weight layout for. 64 measured best for a pruned prefill (~60 rows) and
# decode (1 row) on an AMX Xeon; a 300-row prefill runs a few % slower than unpacked in 576x576 layers only.
PACK_ROWS_HINT = 64


def can_pack_bf16(device: torch.device) -> bool:
    """oneDNN packing helps where the CPU multiplies bf16 natively; elsewhere bf16 is emulated and slow anyway."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


class PackedBf16Linear(nn.Module):
    """A bf16 linear whose weight oneDNN reordered once into its blocked layout (what torch.compile's freezing
    pass does for CPU linears), instead of on every call as ``F.linear`` does. The products are oneDNN's
    bf16 matmul either way, bit-identical to ``F.linear`` in most measured shapes and off by accumulation order in
    some (e.g. a 300-row 576x576 product); on the testbed, dense predictions were identical and 22 of 1,200 pruned
    ones changed (docs/deploy.md). tests/test_runtime.py checks closeness, not identity. The packed weight is an opaque mkldnn tensor, so the
    layer is inference-only: no ``state_dict`` entry, no ``.to()``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, self.bias, "none", [], "")
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_bf16_linears(module: nn.Module) -> int:
    """Swap every bf16 ``nn.Linear`` under ``module`` for a ``PackedBf16Linear`` where the CPU supports it
    (in place); returns how many were swapped."""
    names = [n for n, m in module.named_modules()
             if type(m) is nn.Linear and type(m.weight.detach()) is torch.Tensor  # not torchao's int8 tensors
             and m.weight.dtype == torch.bfloat16 and can_pack_bf16(m.weight.device)]
    for name in names:  # one at a time, so that each unpacked weight is freed before the next is packed
        module.set_submodule(name, PackedBf16Linear(module.get_submodule(name)))
    return len(names)
