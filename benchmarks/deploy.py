"""What a user actually saves: real kernels on the testbed (2 threads), dense and pruned.

For FP32, BF16, W8A8 and W4A16 (real kernels, ``deploy.runtime.realize``), and W4A16 as a user deploys it (the
``qapruner quantize`` checkpoint, written once into the cache and loaded packed) × {dense, keep 12.5 % QA-cdpruner}:
language-model weight bytes in memory, peak RSS of the process, time to first token for one image prompt
(256 visual tokens + the question ≈ 300 tokens; pruned: 32 visual tokens), decode tokens/s, and accuracy on a
seeded subset of easy-VQA and Fashion-MNIST with the paired difference against qapruner's fake-quant
simulation of the same preset. Each configuration runs in its own process, so peak RSS is its own.

    python benchmarks/deploy.py --items 200 --out benchmarks/results/deploy.json
    python benchmarks/deploy.py --one w4a16 --items 200       # one configuration (what the driver runs)
    python benchmarks/deploy.py --configs w4a16 sim-w4a16 --items 600 --out benchmarks/results/deploy_w4a16_n600.json
    python benchmarks/deploy.py --configs fp32 bf16 --items 600 --accuracy-only --out benchmarks/results/deploy_fp_bf16_n600.json

Time only on an idle machine: a second busy process distorts CPU timings 10-70x. ``--accuracy-only`` skips the
timings (for a run that shares the machine). bf16 is paired with fp32 as the real presets with their simulation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from qapruner.deploy.packed_bf16 import can_pack_bf16
from qapruner.models.assets import DEFAULT_ASSET

CONFIGS = {  # name: (quant preset for the simulation and the real model, real kernels?)
    "fp32": (None, False),
    "bf16": (None, True),
    "w8a8": ("w8a8", True),
    "w4a16": ("w4a16-g64", True),
    "w4a16-export": ("w4a16-g64", True),  # the same preset written by `qapruner quantize`, loaded packed
}
TASKS = ("easy-vqa", "fashion-mnist")
PRUNE = dict(host="cdpruner", keep=0.125, qa=True)
SIMULATIONS = ["sim-w8a8", "sim-w4a16"]  # the fake-quant simulation of a preset, for the paired difference
ALL = sorted(CONFIGS) + SIMULATIONS


ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (platform.processor() is empty on Linux)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def exported(preset: str) -> Path:
    """The testbed quantized with ``preset`` and written by ``qapruner quantize`` (once, into the cache)."""
    from qapruner.paths import cache_dir

    out = cache_dir() / "deploy-bench" / f"testbed-{preset}"
    if not (out / "qapruner.json").is_file():
        subprocess.run([sys.executable, "-m", "qapruner", "quantize", "--model", "testbed", "--quant", preset,
                        "--out", str(out), "--force"], check=True, stdout=subprocess.DEVNULL)
    return out


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a (possibly tensor-subclass, e.g. packed int4) tensor holds."""
    names = getattr(t, "tensor_data_names", None)
    if names:
        return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n, None) is not None)
    return t.numel() * t.element_size()


