"""Batched, greedy, deterministic evaluation of a (quantized, pruned) LLaVA-family model on a task.

Per batch: cached vision features → projector → score + select visual tokens (pre-LLM hosts) → splice the
kept tokens into the prompt → language model (fake-quantized linears if a preset is given) → answer by the
next-token likelihood of the candidate answers (or greedy generation + parsing). FastV-style hosts prune
inside the language model instead (``prune.inllm``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import QAPrunerError
from ..models.adapter import (image_token_id, pad_left, project, splice_visual, tokenize_with_visual, user_turn,
                              visual_positions)
from ..models.features import FeatureCache
from ..models.registry import LoadedModel
from ..prune import PruneConfig, PruneContext, Pruner
from ..tasks.base import Task
from .scoring import choice_first_tokens, parse_generated, pick_by_first_token
from .stats import wilson_ci
from .store import ItemStore


@dataclass
class EvalConfig:
    quant: str | None = None
    prune: PruneConfig | None = None
    mode: str = "choice"          # "choice": next-token likelihood over candidates; "generate": greedy + parse
    batch_size: int = 16
    max_new_tokens: int = 10

    def describe(self) -> dict:
        return {"quant": self.quant, "prune": asdict(self.prune) if self.prune else None, "mode": self.mode}


@dataclass
class Timings:
    select: float = 0.0   # building the pruning context + scoring + selection
    prefill: float = 0.0  # language-model forward
    items: int = 0
    extra: dict = field(default_factory=dict)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn())


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: positions count real tokens only, so a row's result does not depend on its batch."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class Evaluator:
    """Evaluates one (already quantized or FP) model; reuse it across pruning configurations."""

    def __init__(self, loaded: LoadedModel, quant: str | None = None):
        self.loaded, self.quant = loaded, quant
        self.model = loaded.model
        self.device = next(self.model.parameters()).device
        self._caches: dict[str, FeatureCache] = {}

    def cache(self, task: Task) -> FeatureCache:
        if task.cache_key not in self._caches:
            self._caches[task.cache_key] = FeatureCache(self.model, self.loaded.processor, task, self.loaded.key)
        return self._caches[task.cache_key]

    # -- one batch ---------------------------------------------------------------------------------
    def _context(self, pruner: Pruner, visual, cls, batch, layer: int = 0) -> PruneContext:
        needs = pruner.needs
        ctx = PruneContext(visual=visual, grid=self.loaded.grid)
        if "cls_attn" in needs:
            ctx.cls_attn = cls.to(self.device)
        if "text_embeds" in needs:
            tok = self.loaded.tokenizer
            rows = [tok(it.question, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for it in batch]
            ids, mask = pad_left(rows, tok.pad_token_id)
            ctx.text_embeds = self.model.get_input_embeddings()(ids.to(self.device))
            ctx.text_mask = mask.to(self.device)
        if "matched_error" in needs:
            from ..quant import quantization_error_at_first_layer

            def matched(states):
                err = quantization_error_at_first_layer(self.model, states, layer=layer)
                if err is None:
                    raise QAPrunerError("--sensitivity matched needs a quantized model (--quant) that quantizes "
                                        "activations; this model has no activation quantizer to match.")
                return err

            # before the LLM: the projector outputs; inside it (FastV): the states entering layer K
            ctx.matched_error = matched(visual) if layer == 0 else matched
        return ctx

    @torch.no_grad()
    def forward_batch(self, batch, feats, cls, cfg: EvalConfig, timings: Timings):
        """Returns (last-position logits (B, V) or generated texts, kept indices (B, k) or None)."""
        model, tok = self.model, self.loaded.tokenizer
        img_id = image_token_id(model)
        t0 = time.perf_counter()
        visual = project(model, feats.to(self.device))
        n = visual.shape[1]
        pruner = Pruner(cfg.prune) if cfg.prune is not None and not cfg.prune.is_noop else None
        keep = None
        if pruner is not None and not pruner.in_llm:
            keep = pruner.select(self._context(pruner, visual, cls, batch))
            visual = torch.gather(visual, 1, keep.unsqueeze(-1).expand(-1, -1, visual.shape[-1]))
        timings.select += time.perf_counter() - t0
        k = visual.shape[1]
        rows = [tokenize_with_visual(tok, user_turn(self.loaded.processor, it.prompt), img_id, k) for it in batch]
        ids, mask = pad_left(rows, tok.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        embeds = splice_visual(model, ids, visual)
        pos = position_ids_from_mask(mask)
        t1 = time.perf_counter()
        if pruner is not None and pruner.in_llm:
            if cfg.mode != "choice":
                raise QAPrunerError("In-LLM (FastV) pruning supports --mode choice only.")
            from ..prune.inllm import forward_with_inllm_pruning

            ctx = self._context(pruner, visual, cls, batch, layer=cfg.prune.layer_k)
            extra = {f: getattr(ctx, f) for f in ("grid", "cls_attn", "text_embeds", "text_mask", "matched_error") if
                     getattr(ctx, f) is not None}
            logits, keep = forward_with_inllm_pruning(model, embeds, mask, visual_positions(model, ids), pruner,
                                                      ctx_extra=extra, position_ids=pos)
        elif cfg.mode == "generate":
            out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
            logits = tok.batch_decode(out[:, -cfg.max_new_tokens:] if out.shape[1] > cfg.max_new_tokens else out,
                                      skip_special_tokens=True)
        else:
            hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                                position_ids=pos).last_hidden_state
            logits = model.lm_head(hidden[:, -1])
        timings.prefill += time.perf_counter() - t1
        return logits, keep, n

    # -- a whole task --------------------------------------------------------------------------------
    def run(self, task: Task, cfg: EvalConfig, items_path: Path, progress: Progress | None = None,
            label: str = "eval") -> dict:
        if cfg.mode not in ("choice", "generate"):
            raise QAPrunerError(f"Unknown --mode '{cfg.mode}'; choose 'choice' or 'generate'.")
        config_id = {"task": task.name, "model": self.loaded.name, "n": len(task.items), **cfg.describe()}
        store = ItemStore(items_path, config_id)
        todo = [it for it in task.items if it.uid not in store.done]
        cache = self.cache(task)
        timings, start = Timings(), time.perf_counter()
        tok = self.loaded.tokenizer
        own = progress is None
        progress = progress or progress_bar()
        if own:
            progress.start()
        try:
            cache.ensure(sorted({it.image for it in todo}), progress)
            bar = progress.add_task(label, total=len(task.items), completed=len(task.items) - len(todo))
            n_before = n_kept = None
            for s in range(0, len(todo), cfg.batch_size):
                batch = todo[s : s + cfg.batch_size]
                feats, cls = cache.get([it.image for it in batch])
                out, keep, n_before = self.forward_batch(batch, feats, cls, cfg, timings)
                rows = []
                for i, it in enumerate(batch):
                    if cfg.mode == "choice":
                        firsts = choice_first_tokens(tok, it.choices) if it.choices else None
                        if firsts is None:
                            raise QAPrunerError(f"Item {it.uid}: --mode choice needs candidate answers with distinct "
                                                "first tokens; use --mode generate for this task.")
                        pred = it.choices[pick_by_first_token(out[i], firsts)[0]]
                    else:
                        pred = parse_generated(out[i], it.choices)
                    row = {"uid": it.uid, "pred": pred, "answer": it.answer, "correct": pred == it.answer}
                    if keep is not None:
                        row["kept"] = keep[i].tolist()
                    rows.append(row)
                n_kept = keep.shape[1] if keep is not None else n_before
                store.add(rows)
                timings.items += len(batch)
                progress.advance(bar, len(batch))
            progress.remove_task(bar)
        finally:
            if own:
                progress.stop()
        seconds = time.perf_counter() - start
        results = [store.done[it.uid] for it in task.items]
        correct = sum(r["correct"] for r in results)
        n_visual = self.model.config.image_seq_length
        kept_counts = {len(r["kept"]) for r in results if "kept" in r}
        summary = {
            "task": task.name, "model": self.loaded.name, "n": len(results), "correct": correct,
            "accuracy": correct / len(results), "ci95": list(wilson_ci(correct, len(results))),
            "quant": cfg.quant, "prune": asdict(cfg.prune) if cfg.prune else None, "mode": cfg.mode,
            "visual_tokens": {"before": n_visual, "kept": kept_counts.pop() if len(kept_counts) == 1 else n_visual},
            "subset": task.meta.get("subset"), "seconds": round(seconds, 2),
            "items_per_second": round(timings.items / seconds, 2) if timings.items else None,
            "timing": {"select_s": round(timings.select, 3), "prefill_s": round(timings.prefill, 3),
                       "items_timed": timings.items},
            "items_file": str(items_path),
        }
        return summary


def environment() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def config_hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
