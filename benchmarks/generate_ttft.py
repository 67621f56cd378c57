"""Time to first token of ``model.generate`` on the testbed for one easy-VQA image: dense vs. pruned inside
generate (qapruner.deploy.generate), and a check that the pruned generate equals the evaluation harness.

    python benchmarks/generate_ttft.py [--threads 2] [--repeats 5] [--keep 0.125] [--host cdpruner] [--no-qa]
                                       [--out benchmarks/results/generate_ttft.json]

TTFT = wall time of ``model.generate(**processor(images=[img], text=[prompt], return_tensors="pt"),
max_new_tokens=1, do_sample=False)``: vision tower, pruning (context + selection) and the prefill; the processor
call itself (image resize + tokenization, the same for both) is timed separately. One warm-up call each, then
the median of ``--repeats`` calls, dense and pruned interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from qapruner.deploy.generate import prune_generation
from qapruner.models.registry import load_model
from qapruner.prune import PruneConfig, Pruner
from qapruner.runinfo import environment
from qapruner.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=float, default=0.125)
    ap.add_argument("--host", default="cdpruner")
    ap.add_argument("--no-qa", dest="qa", action="store_false")
    ap.add_argument("--item", type=int, default=0, help="easy-VQA test item")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    adapter = load_model("testbed")
    model, proc = adapter.model, adapter.processor
    task = load_task("easy-vqa")
    item = task.items[args.item]
    image = task.load_image(item.image)
    text = adapter.user_turn(item.prompt)
    cfg = PruneConfig(args.host, args.keep, qa=args.qa)

    t0 = time.perf_counter()
    enc = proc(images=[image], text=[text], return_tensors="pt")
    processor_s = time.perf_counter() - t0

    def first_token(pruned: bool) -> tuple[float, torch.Tensor, object]:
        with torch.no_grad():
            if not pruned:
                t = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=1, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
                return time.perf_counter() - t, out, None
            with prune_generation(adapter, cfg) as handle:
                t = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=1, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
                return time.perf_counter() - t, out, handle

    first_token(False), first_token(True)  # warm-up
    dense, pruned, parts = [], [], []
    for _ in range(args.repeats):
        dense.append(first_token(False)[0])
        s, out, handle = first_token(True)
        pruned.append(s)
        parts.append(handle.last_seconds)

    # the pruned generate equals the harness (LlavaAdapter.forward) for the same item, question = the prompt's text
    feats, cls = adapter.encode(enc["pixel_values"])
    ref = adapter.forward(feats, cls, [item.prompt], [item.prompt], Pruner(cfg))
    result = {
        "model": "testbed", "item": item.uid, "prompt": item.prompt, "threads": args.threads,
        "repeats": args.repeats, "prune": {"host": cfg.host, "keep": cfg.keep, "qa": cfg.qa, "alpha": cfg.alpha},
        "visual_tokens": {"before": adapter.n_visual, "kept": int(handle.last_keep.shape[1])},
        "prompt_tokens": {"dense": int(enc["input_ids"].shape[1]),
                          "pruned": int(enc["input_ids"].shape[1] - adapter.n_visual + handle.last_keep.shape[1])},
        "processor_s": round(processor_s, 4),
        "ttft_dense_s": {"median": round(statistics.median(dense), 4), "all": [round(x, 4) for x in dense]},
        "ttft_pruned_s": {"median": round(statistics.median(pruned), 4), "all": [round(x, 4) for x in pruned]},
        "pruned_parts_median_s": {k: round(statistics.median(p[k] for p in parts), 4) for k in parts[0]},
        "speedup": round(statistics.median(dense) / statistics.median(pruned), 3),
        "equals_harness": {"kept": bool(torch.equal(handle.last_keep, ref.keep)),
                           "max_abs_logit_diff": float((out.logits[0] - ref.logits).abs().max())},
        "environment": environment(),
    }
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text_out + "\n")


if __name__ == "__main__":
    main()