def median_time(fn, reps: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one(name: str, items: int, timings: bool = True) -> dict:
    from qapruner.eval.config import EvalConfig
    from qapruner.eval.prepare import quantized_copy
    from qapruner.eval.runner import Evaluator
    from qapruner.models.features import FeatureCache
    from qapruner.models.registry import load_model
    from qapruner.prune import PruneConfig, Pruner
    from qapruner.quant import QuantConfig
    from qapruner.tasks import load_task

    torch.set_num_threads(2)
    preset, real = CONFIGS[name]
    task0 = load_task("easy-vqa")
    if name.endswith("-export"):  # what a user deploys: the checkpoint, loaded with its integers still packed
        adapter = load_model(str(exported(preset)), compressed=True)
    else:
        adapter = load_model("testbed")
        if preset:
            adapter, _ = quantized_copy(adapter, QuantConfig.from_preset(preset), task0)
    kernels = None
    if real:
        from qapruner.deploy.runtime import realize

        kernels = realize(adapter)
    layers = adapter.parts.lm.layers
    from qapruner.deploy.packed_bf16 import PackedBf16Linear

    packed = [m.packed for m in layers.modules() if isinstance(m, PackedBf16Linear)]  # oneDNN's opaque weights
    lm_bytes = sum(tensor_bytes(t) for t in (*layers.parameters(), *layers.buffers(), *packed))  # int4 codes: buffers
    item = task0.items[0]
    feats, cls = FeatureCache(adapter, task0).get([item.image])
    out = {"config": name, "preset": preset, "real": real, "kernels": kernels, "decoder_weight_bytes": lm_bytes}
    for label, prune in (("dense", None), ("pruned", Pruner(PruneConfig(**PRUNE)))):
        if not timings:
            out[label] = {}
            continue
        with torch.no_grad():
            visual = adapter.project(feats)
            if prune is not None:
                from qapruner.models.llava import gather_tokens

                visual = gather_tokens(visual, prune.select(adapter.prune_context(prune, visual, cls, [item.question])))
            inputs = adapter.assemble([item.prompt], visual)
            ttft = median_time(lambda: adapter.last_logits(inputs))
            n_new = 32
            gen = median_time(lambda: adapter.model.generate(
                inputs_embeds=inputs.embeds, attention_mask=inputs.mask, max_new_tokens=n_new, min_new_tokens=n_new,
                do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id), reps=3)
        out[label] = {"prompt_tokens": int(inputs.mask.sum()), "ttft_s": round(ttft, 4),
                      "decode_tokens_per_s": round((n_new - 1) / max(gen - ttft, 1e-9), 2)}
    with tempfile.TemporaryDirectory() as tmp:
        ev = Evaluator(adapter)
        if not items:  # --items 0: speed and memory only
            out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            return out
        for label, prune in (("dense", None), ("pruned", PruneConfig(**PRUNE))):
            for tname in TASKS:
                task = load_task(tname).subset(items, 0)
                cfg = EvalConfig(task=tname, limit=items, quant=preset, prune=prune, real=real)
                s = ev.run(task, cfg, Path(tmp) / f"{tname}-{label}.jsonl", label=f"{name} {tname} {label}")
                rows = [json.loads(line) for line in (Path(tmp) / f"{tname}-{label}.jsonl").read_text().splitlines()[1:]]
                out[label][tname] = {"accuracy": s["accuracy"], "n": s["n"],
                                     "correct": {r["uid"]: r["correct"] for r in rows}}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def paired(a: dict, b: dict) -> dict:
    """Accuracy difference a − b in points on the same items, with the exact McNemar p-value."""
    from scipy.stats import binomtest

    uids = sorted(a)
    only_a = sum(a[u] and not b[u] for u in uids)
    only_b = sum(b[u] and not a[u] for u in uids)
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"diff_points": round(100 * (only_a - only_b) / len(uids), 2), "discordant": only_a + only_b,
            "p_mcnemar": round(p, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", choices=ALL)
    ap.add_argument("--items", type=int, default=200, help="items per task (seeded, answer-stratified)")
    ap.add_argument("--out", default="benchmarks/results/deploy.json")
    ap.add_argument("--configs", nargs="+", choices=ALL, help="run only these configurations (default: all)")
    ap.add_argument("--accuracy-only", action="store_true", help="no timings (the machine is shared)")
    args = ap.parse_args()
    if args.one:
        if args.one.startswith("sim-"):  # the fake-quant simulation of a preset, for the paired difference
            CONFIGS[args.one] = (CONFIGS[args.one[4:]][0], False)
        print(json.dumps(one(args.one, args.items, timings=not args.accuracy_only)))
        return
    results = {}
    for name in args.configs or [*CONFIGS, *(SIMULATIONS if args.items else [])]:
        print(f"running {name} ...", flush=True)
        extra = ["--accuracy-only"] if args.accuracy_only else []
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--items", str(args.items), *extra],
                              stdout=subprocess.PIPE, text=True, check=True)  # progress goes to stderr
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    reference = {"w8a8": "sim-w8a8", "w4a16": "sim-w4a16", "bf16": "fp32",  # real path: what it approximates
                 "w4a16-export": "w4a16"}
    for name, ref in reference.items():
        if not args.items or not {name, ref} <= results.keys():
            continue
        for label in ("dense", "pruned"):
            for t in TASKS:
                results[name][label][t]["vs_simulation" if ref.startswith("sim-") else f"vs_{ref}"] = paired(
                    results[name][label][t]["correct"], results[ref][label][t]["correct"])
    for r in results.values():
        for label in ("dense", "pruned"):
            for t in TASKS if args.items else ():
                r[label][t].pop("correct")
    meta = {"items_per_task": args.items, "threads": 2, "timings": not args.accuracy_only, "torch": torch.__version__, "prune": PRUNE,
            "model": f"testbed:{DEFAULT_ASSET}", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu_model(), "bf16_packing": can_pack_bf16(torch.device("cpu")),
            # set to emulate an older CPU on a newer one (e.g. AVX2 on an AVX-512 machine)
            "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"{'config':10s} {'weights MB':>10s} {'RSS MB':>7s} {'TTFT dense':>10s} {'TTFT pruned':>11s} "
          f"{'decode tok/s':>12s} " + " ".join(f"{t[:8]:>9s} d/p" for t in TASKS))
    for name, r in results.items():
        acc = " ".join(f"{100 * r['dense'][t]['accuracy']:6.1f}/{100 * r['pruned'][t]['accuracy']:<5.1f}"
                       for t in TASKS) if args.items else ""
        speed = (f"{r['dense']['ttft_s']:10.3f} {r['pruned']['ttft_s']:11.3f} {r['dense']['decode_tokens_per_s']:12.1f}"
                 if "ttft_s" in r["dense"] else f"{'-':>10s} {'-':>11s} {'-':>12s}")
        print(f"{name:10s} {r['decoder_weight_bytes'] / 1e6:10.1f} {r['peak_rss_mb']:7.0f} {speed} {acc}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
