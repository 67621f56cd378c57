"""Where the parts of a Llama-family causal LM or of a LLaVA model are: the only code that knows their
attribute paths (``model.language_model``, ``multi_modal_projector``, ``lm_head``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import QAPrunerError

DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class LMParts:
    model: nn.Module  # the top-level model (what quantize_ modifies)
    lm: nn.Module  # the LlamaModel-like decoder (embed_tokens, layers, norm, rotary_emb)
    lm_prefix: str  # module name of ``lm`` inside ``model`` ("model" or "model.language_model")
    head: nn.Module  # the LM head (vocabulary projection)
    projector: nn.Module | None  # LLaVA multi_modal_projector
    vision_tower: nn.Module | None
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
        lm, prefix = inner.language_model, "model.language_model"
        projector, tower = inner.multi_modal_projector, getattr(inner, "vision_tower", None)
        text_config = model.config.text_config
    elif inner is not None and hasattr(inner, "layers") and hasattr(inner, "embed_tokens"):
        lm, prefix, projector, tower = inner, "model", None, None
        text_config = model.config
    else:
        raise QAPrunerError(
            f"qapruner supports Llama-family causal LMs and LLaVA models, not {type(model).__name__}."
        )
    if lm_head is None or not hasattr(lm, "layers") or not hasattr(lm, "norm"):
        raise QAPrunerError(f"{type(model).__name__} lacks lm_head / decoder layers / final norm where expected.")
    layer0 = lm.layers[0]
    for name in DECODER_LINEARS:
        try:
            layer0.get_submodule(name)
        except AttributeError:
            raise QAPrunerError(
                f"The decoder layers of {type(model).__name__} have no {name}; not a Llama-style layer.") from None
    return LMParts(model, lm, prefix, lm_head, projector, tower, text_config)
