"""The integer GEMM of W·A fake-quant rows (``--gemm integer``) against the fp32 GEMM: time and paired accuracy.

For each preset and task the model is quantized once; each row (dense, and keep 12.5 % QA-cdpruner) then runs
on the same items with the fp32 GEMM and with the integer GEMM (the same model, switched), alternating which
goes first. Reported per row: seconds of each, the speed-up, accuracy, the paired difference (exact McNemar),
and on how many items the prediction or the kept tokens differ.

    python benchmarks/integer_gemm.py --items 200 --out benchmarks/results/integer_gemm_n200.json

Time only on an idle machine (a second busy process distorts CPU timings 10-70x).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from deploy import paired  # benchmarks/deploy.py: a − b in points with the exact McNemar p-value

PRESETS = ("w4a4-rot-gptq", "w4a8")
TASKS = ("shapes", "easy-vqa", "fashion-mnist")
PRUNE = dict(host="cdpruner", keep=0.125, qa=True)


def rows_of(path: Path) -> dict[str, dict]:
    return {r["uid"]: r for r in map(json.loads, path.read_text().splitlines()[1:])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=200, help="items per task (seeded, answer-stratified)")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--out", default="benchmarks/results/integer_gemm.json")
    args = ap.parse_args()

    from qapruner.eval.config import EvalConfig
    from qapruner.eval.prepare import quantized_copy
    from qapruner.eval.runner import Evaluator
    from qapruner.models.assets import DEFAULT_ASSET
    from qapruner.models.registry import load_model
    from qapruner.prune import PruneConfig
    from qapruner.quant import QuantConfig
    from qapruner.quant.integer_gemm import use_integer_gemm
    from qapruner.tasks import load_task

    torch.set_num_threads(2)
    fp = load_model("testbed")
    results, flip = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            for tname in args.tasks:
                task = load_task(tname)
                q, _ = quantized_copy(fp, QuantConfig.from_preset(preset), task)
                ev = Evaluator(q)
                sub = task.subset(args.items, 0)
                for label, prune in (("dense", None), ("pruned", PruneConfig(**PRUNE))):
                    out = {}
                    order = ("integer", "float") if flip else ("float", "integer")
                    flip = not flip
                    for gemm in order:
                        use_integer_gemm(q.model, on=gemm == "integer")
                        cfg = EvalConfig(task=tname, limit=args.items, quant=preset, prune=prune, gemm=gemm)
                        path = Path(tmp) / f"{preset}-{tname}-{label}-{gemm}.jsonl"
                        s = ev.run(sub, cfg, path, label=f"{preset} {tname} {label} {gemm}")
                        out[gemm] = {"seconds": s["seconds"], "accuracy": s["accuracy"], "rows": rows_of(path)}
                    use_integer_gemm(q.model, on=False)
                    f, i = out["float"]["rows"], out["integer"]["rows"]
                    row = {"preset": preset, "task": tname, "row": label, "n": len(f),
                           "seconds_float": out["float"]["seconds"], "seconds_integer": out["integer"]["seconds"],
                           "speedup": round(out["float"]["seconds"] / out["integer"]["seconds"], 2),
                           "accuracy_float": round(100 * out["float"]["accuracy"], 2),
                           "accuracy_integer": round(100 * out["integer"]["accuracy"], 2),
                           "integer_minus_float": paired({u: r["correct"] for u, r in i.items()},
                                                         {u: r["correct"] for u, r in f.items()}),
                           "predictions_differ": sum(f[u]["pred"] != i[u]["pred"] for u in f),
                           "kept_tokens_differ": sum(f[u].get("kept") != i[u].get("kept") for u in f)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
                del q, ev
    meta = {"items_per_task": args.items, "threads": 2, "torch": torch.__version__, "prune": PRUNE,
            "model": f"testbed:{DEFAULT_ASSET}", "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
    print(f"{'preset':14s} {'task':14s} {'row':7s} {'float s':>8s} {'int s':>7s} {'x':>5s} {'acc f/i':>12s} "
          f"{'diff':>6s} {'p':>6s} {'preds≠':>6s}")
    for r in results:
        d = r["integer_minus_float"]
        print(f"{r['preset']:14s} {r['task']:14s} {r['row']:7s} {r['seconds_float']:8.1f} {r['seconds_integer']:7.1f} "
              f"{r['speedup']:5.2f} {r['accuracy_float']:5.1f}/{r['accuracy_integer']:<6.1f} "
              f"{d['diff_points']:+6.2f} {d['p_mcnemar']:6.3f} {r['predictions_differ']:6d}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
