"""Pruning overhead on the testbed: scoring + selection time as a share of the pruned prefill, and the
prefill-time ratio pruned / dense against the ideal ratio of sequence lengths.

    python benchmarks/pruning_overhead.py [--items 64] [--keep 0.125] [--quant w4a4] [--out FILE.json]

Times come from the evaluation runner's own counters (select_s: building the pruning context + scoring +
selection; prefill_s: the language-model forward), one warm-up batch excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from qapruner.eval.config import EvalConfig
from qapruner.eval.runner import Evaluator
from qapruner.models.registry import load_model
from qapruner.runinfo import environment
from qapruner.prune import HOSTS, PruneConfig
from qapruner.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.125)
    ap.add_argument("--task", default="easy-vqa")
    ap.add_argument("--quant", default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    loaded = load_model("testbed")
    task = load_task(args.task).subset(args.items + args.batch_size, seed=1)
    if args.quant:
        from qapruner.eval.prepare import quantized_copy
        from qapruner.quant import QuantConfig

        loaded, _ = quantized_copy(loaded, QuantConfig.from_preset(args.quant), task)
    ev = Evaluator(loaded)
    ev.cache(task).ensure(sorted({it.image for it in task.items}))
    warm = type(task)(task.name, task.items[: args.batch_size], task.image_count, task.load_image, task.cache_key)
    timed = type(task)(task.name, task.items[args.batch_size :], task.image_count, task.load_image, task.cache_key)
    lengths = lambda k: sum(len(loaded.token_row(it.prompt, k)) for it in timed.items)
    n = loaded.n_visual
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [("dense", None)] + [(h, PruneConfig(h, args.keep)) for h in HOSTS] + \
                  [(h + "+QA", PruneConfig(h, args.keep, qa=True)) for h in HOSTS]
        for name, prune in configs:
            cfg = EvalConfig(task=args.task, quant=args.quant, prune=prune, batch_size=args.batch_size)
            ev.run(warm, cfg, Path(tmp) / f"warm-{name}.jsonl")
            s = ev.run(timed, cfg, Path(tmp) / f"{name}.jsonl")
            rows.append({"config": name, "select_s": s["timing"]["select_s"], "prefill_s": s["timing"]["prefill_s"],
                         "kept": s["visual_tokens"]["kept"], "accuracy": s["accuracy"]})
    dense = rows[0]
    k = rows[1]["kept"]
    ideal = lengths(k) / lengths(n)
    for r in rows:
        r["select_share_of_prefill"] = round(r["select_s"] / r["prefill_s"], 4)
        r["prefill_ratio_vs_dense"] = round(r["prefill_s"] / dense["prefill_s"], 3)
    result = {"items": len(timed.items), "keep": args.keep, "quant": args.quant, "task": args.task,
              "ideal_length_ratio": round(ideal, 3), "rows": rows, "environment": environment(),
              "threads": torch.get_num_threads()}
    print(f"{'config':16s} {'select s':>9s} {'prefill s':>9s} {'select/prefill':>14s} {'prefill/dense':>13s}")
    for r in rows:
        print(f"{r['config']:16s} {r['select_s']:9.3f} {r['prefill_s']:9.3f} {r['select_share_of_prefill']:14.2%} "
              f"{r['prefill_ratio_vs_dense']:13.3f}")
    print(f"ideal sequence-length ratio pruned/dense: {ideal:.3f} ({len(timed.items)} items, keep {args.keep})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
