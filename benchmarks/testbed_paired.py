"""Paired FP accuracy of two testbed assets on the same items, per task and per question type, with McNemar's
exact test (two-sided binomial test on the discordant items).

    python benchmarks/testbed_paired.py --a testbed:~/.cache/qapruner/assets/testbed_v7.safetensors --b testbed:v2
        [--limit 300] [--tasks shapes,easy-vqa,fashion-mnist]

Runs (or resumes) `benchmarks/testbed_accuracy.py`'s per-item evaluation of both assets (with the image, all
tokens) and writes benchmarks/results/<a>_vs_<b>_n<N>.json, e.g. testbed_v7_vs_v2_n300.json.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from scipy.stats import binomtest

from qapruner.eval.store import read_items
from testbed_accuracy import ROOT, label, run


def _short(model: str) -> str:
    """``testbed:v2`` / ``testbed_v2`` -> ``v2`` (the key names of the result file)."""
    return label(model).removeprefix("testbed_")


def paired(a: str, b: str, tasks: list[str], limit: int) -> dict:
    run(a, tasks, limit, [])
    run(b, tasks, limit, [])
    ka, kb = _short(a), _short(b)
    out = {}
    for task in tasks:
        rows = {}
        for model in (a, b):
            for r in read_items(Path("runs/testbed_accuracy") / f"{label(model)}__{task}__n{limit}.items.jsonl"):
                rows.setdefault(r["uid"], {"kind": r.get("kind")})[model] = bool(r["correct"])
        groups = defaultdict(list)
        for r in rows.values():
            for k in ("all", r["kind"]):
                if k:
                    groups[k].append((r[a], r[b]))
        for k in sorted(groups, key=lambda k: (k == "all", k)):
            pairs = groups[k]
            only_a = sum(x and not y for x, y in pairs)
            only_b = sum(y and not x for x, y in pairs)
            n = len(pairs)
            out[f"{task}/{k}"] = {
                "n": n, f"{ka}_pct": round(100 * sum(x for x, _ in pairs) / n, 1),
                f"{kb}_pct": round(100 * sum(y for _, y in pairs) / n, 1),
                f"{ka}_minus_{kb}_pts": round(100 * (only_a - only_b) / n, 1), f"{ka}_only": only_a,
                f"{kb}_only": only_b,
                "mcnemar_p": float(f"{binomtest(only_a, only_a + only_b).pvalue:.3g}") if only_a + only_b else 1.0}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the asset under test, e.g. testbed:FILE.safetensors")
    ap.add_argument("--b", default="testbed:v2", help="the baseline asset (default: testbed:v2)")
    ap.add_argument("--tasks", default="shapes,easy-vqa,fashion-mnist")
    ap.add_argument("--limit", type=int, default=300)
    args = ap.parse_args()
    result = paired(args.a, args.b, args.tasks.split(","), args.limit)
    path = ROOT / "results" / f"testbed_{_short(args.a)}_vs_{_short(args.b)}_n{args.limit}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    for key, r in result.items():
        print(key, {k: v for k, v in r.items() if k != "n"}, f"n={r['n']}")
    print(f"written: {path}")
