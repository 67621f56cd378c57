"""Export a model quantized by ``quantize_`` as a real low-bit checkpoint in the compressed-tensors format.

    from qapruner.deploy.export import export_compressed
    export_compressed(qmodel, "out/w4a16", processor)     # then LlavaForConditionalGeneration.from_pretrained(...)

The in-memory model holds fake-quantized weights ``(q - z) · s`` and, per quantized linear, the grid ``s`` (and
``z``) its weight method used (``QuantLinear.weight_scale``). The export rebuilds the plain transformers model
around the same tensors (no copy), attaches compressed-tensors quantization schemes and those exact scales, and
lets compressed-tensors' own compressor pack the integers (``pack-quantized`` int4/int8 in int32 words, or
``int-quantized`` int8) and write ``quantization_config``. Each layer's packed integers are checked against
``QuantLinear.integer_weight()`` before anything is written. Non-quantized tensors (vision tower, projector,
embeddings, norms, head) and the scales keep the in-memory dtype (float32 on CPU). The directory is written
atomically (``outdir.atomic_dir``) and carries ``qapruner.json`` (``meta``). See docs/deploy.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import QAPrunerError
from ..models.parts import lm_parts
from ..quant.quant_linear import QuantLinear
from .meta import decoder_weight_sizes, export_meta, safetensors_header, write_meta
from .outdir import atomic_dir
from .scheme import check_exportable, ct_scheme


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The weight-quantized linears of ``model`` by module name, checked to be exportable: a recorded grid,
    no online transform left, all inside the language model's decoder layers, one granularity."""
    parts = lm_parts(model)
    prefix = parts.lm_prefix + ".layers."
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        if m.input_transform is not None:
            raise QAPrunerError(f"Layer {name} applies an online transform, which the export cannot write.")
        if not m.weight_quantized:
            continue
        if not name.startswith(prefix):
            raise QAPrunerError(f"Layer {name} is quantized but outside the language model's decoder layers; "
                                "the export quantizes decoder linears only.")
        if m.weight_scale is None:
            raise QAPrunerError(f"Layer {name} has no recorded quantization grid; quantize the model again with "
                                "this version of qapruner.")
        out[name] = m
    if not out:
        raise QAPrunerError("The model has no quantized weights to export.")
    if len({m.weight_group_size for m in out.values()}) > 1:
        raise QAPrunerError("The weight group size is per channel for some layers and grouped for others; the "
                            "export needs one granularity for all layers (choose a group size that divides every "
                            "layer's input width).")
    return out


def _plain_model(model: nn.Module) -> nn.Module:
    """The same architecture with plain ``nn.Linear`` layers, built on the meta device and then given the
    quantized model's own tensors (shared, not copied)."""
    with torch.device("meta"):
        plain = type(model)(copy.deepcopy(model.config))
    src = model.state_dict()
    want = plain.state_dict()
    missing = sorted(set(want) - set(src))
    if missing:
        raise QAPrunerError(f"Cannot map the quantized model onto {type(model).__name__}: {missing[0]} is missing.")
    plain.load_state_dict({k: src[k] for k in want}, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (rotary inv_freq, ...) are not in the state dict
            owner, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(owner) if owner else plain, attr, buffers[name])
    still = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if still:
        raise QAPrunerError(f"Cannot map the quantized model onto {type(model).__name__}: {still[0]} has no value.")
    return plain.eval()


def _compress(plain: nn.Module, layers: dict[str, QuantLinear], cfg) -> object:
    """Attach the schemes and our scales, compress with compressed-tensors, check the integers; return the
    ``ModelCompressor`` (it writes ``quantization_config`` into config.json)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, apply_quantization_config

    group = next(iter(layers.values())).weight_group_size
    scheme, fmt = ct_scheme(cfg, group)
    ignore = [n for n, m in plain.named_modules() if isinstance(m, nn.Linear) and n not in layers]
    qc = QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore, format=fmt.value,
                            quantization_status=QuantizationStatus.FROZEN)
    apply_quantization_config(plain, qc, show_progress=False)
    attached = {n for n, m in plain.named_modules() if getattr(m, "quantization_scheme", None) is not None}
    if attached != set(layers):
        raise QAPrunerError("compressed-tensors matched other layers than the quantized ones; export aborted.")
    for name, ql in layers.items():
        m = plain.get_submodule(name)
        m.weight_scale.data.copy_(ql.weight_scale.to(m.weight_scale.dtype).reshape(m.weight_scale.shape))
        if getattr(m, "weight_zero_point", None) is not None:
            m.weight_zero_point.data.zero_()  # symmetric grid
    compressor = ModelCompressor.from_pretrained_model(plain, quantization_format=fmt.value)
    compressor.compress_model(plain)
    for name, ql in layers.items():
        m = plain.get_submodule(name)
        if hasattr(m, "weight_packed"):
            ints = unpack_from_int32(m.weight_packed, cfg.weight.bits, m.weight_shape)
        else:
            ints = m.weight
        if ints.dtype != torch.int8 or not torch.equal(ints.to(torch.int32).cpu(), ql.integer_weight().cpu()):
            raise QAPrunerError(f"The packed integers of {name} differ from the quantized model's grid; export aborted.")
    return compressor


def _check_written(directory, n_layers: int, packed: bool) -> None:
    """The written files hold one scale and one integer weight per quantized decoder linear."""
    header = {}
    for f in sorted(directory.glob("*.safetensors")):
        header.update(safetensors_header(f))
    scales = [k for k in header if k.endswith(".weight_scale")]
    ints = [k for k, t in header.items() if (k.endswith(".weight_packed") and t["dtype"] == "I32")
            or (k.endswith(".weight") and t["dtype"] == "I8")]
    if len(scales) != n_layers or len(ints) != n_layers or (packed and any(k.endswith(".weight") for k in ints)):
        raise QAPrunerError(f"The written checkpoint holds {len(ints)} integer weights and {len(scales)} scales for "
                            f"{n_layers} quantized layers; export aborted.")


@torch.no_grad()
def export_compressed(model: nn.Module, out, processor=None, *, prune=None, source: str = "",
                      calibration: dict | None = None, force: bool = False) -> dict:
    """Write ``model`` (quantized in place by ``quantize_``) to the directory ``out`` as a compressed-tensors
    checkpoint that ``from_pretrained`` loads, with ``processor``'s files and ``qapruner.json`` (the quantization
    config, ``calibration``, the ``prune`` choice, sizes). Returns that description. Refuses (one sentence) a
    config the format cannot express, a non-empty ``out`` without ``force``; writes nothing on failure."""
    cfg = getattr(model, "_qapruner_quant", None)
    if cfg is None:
        raise QAPrunerError("The model is not quantized by qapruner (run quantize_ first); there is nothing to export.")
    check_exportable(cfg)
    layers = quantized_layers(model)
    dtype = str(model.get_input_embeddings().weight.dtype).replace("torch.", "")
    with atomic_dir(out, force) as tmp:
        plain = _plain_model(model)
        compressor = _compress(plain, layers, cfg)
        plain.save_pretrained(tmp)
        compressor.update_config(str(tmp))
        if processor is not None:
            processor.save_pretrained(tmp)
        _check_written(tmp, len(layers), packed=not cfg.act.enabled)
        meta = export_meta(cfg, prune, source, calibration, dtype, decoder_weight_sizes(tmp))
        write_meta(tmp, meta)
    return meta
