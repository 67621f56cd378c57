"""``LlavaAdapter``: the one owner of the path every run takes through a LLaVA-family model.

    pixels → vision tower → projector → [prune before the LLM] → splice the kept tokens into the prompt
    → decoder layers [prune at layer K] → final norm → LM head

Every job (evaluation, calibration, training, the gallery) builds the language model's input here, the same
way: the chat-template text with one ``<image>`` placeholder is tokenized, the placeholder is expanded to the
number of visual tokens actually kept, and the projected features are spliced in at those positions.
Pre-LLM pruning therefore gives a shorter sequence with contiguous position ids (CDPruner / VisionZip
policy: kept tokens are renumbered in their original order). Pruning is a strategy handed to ``forward``
and applied where its host declares (``Pruner.location``): before the LLM, or at the input of layer K.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import QAPrunerError
from .attention import SDPA_LIKE, use_fp32_decode
from .parts import LMParts, lm_parts
from .sequence import additive_mask, gather_tokens, pad, position_ids  # noqa: F401  (re-exported)


@dataclass
class LMInputs:
    """A left-padded batch as the decoder receives it."""
    embeds: Tensor  # (B, L, D) text embeddings with the visual tokens spliced in
    mask: Tensor  # (B, L) 1 = real token
    position_ids: Tensor  # (B, L)
    visual_positions: Tensor  # (B, k) sequence positions of the visual tokens

    def as_kwargs(self) -> dict:
        """``model(**kw)`` keyword arguments (calibration)."""
        return {"inputs_embeds": self.embeds, "attention_mask": self.mask, "position_ids": self.position_ids}


@dataclass
class DecoderState:
    """What the hand-written decoder loop carries from layer to layer (in-LLM pruning only)."""
    hidden: Tensor  # (B, L, D)
    mask: Tensor  # (B, L)
    position_ids: Tensor  # (B, L)
    mask4d: Tensor  # (B, 1, L, L) additive
    position_embeddings: tuple[Tensor, Tensor]


@dataclass
class Output:
    logits: Tensor | None  # (B, V) last-position logits (choice mode)
    texts: list[str] | None  # generated answers (generate mode)
    keep: Tensor | None  # (B, k) kept visual-token indices, ascending; None = all kept
    n_visual: int  # visual tokens before pruning
    seconds: dict = field(default_factory=dict)  # {"select": s, "prefill": s}


def _inputs_to_own_dtype(module, args):
    """Forward pre-hook: floating-point inputs in the dtype of the module's parameters."""
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


