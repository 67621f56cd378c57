"""``--model``: the built-in testbed, or any llava-hf checkpoint by local path or hub id."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..deploy.meta import prune_config_of, quant_config_of, read_meta
from ..errors import QAPrunerError
from .assets import ASSETS, canonical_model, asset_file
from .llava import LlavaAdapter


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_spec(spec: str) -> None:
    """The checks of ``--model`` that need no loading: a testbed asset or a local path must exist."""
    asset = asset_file(spec)
    if asset is not None and not asset.is_file():
        names = ", ".join(f"testbed:{n}" for n in ASSETS)
        raise QAPrunerError(f"Projector asset {asset} does not exist (named assets: {names}).")
    if asset is None and _looks_like_path(spec) and not Path(spec).expanduser().exists():
        raise QAPrunerError(f"Model path '{spec}' does not exist.")


def load_model(spec: str = "testbed", device: torch.device | None = None, *, compressed: bool = False) -> LlavaAdapter:
    """The adapter of ``spec``. ``compressed``: leave a compressed-tensors checkpoint's linears packed (for
    ``deploy.runtime.realize``, which builds real kernels from the integers without a dense float copy of the
    whole decoder); otherwise they are decompressed at once."""
    check_model_spec(spec)
    device = device or default_device()
    asset = asset_file(spec)
    if asset is not None:  # testbed, testbed:NAME (a committed asset) or testbed:PATH (e.g. a training checkpoint)
        adapter = load_testbed_adapter(asset, name=canonical_model(spec))
        adapter.model.to(device)
        return adapter
    return _load_llava(spec, device, compressed)


def load_testbed_adapter(projector: Path | None, name: str = "testbed") -> LlavaAdapter:
    """The testbed with the projector (+ LoRA) asset ``projector``, or its seeded random projector (None)."""
    from .testbed import load_testbed, testbed_model_key

    model, processor = load_testbed(projector=projector)
    return LlavaAdapter(model, processor, testbed_model_key(), name, _grid(model))


def _load_llava(spec: str, device: torch.device, compressed: bool = False) -> LlavaAdapter:
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        where = "local directory" if Path(spec).exists() else "hub id (is it downloaded, or is the hub reachable?)"
        raise QAPrunerError(f"Cannot load model '{spec}' as a {where}: {str(exc).splitlines()[0]}") from exc
    if getattr(config, "model_type", None) != "llava":
        raise QAPrunerError(
            f"Model '{spec}' is a '{config.model_type}' model; qapruner supports LLaVA-family models "
            "(transformers LlavaForConditionalGeneration, e.g. llava-hf/llava-1.5-7b-hf) and the built-in testbed.")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        model = LlavaForConditionalGeneration.from_pretrained(spec, dtype=dtype).to(device).eval()
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        raise QAPrunerError(f"Cannot load the weights of model '{spec}': {first}.") from exc
    if not compressed:
        _decompress(model)
    processor = AutoProcessor.from_pretrained(spec)
    key = Path(spec).name + "-" + hashlib.sha1(config.to_json_string().encode()).hexdigest()[:8]
    adapter = LlavaAdapter(model, processor, key, spec, _grid(model))
    meta = read_meta(spec) if Path(spec).expanduser().is_dir() else None
    if meta is not None:  # a `qapruner quantize` export: restore its pruning choice, mark the model quantized
        adapter.prune_config = prune_config_of(meta)
        model._qapruner_quant = quant_config_of(meta)
    return adapter


def _decompress(model) -> None:
    """A compressed-tensors checkpoint loads packed and decompresses on the model's first ``forward``; the
    adapter calls the parts directly, so decompress now (the activation quantizers stay in place)."""
    compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
    if compressor is not None and hasattr(model, "ct_decompress_hook"):
        compressor.decompress_model(model)


def _grid(model) -> tuple[int, int]:
    vc = model.config.vision_config
    side = vc.image_size // vc.patch_size if hasattr(vc, "image_size") else None
    n = model.config.image_seq_length
    if getattr(vc, "model_type", "") == "dinov2":  # the testbed feeds 224 px, not the tower's native 518
        side = int(round(n ** 0.5))
    if side is None or side * side != n:
        side = int(round(n ** 0.5))
    return (side, n // side)


def _looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with a separator (or ~, ., /) is a local path."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec
