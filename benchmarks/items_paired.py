"""Pair the per-item files of two `qapruner eval` runs of the same configuration on the same items: how many
predictions and kept-token sets differ, both accuracies, the difference (second − first), its paired bootstrap
95 % CI and the exact McNemar p (compare's own statistics). The numerics check of a code change: run the same
`eval` command with the old code (a git worktree) and the new one, then

    python benchmarks/items_paired.py OLD.items.jsonl NEW.items.jsonl [OLD2 NEW2 ...] [--out FILE.json]

Runs no model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qapruner.compare.stats import paired
from qapruner.eval.store import read_items


def pair(first: Path, second: Path) -> dict:
    a = {r["uid"]: r for r in read_items(first)}
    b = {r["uid"]: r for r in read_items(second)}
    if set(a) != set(b):
        raise SystemExit(f"{first} and {second} hold different items: not a paired comparison.")
    stats = paired({u: bool(r["correct"]) for u, r in a.items()}, {u: bool(r["correct"]) for u, r in b.items()},
                   reps=10_000, seed=0)
    return {"first": str(first), "second": str(second), **stats,
            "predictions_differ": sum(a[u].get("pred") != b[u].get("pred") for u in a),
            "kept_sets_differ": sum(a[u].get("kept") != b[u].get("kept") for u in a)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="pairs: first second [first second ...]")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if len(args.files) % 2:
        raise SystemExit("Give the items files in pairs: first second [first second ...].")
    rows = [pair(args.files[i], args.files[i + 1]) for i in range(0, len(args.files), 2)]
    for r in rows:
        print(f"{Path(r['second']).name:48s} n={r['n']:4d} {100 * r['acc_a']:6.2f} -> {100 * r['acc_b']:6.2f} "
              f"({100 * r['diff']:+.2f}, McNemar p={r['p_value']:.3g}); predictions differ {r['predictions_differ']}, "
              f"kept sets differ {r['kept_sets_differ']}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
