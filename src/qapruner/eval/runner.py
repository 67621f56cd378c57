"""Batched, greedy, deterministic evaluation of a (quantized, pruned) LLaVA-family model on a task:
batching, scoring and storing. The model path itself (projector → prune → splice → LLM) is the adapter's
(``models.llava.LlavaAdapter.forward``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from rich.progress import Progress

from ..errors import QAPrunerError
from ..models.features import FeatureCache
from ..models.llava import LlavaAdapter
from ..prune import Pruner
from ..runinfo import progress_bar
from ..tasks.base import Task
from .config import EvalConfig
from .scoring import choice_first_tokens, normalize_answer, parse_generated, pick_by_first_token
from .stats import wilson_ci
from .store import ItemStore


class Evaluator:
    """Evaluates one (already quantized or FP) model; reuse it across pruning configurations."""

    def __init__(self, adapter: LlavaAdapter):
        self.adapter = adapter
        self._caches: dict[str, FeatureCache] = {}

    def cache(self, task: Task) -> FeatureCache:
        if task.cache_key not in self._caches:
            self._caches[task.cache_key] = FeatureCache(self.adapter, task)
        return self._caches[task.cache_key]

    def _answer(self, it, out, i: int, mode: str) -> str:
        if mode == "generate":
            return parse_generated(out.texts[i], it.choices)
        firsts = choice_first_tokens(self.adapter.tokenizer, it.choices) if it.choices else None
        if firsts is None:
            raise QAPrunerError(f"Item {it.uid}: --mode choice needs candidate answers with distinct first tokens; "
                                "use --mode generate for this task.")
        return it.choices[pick_by_first_token(out.logits[i], firsts)[0]]

    def run(self, task: Task, cfg: EvalConfig, items_path: Path, progress: Progress | None = None,
            label: str = "eval") -> dict:
        """Evaluate ``task`` (already subset / blanked as ``cfg`` says) and return the summary. Per-item rows go
        to ``items_path``; a rerun with the same ``cfg.key()`` resumes there."""
        with ItemStore(items_path, cfg.key()) as store:
            return self._run(task, cfg, store, items_path, progress, label)

    def _run(self, task: Task, cfg: EvalConfig, store: ItemStore, items_path: Path, progress, label: str) -> dict:
        todo = [it for it in task.items if it.uid not in store.done]
        cache = self.cache(task)
        pruner = Pruner(cfg.prune) if cfg.prune is not None else None
        generate = cfg.max_new_tokens if cfg.mode == "generate" else 0
        seconds = {"select": 0.0, "prefill": 0.0}
        start = time.perf_counter()
        own = progress is None
        progress = progress or progress_bar()
        if own:
            progress.start()
        try:
            cache.ensure(sorted({it.image for it in todo}), progress)
            bar = progress.add_task(label, total=len(task.items), completed=len(task.items) - len(todo))
            for s in range(0, len(todo), cfg.batch_size):
                batch = todo[s : s + cfg.batch_size]
                feats, cls = cache.get([it.image for it in batch])
                out = self.adapter.forward(feats, cls, [it.prompt for it in batch], [it.question for it in batch],
                                           pruner, generate)
                for k in seconds:
                    seconds[k] += out.seconds[k]
                rows = []
                for i, it in enumerate(batch):
                    pred = self._answer(it, out, i, cfg.mode)
                    correct = normalize_answer(pred) == normalize_answer(it.answer)
                    row = {"uid": it.uid, "pred": pred, "answer": it.answer, "correct": correct}
                    if it.kind:
                        row["kind"] = it.kind
                    if out.keep is not None:
                        row["kept"] = out.keep[i].tolist()
                    rows.append(row)
                store.add(rows)
                progress.advance(bar, len(batch))
            progress.remove_task(bar)
        finally:
            if own:
                progress.stop()
        return summarize(task, cfg, store, self.adapter, items_path, time.perf_counter() - start, len(todo), seconds)


def summarize(task: Task, cfg: EvalConfig, store: ItemStore, adapter: LlavaAdapter, items_path: Path,
              seconds: float, computed: int, timing: dict) -> dict:
    results = [store.done[it.uid] for it in task.items]
    correct = sum(r["correct"] for r in results)
    n_visual = adapter.n_visual
    kept_counts = {len(r["kept"]) for r in results if "kept" in r}
    return {
        "task": task.name, "model": adapter.name, "n": len(results), "correct": correct,
        "accuracy": correct / len(results), "ci95": list(wilson_ci(correct, len(results))),
        "quant": cfg.preset, "prune": asdict(cfg.prune) if cfg.prune else None, "mode": cfg.mode,
        "visual_tokens": {"before": n_visual, "kept": kept_counts.pop() if len(kept_counts) == 1 else n_visual},
        "subset": task.meta.get("subset"), "seconds": round(seconds, 2),
        "items_per_second": round(computed / seconds, 2) if computed else None,
        "timing": {"select_s": round(timing["select"], 3), "prefill_s": round(timing["prefill"], 3),
                   "items_timed": computed},
        "items_file": str(items_path),
    }
