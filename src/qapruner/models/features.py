"""Vision-tower outputs cached once per (model, image list): the tower is frozen and by far the most
expensive part on a CPU, and every quantization / pruning configuration reuses the same features.

Stored as float32 memmaps under ``<cache>/features/<key>/`` with a ``done`` flag per image, so an interrupted
encoding resumes and only requested images are encoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from ..paths import cache_dir
from ..tasks.base import Task


def _layer_parts(layer: torch.nn.Module):
    norm = getattr(layer, "norm1", None) or getattr(layer, "layer_norm1")
    attn = getattr(layer, "attention", None) or getattr(layer, "self_attn")
    return norm, attn


@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected vision features (B, N, Dv) exactly as LLaVA feeds its projector, and the [CLS]→patch
    attention (B, N) of the block that produced them (head-averaged; FasterVLM / VisionZip signal)."""
    cfg = model.config
    tower = model.model.vision_tower
    layer_idx = cfg.vision_feature_layer
    param = next(tower.parameters())
    out = tower(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype), output_hidden_states=True)
    hidden = out.hidden_states
    feats = hidden[layer_idx]
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]
    # The block whose output is hidden[layer_idx] is block (layer_idx - 1) over its input hidden[layer_idx - 1].
    n_blocks = len(hidden) - 1
    block_idx = (layer_idx % len(hidden)) - 1
    encoder = getattr(tower, "encoder", None) or tower.vision_model.encoder
    block = encoder.layer[block_idx] if hasattr(encoder, "layer") else encoder.layers[block_idx]
    assert 0 <= block_idx < n_blocks
    norm, attn = _layer_parts(block)
    h = norm(hidden[block_idx])
    b, t, _ = h.shape
    heads = tower.config.num_attention_heads
    q = attn.q_proj(h[:, :1]).view(b, 1, heads, -1).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, heads, -1).transpose(1, 2)
    a = torch.softmax((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1).mean(1)[:, 0, 1:]
    return feats.float().cpu(), a.float().cpu()


class FeatureCache:
    def __init__(self, model, processor, task: Task, model_key: str, batch_size: int = 16):
        self.model, self.processor, self.task, self.batch_size = model, processor, task, batch_size
        self.dir = cache_dir() / "features" / f"{model_key}--{task.cache_key}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._meta_path = self.dir / "meta.json"
        self._feats = self._cls = None
        if self._meta_path.exists():
            meta = json.loads(self._meta_path.read_text())
            self._open(tuple(meta["shape"]))

    def _open(self, shape: tuple[int, int]) -> None:
        n = self.task.image_count
        mode = "r+" if (self.dir / "features.f32").exists() else "w+"
        self._feats = np.memmap(self.dir / "features.f32", np.float32, mode, shape=(n, *shape))
        self._cls = np.memmap(self.dir / "cls_attn.f32", np.float32, mode, shape=(n, shape[0]))
        done_path = self.dir / "done.npy"
        self._done = np.load(done_path) if done_path.exists() else np.zeros(n, bool)

    def _pixels(self, indices) -> torch.Tensor:
        images = [self.task.load_image(i) for i in indices]
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def ensure(self, indices, progress: Progress | None = None) -> None:
        """Encode the images in ``indices`` that are not cached yet."""
        wanted = sorted(set(int(i) for i in indices))
        if self._feats is not None:
            wanted = [i for i in wanted if not self._done[i]]
        if not wanted:
            return
        own = progress is None
        progress = progress or Progress(transient=True)
        if own:
            progress.start()
        bar = progress.add_task(f"encoding {self.task.cache_key} images", total=len(wanted))
        try:
            for start in range(0, len(wanted), self.batch_size):
                chunk = wanted[start : start + self.batch_size]
                feats, cls = encode_images(self.model, self._pixels(chunk))
                if self._feats is None:
                    self._open(tuple(feats.shape[1:]))
                self._feats[chunk] = feats.numpy()
                self._cls[chunk] = cls.numpy()
                self._feats.flush(); self._cls.flush()
                self._done[chunk] = True
                np.save(self.dir / "done.npy", self._done)
                if not self._meta_path.exists():
                    self._meta_path.write_text(json.dumps({"shape": list(feats.shape[1:])}))
                progress.advance(bar, len(chunk))
        finally:
            progress.remove_task(bar)
            if own:
                progress.stop()

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        self.ensure(indices)
        idx = np.asarray(indices)
        return torch.from_numpy(np.array(self._feats[idx])), torch.from_numpy(np.array(self._cls[idx]))
