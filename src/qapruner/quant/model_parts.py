"""Where the parts of a Llama-family causal LM or a LLaVA model are (the only model-specific code)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import QAPrunerError

DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class LMParts:
    model: nn.Module  # the top-level model handed to quantize_
    lm: nn.Module  # the LlamaModel (embed_tokens, layers, norm, rotary_emb)
    lm_prefix: str  # module name of ``lm`` inside ``model`` ("model" or "model.language_model")
    lm_head: nn.Linear
    projector: nn.Module | None  # LLaVA multi_modal_projector
    text_config: object

    @property
    def layers(self):
        return self.lm.layers

    @property
    def embed(self) -> nn.Embedding:
        return self.lm.embed_tokens

    @property
    def norm(self) -> nn.Module:
        return self.lm.norm

    def layer_prefix(self, i: int) -> str:
        return f"{self.lm_prefix}.layers.{i}"


def lm_parts(model: nn.Module) -> LMParts:
    """Locate the language model of a ``LlamaForCausalLM``-like or ``LlavaForConditionalGeneration`` model."""
    inner = getattr(model, "model", None)
    lm_head = getattr(model, "lm_head", None)
    if inner is not None and hasattr(inner, "language_model") and hasattr(inner, "multi_modal_projector"):
        lm, prefix, projector = inner.language_model, "model.language_model", inner.multi_modal_projector
        text_config = model.config.text_config
    elif inner is not None and hasattr(inner, "layers") and hasattr(inner, "embed_tokens"):
        lm, prefix, projector = inner, "model", None
        text_config = model.config
    else:
        raise QAPrunerError(
            f"quantize_ supports Llama-family causal LMs and LLaVA models, not {type(model).__name__}."
        )
    if lm_head is None or not hasattr(lm, "layers") or not hasattr(lm, "norm"):
        raise QAPrunerError(f"{type(model).__name__} lacks lm_head / decoder layers / final norm where expected.")
    layer0 = lm.layers[0]
    for name in DECODER_LINEARS:
        if not isinstance(layer0.get_submodule(name), nn.Module):
            raise QAPrunerError(f"The decoder layers of {type(model).__name__} have no {name}; not a Llama-style layer.")
    return LMParts(model, lm, prefix, lm_head, projector, text_config)


def untie_embeddings(parts: LMParts) -> None:
    """Give ``lm_head`` its own weight (a copy) and mark the configs untied, so rotation can change the two
    independently and a later ``tie_weights()`` does not tie them again."""
    if parts.lm_head.weight is parts.embed.weight or parts.lm_head.weight.data_ptr() == parts.embed.weight.data_ptr():
        parts.lm_head.weight = nn.Parameter(parts.embed.weight.detach().clone())
    for cfg in {id(parts.model.config): parts.model.config, id(parts.text_config): parts.text_config}.values():
        if getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False
    tied = getattr(parts.model, "_tied_weights_keys", None)
    if tied:
        try:
            parts.model._tied_weights_keys = {} if isinstance(tied, dict) else []
        except Exception:  # pragma: no cover - class attribute on exotic models
            pass


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_layer0_inputs(parts: LMParts, calib: list[dict]) -> list[tuple[torch.Tensor, dict]]:
    """Run the full model on each calibration kwargs dict and capture what decoder layer 0 receives
    (hidden states + the layer kwargs: attention mask, position ids/embeddings, ...), stopping the forward there."""
    captured: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        kw["use_cache"] = False
        for key in ("cache", "past_key_values", "past_key_value"):
            if key in kw:
                kw[key] = None
        captured.append((hs.detach(), kw))
        raise _StopForward

    handle = parts.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for kw in calib:
            kw = dict(kw)
            kw.setdefault("use_cache", False)
            try:
                parts.model(**kw)
            except _StopForward:
                pass
    finally:
        handle.remove()
    if len(captured) != len(calib):
        raise QAPrunerError("Calibration inputs never reached the first decoder layer of the language model.")
    return captured
