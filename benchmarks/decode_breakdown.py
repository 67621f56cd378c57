"""Where a decode step's time goes on the real CPU path: bf16 against W4A16 (int4 tinygemm), testbed, batch 1.

Profiles 32 greedy tokens after one easy-VQA prompt (dense, ~283 tokens) with torch.profiler and splits the
operator time per decoded token into: the decoder linears (int4 op or bf16 matmul), the LM head (one bf16
matmul per token in both: W4A16 quantizes only the decoder linears), attention (SDPA) and everything else.
Then times the head alone in bf16 and as an int4 g64 layer (RTN on a copy; a what-if, not a preset).

    python benchmarks/decode_breakdown.py --out benchmarks/results/decode_breakdown.json

Time only on an idle machine. Profiler overhead inflates "other"; the shares are what this is for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

N_NEW = 32


def _median_ms(fn, reps: int = 50) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def _head_int4(head: torch.nn.Linear):
    """The head as an int4 g64 layer: RTN on a copy (the tied embedding is untouched), for timing only."""
    from qapruner.deploy.runtime import int4_linear
    from qapruner.quant import QuantLinear
    from qapruner.quant.config import ActQuantConfig
    from qapruner.quant.quantizer import quantize_weight_rtn

    rows = head.out_features // 64 * 64  # tinygemm packs multiples of 16 rows; the few extra tokens do not time
    lin = torch.nn.Linear(head.in_features, rows, bias=False)
    lin.weight = torch.nn.Parameter(head.weight.detach()[:rows].float().clone())
    ql = QuantLinear(lin, ActQuantConfig())  # 16-bit activations: weight-only
    w, scale, zero = quantize_weight_rtn(lin.weight.data, 4, True, 64, return_qparams=True)
    ql.set_quantized_weight(w, 4, scale, zero, 64)
    return int4_linear(ql)


def profile(name: str) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from qapruner.deploy.runtime import realize
    from qapruner.eval.prepare import quantized_copy
    from qapruner.models.features import FeatureCache
    from qapruner.models.registry import load_model
    from qapruner.quant import QuantConfig
    from qapruner.tasks import load_task

    adapter = load_model("testbed")
    task = load_task("easy-vqa")
    if name == "w4a16":
        adapter, _ = quantized_copy(adapter, QuantConfig.from_preset("w4a16-g64"), task)
    realize(adapter)
    item = task.items[0]
    feats, _ = FeatureCache(adapter, task).get([item.image])
    with torch.no_grad():
        inputs = adapter.assemble([item.prompt], adapter.project(feats))

        def gen(n):
            return adapter.model.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.mask, max_new_tokens=n,
                                          min_new_tokens=n, do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id)

        gen(4)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            gen(N_NEW + 1)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prefill_only:
            gen(1)
        head = adapter.parts.head
        x = torch.randn(1, head.in_features, dtype=torch.bfloat16)
        int4_head = _head_int4(head)
        head_ms = {"bf16": _median_ms(lambda: head(x)), "int4_what_if": _median_ms(lambda: int4_head(x))}

    def totals(p) -> dict[str, float]:
        out = {"decoder_linears": 0.0, "lm_head": 0.0, "attention": 0.0, "other": 0.0}
        for e in p.key_averages():
            ms = e.self_cpu_time_total / 1000
            if "int4pack_mm" in e.key:
                out["decoder_linears"] += ms
            elif e.key == "aten::mm":  # bf16 linears: the head is the one (1, 576) x (576, 49152) per call
                out["decoder_linears"] += ms
            elif "scaled_dot_product" in e.key:
                out["attention"] += ms
            else:
                out["other"] += ms
        return out

    whole, pre = totals(prof), totals(prefill_only)
    per_token = {k: round((whole[k] - pre[k]) / N_NEW, 3) for k in whole}  # decode steps only
    # the head's share of the matmul time: its own measured cost, taken out of the linears
    per_token["lm_head"] = round(head_ms["bf16"], 3)
    per_token["decoder_linears"] = round(per_token["decoder_linears"] - head_ms["bf16"], 3)
    return {"per_token_ms": per_token, "per_token_total_ms": round(sum(per_token.values()), 3),
            "head_alone_ms": {k: round(v, 3) for k, v in head_ms.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/decode_breakdown.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {name: profile(name) for name in ("bf16", "w4a16")}
    meta = {"threads": 2, "new_tokens": N_NEW, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    for name, r in results.items():
        print(name, json.dumps(r))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
