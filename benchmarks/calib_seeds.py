"""How much a quantized result owes to the calibration draw: the same rows of several compare reports that differ
only in the calibration sample (``--calib-seed``), side by side, and their spread over the seeds.

    python benchmarks/calib_seeds.py docs/sensitivity-v7 docs/calib-seeds-v7/seed-1 ... [--host cdpruner]
        [--out benchmarks/results/calib_seeds_v7.json]

Per task and report: Wq dense, Wq + host and Wq + QA-host accuracy and QA − host (points, 95 % paired CI,
McNemar p) as that report computed them; then, over the reports, min / max / standard deviation of each. The
paired CIs cover the items; the spread over seeds is the variance they do not cover (docs/compare.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def rows_of(report: Path, host: str, sensitivity: str) -> dict[str, dict]:
    """{task: {seed, dense, host, qa, diff, ci95, p}} of one report (accuracies and differences in points)."""
    r = json.loads((report / "results.json").read_text())
    seed = r["seeds"]["calibration_sample"]
    out: dict[str, dict] = {}
    for c in r["comparisons"]:
        if c["host"] != host or c["sensitivity"] != sensitivity or c["calib_pruned"] or c["quant"] is None:
            continue
        dense = next(x for x in r["configs"] if x["task"] == c["task"] and x["kind"] == "q-dense"
                     and x["quant"] == c["quant"])
        out[c["task"]] = {"seed": seed, "report": str(report), "cpu": dense.get("cpu_capability"),
                          "dense": 100 * dense["accuracy"], "host": 100 * c["acc_a"], "qa": 100 * c["acc_b"],
                          "diff": 100 * c["diff"], "ci95": [100 * x for x in c["ci95"]], "p": c["p_value"]}
    return out


def spread(values: list[float]) -> dict:
    return {"min": min(values), "max": max(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="compare report directories (results.json)")
    ap.add_argument("--host", default="cdpruner")
    ap.add_argument("--sensitivity", default="paper")
    ap.add_argument("--out", type=Path, default=None, help="write the table and the spread as JSON")
    args = ap.parse_args()
    per_task: dict[str, list[dict]] = {}
    for report in args.reports:
        if not (report / "results.json").is_file():
            raise SystemExit(f"calib_seeds: {report} has no results.json (run its compare first).")
        for task, row in rows_of(report, args.host, args.sensitivity).items():
            per_task.setdefault(task, []).append(row)
    summary = {}
    for task, rows in per_task.items():
        print(f"\n{task}: W4A4 dense, {args.host}, QA-{args.host}, QA − host (95 % CI, p), per calibration seed")
        for x in sorted(rows, key=lambda x: x["seed"]):
            print(f"  seed {x['seed']}: {x['dense']:5.1f}  {x['host']:5.1f}  {x['qa']:5.1f}  {x['diff']:+5.1f} "
                  f"({x['ci95'][0]:+.1f} to {x['ci95'][1]:+.1f}, p = {x['p']:.3g})  [{x['cpu']}]")
        summary[task] = {k: spread([x[k] for x in rows]) for k in ("dense", "host", "qa", "diff")}
        s = summary[task]
        print("  over seeds: " + ", ".join(f"{k} {v['min']:.1f}..{v['max']:.1f} (sd {v['sd']:.1f})"
                                           for k, v in s.items()))
    if args.out:
        args.out.write_text(json.dumps({"host": args.host, "sensitivity": args.sensitivity,
                                        "rows": per_task, "spread": summary}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
