"""Compressed-tensors export on the testbed: bytes on disk of the quantized decoder weights against fp16, and the
round trip (stock ``from_pretrained`` logits against the in-memory fake-quantized model) on real task items,
next to the fake-quantized model's own sensitivity (its logits for pixels scaled by 1 + 1e-6).

    python benchmarks/export_sizes.py [--presets w4a16-g64,w4a16,w4a16-gptq-g64,w8a8] [--items 8]
                                      [--root runs/export] [--out benchmarks/results/export_sizes.json]

Each preset is quantized with ``eval.prepare.quantized_copy`` (GPTQ calibrated on 32 easy-VQA train items, seed
0) and written with ``deploy.export.export_compressed`` to ROOT/PRESET, exactly what ``qapruner quantize --model
testbed --quant PRESET --out ROOT/PRESET --force`` writes. The logits compared are those of the full
``model(**processor(images, text))`` forward over the whole prompt (256 visual tokens + text).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

from qapruner.deploy.export import export_compressed
from qapruner.eval.prepare import quantized_copy
from qapruner.models.registry import load_model
from qapruner.quant import QuantConfig
from qapruner.runinfo import environment
from qapruner.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="w4a16-g64,w4a16,w4a16-gptq-g64,w8a8")
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--root", default="runs/export")
    ap.add_argument("--out", default="benchmarks/results/export_sizes.json")
    args = ap.parse_args()
    adapter = load_model("testbed")
    task = load_task("easy-vqa")
    items = task.subset(args.items, seed=1).items
    enc = [adapter.processor(images=[task.load_image(it.image)], text=[adapter.user_turn(it.prompt)],
                             return_tensors="pt") for it in items]
    rows = []
    for preset in args.presets.split(","):
        cfg = QuantConfig.from_preset(preset)
        t0 = time.perf_counter()
        qadapter, info = quantized_copy(adapter, cfg, task, calib_samples=32, seed=0)
        t1 = time.perf_counter()
        meta = export_compressed(qadapter.model, Path(args.root) / preset, adapter.processor, source="testbed",
                                 calibration=info, force=True)
        t2 = time.perf_counter()
        loaded = LlavaForConditionalGeneration.from_pretrained(Path(args.root) / preset).eval()
        stats = {k: [] for k in ("rt_max", "rt_mean", "rt_last_top1", "rt_all_top1", "fp_max", "fp_mean", "pert_mean")}
        with torch.no_grad():
            for e in enc:
                ref, got, fp = qadapter.model(**e).logits[0], loaded(**e).logits[0], adapter.model(**e).logits[0]
                # the fake-quant model's own sensitivity: the same input with pixels scaled by (1 + 1e-6)
                pert = qadapter.model(**{**e, "pixel_values": e["pixel_values"] * (1 + 1e-6)}).logits[0]
                d = (ref - got).abs()
                stats["rt_max"].append(d.max().item())
                stats["rt_mean"].append(d.mean().item())
                stats["rt_last_top1"].append(int(ref[-1].argmax() == got[-1].argmax()))
                stats["rt_all_top1"].append((ref.argmax(-1) == got.argmax(-1)).float().mean().item())
                stats["fp_max"].append((ref - fp).abs().max().item())
                stats["fp_mean"].append((ref - fp).abs().mean().item())
                stats["pert_mean"].append((ref - pert).abs().mean().item())
        row = {"preset": preset, **meta["sizes"], "items": len(enc),
               "roundtrip_max_abs_logit_diff": max(stats["rt_max"]),
               "roundtrip_mean_abs_logit_diff": sum(stats["rt_mean"]) / len(enc),
               "roundtrip_last_position_top1_agree": f"{sum(stats['rt_last_top1'])}/{len(enc)}",
               "roundtrip_all_positions_top1_agree": round(sum(stats["rt_all_top1"]) / len(enc), 4),
               "fake_quant_vs_fp_max_abs_logit_diff": max(stats["fp_max"]),
               "fake_quant_vs_fp_mean_abs_logit_diff": sum(stats["fp_mean"]) / len(enc),
               "fake_quant_1e-6_pixel_perturbation_mean_abs_logit_diff": sum(stats["pert_mean"]) / len(enc),
               "quantize_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1)}
        print(json.dumps(row))
        rows.append(row)
        del qadapter, loaded
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "environment": environment()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
