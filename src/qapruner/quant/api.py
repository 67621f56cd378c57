"""The one verb: ``quantize_(model, QuantConfig, calib=None) -> model`` (in place), and the quantizer-matched
error used by quantization-aware token pruning."""

from __future__ import annotations

import fnmatch
import time
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import QAPrunerError
from .calibration import calibrate_static_scales
from .config import ActQuantConfig, QuantConfig
from .gptq import HessianAccumulator, gptq_quantize_weight
from .kv_cache import install_kv_quant
from ..models.parts import DECODER_LINEARS, LMParts, lm_parts
from .layer_inputs import capture_layer0_inputs
from .quant_linear import QuantLinear
from .quantizer import check_group_size, quantize_weight_rtn
from .rotation import rotate_model
from .smooth import smooth_model

OFF = ActQuantConfig(bits=16)


def default_targets(parts: LMParts) -> list[str]:
    return [f"{parts.layer_prefix(i)}.{sub}" for i in range(len(parts.layers)) for sub in DECODER_LINEARS]


def select_targets(model: nn.Module, parts: LMParts, config: QuantConfig) -> list[str]:
    """Names of the linears to quantize: the LM decoder linears by default; ``include`` globs (fnmatch on
    full module names, e.g. the head or projector by their module names, see docs/quantization.md) replace the default set and
    ``exclude`` globs remove names from it."""
    linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))]
    if config.include is None:
        names = default_targets(parts)
    else:
        names = [n for n in linears if any(fnmatch.fnmatchcase(n, p) for p in config.include)]
        if not names:
            raise QAPrunerError(f"The include patterns {list(config.include)} match no linear layer of the model.")
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in config.exclude)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@contextmanager
def _acts_disabled(model: nn.Module):
    qls = [m for m in model.modules() if isinstance(m, QuantLinear)]
    prev = [q.act_quant.enabled for q in qls]
    for q in qls:
        q.act_quant.enabled = False
    try:
        yield
    finally:
        for q, p in zip(qls, prev):
            q.act_quant.enabled = p


def _progress_iter(progress, it, total, desc):
    if progress is None:
        return it
    return progress(it, total=total, description=desc)


@torch.no_grad()
def gptq_decoder(parts: LMParts, targets: dict[str, QuantLinear], calib: list[dict], config: QuantConfig,
                        progress=None) -> None:
    """Sequential GPTQ: capture layer-0 inputs from real full-model forwards, then layer by layer collect
    the Hessians of the target linears, quantize them, and feed the quantized layer's outputs on."""
    captured = capture_layer0_inputs(parts, calib)
    inps = [hs for hs, _ in captured]
    kws = [kw for _, kw in captured]
    if config.gptq.true_sequential:
        groups = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                  ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    else:
        groups = [[g] for g in DECODER_LINEARS]  # each with its own Hessian, all from one pass

    def run_layer(layer, x, kw):
        out = layer(x, **kw)
        return out[0] if isinstance(out, tuple) else out

    layers = list(enumerate(parts.layers))
    for i, layer in _progress_iter(progress, layers, len(layers), "GPTQ layers"):
        prefix = parts.layer_prefix(i)
        present_groups = [[n for n in grp if f"{prefix}.{n}" in targets] for grp in groups]
        present_groups = [g for g in present_groups if g]
        if config.gptq.true_sequential:
            passes = [[g] for g in present_groups]
        else:
            passes = [present_groups]
        for pass_groups in passes:
            accs, hooks = {}, []
            for grp in pass_groups:
                ql = targets[f"{prefix}.{grp[0]}"]
                acc = HessianAccumulator(ql.in_features)
                for n in grp:
                    accs[n] = acc
                hooks.append(ql.register_forward_pre_hook(lambda m, args, acc=acc: acc.add(m.transform_input(args[0]))))
            try:
                for x, kw in zip(inps, kws):
                    run_layer(layer, x, kw)
            finally:
                for h in hooks:
                    h.remove()
            for n, acc in accs.items():
                ql = targets[f"{prefix}.{n}"]
                wq, scale, zero = gptq_quantize_weight(ql.weight.data, acc.h, config.weight, config.gptq,
                                                       return_qparams=True)
                ql.set_quantized_weight(wq, config.weight.bits, scale, zero, _group(config, ql))
        inps = [run_layer(layer, x, kw) for x, kw in zip(inps, kws)]


