"""Batched, greedy, deterministic evaluation of a (quantized, pruned) LLaVA-family model on a task:
batching, scoring and storing. The model path itself (projector → prune → splice → LLM) is the adapter's
(``models.llava.LlavaAdapter.forward``). On several processes (``qapruner.parallel``, docs/parallel.md) the
batches are shared out and the per-process shard files merged, with the same items file as one process.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from rich.progress import Progress

from .. import parallel
from ..errors import QAPrunerError
from ..models.features import FeatureCache
from ..models.llava import LlavaAdapter
from ..prune import Pruner
from ..tasks.base import Task
from .config import EvalConfig
from .scoring import choice_first_tokens, normalize_answer, parse_generated, pick_by_first_token
from .stats import wilson_ci
from .store import ItemStore, merge_shards, shard_path


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
        to ``items_path``; a rerun with the same ``cfg.key()`` resumes there (also after a multi-process run).
        Launched on several processes (``parallel``), every process calls this and gets the same summary."""
        if parallel.world() > 1:
            return self._run_parallel(task, cfg, Path(items_path), progress, label)
        with ItemStore(items_path, cfg.key()) as store:
            merge_shards(store, [it.uid for it in task.items])  # rows a killed multi-process run left behind
            return self._run(task, cfg, store, items_path, progress, label)

    def _run(self, task: Task, cfg: EvalConfig, store: ItemStore, items_path: Path, progress, label: str) -> dict:
        todo = [it for it in task.items if it.uid not in store.done]
        start = time.perf_counter()
        with _progress(progress) as progress:
            self.cache(task).ensure(sorted({it.image for it in todo}), progress)
            bar = progress.add_task(label, total=len(task.items), completed=len(task.items) - len(todo))
            batches = pending(task.items, {it.uid for it in todo}, cfg.batch_size)
            seconds = self._evaluate(batches, self.cache(task), cfg, store, progress, bar,
                                     [sum(it.uid not in store.done for it in b) for b in batches])
            progress.remove_task(bar)
        return summarize(task, cfg, store, self.adapter, items_path, time.perf_counter() - start, len(todo), seconds)

    def _run_parallel(self, task: Task, cfg: EvalConfig, items_path: Path, progress, label: str) -> dict:
        """Process r of N evaluates batches r, r + N, ... of exactly the batches one process would run (so no
        item's batch, padding or neighbours change) into its shard file; the main process, which holds the
        items file's lock throughout, merges the shards in item order and summarizes."""
        start = time.perf_counter()
        by_uid = {it.uid: it for it in task.items}
        order = list(by_uid)
        store = error = todo = summary = None
        try:
            with _progress(progress) as progress:
                parallel.barrier()  # everyone is past model preparation: the main process alone writes features
                if parallel.is_main():
                    try:
                        store = ItemStore(items_path, cfg.key())
                        merge_shards(store, order)
                        todo = [u for u in order if u not in store.done]
                        self.cache(task).ensure(sorted({by_uid[u].image for u in todo}), progress)
                    except QAPrunerError as exc:
                        error = exc
                message = parallel.broadcast(str(error) if error else todo)
                if isinstance(message, str):
                    raise error or parallel.Relayed(message)
                todo = [by_uid[u] for u in message]
                # a fresh cache elsewhere: it reads what the main process has just encoded
                cache = self.cache(task) if parallel.is_main() else FeatureCache(self.adapter, task)
                wanted = {it.uid for it in todo}
                batches = pending(task.items, wanted, cfg.batch_size)
                rank, world = parallel.rank(), parallel.world()
                mine = range(rank, len(batches), world)
                rounds = [sum(it.uid in wanted for b in batches[i - rank : i - rank + world] for it in b) for i in mine]
                bar = progress.add_task(label, total=len(task.items), completed=len(task.items) - len(todo))
                with ItemStore(shard_path(items_path, rank), cfg.key(), lock=False) as shard:
                    seconds = self._evaluate([batches[i] for i in mine], cache, cfg, shard, progress, bar, rounds,
                                             wanted)
                progress.remove_task(bar)
            timings = parallel.gather(seconds)  # every shard is complete past this point
            if store is not None:
                merge_shards(store, order)
                total = {k: sum(t[k] for t in timings) for k in seconds}
                summary = summarize(task, cfg, store, self.adapter, items_path, time.perf_counter() - start,
                                    len(todo), total, processes=world)
        finally:
            if store is not None:
                store.close()
        return parallel.broadcast(summary)

    def _evaluate(self, batches: list[list], cache: FeatureCache, cfg: EvalConfig, sink: ItemStore, progress,
                  bar, steps: list[int], wanted: set[str] | None = None) -> dict:
        """Run ``batches`` and add the rows of their ``wanted`` items (default: those ``sink`` lacks) to ``sink``;
        advance ``bar`` by ``steps[i]`` after batch i."""
        pruner = Pruner(cfg.prune) if cfg.prune is not None else None
        generate = cfg.max_new_tokens if cfg.mode == "generate" else 0
        seconds = {"select": 0.0, "prefill": 0.0}
        for batch, step in zip(batches, steps):
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
                if (it.uid in wanted) if wanted is not None else (it.uid not in sink.done):
                    rows.append(row)
            sink.add(rows)
            progress.advance(bar, step)
        return seconds


def pending(items: list, todo: set[str], batch_size: int) -> list[list]:
    """The batches still to run: consecutive ``batch_size`` items of the whole task order (fixed boundaries,
    whatever is already stored), those holding an item of ``todo``. A batch's padding can flip a near-tie answer
    under activation quantization, so a resumed or multi-process run batches every item as one uninterrupted
    run does; a partly stored batch runs whole and only its missing rows are added."""
    batches = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]
    return [b for b in batches if any(it.uid in todo for it in b)]


@contextmanager
def _progress(progress: Progress | None):
    """``progress``, or bars of our own (on the main process only) for the duration of the block."""
    if progress is not None:
        yield progress
        return
    progress = parallel.progress_bar()
    progress.start()
    try:
        yield progress
    finally:
        progress.stop()


def summarize(task: Task, cfg: EvalConfig, store: ItemStore, adapter: LlavaAdapter, items_path: Path,
              seconds: float, computed: int, timing: dict, processes: int = 1) -> dict:
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
                   "items_timed": computed, "processes": processes},
        "items_file": str(items_path),
    }
