"""``--model``: the built-in testbed, or any llava-hf checkpoint by local path or hub id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import QAPrunerError


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    key: str            # identifies the vision features (cache key)
    name: str
    grid: tuple[int, int]  # visual-token grid (h, w)

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: str = "testbed", device: torch.device | None = None) -> LoadedModel:
    device = device or default_device()
    if spec == "testbed" or spec.startswith("testbed:"):
        # "testbed:PATH" = the testbed with another projector/LoRA asset (e.g. a training checkpoint)
        from .testbed import PROJECTOR_ASSET, load_testbed, testbed_model_key

        asset = Path(spec[len("testbed:"):]) if spec.startswith("testbed:") else PROJECTOR_ASSET
        if not asset.is_file():
            raise QAPrunerError(f"Projector asset {asset} does not exist.")
        model, processor = load_testbed(projector=asset)
        return LoadedModel(model.to(device), processor, testbed_model_key(), spec, _grid(model))
    return _load_llava(spec, device)


def _load_llava(spec: str, device: torch.device) -> LoadedModel:
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
    model = LlavaForConditionalGeneration.from_pretrained(spec, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(spec)
    key = Path(spec).name + "-" + hashlib.sha1(config.to_json_string().encode()).hexdigest()[:8]
    return LoadedModel(model, processor, key, spec, _grid(model))


def _grid(model) -> tuple[int, int]:
    vc = model.config.vision_config
    side = vc.image_size // vc.patch_size if hasattr(vc, "image_size") else None
    n = model.config.image_seq_length
    if getattr(vc, "model_type", "") == "dinov2":  # the testbed feeds 224 px, not the tower's native 518
        side = int(round(n ** 0.5))
    if side is None or side * side != n:
        side = int(round(n ** 0.5))
    return (side, n // side)