def quantize_(model: nn.Module, config: QuantConfig | str, calib: list[dict] | None = None, progress=None):
    """Quantize ``model`` in place (simulated) and return it.

    ``model``: a ``LlamaForCausalLM``-like causal LM or a ``LlavaForConditionalGeneration``.
    ``config``: a :class:`QuantConfig` or a preset string (``"w4a4-rot-gptq"``).
    ``calib``: list of kwargs dicts for ``model(**kw)`` (``input_ids``/``inputs_embeds``, ``attention_mask``,
    ``pixel_values`` ...); required for GPTQ, static activation scales and SmoothQuant.
    ``progress``: optional ``progress(iterable, total=, description=)`` wrapper (e.g. rich) for long loops.

    Order: SmoothQuant or rotation (offline, FP-exact) → wrap linears in :class:`QuantLinear` → weights
    (RTN or sequential GPTQ, activations unquantized meanwhile as in QuaRot) → static activation scales →
    KV-cache quantization. Linears selected by ``include`` outside the LM decoder layers use RTN.
    """
    if isinstance(config, str):
        config = QuantConfig.from_preset(config)
    if not isinstance(config, QuantConfig):
        raise QAPrunerError(f"quantize_ needs a QuantConfig or a preset string, not {type(config).__name__}.")
    if getattr(model, "_qapruner_quant", None) is not None:
        raise QAPrunerError("This model is already quantized by qapruner; load a fresh copy to quantize it again.")
    parts = lm_parts(model)
    if config.needs_calibration and not calib:
        raise QAPrunerError(
            f"Preset {config.preset!r} needs calibration data (GPTQ, static activation scales or SmoothQuant): pass calib=."
        )
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if config.smooth is not None:
            smooth_model(parts, calib, config.smooth)
        online = {}
        if config.rotation:
            online, q = rotate_model(parts, config.rotation, config.seed, config.online_hadamard)
            calib = _rotate_calibration_embeds(calib, q)

        targets = select_targets(model, parts, config)
        target_set = set(targets)
        # linears that need a QuantLinear: targets, plus every linear with an online transform folded in
        wrap = list(targets)
        if online:
            for i in range(len(parts.layers)):
                for sub, key in (("self_attn.o_proj", "o_proj"), ("mlp.down_proj", "down_proj")):
                    name = f"{parts.layer_prefix(i)}.{sub}"
                    if key in online and name not in target_set:
                        wrap.append(name)
        qlinears: dict[str, QuantLinear] = {}
        for name in wrap:
            lin = model.get_submodule(name)
            if isinstance(lin, QuantLinear):
                qlinears[name] = lin
                continue
            transform = None
            key = name.rsplit(".", 1)[-1]
            if key in online and name.startswith(parts.lm_prefix + ".layers."):
                transform = online[key]
            ql = QuantLinear(lin, config.act if name in target_set else OFF, transform)
            _replace(model, name, ql)
            qlinears[name] = ql
        target_q = {n: qlinears[n] for n in targets}

        if config.weight.enabled:
            lm_layer_targets = {n: q for n, q in target_q.items() if n.startswith(parts.lm_prefix + ".layers.")}
            rtn_targets = target_q if config.method == "rtn" else {
                n: q for n, q in target_q.items() if n not in lm_layer_targets}
            with _acts_disabled(model):
                if config.method == "gptq" and lm_layer_targets:
                    gptq_decoder(parts, lm_layer_targets, calib, config, progress)
            for ql in rtn_targets.values():
                w = config.weight
                wq, scale, zero = quantize_weight_rtn(ql.weight.data, w.bits, w.sym, w.group_size, w.clip_search,
                                                      return_qparams=True)
                ql.set_quantized_weight(wq, w.bits, scale, zero, _group(config, ql))

        static = [q.act_quant for q in target_q.values() if q.act_quant.cfg.enabled and q.act_quant.cfg.granularity == "tensor"]
        if static:
            with _acts_disabled(model):
                calibrate_static_scales(model, static, calib, progress)

        if config.kv_bits < 16:
            install_kv_quant(parts.layers, config.kv_bits)
    model._qapruner_quant = config
    model._qapruner_quant_seconds = time.perf_counter() - t0
    model.train(was_training)
    return model


def _group(config: QuantConfig, ql: QuantLinear) -> int | None:
    """The group size a weight method used on ``ql``: None when per output channel."""
    return check_group_size(config.weight.group_size, ql.in_features)


def _rotate_calibration_embeds(calib: list[dict] | None, q: torch.Tensor) -> list[dict] | None:
    """Calibration inputs given as ``inputs_embeds`` were built by the unrotated model: map them into the
    rotated residual basis (x -> x @ Q). ``input_ids`` / ``pixel_values`` go through the rotated model itself."""
    if not calib:
        return calib
    out = []
    for kw in calib:
        kw = dict(kw)
        if kw.get("inputs_embeds") is not None:
            e = kw["inputs_embeds"]
            kw["inputs_embeds"] = (e.double() @ q.to(e.device)).to(e.dtype)
        out.append(kw)
    return out


def activation_error(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per-token activation-quantization error ``‖t(h) − Q_act(t(h))‖₂`` at a decoder layer's q_proj.

    ``x`` (B, N, D): residual-stream vectors entering ``layer`` (before the LLM: the projector outputs of
    *this* model, i.e. already rotated if the engine rotated it). ``h = layer.input_layernorm(x)`` (which
    carries SmoothQuant's 1/s), ``t`` is q_proj's online transform (none in our recipes), ``Q_act`` q_proj's
    activation quantizer (dynamic or calibrated static). Returns (B, N), or ``None`` when q_proj quantizes no
    activations (FP or weight-only model): nothing to be sensitive to.
    """
    q = layer.self_attn.q_proj
    if not isinstance(q, QuantLinear) or not q.act_quant.cfg.enabled:
        return None
    with torch.no_grad():
        h = layer.input_layernorm(x.to(layer.input_layernorm.weight.dtype))
        t = q.transform_input(h)
        return (t - q.act_quant.quantize(t)).float().norm(dim=-1)