class LlavaAdapter:
    """A loaded LLaVA-family model (``LlavaForConditionalGeneration``: the testbed or any llava-hf
    checkpoint) with its processor, and the few verbs every job needs."""

    def __init__(self, model, processor, key: str, name: str, grid: tuple[int, int]):
        self.model, self.processor = model, processor
        self.key = key  # identifies the vision features (cache key)
        self.name = name
        self.grid = grid  # visual-token grid (h, w)
        self.prune_config = None  # the pruning choice saved with an exported model (deploy.meta), if any

    # ---- parts --------------------------------------------------------------------------------------
    @property
    def parts(self) -> LMParts:
        """Located afresh each time: quantization replaces modules inside the model."""
        return lm_parts(self.model)

    tokenizer = property(lambda self: self.processor.tokenizer)
    device = property(lambda self: next(self.model.parameters()).device)

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_index)

    @property
    def n_visual(self) -> int:
        return int(self.model.config.image_seq_length)

    def with_model(self, model) -> "LlavaAdapter":  # e.g. a quantized copy
        adapter = LlavaAdapter(model, self.processor, self.key, self.name, self.grid)
        adapter.prune_config = self.prune_config
        return adapter

    def cast(self, dtype: torch.dtype) -> "LlavaAdapter":
        """Run the projector and the language model in ``dtype`` (in place; the vision tower, whose features
        are cached, stays as it is). bf16 is the cheapest real prefill speed-up on a CPU with AVX-512 BF16."""
        parts = self.parts
        for module in (parts.projector, parts.lm, parts.head):
            if module is not None:  # a plain causal LM has no projector
                module.to(dtype)
        if parts.projector is not None and not getattr(parts.projector, "_qapruner_input_cast", False):
            # transformers' own forward / generate feed the tower's output (its dtype) straight to the projector
            parts.projector.register_forward_pre_hook(_inputs_to_own_dtype)
            parts.projector._qapruner_input_cast = True
        if dtype != torch.float32 and self.device.type == "cpu":
            use_fp32_decode(parts.lm.config)  # decode steps attend in fp32: 5x faster there (models/attention.py)
        return self

    # ---- vision ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """Selected vision features (B, N, Dv) exactly as LLaVA feeds its projector, and the [CLS]→patch
        attention (B, N) of the block that produced them (head-averaged; FasterVLM / VisionZip signal)."""
        from .vision import cls_attention

        cfg, tower = self.model.config, self.parts.vision_tower
        param = next(tower.parameters())
        out = tower(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype), output_hidden_states=True)
        hidden = out.hidden_states
        feats = hidden[cfg.vision_feature_layer]
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return feats.float().cpu(), cls_attention(tower, hidden, cfg.vision_feature_layer).float().cpu()

    def project(self, features: Tensor) -> Tensor:
        """Projector outputs (B, N, D_llm) = the LLM input embeddings of the visual tokens."""
        proj = self.parts.projector
        return proj(features.to(device=self.device, dtype=next(proj.parameters()).dtype))

    # ---- text -----------------------------------------------------------------------------------------
    def user_turn(self, prompt: str, answer: str | None = None) -> str:
        """Chat-template text of one user turn (image first, as LLaVA does), ready for the assistant's answer."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return text if answer is None else text + answer

    def token_row(self, prompt: str, n_visual: int) -> list[int]:
        """Token ids of a user turn with its single image placeholder expanded to ``n_visual`` image tokens."""
        image_id = self.image_token_id
        ids = self.tokenizer(self.user_turn(prompt), add_special_tokens=False)["input_ids"]
        if ids.count(image_id) != 1:
            raise QAPrunerError(f"expected exactly one image placeholder in the prompt, found {ids.count(image_id)}")
        at = ids.index(image_id)
        return ids[:at] + [image_id] * n_visual + ids[at + 1 :]

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids.to(self.device))

    def text_embeds(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """LLM input embeddings (B, T, D) and mask (B, T) of plain texts, left-padded (instruction relevance)."""
        tok = self.tokenizer
        rows = [tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for t in texts]
        ids, mask = pad(rows, tok.pad_token_id)
        return self.embed(ids), mask.to(self.device)

    def splice(self, ids: Tensor, visual: Tensor) -> Tensor:
        """LLM input embeddings: text embeddings with ``visual`` (B, k, D) written at the image-token positions."""
        embeds = self.embed(ids)
        where = ids.to(embeds.device) == self.image_token_id
        counts = where.sum(1)
        if not torch.all(counts == visual.shape[1]):
            raise QAPrunerError(f"rows have {counts.tolist()} image tokens but {visual.shape[1]} visual embeddings")
        return embeds.masked_scatter(where.unsqueeze(-1), visual.to(embeds.dtype))

    def assemble(self, prompts: list[str], visual: Tensor) -> LMInputs:
        """The decoder input of a batch: each prompt with its ``visual`` tokens (B, k, D), left-padded."""
        rows = [self.token_row(p, visual.shape[1]) for p in prompts]
        ids, mask = pad(rows, self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        where = ids == self.image_token_id
        vpos = where.nonzero()[:, 1].view(ids.shape[0], visual.shape[1])
        return LMInputs(self.splice(ids, visual), mask, position_ids(mask), vpos)

    # ---- language model -------------------------------------------------------------------------------
    def hidden_states(self, embeds: Tensor, mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """The decoder (the library's own forward, SDPA) over a whole sequence: last hidden states (B, L, D)."""
        return self.parts.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids).last_hidden_state

    def logits(self, hidden: Tensor) -> Tensor:
        """The LM head over hidden states (..., D) -> (..., V)."""
        return self.parts.head(hidden)

    def last_logits(self, inputs: LMInputs) -> Tensor:
        hidden = self.hidden_states(inputs.embeds, inputs.mask, inputs.position_ids)
        return self.logits(hidden[:, -1])

    def generate(self, inputs: LMInputs, max_new_tokens: int) -> list[str]:
        tok = self.tokenizer
        out = self.model.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.mask,
                                  max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.batch_decode(out[:, -max_new_tokens:] if out.shape[1] > max_new_tokens else out,
                                skip_special_tokens=True)

    # ---- the hand-written decoder loop (in-LLM pruning) ------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.parts.layers)

    def layer(self, i: int):
        return self.parts.layers[i]

    def decoder_state(self, hidden: Tensor, mask: Tensor, pos: Tensor) -> DecoderState:
        lm = self.parts.lm
        impl = getattr(getattr(lm, "config", None), "_attn_implementation", None)
        if impl is not None and impl not in SDPA_LIKE:
            raise QAPrunerError(f"In-LLM pruning needs attn_implementation 'sdpa' or 'eager', got {impl!r}.")
        return DecoderState(hidden, mask, pos, additive_mask(mask, hidden.dtype), lm.rotary_emb(hidden, pos))

    def run_layers(self, state: DecoderState, start: int, stop: int | None = None) -> DecoderState:
        """Decoder layers ``start..stop-1`` with an explicit 4-D mask, so SDPA stays in use for every layer."""
        hidden = state.hidden
        for layer in self.parts.layers[start:stop]:
            out = layer(hidden, attention_mask=state.mask4d, position_ids=state.position_ids,
                        position_embeddings=state.position_embeddings, use_cache=False)
            hidden = out[0] if isinstance(out, tuple) else out
        return DecoderState(hidden, state.mask, state.position_ids, state.mask4d, state.position_embeddings)

    def head(self, hidden_last: Tensor) -> Tensor:
        """Final norm + LM head of the last position(s): (B, 1, D) -> (B, V)."""
        return self.logits(self.parts.norm(hidden_last))[:, 0]

    def clip_relevance(self, spec: str):
        """The CLIP text tower and projections of ``--relevance clip:SPEC``, checked against this vision tower."""
        from .clip_relevance import clip_relevance_for

        return clip_relevance_for(spec, self.parts.vision_tower)

    # ---- quantization-aware signals -------------------------------------------------------------------
    def matched_error(self, states: Tensor, layer: int = 0) -> Tensor:
        """The deployed activation quantizer's per-token error at layer ``layer``'s q_proj (B, N)."""
        from ..quant import activation_error

        err = activation_error(self.layer(layer), states)
        if err is None:
            raise QAPrunerError("--sensitivity matched needs a quantized model (--quant) that quantizes activations; "
                                "this model has no activation quantizer to match.")
        return err

    # ---- one batch, end to end ------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, features: Tensor, cls_attn: Tensor, prompts: list[str], questions: list[str],
                pruner=None, generate: int = 0) -> Output:
        """Answer a batch: last-position logits (``generate=0``) or ``generate`` greedy new tokens.

        ``pruner``: a :class:`qapruner.prune.Pruner` or None (all visual tokens). Its context is built here
        from the signals it asks for (``Pruner.needs``)."""
        t0 = time.perf_counter()
        visual = self.project(features)
        n = visual.shape[1]
        active = pruner is not None and not pruner.config.is_noop
        keep = None
        if active and pruner.location == "input":
            keep = pruner.select(self.prune_context(pruner, visual, cls_attn, questions, features=features))
            visual = gather_tokens(visual, keep)
        inputs = self.assemble(prompts, visual)
        t1 = time.perf_counter()
        logits = texts = None
        if active and pruner.location == "layer":
            if generate:
                raise QAPrunerError("In-LLM (FastV) pruning supports --mode choice only.")
            base = self.prune_context(pruner, visual, cls_attn, questions, layer=pruner.config.layer_k)
            logits, keep = pruner.at_layer(self, inputs, base)
        elif generate:
            texts = self.generate(inputs, generate)
        else:
            logits = self.last_logits(inputs)
        return Output(logits, texts, keep, n, {"select": t1 - t0, "prefill": time.perf_counter() - t1})

    def prune_context(self, pruner, visual: Tensor, cls_attn: Tensor, questions: list[str], layer: int = 0,
                      features: Tensor | None = None):
        """The :class:`PruneContext` fields ``pruner`` needs. In the LLM (``layer`` > 0 hosts) the visual
        states and the attention are filled in at layer K by ``prune.inllm``; ``matched_error`` is then a
        callable of those states. ``features`` (the vision features before the projector) feed CDPruner's
        CLIP relevance (``--relevance clip:MODEL``)."""
        from ..prune.context import PruneContext

        needs = pruner.needs
        ctx = PruneContext(visual=visual, grid=self.grid)
        if "cls_attn" in needs:
            ctx.cls_attn = cls_attn.to(self.device)
        if "text_embeds" in needs:
            ctx.text_embeds, ctx.text_mask = self.text_embeds(questions)
        if "clip_image" in needs:
            clip = self.clip_relevance(pruner.config.clip_model)
            ctx.clip_image = clip.image_embeds(features).to(self.device)
            text, mask = clip.text_embeds(questions)
            ctx.clip_text, ctx.clip_text_mask = text.to(self.device), mask.to(self.device)
        if "matched_error" in needs:
            if pruner.location == "input":
                ctx.matched_error = self.matched_error(visual)
            else:
                ctx.matched_error = lambda states: self.matched_error(states, layer=layer)
        return ctx
