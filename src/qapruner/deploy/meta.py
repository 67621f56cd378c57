"""``qapruner.json``: what an export directory holds besides the compressed-tensors checkpoint — the quantization
config it was made with, its calibration, the visual-token pruning choice (restored by ``load_model(DIR)``) —
and the bytes its decoder weights take on disk."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict
from pathlib import Path

from ..errors import QAPrunerError
from .outdir import MARKER

FORMAT_VERSION = 1
# a decoder-layer linear's tensors in a llava-hf / Llama checkpoint (either key layout)
_DECODER = re.compile(r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.(weight\w*)$")


def export_meta(quant, prune, source: str, calibration: dict | None, dtype: str, sizes: dict) -> dict:
    import compressed_tensors

    return {"qapruner_export": FORMAT_VERSION, "format": "compressed-tensors",
            "compressed_tensors_version": compressed_tensors.__version__, "source_model": source,
            "quant": {"preset": quant.preset, "config": asdict(quant)}, "calibration": calibration,
            "prune": asdict(prune) if prune is not None else None, "dtype": dtype, "sizes": sizes}


def write_meta(directory: Path, meta: dict) -> None:
    (Path(directory) / MARKER).write_text(json.dumps(meta, indent=1) + "\n")


def read_meta(directory: str | Path) -> dict | None:
    """The export's ``qapruner.json``, or None when ``directory`` is not a qapruner export."""
    path = Path(directory).expanduser() / MARKER
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QAPrunerError(f"Cannot read {path}: {exc}.") from None
    if not isinstance(meta, dict) or meta.get("qapruner_export") != FORMAT_VERSION:
        raise QAPrunerError(f"{path} is not a qapruner export description of version {FORMAT_VERSION}.")
    return meta


def prune_config_of(meta: dict):
    """The saved pruning choice as a :class:`~qapruner.prune.PruneConfig`, or None."""
    from ..prune.config import PruneConfig

    d = meta.get("prune")
    if d is None:
        return None
    try:
        return PruneConfig(**d)
    except TypeError as exc:
        raise QAPrunerError(f"The saved pruning configuration is not valid: {exc}.") from None


def quant_config_of(meta: dict):
    """The :class:`~qapruner.quant.QuantConfig` the export was made with."""
    from ..quant.config import ActQuantConfig, GPTQConfig, QuantConfig, WeightQuantConfig

    d = dict(meta["quant"]["config"])
    try:
        return QuantConfig(weight=WeightQuantConfig(**d.pop("weight")), act=ActQuantConfig(**d.pop("act")),
                           gptq=GPTQConfig(**d.pop("gptq")),
                           include=None if d.get("include") is None else tuple(d.pop("include")),
                           exclude=tuple(d.pop("exclude", ())), **{k: v for k, v in d.items() if k != "include"})
    except (TypeError, KeyError) as exc:
        raise QAPrunerError(f"The saved quantization configuration is not valid: {exc}.") from None


def safetensors_header(path: Path) -> dict:
    """The JSON header of a ``.safetensors`` file (tensor name -> dtype, shape, data_offsets)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise QAPrunerError(f"{path} is not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def decoder_weight_sizes(directory: Path) -> dict:
    """Bytes on disk of the decoder-layer linears (packed / int8 weights + scales + shapes) against the same
    weights in fp16 (2 bytes per element of each full (out, in) matrix)."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))
    tensors = {name: (f, t) for f in files for name, t in safetensors_header(f).items()}
    stored = fp16 = n = 0
    for name, (f, t) in tensors.items():
        m = _DECODER.search(name)
        if not m:
            continue
        begin, end = t["data_offsets"]
        stored += end - begin
        if m.group(3) == "weight":  # int8 (int-quantized) or a floating-point weight
            n, fp16 = n + 1, fp16 + 2 * _numel(t["shape"])
        elif m.group(3) == "weight_packed":  # its full shape is stored next to it
            shape_name = name[: -len("packed")] + "shape"
            with safe_open(str(tensors[shape_name][0]), "pt") as sf:
                n, fp16 = n + 1, fp16 + 2 * _numel(sf.get_tensor(shape_name).tolist())
    return {"decoder_linears": n, "decoder_bytes": stored, "decoder_fp16_bytes": fp16,
            "ratio_to_fp16": round(stored / fp16, 4) if fp16 else None,
            "safetensors_bytes": sum(f.stat().st_size for f in files)}


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out
