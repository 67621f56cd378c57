"""GPTQ (Frantar et al., 2022): second-order weight rounding with lazy block updates.

For one linear with weight W (out×in) and calibration inputs X (tokens×in), GPTQ minimises
``‖X Wᵀ − X Ŵᵀ‖²`` column by column: quantize column j, then spread its rounding error over the not yet
quantized columns through the inverse Hessian ``H⁻¹`` (``H = 2 XᵀX / n``), using the upper Cholesky factor
of ``H⁻¹`` (numerically stable form). Updates inside a block of ``block_size`` columns are applied eagerly,
to the rest of the matrix once per block ("lazy batch" updates).

Options: ``damp`` (fraction of the mean diagonal added to H), ``act_order`` (quantize columns by
decreasing ``diag(H)``). Quantization parameters (scales / zero points) are fixed before the sweep from
the original weight ("static groups"), so act-order combined with groups keeps contiguous input-channel
groups — what an integer kernel needs — and the clip-ratio search applies to GPTQ too.
"""

from __future__ import annotations

import torch

from .config import GPTQConfig, WeightQuantConfig
from .quantizer import check_group_size, fake_quant, weight_qparams


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over the rows of the inputs a linear sees (float64)."""

    def __init__(self, in_features: int):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.h = self.h.to(x.device)
        m = x.shape[0]
        self.h *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.h += x.T @ x


@torch.no_grad()
def gptq_quantize_weight(w: torch.Tensor, h: torch.Tensor, wcfg: WeightQuantConfig, gcfg: GPTQConfig,
                         return_qparams: bool = False):
    """Return the GPTQ fake-quantized copy of ``w`` (out×in) given the input Hessian ``h`` (in×in).

    With ``return_qparams``: ``(w_q, scale, zero)``, the static grid of the sweep (float32, shape
    ``(out, in // G)``, or ``(out, 1)`` per channel), as for ``quantize_weight_rtn``."""
    if wcfg.bits >= 16:
        return (w, None, None) if return_qparams else w
    dtype = w.dtype
    W = w.detach().double().clone()
    H = h.detach().double().clone().to(w.device)
    out_f, in_f = W.shape
    bits, sym = wcfg.bits, wcfg.sym
    g = check_group_size(wcfg.group_size, in_f)

    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    # static quantization parameters, one column of (scale, zero) per input channel; the clip search
    # weights each input channel by diag(H) (its mean squared activation)
    imp = torch.diag(H).clone()
    if g:
        s, z = weight_qparams(W.reshape(-1, g), bits, sym, wcfg.clip_search,
                              importance=imp.reshape(1, in_f // g, g).expand(out_f, -1, -1).reshape(-1, g))
        grid = (s.reshape(out_f, in_f // g).float(), z.reshape(out_f, in_f // g).float())
        s = s.reshape(out_f, in_f // g).repeat_interleave(g, dim=1)
        z = z.reshape(out_f, in_f // g).repeat_interleave(g, dim=1)
    else:
        s, z = weight_qparams(W, bits, sym, wcfg.clip_search, importance=imp[None, :])
        grid = (s.float(), z.float())
        s, z = s.expand(out_f, in_f), z.expand(out_f, in_f)

    if gcfg.act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H, s, z = W[:, perm], H[perm][:, perm], s[:, perm], z[:, perm]
    damp = gcfg.damp * torch.mean(torch.diag(H))
    H += damp * torch.eye(in_f, dtype=H.dtype, device=H.device)
    # upper Cholesky factor of H^-1; retry with more damping if H is numerically indefinite
    for attempt in range(5):
        try:
            L = torch.linalg.cholesky(H)
            eye = torch.eye(in_f, dtype=H.dtype, device=H.device)
            Linv = torch.linalg.solve_triangular(L, eye, upper=False)  # BLAS-3; cholesky_inverse is slow on CPU
            Hinv = torch.linalg.cholesky(Linv.T @ Linv, upper=True)
            break
        except RuntimeError:
            H += damp * (10 ** attempt) * torch.eye(in_f, dtype=H.dtype, device=H.device)
    else:  # pragma: no cover
        raise RuntimeError("GPTQ: the Hessian is not positive definite even after extra damping")

    # the sweep runs in float32 on transposed (in x out) copies: a column of W is then a contiguous row
    Wt = W.T.float().contiguous()
    St, Zt = s.T.float().contiguous(), z.T.float().contiguous()
    Hinv = Hinv.float()
    Qt = torch.zeros_like(Wt)
    bs = max(1, gcfg.block_size)
    for i1 in range(0, in_f, bs):
        i2 = min(i1 + bs, in_f)
        W1 = Wt[i1:i2].clone()
        Hinv1 = Hinv[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            row = W1[i]
            q = fake_quant(row, St[i1 + i], Zt[i1 + i], bits, sym)
            Qt[i1 + i] = q
            err = (row - q) / Hinv1[i, i]
            W1[i:].addr_(Hinv1[i, i:], err, alpha=-1.0)
            Err1[i] = err
        Wt[i2:].addmm_(Hinv[i1:i2, i2:].T, Err1, alpha=-1.0)
    Q = Qt.T
    if gcfg.act_order:
        Q = Q[:, torch.argsort(perm)]
    return (Q.to(dtype), *grid) if return_qparams else Q.to(dtype)
