"""Visual-token pruning inside real inference: ``model.generate(**processor(images=..., text=...))``.

    from qapruner.deploy.generate import prune_generation
    from qapruner.prune import PruneConfig

    with prune_generation(model, processor, PruneConfig("cdpruner", keep=0.125, qa=True)) as handle:
        out = model.generate(**processor(images=images, text=texts, padding=True, return_tensors="pt"),
                             max_new_tokens=32, do_sample=False)
    handle.last_keep        # (B, k) kept visual-token indices of the last call, ascending

``enable_pruning(...)`` is the same call without ``with``; ``handle.remove()`` restores the model. ``model`` is
any llava-hf ``LlavaForConditionalGeneration`` (or a :class:`~qapruner.models.llava.LlavaAdapter`, whose
processor is then used). The model keeps its attention implementation (SDPA); nothing is copied.

How each location is served (docs/pruning.md, "Pruning in generate"):

- **Before the LLM** (every host but FastV). ``generate`` is wrapped: the vision tower runs once
  (``LlavaAdapter.encode``: features and [CLS] attention), the projector, the pruner's context (the same
  ``LlavaAdapter.prune_context`` the evaluation harness uses) and its selection; the unkept image-token
  positions are dropped from ``input_ids`` / ``attention_mask``, the kept rows are left-padded again and the
  kept projector outputs are spliced in (``LlavaAdapter.splice``), exactly as ``LlavaAdapter.assemble`` builds
  the harness's input: kept tokens renumbered contiguously, position ids = cumsum(mask) − 1. The language model
  gets those embeddings for the prefill (``inputs_embeds`` next to ``input_ids``), so the vision tower does not
  run a second time. The returned sequences are the caller's ``input_ids`` followed by the new tokens, so
  ``out[:, inputs["input_ids"].shape[1]:]`` still selects the answer.
- **At LLM layer K** (FastV). ``generate`` runs unchanged with hooks on the decoder: at the prefill, the input
  of layer K is scored (the last position's attention, ``prune.inllm.last_token_attention``) and the unkept
  visual tokens are dropped from the hidden states, the mask, the position ids and the rotary embeddings
  (kept tokens keep their original position ids, as in ``prune.inllm.prune_at_layer``). Layers < K keep the
  full sequence in their KV cache, layers ≥ K cache the shorter one; every later decoding step gives layers
  ≥ K an attention mask over their own, shorter cache. Needs a dynamic KV cache (the default) and SDPA or
  eager attention.

**The question** (CDPruner's instruction relevance, the harness's ``questions``): by default the user text
after the row's image placeholder up to the end of the user turn, i.e. the whole text the user typed (the
chat template puts the image first). Its token ids are cut out of the row with the processor's chat
template (the tokens it puts between the image and the user text, and after the user text, are removed) and
embedded as they are: the ids the harness gets when it tokenizes that text as its question. A prompt not
built with the template gives every non-special token after the image. Pass ``prune_questions=[...]`` (one
text per row) to ``generate`` to name the instruction explicitly, e.g. the question without the
answer-format instruction, which is what the evaluation tasks use as ``questions``.

Requirements: one image per row, each with the model's ``image_seq_length`` tokens; rows padded on the left
(``processor.tokenizer.padding_side = "left"``, as batched generation needs anyway). ``keep >= 1`` passes the
call through unchanged.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..errors import QAPrunerError
from ..models.llava import LlavaAdapter, gather_tokens, pad
from ..prune import PruneConfig, Pruner
from .generate_layer import _LayerPruning
from .question import question_ids



def enable_pruning(target, processor=None, config: PruneConfig | Pruner | None = None) -> "PruningHandle":
    """Make ``target.generate`` prune visual tokens with ``config`` until the handle is removed.

    ``target``: a ``LlavaForConditionalGeneration`` (then ``processor`` is its processor) or a
    :class:`LlavaAdapter` (``processor`` may be omitted: ``enable_pruning(adapter, config)``)."""
    if isinstance(processor, (PruneConfig, Pruner)) and config is None:
        processor, config = None, processor
    if isinstance(config, PruneConfig):
        config = Pruner(config)
    if not isinstance(config, Pruner):
        raise QAPrunerError("prune_generation needs a PruneConfig (or a Pruner), e.g. PruneConfig('cdpruner', 0.125).")
    return PruningHandle(_adapter(target, processor), config)


prune_generation = enable_pruning  # ``with prune_generation(model, processor, cfg) as handle: model.generate(...)``


def _adapter(target, processor) -> LlavaAdapter:
    if isinstance(target, LlavaAdapter):
        if processor is not None and processor is not target.processor:
            return LlavaAdapter(target.model, processor, target.key, target.name, target.grid)
        return target
    from ..models.parts import lm_parts
    from ..models.registry import _grid

    parts = lm_parts(target)
    if parts.projector is None or parts.vision_tower is None or not hasattr(target.config, "image_seq_length"):
        raise QAPrunerError(f"Pruning in generate needs a LLaVA model (LlavaForConditionalGeneration), "
                            f"not {type(target).__name__}.")
    if processor is None or not hasattr(processor, "tokenizer"):
        raise QAPrunerError("Pruning in generate needs the model's processor (AutoProcessor.from_pretrained(...)).")
    return LlavaAdapter(target, processor, key="generate", name=type(target).__name__, grid=_grid(target))


class PruningHandle:
    """The installed pruning; ``remove()`` (or leaving the ``with`` block) restores ``model.generate``.

    After each pruned call: ``last_keep`` (B, k) kept indices, ascending (None when nothing was pruned),
    ``last_questions`` (the instruction texts used, when the host needs them) and ``last_seconds``
    ({"encode", "select"}: vision tower, and projector + context + selection, for the pre-LLM hosts)."""

    def __init__(self, adapter: LlavaAdapter, pruner: Pruner):
        self.adapter, self.pruner = adapter, pruner
        self.model = adapter.model
        if getattr(self.model, "_qapruner_pruning", None) is not None:
            raise QAPrunerError("Pruning is already enabled on this model; remove the other handle first.")
        if pruner.location == "layer":
            k, n_layers = pruner.config.layer_k, adapter.num_layers
            if not 0 <= k < n_layers:
                raise QAPrunerError(f"Pruning layer K = {k} is outside the model's {n_layers} decoder layers.")
        self.last_keep: Tensor | None = None
        self.last_questions: list[str] | None = None
        self.last_seconds: dict = {}
        self._had_own = "generate" in self.model.__dict__
        self._previous = self.model.__dict__.get("generate")
        self._original = self.model.generate
        self.model.generate = self._generate
        self.model._qapruner_pruning = self
        self.active = True

    # ---- installation ---------------------------------------------------------------------------------
    def remove(self) -> None:
        if not self.active:
            return
        if self._had_own:
            self.model.generate = self._previous
        else:
            del self.model.generate
        self.model._qapruner_pruning = None
        self.active = False

    def __enter__(self) -> "PruningHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    # ---- the wrapped generate -------------------------------------------------------------------------
    def _generate(self, inputs: Tensor | None = None, *args, **kwargs):
        questions = kwargs.pop("prune_questions", None)
        if inputs is not None:
            if kwargs.get("input_ids") is not None:
                raise QAPrunerError("Pass the prompt ids either positionally or as input_ids, not both.")
            kwargs["input_ids"] = inputs
        self.last_keep = self.last_questions = None
        self.last_seconds = {}
        self._args = args  # generate's other positional arguments (generation_config, ...), passed on
        if kwargs.get("pixel_values") is None or self.pruner.config.is_noop:
            return self._original(None, *args, **kwargs)
        if kwargs.get("input_ids") is None:
            raise QAPrunerError("Pruning in generate needs input_ids (the processor's output), not inputs_embeds only.")
        if kwargs.get("inputs_embeds") is not None:
            raise QAPrunerError("Pruning in generate builds inputs_embeds itself; pass input_ids and pixel_values.")
        if kwargs.get("image_sizes") is not None:
            raise QAPrunerError("Pruning in generate supports fixed-size images only (no image_sizes).")
        for key in ("vision_feature_layer", "vision_feature_select_strategy"):
            if kwargs.get(key) is not None:
                raise QAPrunerError(f"Pruning in generate uses the model config's {key}; do not pass {key}.")
        if self.pruner.location == "layer":
            return self._generate_at_layer(kwargs, questions)
        return self._generate_before_llm(kwargs, questions)

    def _rows(self, kwargs) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids (B, L), attention_mask (B, L) and the image-token positions (B, N), checked."""
        dev = self.adapter.device
        ids = kwargs["input_ids"].to(dev)
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(dev)
        if mask.dim() != 2 or mask.shape != ids.shape:
            raise QAPrunerError("Pruning in generate needs a 2-D attention_mask shaped like input_ids.")
        b, n = ids.shape[0], self.adapter.n_visual
        n_images = kwargs["pixel_values"].shape[0]
        where = (ids == self.adapter.image_token_id) & mask.bool()
        counts = where.sum(1)
        if n_images != b or not torch.all(counts == n):
            raise QAPrunerError(f"Pruning in generate needs one image per prompt ({n} image tokens per row); got "
                                f"{n_images} images for {b} prompts and {counts.tolist()} image tokens per row.")
        m = mask.bool()
        if torch.any(m[:, :-1] & ~m[:, 1:]):
            raise QAPrunerError("Pruning in generate needs left-padded prompts: set "
                                "processor.tokenizer.padding_side = 'left' before calling the processor.")
        return ids, mask, where.nonzero()[:, 1].view(b, n)

    def _context(self, visual: Tensor, cls_attn: Tensor | None, ids: Tensor, mask: Tensor, vpos: Tensor, given,
                 layer: int = 0, features: Tensor | None = None):
        """The pruner's context, built by the harness's own ``LlavaAdapter.prune_context``. The instruction is
        ``given`` (texts, embedded as the harness embeds its questions) or, by default, each row's user-text
        token ids (``question_ids``), embedded as they are (decoded to text for a CLIP text tower)."""
        a, pruner = self.adapter, self.pruner
        b = ids.shape[0]
        wants_text = "text_embeds" in pruner.needs
        if given is not None:
            given = [given] if isinstance(given, str) else list(given)
            if len(given) != b:
                raise QAPrunerError(f"prune_questions has {len(given)} texts for {b} prompts.")
        rows = None
        if given is None and (wants_text or "clip_text" in pruner.needs):
            rows = [question_ids(a, ids[r, vpos[r, -1] + 1:][mask[r, vpos[r, -1] + 1:].bool()].tolist())
                    for r in range(b)]
        texts = given if given is not None else [a.tokenizer.decode(r, skip_special_tokens=True) for r in rows] \
            if rows is not None else [""] * b
        ctx = a.prune_context(pruner, visual, cls_attn, texts, layer=layer, features=features)
        if wants_text and given is None:
            tok = a.tokenizer
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
            text_ids, text_mask = pad([r or [tok.eos_token_id] for r in rows], pad_id)  # as text_embeds pads
            ctx.text_embeds, ctx.text_mask = a.embed(text_ids), text_mask.to(a.device)
            given = [tok.decode(r, skip_special_tokens=False) for r in rows]
        self.last_questions = given if wants_text else None
        return ctx

    # ---- before the LLM -------------------------------------------------------------------------------
    def _generate_before_llm(self, kwargs: dict, questions):
        a, pruner = self.adapter, self.pruner
        ids, mask, vpos = self._rows(kwargs)
        pixel_values = kwargs.pop("pixel_values")
        t0 = time.perf_counter()
        with torch.no_grad():
            feats, cls_attn = a.encode(pixel_values)
            t1 = time.perf_counter()
            visual = a.project(feats)
            keep = pruner.select(self._context(visual, cls_attn, ids, mask, vpos, questions, features=feats))
            visual = gather_tokens(visual, keep.to(visual.device))
            rows = []
            for r in range(ids.shape[0]):
                keep_row = mask[r].bool().clone()
                keep_row[vpos[r]] = False
                keep_row[vpos[r, keep[r].to(vpos.device)]] = True
                rows.append(ids[r, keep_row].tolist())
            pad_id = a.tokenizer.pad_token_id if a.tokenizer.pad_token_id is not None else 0
            short_ids, short_mask = pad(rows, pad_id)
            short_ids, short_mask = short_ids.to(ids.device), short_mask.to(ids.device)
            embeds = a.splice(short_ids, visual)
        self.last_seconds = {"encode": t1 - t0, "select": time.perf_counter() - t1}
        self.last_keep = keep
        if kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is None:
            kwargs["max_new_tokens"] = max(0, kwargs.pop("max_length") - ids.shape[1])  # caller's length budget
        kwargs.update(input_ids=short_ids, attention_mask=short_mask, inputs_embeds=embeds)
        out = self._original(None, *self._args, **kwargs)
        return _with_prompt(out, ids, short_ids.shape[1])

    # ---- at LLM layer K (FastV) -----------------------------------------------------------------------
    def _generate_at_layer(self, kwargs: dict, questions):
        a, pruner = self.adapter, self.pruner
        if kwargs.get("use_cache") is False or getattr(kwargs.get("generation_config"), "use_cache", True) is False:
            raise QAPrunerError("In-LLM (FastV) pruning in generate needs the KV cache (use_cache=True).")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None or kwargs.get("cache_implementation") not in (None, "dynamic"):
            raise QAPrunerError("In-LLM (FastV) pruning in generate works with the default dynamic KV cache only.")
        ids, mask, vpos = self._rows(kwargs)
        base = None
        needs = pruner.needs
        if needs & {"cls_attn", "text_embeds", "matched_error"}:
            cls_attn = a.encode(kwargs["pixel_values"])[1] if "cls_attn" in needs else None
            placeholder = torch.zeros(ids.shape[0], vpos.shape[1], 0, device=ids.device)
            base = self._context(placeholder, cls_attn, ids, mask, vpos, questions, layer=pruner.config.layer_k)
        state = _LayerPruning(self, vpos, mask, base)
        hooks = state.install()
        try:
            out = self._original(None, *self._args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        self.last_keep = state.keep
        return out


def _with_prompt(out, ids: Tensor, short_len: int):
    """The caller's prompt ids followed by the generated tokens (generate returned the pruned prompt)."""
    seqs = out if isinstance(out, Tensor) else getattr(out, "sequences", None)
    if seqs is None:
        return out
    prompt = ids.to(seqs.device).repeat_interleave(seqs.shape[0] // ids.shape[0], dim=0)  # num_return_sequences
    seqs = torch.cat([prompt, seqs[:, short_len:]], dim=1)
    if isinstance(out, Tensor):
        return seqs
    out.sequences = seqs
    return out
