"""QuaRot-style offline rotation of the residual stream (computational invariance).

Row-vector convention: a linear computes ``y = x Wᵀ + b`` with ``W`` of shape (out, in); the rotated
residual stream is ``x' = x Q`` for an orthogonal ``Q`` (D×D).

1. Fuse every RMSNorm scale into the linears that read it: ``W ← W diag(g)``, ``g ← 1``
   (input_layernorm → q/k/v, post_attention_layernorm → gate/up, final norm → LM head). RMSNorm without a
   scale commutes with an orthogonal Q (the RMS of a vector is rotation invariant).
2. Writers of the residual stream get their *output* rotated: ``W ← Qᵀ W``, ``b ← b Q`` for o_proj,
   down_proj and, in LLaVA, the projector's ``linear_2`` (its output is added to the residual stream as
   visual tokens); the embedding table ``E ← E Q``.
3. Readers get their *input* rotated: ``W ← W Q`` for q/k/v, gate/up, the LM head (which is untied from the
   embeddings first).
4. Optionally, an online Hadamard ``H`` (Kronecker-factored, :class:`OnlineHadamard`) on the inputs of
   down_proj and o_proj, with ``W ← W H`` offline, so ``(x H)(W H)ᵀ = x Wᵀ``. This spreads outliers in the
   MLP's intermediate activations and in the attention output before they are quantized.

All products are computed in float64 and cast back, so the FP model is unchanged up to rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import QAPrunerError
from .hadamard import OnlineHadamard, has_hadamard, random_hadamard, random_orthogonal
from ..models.parts import LMParts
from .layer_inputs import untie_embeddings


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    param.data = value.to(param.dtype).contiguous()


def _fuse_norm(norm: nn.Module, linears: list[nn.Module]) -> None:
    g = norm.weight.data.double()
    for lin in linears:
        _set(lin.weight, lin.weight.data.double() * g[None, :])
    norm.weight.data.fill_(1.0)


def fuse_norms(parts: LMParts) -> None:
    """Fold every RMSNorm scale of the language model into the following linears (FP-exact)."""
    for layer in parts.layers:
        a, m = layer.self_attn, layer.mlp
        _fuse_norm(layer.input_layernorm, [a.q_proj, a.k_proj, a.v_proj])
        _fuse_norm(layer.post_attention_layernorm, [m.gate_proj, m.up_proj])
    _fuse_norm(parts.norm, [parts.head])


def _rotate_input(lin: nn.Module, q: torch.Tensor) -> None:
    _set(lin.weight, lin.weight.data.double() @ q.to(lin.weight.device))


def _rotate_output(lin: nn.Module, q: torch.Tensor) -> None:
    q = q.to(lin.weight.device)
    _set(lin.weight, q.T @ lin.weight.data.double())
    if getattr(lin, "bias", None) is not None:
        _set(lin.bias, lin.bias.data.double() @ q)


def residual_rotation_matrix(dim: int, kind: str, seed: int = 0) -> torch.Tensor:
    if kind == "hadamard":
        if not has_hadamard(dim):
            raise QAPrunerError(f"No Hadamard matrix of order {dim} is available; use the random rotation ('-rrot').")
        return random_hadamard(dim, seed)
    if kind == "random":
        return random_orthogonal(dim, seed)
    raise QAPrunerError(f"Unknown rotation {kind!r}; use 'hadamard' or 'random'.")


@torch.no_grad()
def rotate_model(parts: LMParts, kind: str, seed: int = 0,
                 online_hadamard: bool = True) -> tuple[dict[str, OnlineHadamard], torch.Tensor]:
    """Rotate the language model's residual stream in place. Returns the online transforms to install,
    ``{"o_proj": OnlineHadamard, "down_proj": OnlineHadamard}`` (already folded into those weights), and the
    residual rotation Q (float64): residual-stream vectors of the FP model map to ``x @ Q`` in the rotated one
    (e.g. calibration ``inputs_embeds`` built before rotating)."""
    for mod in parts.lm.modules():
        if type(mod).__name__.endswith("RMSNorm") is False and "norm" in type(mod).__name__.lower():
            raise QAPrunerError(f"Rotation needs RMSNorm layers; found {type(mod).__name__}.")
    dim = parts.embed.weight.shape[1]
    q = residual_rotation_matrix(dim, kind, seed).to(parts.embed.weight.device)
    untie_embeddings(parts)
    fuse_norms(parts)
    _set(parts.embed.weight, parts.embed.weight.data.double() @ q)
    if parts.projector is not None:
        last = getattr(parts.projector, "linear_2", None)
        if last is None:
            raise QAPrunerError("The LLaVA projector has no linear_2; cannot rotate its output into the residual stream.")
        _rotate_output(last, q)
    for layer in parts.layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            _rotate_input(lin, q)
        for lin in (a.o_proj, m.down_proj):
            _rotate_output(lin, q)
    _rotate_input(parts.head, q)

    online: dict[str, OnlineHadamard] = {}
    if online_hadamard:
        layer0 = parts.layers[0]
        for name, lin_of in (("down_proj", lambda l: l.mlp.down_proj), ("o_proj", lambda l: l.self_attn.o_proj)):
            n = lin_of(layer0).in_features
            if not has_hadamard(n):
                continue  # no construction for this width: leave that input unrotated
            had = OnlineHadamard(n)
            h = had.matrix(torch.float64)
            for layer in parts.layers:
                _rotate_input(lin_of(layer), h)
            online[name] = had.to(lin_of(layer0).weight.device)
    return online, q
