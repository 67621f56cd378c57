"""Pair two committed compare reports row by row: the same configuration (task, preset, host, QA, keep) on the same
items, made with two models (e.g. two testbed assets). Reads only the reports' archives; runs no model.

    python benchmarks/reports_paired.py docs/experiment-v7 docs/experiment-v2

For every configuration both reports hold (matched by its id without the hash, which differs with the model)
and scored on the same items: both accuracies, the difference (first − second), the paired bootstrap 95 % CI
and the exact McNemar p (compare's own statistics), and Holm over all rows. Writes
benchmarks/results/<first>_vs_<second>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from qapruner.compare.archive import read_records
from qapruner.compare.stats import holm, paired

RESULTS = Path(__file__).resolve().parent / "results"


def correctness(report: Path) -> dict[str, dict[str, bool]]:
    """{config id without its hash: {uid: correct}} of a report's archive."""
    return {re.sub(r"__[0-9a-f]{10}$", "", cid): {r["uid"]: bool(r["correct"]) for r in rec["rows"]}
            for cid, rec in read_records(report).items()}


def pair_reports(first: Path, second: Path, reps: int = 10000, seed: int = 0) -> list[dict]:
    a, b = correctness(second), correctness(first)
    rows = [{"config": key, **paired(a[key], b[key], reps, seed)} for key in sorted(set(a) & set(b))
            if set(a[key]) == set(b[key])]
    for row, p in zip(rows, holm([r["p_value"] for r in rows])):
        row["holm_p"] = p
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    args = ap.parse_args()
    rows = pair_reports(args.first, args.second)
    out = RESULTS / f"{args.first.name}_vs_{args.second.name}.json"
    out.write_text(json.dumps({"first": str(args.first), "second": str(args.second), "rows": rows}, indent=1) + "\n")
    print(f"{'configuration':48s} {'n':>4s} {args.second.name:>14s} {args.first.name:>14s} {'diff':>6s}  95 % CI"
          "            p        Holm p")
    for r in rows:
        print(f"{r['config']:48s} {r['n']:4d} {100 * r['acc_a']:14.1f} {100 * r['acc_b']:14.1f} "
              f"{100 * r['diff']:+6.1f}  [{100 * r['ci95'][0]:+5.1f}, {100 * r['ci95'][1]:+5.1f}]  "
              f"{r['p_value']:8.2g} {r['holm_p']:8.2g}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
