"""The qapruner side of the lmms-eval plugin, free of lmms-eval: one model prepared exactly as ``qapruner eval``
prepares it (load, quantize, cast), and two batched verbs that run qapruner's own model path
(``LlavaAdapter.forward`` with the configured :class:`Pruner`):

* ``score``: -log p(continuation | prompt) of candidate continuations; the first token's score is the
  last-position output of ``forward``, i.e. exactly what ``qapruner eval --mode choice`` compares;
* ``generate``: greedy decoding, the texts of ``qapruner eval --mode generate``.

Images come as a qapruner (task, image index) pair, whose vision features are read from / written to
qapruner's feature cache (the same features ``qapruner eval`` uses), or as PIL images, which are encoded here
by the model's own image processor and vision tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import QAPrunerError
from ..models.features import FeatureCache
from ..models.registry import check_model_spec, load_model
from ..models.sequence import gather_tokens, pad, position_ids
from ..prune import Pruner
from .options import Options


@dataclass(frozen=True)
class Visual:
    """One request's image: ``task`` + ``index`` (a qapruner task's image, feature-cached) or ``image`` (PIL)."""
    task: str | None = None
    index: int | None = None
    image: Any = None


class Engine:
    def __init__(self, options: Options):
        self.config = cfg = options.config
        self.feature_cache = options.feature_cache
        check_model_spec(cfg.model)
        self.base = load_model(cfg.model, compressed=cfg.real)  # --real builds its kernels from the packed integers
        cfg.check_model(self.base)
        self.pruner = Pruner(cfg.prune) if cfg.prune is not None else None
        self.adapter = None
        self.quant_info: dict | None = None
        self._calib = options.calib
        self._caches: dict[str, FeatureCache] = {}
        if cfg.quant is None or not cfg.quant.needs_calibration or self._calib is not None:
            self.prepare(self._calib)

    # ---- the model ----------------------------------------------------------------------------------
    def prepare(self, calib: str | None) -> None:
        """Quantize / cast as ``qapruner eval`` does; ``calib`` names the qapruner task whose calibration split
        calibrates GPTQ / static presets (``eval.prepare``: its train split, or the task itself)."""
        from ..eval.prepare import quantized_copy

        cfg, adapter = self.config, self.base
        if cfg.quant is not None:
            task = None
            if cfg.quant.needs_calibration:
                if calib is None:
                    raise QAPrunerError(f"The preset {cfg.preset} needs calibration data, and these documents are "
                                        "not a qapruner task: add calib=TASK to model_args (e.g. calib=easy-vqa).")
                from .docs import qapruner_task

                task = qapruner_task(calib)
            adapter, self.quant_info = quantized_copy(self.base, cfg.quant, task, cfg.calib_samples,
                                                      cfg.calibration_seed)
        if cfg.real:
            from ..deploy.runtime import realize

            self.quant_info = dict(self.quant_info or {}, kernels=realize(adapter))
        elif cfg.dtype != "float32":
            adapter = adapter.cast(getattr(torch, cfg.dtype))
        self.adapter = adapter

    def ready(self, visuals: list[Visual]) -> None:
        """Prepare the model before the first batch when its calibration task comes from the documents."""
        if self.adapter is None:
            self.prepare(next((v.task for v in visuals if v.task is not None), None))

    @property
    def tokenizer(self):
        return self.base.tokenizer

    # ---- vision features --------------------------------------------------------------------------------
    def features(self, visuals: list[Visual]) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision features (B, N, Dv) and [CLS] attention (B, N), in the order of ``visuals``."""
        feats: list = [None] * len(visuals)
        cls: list = [None] * len(visuals)
        by_task: dict[str, list[int]] = {}
        pil: list[int] = []
        for i, v in enumerate(visuals):
            if v.task is not None and self.feature_cache:
                by_task.setdefault(v.task, []).append(i)
            elif v.image is not None:
                pil.append(i)
            else:
                raise QAPrunerError("A request has no image; qapruner's model path takes one image per question.")
        for name, rows in by_task.items():
            f, c = self._cache(name).get([visuals[i].index for i in rows])
            for j, i in enumerate(rows):
                feats[i], cls[i] = f[j], c[j]
        for s in range(0, len(pil), 16):  # the feature cache's encoding batch
            rows = pil[s : s + 16]
            images = [visuals[i].image.convert("RGB") for i in rows]
            pixels = self.base.processor.image_processor(images, return_tensors="pt")["pixel_values"]
            f, c = self.base.encode(pixels)
            for j, i in enumerate(rows):
                feats[i], cls[i] = f[j], c[j]
        return torch.stack(feats), torch.stack(cls)

    def _cache(self, name: str) -> FeatureCache:
        if name not in self._caches:
            from .docs import qapruner_task

            self._caches[name] = FeatureCache(self.base, qapruner_task(name))
        return self._caches[name]

    # ---- the verbs ------------------------------------------------------------------------------------
    def generate(self, visuals: list[Visual], prompts: list[str], questions: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers: ``qapruner eval --mode generate``'s texts."""
        self.ready(visuals)
        feats, cls = self.features(visuals)
        return self.adapter.forward(feats, cls, prompts, questions, self.pruner, max_new_tokens).texts

    @torch.no_grad()
    def score(self, visuals: list[Visual], prompts: list[str], questions: list[str],
              continuations: list[list[list[int]]]) -> list[list[tuple[float, bool]]]:
        """For each prompt and each of its token continuations: (-log p(continuation | prompt), whether greedy
        decoding yields it).

        The first token's log-probability is the last-position output of ``LlavaAdapter.forward`` (the score of
        ``qapruner eval --mode choice``); the later tokens of longer continuations are teacher-forced through
        the same projector → splice → decoder path with the visual tokens ``forward`` kept. In-LLM (fastv)
        pruning scores the next token only, so it takes one-token continuations."""
        self.ready(visuals)
        adapter = self.adapter
        feats, cls = self.features(visuals)
        out = adapter.forward(feats, cls, prompts, questions, self.pruner, 0)
        first = torch.log_softmax(out.logits.float(), -1)
        best = first.argmax(-1).tolist()
        result = [[(-first[b, c[0]].item(), best[b] == c[0]) if c else (0.0, True) for c in conts]
                  for b, conts in enumerate(continuations)]
        longer = [(b, j) for b, conts in enumerate(continuations) for j, c in enumerate(conts) if len(c) > 1]
        if not longer:
            return result
        if self.pruner is not None and out.keep is not None and self.pruner.location != "input":
            raise QAPrunerError(f"In-LLM ({self.pruner.config.host}) pruning scores one answer token only; this "
                                "task asks for the likelihood of several tokens (use a host that prunes before the LLM).")
        visual = adapter.project(feats)
        if out.keep is not None:
            visual = gather_tokens(visual, out.keep.to(visual.device))
        size = self.config.batch_size
        for s in range(0, len(longer), size):
            chunk = longer[s : s + size]
            conts = [continuations[b][j] for b, j in chunk]
            rows = [adapter.token_row(prompts[b], visual.shape[1]) + c for (b, _), c in zip(chunk, conts)]
            ids, mask = pad(rows, self.tokenizer.pad_token_id)
            ids, mask = ids.to(adapter.device), mask.to(adapter.device)
            embeds = adapter.splice(ids, visual[[b for b, _ in chunk]])
            hidden = adapter.hidden_states(embeds, mask, position_ids(mask))
            width = ids.shape[1]
            for (b, j), c, h in zip(chunk, conts, hidden):
                # position width - len(c) - 1 + t predicts token t; token 0 came from forward above
                logp = torch.log_softmax(adapter.logits(h[width - len(c) : width - 1]).float(), -1)
                rest = torch.tensor(c[1:], device=logp.device)
                nll, greedy = result[b][j]
                result[b][j] = (nll - logp.gather(1, rest[:, None]).sum().item(),
                                greedy and bool(torch.equal(logp.argmax(-1), rest)))
        return result
